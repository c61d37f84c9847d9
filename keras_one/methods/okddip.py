import keras
from keras import ops

from keras_one.losses import cross_entropy
from keras_one.losses import distillation_kl
from keras_one.losses import rampup_weight
from keras_one.methods.method import Method
from keras_one.methods.method_info import MethodInfo


@keras.saving.register_keras_serializable(package="keras_one")
class OKDDip(Method):
    """Online Knowledge Distillation with Diverse Peers (OKDDip, AAAI 2020).

    A multi-branch network whose last branch is the group leader (the model
    to deploy) and whose other `N - 1` branches are peers. Two-level
    distillation (arXiv:1912.00350 and the official code,
    github.com/DefangChen/OKDDip):

    1. each peer `i` learns from its own target `t_i = sum_j A_ij z_j`, an
       attention-weighted ensemble of the peers' logits computed by
       `keras_one.layers.PeerAttention` (the `"peer_attention"` head:
       shared bias-free query/key projections of the peers' pooled
       features, feature dim -> feature dim / 8);
    2. the leader learns from the mean of the peers' logits.

    `L = sum_i CE(z_i, y) + CE(z_leader, y)
         + w(epoch) * [ sum_i KL_T(t_i || z_i)
                        + KL_T(mean_i z_i || z_leader) ]`

    As in the official code, neither target is detached: the attention
    projections learn only through the peers' KL term (a detached target
    would leave them untrained), and the leader's term also pulls the peers
    towards the leader. `KL_T` is summed over classes, averaged over the
    batch and multiplied by `T^2` (the official code adds 1e-7 to the
    target probabilities, omitted here). `T = 3` and the ramp-up
    `w(e) = exp(-5 (1 - min(e, R)/R)^2)` with `R = 80` of 300 epochs, as in
    the official scripts (which also use 4 branches: 3 peers + 1 leader,
    SGD with Nesterov momentum, weight decay 5e-4).

    The Distiller's ensemble metric is the mean of all branches' logits;
    deploy the leader, `distiller.get_branch_model(num_branches - 1)`.

    Args:
        temperature: `T`, default 3.
        rampup_epochs: `R`, default 80.
        **kwargs: base layer keyword arguments.

    Example:

    >>> method = keras_one.methods.OKDDip()
    >>> student = method.build_student("resnet32", num_branches=4)
    >>> distiller = keras_one.Distiller(student, method)
    """

    info = MethodInfo(
        name="okddip",
        branches=4,
        min_branches=3,
        head="peer_attention",
        rampup_fraction=80 / 300,
    )
    loss_names = ("ce", "peer_kl", "leader_kl")
    required_outputs = ("branch_logits", "peer_targets")

    def __init__(self, temperature=3.0, rampup_epochs=80, **kwargs):
        super().__init__(
            temperature=temperature, rampup_epochs=rampup_epochs, **kwargs
        )

    def check_outputs(self, outputs, student=None):
        super().check_outputs(outputs, student)
        num_peers = len(outputs["branch_logits"]) - 1
        if len(outputs["peer_targets"]) != num_peers:
            raise ValueError(
                f"OKDDip needs one peer target per peer: the student has "
                f"{num_peers} peers (all branches but the last, the leader) "
                f"and {len(outputs['peer_targets'])} `peer_targets`. Build "
                "it with head='peer_attention'."
            )

    def compute_losses(self, labels, outputs, epoch):
        logits = outputs["branch_logits"]
        peers, leader = logits[:-1], logits[-1]
        peer_mean = ops.mean(
            ops.stack([ops.cast(z, "float32") for z in peers]), axis=0
        )
        weight = rampup_weight(epoch, self.rampup_epochs)
        peer_kl = sum(
            distillation_kl(target, z, self.temperature)
            for target, z in zip(outputs["peer_targets"], peers, strict=True)
        )
        return {
            "ce": sum(cross_entropy(labels, z) for z in logits),
            "peer_kl": weight * peer_kl,
            "leader_kl": weight
            * distillation_kl(peer_mean, leader, self.temperature),
        }
