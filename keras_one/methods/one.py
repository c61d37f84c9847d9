import keras
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

    as in the paper (arXiv:1806.04606) and its official code: the teacher is
    detached in the KL term, so the gate learns only through the ensemble
    cross-entropy; `KL_T` is summed over classes, averaged over the batch
    and multiplied by `T^2`; `w(epoch) = exp(-5 (1 - min(epoch, R)/R)^2)`.
    The official scripts use `T = 3` and `R = 80` of 300 epochs; scale `R`
    with shorter schedules (`keras_one.methods.rampup_epochs(ONE, epochs)`).

    The student must return `branch_logits` and `ensemble_logits`: build it
    with `head="gate"` (the default of `keras_one.models.cifar_resnet` and
    `keras_one.models.make_multi_branch`).

    Args:
        temperature: `T`, default 3.
        rampup_epochs: `R`, default 80.
        **kwargs: base layer keyword arguments.

    Example:

    >>> student = keras_one.models.cifar_resnet(depth=20, num_branches=3)
    >>> distiller = keras_one.Distiller(student, keras_one.methods.ONE())
    """

    info = MethodInfo(
        name="one", branches=3, head="gate", rampup_fraction=80 / 300
    )
    loss_names = ("ce", "ensemble_ce", "kl")
    required_outputs = ("branch_logits", "ensemble_logits")

    def __init__(self, temperature=3.0, rampup_epochs=80, **kwargs):
        super().__init__(
            temperature=temperature, rampup_epochs=rampup_epochs, **kwargs
        )

    def compute_losses(self, labels, outputs, epoch):
        branch_logits = outputs["branch_logits"]
        teacher = ops.stop_gradient(outputs["ensemble_logits"])
        weight = rampup_weight(epoch, self.rampup_epochs)
        return {
            "ce": sum(cross_entropy(labels, z) for z in branch_logits),
            "ensemble_ce": cross_entropy(labels, outputs["ensemble_logits"]),
            "kl": weight
            * sum(
                distillation_kl(teacher, z, self.temperature)
                for z in branch_logits
            ),
        }
