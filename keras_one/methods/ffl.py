import keras
from keras import ops

from keras_one.layers.fusion_classifier import FusionClassifier
from keras_one.losses import cross_entropy
from keras_one.losses import distillation_kl
from keras_one.losses import rampup_weight
from keras_one.methods._head_check import warn_unless_from
from keras_one.methods.method import Method
from keras_one.methods.method_info import MethodInfo


@keras.saving.register_keras_serializable(package="keras_one")
class FFL(Method):
    """Feature Fusion Learning (Kim, Hyun, Chung and Kwak, ICPR 2020).

    Two branches on a shared trunk and a fusion classifier
    (`keras_one.layers.FusionClassifier`, the `"fusion_classifier"` head)
    that reads both branches' last feature maps and gives the fused logits
    `z_F` (the student's `ensemble_logits`). Mutual knowledge distillation
    between the fused classifier and the branches (arXiv:1904.09058 and the
    official code, github.com/Jangho-Kim/FFL-pytorch):

    `L = sum_i CE(z_i, y) + CE(z_F, y)
         + w(epoch) * [ sum_i KL_T(stop_gradient(z_F) || z_i)
                        + KL_T(stop_gradient(mean_i z_i) || z_F) ]`

    The fused classifier teaches the branches and the branches' ensemble
    (mean logits) teaches the fused classifier; both targets are detached,
    as in the official code. Its cross-entropy also trains the branches
    through the fused features. `KL_T` is summed over classes, averaged
    over the batch and multiplied by `T^2` (the official code adds 1e-7 to
    the target probabilities, omitted here). `T = 3` and the ramp-up
    `w(e) = exp(-5 (1 - min(e, R)/R)^2)` with `R = 80` of 300 epochs are the
    official settings. The official code trains the fusion module with its
    own SGD optimizer of the same learning rate and a weight decay of 1e-5
    (1e-4 for the network); here one optimizer trains both, and the
    `"fusion_classifier"` head gives the fusion module of a regularized
    network that official weight decay, 1e-5, as a coupled L2 penalty on
    every weight (`keras_one.models.heads.fusion_classifier_head`). More
    than two branches work the same way.

    Deploy a branch (`distiller.get_branch_model(i)`) or the fused
    classifier (`distiller.get_ensemble_model()`).

    Args:
        temperature: `T`, default 3.
        rampup_epochs: `R`, default 80.
        **kwargs: base layer keyword arguments.

    Example:

    >>> method = keras_one.methods.FFL()
    >>> student = method.build_student("resnet32", num_branches=2)
    >>> distiller = keras_one.Distiller(student, method)
    """

    info = MethodInfo(
        name="ffl",
        branches=2,
        head="fusion_classifier",
        rampup_fraction=80 / 300,
    )
    loss_names = ("ce", "ensemble_ce", "kl", "fusion_kl")
    required_outputs = ("branch_logits", "ensemble_logits")

    def __init__(self, temperature=3.0, rampup_epochs=80, **kwargs):
        super().__init__(
            temperature=temperature, rampup_epochs=rampup_epochs, **kwargs
        )

    def check_outputs(self, outputs, student=None):
        super().check_outputs(outputs, student)
        if student is not None:
            warn_unless_from(
                student, FusionClassifier, "FFL", "fusion_classifier"
            )

    def compute_losses(self, labels, outputs, epoch):
        branch_logits = outputs["branch_logits"]
        fused_logits = outputs["ensemble_logits"]
        fused_target = ops.stop_gradient(fused_logits)
        branch_mean = ops.stop_gradient(
            ops.mean(
                ops.stack([ops.cast(z, "float32") for z in branch_logits]),
                axis=0,
            )
        )
        weight = rampup_weight(epoch, self.rampup_epochs)
        return {
            "ce": sum(cross_entropy(labels, z) for z in branch_logits),
            "ensemble_ce": cross_entropy(labels, fused_logits),
            "kl": weight
            * sum(
                distillation_kl(fused_target, z, self.temperature)
                for z in branch_logits
            ),
            "fusion_kl": weight
            * distillation_kl(branch_mean, fused_logits, self.temperature),
        }
