import math
import numbers

import keras
from keras import ops

from keras_one.layers import _pytorch_init
from keras_one.losses import cross_entropy
from keras_one.losses import distillation_kl
from keras_one.losses import rampup_weight
from keras_one.methods.method import Method
from keras_one.methods.method_info import MethodInfo


@keras.saving.register_keras_serializable(package="keras_one")
class OEC(Method):
    """Online Ensemble model Compression (Walawalkar et al., ECCV 2020).

    "Online Ensemble Model Compression using Knowledge Distillation"
    (official code github.com/Devwalkar/BOC-KD): `S` students of one depth
    and decreasing widths share a stem (`keras_one.models.oec_resnet`);
    their averaged logits are the ensemble teacher `z_E`, which every
    student distils; the narrower students also mimic the widest one's
    stage outputs through 1x1 convolution adapters:

    `L = 0.7 * sum_i CE(z_i, y)
         + 0.15 * sum_{i >= 2, stage b} MSE(sg F_1b, A_ib(F_ib))
         + 0.15 * sum_i KL_T(sg z_E || z_i)`

    with `T = 2`, `z_E = mean_i z_i`, `F_ib` the output of stage `b` of
    student `i` (student 1 the widest), `A_ib` a trainable 1x1 convolution
    (with bias) to student 1's channels, owned by the method and built in
    `build()`, and `MSE` averaged over positions and channels. `KL_T` is
    summed over classes, averaged over the batch and scaled by `T^2` (the
    official `KL_Loss`). All students are trained at once; each is then
    exported alone with `Distiller.get_branch_model(i)`.

    The defaults are the official code at its head (`utils/Losses.py`,
    `models/ResNet_cifar.py`, `tools/train.py`), which agrees with the
    paper's loss and also fixes what the paper leaves open, how the
    adapters are trained:

    - the label term is the students' cross-entropies only: the ensemble
      `z_E` gets none (`Loss_A = sum(Individual_normal_losses[1:])`);
    - the widest student's stage outputs are detached (`.detach()` in the
      forward pass), so the hints train the narrower students and the
      adapters only;
    - the adapters are created at the first batch with PyTorch's default
      initialization (`nn.Conv2d`'s, as here) and join the optimizer only
      after the first epoch, as their own parameter group at half the
      learning rate: here `adapter_start_epoch=1` and
      `adapter_learning_rate_multiplier=0.5`, applied through
      `Method.learning_rate_multipliers` (the adapters are frozen in epoch
      0 and then move by half the optimizer's step, whatever the
      schedule). In the first epoch the hints still train the narrower
      students through the adapters at their initialization.

    Readings where this differs from the official code: when it adds the
    adapters, the official code builds a new optimizer and learning-rate
    scheduler, so every parameter's optimizer state (Adam's moments)
    restarts after epoch 0 and its step schedule restarts one epoch late;
    here the optimizer and schedule run on, and the optimizer's slots for
    the frozen adapters follow their gradients in epoch 0. The adapters
    get no weight decay here (the official optimizer decays them too).

    `ensemble_label_loss=True` gives the label term of the official code's
    intermediate commit 0222b55, `0.7 * CE(z_E, y)` (the ensemble's
    cross-entropy only), which its head replaced by the students'; it is
    not the official code's recipe, and is kept for comparison.

    The student must return `branch_logits` and `branch_stage_features`:
    build it with `keras_one.models.oec_resnet` (or `OEC.build_student`).

    Args:
        temperature: `T`, default 2.
        ce_weight: weight of the label term, default 0.7.
        hint_weight: weight of the feature hints, default 0.15.
        kl_weight: weight of the distillation term, default 0.15.
        ensemble_label_loss: if `True`, the label term is the ensemble's
            cross-entropy `CE(z_E, y)` (the intermediate commit 0222b55)
            instead of `sum_i CE(z_i, y)` (the paper and the official
            code's head). Default `False`.
        adapter_learning_rate_multiplier: the adapters' learning rate, as
            a multiple of the optimizer's; default 0.5, as in the official
            code. 1 trains them like the students.
        adapter_start_epoch: the epoch (counted from 0) from which the
            adapters train; before it they keep their initialization.
            Default 1, as in the official code; 0 trains them from the
            first step.
        **kwargs: `Method` keyword arguments (`name`; `rampup_epochs`,
            default 0: none, as in the paper).

    Example:

    >>> method = OEC()
    >>> student = method.build_student("resnet32", num_classes=100)
    >>> distiller = keras_one.Distiller(student, method)
    >>> # after fit: distiller.get_branch_model(4) is the x0.2 network
    """

    info = MethodInfo(name="oec", branches=5, head="mean", student="own")
    loss_names = ("ce", "hint", "kl")
    required_outputs = ("branch_logits", "branch_stage_features")

    def __init__(
        self,
        temperature=2.0,
        ce_weight=0.7,
        hint_weight=0.15,
        kl_weight=0.15,
        ensemble_label_loss=False,
        adapter_learning_rate_multiplier=0.5,
        adapter_start_epoch=1,
        **kwargs,
    ):
        super().__init__(temperature=temperature, **kwargs)
        multiplier = adapter_learning_rate_multiplier
        if (
            isinstance(multiplier, bool)
            or not isinstance(multiplier, numbers.Real)
            or not (math.isfinite(multiplier) and multiplier >= 0)
        ):
            raise ValueError(
                "adapter_learning_rate_multiplier must be a finite number "
                f">= 0 (the official code: 0.5); got {multiplier!r}."
            )
        start = adapter_start_epoch
        if (
            isinstance(start, bool)
            or not isinstance(start, numbers.Real)
            or start != int(start)
            or start < 0
        ):
            raise ValueError(
                "adapter_start_epoch must be an integer >= 0 (the official "
                f"code: 1); got {start!r}."
            )
        self.ce_weight = float(ce_weight)
        self.hint_weight = float(hint_weight)
        self.kl_weight = float(kl_weight)
        self.ensemble_label_loss = bool(ensemble_label_loss)
        self.adapter_learning_rate_multiplier = float(multiplier)
        self.adapter_start_epoch = int(start)

    def check_outputs(self, outputs, student=None):
        if "branch_stage_features" not in outputs:
            raise ValueError(
                "OEC needs the student output 'branch_stage_features' (the "
                "outputs of every stage of every student, for its hints), "
                f"but the student only returns {sorted(outputs)}. Build it "
                "with keras_one.models.oec_resnet(depth, num_classes) or "
                "OEC().build_student('resnet32')."
            )
        super().check_outputs(outputs, student)

    def build_student(
        self,
        model="resnet32",
        num_classes=10,
        input_shape=(32, 32, 3),
        num_branches=None,
        **model_kwargs,
    ):
        """Builds `keras_one.models.oec_resnet` students.

        Args:
            model: `"resnet<depth>"`: the depth every student has.
            num_classes: number of classes.
            input_shape: shape of one image.
            num_branches: the number of students `S`; `None` for the
                paper's 5 (`info.branches`).
            **model_kwargs: passed to `oec_resnet` (e.g. `weight_decay`).

        Returns:
            The `oec_resnet` model.
        """
        from keras_one.models.oec_resnet import oec_resnet

        key = str(model).lower().replace("-", "")
        if not (key.startswith("resnet") and key[6:].isdigit()):
            raise ValueError(
                f"OEC builds CIFAR ResNet students: model must be "
                f"'resnet<depth>' (e.g. 'resnet32'); got {model!r}. For "
                "another network, build its students yourself with the "
                "outputs 'branch_logits' and 'branch_stage_features'."
            )
        return oec_resnet(
            int(key[6:]),
            num_classes=num_classes,
            num_students=num_branches or self.info.branches,
            head=self.head,
            input_shape=input_shape,
            **model_kwargs,
        )

    def build(self, inputs_shape, outputs_shape):
        stage_shapes = outputs_shape["branch_stage_features"]
        reference = stage_shapes[0]
        self.adapters = []
        for student, shapes in enumerate(stage_shapes[1:], start=1):
            if len(shapes) != len(reference):
                raise ValueError(
                    f"OEC compares the stages of every student with the "
                    f"first one's: student {student} has {len(shapes)} "
                    f"stage outputs, student 0 has {len(reference)}."
                )
            for stage, (shape, target) in enumerate(
                zip(shapes, reference, strict=True), start=1
            ):
                if tuple(shape[1:-1]) != tuple(target[1:-1]):
                    raise ValueError(
                        f"OEC cannot compare stage {stage} of student "
                        f"{student} (shape {tuple(shape)}) with student 0's "
                        f"(shape {tuple(target)}): the spatial sizes differ."
                    )
                # torch's nn.Conv2d initialization, as the official
                # adapters have.
                adapter = keras.layers.Conv2D(
                    target[-1],
                    1,
                    kernel_initializer=_pytorch_init.kernel_initializer(),
                    bias_initializer=_pytorch_init.bias_initializer(shape[-1]),
                    name=f"adapter_{student}_stage{stage}",
                )
                adapter.build(shape)
                self.adapters.append(adapter)

    def learning_rate_multipliers(self, epoch):
        """The adapters' learning rate: 0 before `adapter_start_epoch`.

        Args:
            epoch: the current epoch, a float scalar tensor (or a number).

        Returns:
            `{adapter: multiplier}` for every adapter: 0 before
            `adapter_start_epoch`, `adapter_learning_rate_multiplier`
            from it on; `{}` when the adapters train like the students.
        """
        multiplier = self.adapter_learning_rate_multiplier
        if self.adapter_start_epoch > 0:
            multiplier = ops.where(
                ops.convert_to_tensor(epoch, "float32")
                >= self.adapter_start_epoch,
                multiplier,
                0.0,
            )
        elif multiplier == 1.0:
            return {}
        return {adapter: multiplier for adapter in self.adapters}

    def call(self, inputs, outputs, training=None):
        stage_features = outputs["branch_stage_features"]
        adapters = iter(self.adapters)
        return {
            "adapted_stage_features": [
                [next(adapters)(feature) for feature in student]
                for student in stage_features[1:]
            ]
        }

    def compute_losses(self, labels, outputs, epoch):
        # Float32 before averaging, so that the teacher and the ensemble
        # are float32 under mixed precision too.
        branch_logits = [
            ops.cast(z, "float32") for z in outputs["branch_logits"]
        ]
        teacher = ops.stop_gradient(ops.mean(ops.stack(branch_logits), axis=0))
        targets = [
            ops.stop_gradient(f) for f in outputs["branch_stage_features"][0]
        ]
        if self.ensemble_label_loss:
            ensemble = ops.mean(ops.stack(branch_logits), axis=0)
            labels_term = cross_entropy(labels, ensemble)
        else:
            labels_term = sum(cross_entropy(labels, z) for z in branch_logits)
        hint = sum(
            _mean_squared_error(adapted, target)
            for student in outputs["adapted_stage_features"]
            for adapted, target in zip(student, targets, strict=True)
        )
        weight = rampup_weight(epoch, self.rampup_epochs)
        return {
            "ce": self.ce_weight * labels_term,
            "hint": self.hint_weight * hint,
            "kl": self.kl_weight
            * weight
            * sum(
                distillation_kl(teacher, z, self.temperature)
                for z in branch_logits
            ),
        }

    def get_config(self):
        return {
            **super().get_config(),
            "ce_weight": self.ce_weight,
            "hint_weight": self.hint_weight,
            "kl_weight": self.kl_weight,
            "ensemble_label_loss": self.ensemble_label_loss,
            "adapter_learning_rate_multiplier": (
                self.adapter_learning_rate_multiplier
            ),
            "adapter_start_epoch": self.adapter_start_epoch,
        }


def _mean_squared_error(adapted, target):
    difference = ops.cast(adapted, "float32") - ops.cast(target, "float32")
    return ops.mean(ops.square(difference), axis=(1, 2, 3))
