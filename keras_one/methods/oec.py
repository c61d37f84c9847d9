import keras
from keras import ops

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

    Readings where the official code differs:

    - Its label term is `0.7 * CE(z_E, y)`, the ensemble's cross-entropy
      only (`contribution_ratios[0]` multiplies the teacher's loss);
      `ensemble_label_loss=True` reproduces that. The default follows the
      formula above, with every student's cross-entropy.
    - It does not detach the widest student's features in the hint term
      and creates its adapters after the optimizer, so they stay at their
      random initialization; here the target is detached and the adapters
      learn (as in FitNets-style hints).

    The student must return `branch_logits` and `branch_stage_features`:
    build it with `keras_one.models.oec_resnet` (or `OEC.build_student`).

    Args:
        temperature: `T`, default 2.
        ce_weight: weight of the label term, default 0.7.
        hint_weight: weight of the feature hints, default 0.15.
        kl_weight: weight of the distillation term, default 0.15.
        ensemble_label_loss: if `True`, the label term is the ensemble's
            cross-entropy `CE(z_E, y)` (official code) instead of
            `sum_i CE(z_i, y)`.
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
        **kwargs,
    ):
        super().__init__(temperature=temperature, **kwargs)
        self.ce_weight = float(ce_weight)
        self.hint_weight = float(hint_weight)
        self.kl_weight = float(kl_weight)
        self.ensemble_label_loss = bool(ensemble_label_loss)

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
                adapter = keras.layers.Conv2D(
                    target[-1], 1, name=f"adapter_{student}_stage{stage}"
                )
                adapter.build(shape)
                self.adapters.append(adapter)

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
        }


def _mean_squared_error(adapted, target):
    difference = ops.cast(adapted, "float32") - ops.cast(target, "float32")
    return ops.mean(ops.square(difference), axis=(1, 2, 3))
