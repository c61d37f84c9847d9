import keras
import numpy as np
from keras import ops

from keras_one.losses import cross_entropy
from keras_one.losses import distillation_kl
from keras_one.losses import rampup_weight
from keras_one.methods.method import Method
from keras_one.methods.method_info import MethodInfo


@keras.saving.register_keras_serializable(package="keras_one")
class ONE(Method):
    """On-the-fly Native Ensemble (Lan, Zhu and Gong, NeurIPS 2018).

    One network, a shared trunk and `N` branches; a gate
    (`keras_one.layers.GatedEnsemble`) weights the branch logits into an
    ensemble teacher `z_e = sum_i g_i z_i`, and every branch learns from the
    labels and from that teacher:

    `L = sum_i CE(z_i, y) + CE(z_e, y)
         + w(epoch) * sum_i KL_T(stop_gradient(z_e) || z_i)`

    as in the paper (arXiv:1806.04606) and its official code
    (github.com/Lan1991Xu/ONE_NeurIPS2018): `KL_T` is summed over classes,
    averaged over the batch and multiplied by `T^2`;
    `w(epoch) = exp(-5 (1 - min(epoch, R)/R)^2)`. The official scripts use
    `T = 3` and `R = 80` of 300 epochs; scale `R` with shorter schedules
    (`keras_one.methods.rampup_epochs(ONE, epochs)`).

    Two choices of the method are options, defaulting to the official
    code:

    - `gate`: `"learned"` (default): the teacher is the student's
      `ensemble_logits`, from ONE's gate (`models/cifar/resnet.py`: global
      pooling of the shared features, `Linear`, `BatchNorm1d`, ReLU and
      softmax over branches). `"average"`: the teacher is the plain mean of
      the branch logits, `z_e = mean_i z_i`, the paper's ablation without
      the gate; `build_student` then builds the student with the `"mean"`
      head, and a student with a learned gate is refused (its gate would
      never train).
    - `detach_teacher`: `True` (default): the teacher is detached in the KL
      term, so the gate learns only through the ensemble cross-entropy (the
      official `KLLoss`, `loss/kl_loss.py`, takes the target's `.data` as a
      `Variable` with `requires_grad=False`). `False` lets the KL term's
      gradient reach the teacher too (the gate and, through `z_e`, the
      branches).

    The student must return `branch_logits`, and `ensemble_logits` with
    `gate="learned"`: build it with `head="gate"` (the default of
    `keras_one.models.cifar_resnet` and `keras_one.models.make_multi_branch`)
    or with `ONE(...).build_student(...)`.

    Args:
        temperature: `T`, default 3.
        rampup_epochs: `R`, default 80.
        gate: `"learned"` (ONE's gate, the official code; default) or
            `"average"` (the plain mean of the branch logits).
        detach_teacher: whether the teacher is detached in the KL term;
            default `True`, as in the official code.
        **kwargs: base layer keyword arguments.

    Example:

    >>> student = keras_one.models.cifar_resnet(depth=20, num_branches=3)
    >>> distiller = keras_one.Distiller(student, keras_one.methods.ONE())
    >>> averaged = keras_one.methods.ONE(gate="average")
    >>> averaged.head
    'mean'
    """

    info = MethodInfo(
        name="one", branches=3, head="gate", rampup_fraction=80 / 300
    )
    loss_names = ("ce", "ensemble_ce", "kl")
    required_outputs = ("branch_logits", "ensemble_logits")
    GATES = ("learned", "average")

    def __init__(
        self,
        temperature=3.0,
        rampup_epochs=80,
        gate="learned",
        detach_teacher=True,
        **kwargs,
    ):
        super().__init__(
            temperature=temperature, rampup_epochs=rampup_epochs, **kwargs
        )
        if gate not in self.GATES:
            raise ValueError(
                "gate must be 'learned' (ONE's gate, the official code) or "
                f"'average' (the mean of the branch logits); got {gate!r}."
            )
        if not isinstance(detach_teacher, (bool, np.bool_)):
            raise ValueError(
                "detach_teacher must be True (the official code) or False; "
                f"got {detach_teacher!r}."
            )
        self.gate = gate
        self.detach_teacher = bool(detach_teacher)
        if gate == "average":
            # The student's head and outputs, read by `build_student` and
            # `check_outputs`.
            self.head = "mean"
            self.required_outputs = ("branch_logits",)

    def check_outputs(self, outputs, student=None):
        super().check_outputs(outputs, student)
        if self.gate == "average" and "gate_weights" in outputs:
            raise ValueError(
                "ONE(gate='average') averages the branch logits, but this "
                "student has a learned gate ('gate_weights') that would "
                "never train: build it with head='mean', e.g. "
                "ONE(gate='average').build_student(...)."
            )

    def teacher_logits(self, outputs):
        """The ensemble teacher `z_e`, before any stop-gradient.

        Args:
            outputs: the student's output dict.

        Returns:
            The student's `ensemble_logits` with `gate="learned"`, the
            mean of its branch logits (float32) with `gate="average"`.
        """
        if self.gate == "average":
            return ops.mean(
                ops.stack(
                    [ops.cast(z, "float32") for z in outputs["branch_logits"]]
                ),
                axis=0,
            )
        return outputs["ensemble_logits"]

    def compute_losses(self, labels, outputs, epoch):
        branch_logits = outputs["branch_logits"]
        ensemble = self.teacher_logits(outputs)
        teacher = (
            ops.stop_gradient(ensemble) if self.detach_teacher else ensemble
        )
        weight = rampup_weight(epoch, self.rampup_epochs)
        return {
            "ce": sum(cross_entropy(labels, z) for z in branch_logits),
            "ensemble_ce": cross_entropy(labels, ensemble),
            "kl": weight
            * sum(
                distillation_kl(teacher, z, self.temperature)
                for z in branch_logits
            ),
        }

    def get_config(self):
        return {
            **super().get_config(),
            "gate": self.gate,
            "detach_teacher": self.detach_teacher,
        }
