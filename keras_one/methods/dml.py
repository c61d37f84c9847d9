import keras

from keras_one.losses import cross_entropy
from keras_one.losses import distillation_kl
from keras_one.losses import rampup_weight
from keras_one.methods.method import Method
from keras_one.methods.method_info import MethodInfo


@keras.saving.register_keras_serializable(package="keras_one")
class DML(Method):
    """Deep Mutual Learning (Zhang, Xiang, Hospedales and Lu, CVPR 2018).

    `N` networks learn together, each from the labels and from every other:

    `L = sum_k [ CE(z_k, y)
                 + 1/(N-1) * sum_{l != k} KL_T(stop_gradient(z_l) || z_k) ]`

    This is the paper's loss for `N` networks (arXiv:1706.00384): network
    `k` minimizes its cross-entropy plus the mean KL divergence from each
    peer's prediction to its own (the pairwise form, not a KL to the peers'
    mean logits). The peers are detached: each network is trained by its
    own loss only, as in the paper, where network `k`'s update treats the
    other networks' predictions as fixed targets. The paper updates the
    networks one after another within a step (recomputing predictions after
    each update); here all are updated together from the same forward pass
    (the usual reading, and what reimplementations do), so one step costs
    one forward and one backward pass of the `N` networks.

    `KL_T` is summed over classes, averaged over the batch and multiplied by
    `T^2`; the paper uses plain softmax, `T = 1`, and no ramp-up.

    The student should be `N` independent networks: `build_student` uses
    `keras_one.models.cifar_resnet(..., branch_stage=0, head=None)` (no
    shared layers). A multi-branch network with a shared trunk works too.
    The Distiller's ensemble metric is the mean of the networks' logits.

    Args:
        temperature: `T`, default 1 (the paper's).
        rampup_epochs: epochs to ramp the KL weight up (0: none, the
            paper's).
        **kwargs: base layer keyword arguments.

    Example:

    >>> method = keras_one.methods.DML()
    >>> student = method.build_student("resnet32", num_branches=2)
    >>> distiller = keras_one.Distiller(student, method)
    """

    info = MethodInfo(name="dml", branches=2, student="independent")
    loss_names = ("ce", "kl")
    required_outputs = ("branch_logits",)

    def __init__(self, temperature=1.0, rampup_epochs=0, **kwargs):
        super().__init__(
            temperature=temperature, rampup_epochs=rampup_epochs, **kwargs
        )

    def compute_losses(self, labels, outputs, epoch):
        logits = outputs["branch_logits"]
        num_networks = len(logits)
        targets = [keras.ops.stop_gradient(z) for z in logits]
        kl = 0.0
        for k, z_k in enumerate(logits):
            for j, target in enumerate(targets):
                if j != k:
                    kl = kl + distillation_kl(target, z_k, self.temperature)
        weight = rampup_weight(epoch, self.rampup_epochs)
        return {
            "ce": sum(cross_entropy(labels, z) for z in logits),
            "kl": weight * kl / (num_networks - 1),
        }
