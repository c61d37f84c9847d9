import keras
from keras import ops

from keras_one.losses import cross_entropy
from keras_one.losses import distillation_kl
from keras_one.losses import rampup_weight
from keras_one.methods.method import Method
from keras_one.methods.method_info import MethodInfo


@keras.saving.register_keras_serializable(package="keras_one")
class CLILR(Method):
    """Collaborative learning with intermediate-level representation sharing.

    CL-ILR (Song and Chai, NeurIPS 2018, arXiv:1805.11761): a multi-branch
    network (shared trunk, `N` heads), no gate and no ensemble loss. Each
    head learns from the labels and from the soft target made of the other
    heads' mean logits:

    `L = sum_i [ beta * CE(z_i, y)
                 + (1 - beta) * KL_T(stop_gradient(mean_{j != i} z_j) || z_i) ]`

    with `beta = 0.5` and `T = 2` as in the paper (its soft loss is the
    cross-entropy with the soft target, which differs from this KL by the
    target's entropy, a constant without gradient). The target is detached,
    as in the paper and in the reproduction by Yang, An and Xu, the authors
    of MCL-OKD (ICASSP 2021; github.com/winycg/MCL-OKD,
    `main_cifar_cl_ilr.py`).
    `KL_T` is summed over classes, averaged over the batch and multiplied
    by `T^2`.

    Intermediate-level representation sharing with backpropagation
    rescaling (ILR): the gradient flowing from the `N` heads into the shared
    trunk is scaled by `1/N`, so the trunk learns at one network's pace.
    `build_student` inserts a `keras_one.layers.GradientScale(1/N)` on the
    trunk output (`keras_one.models.rescale_trunk_gradient`); apply that
    function to a student you build yourself. The paper's hierarchical
    sharing (heads that share several levels of the trunk) is not built
    here: heads split at one point, like ONE's branches.

    Args:
        hard_target_weight: `beta`, the weight of the cross-entropy with the
            labels; the soft target gets `1 - beta`. Default 0.5.
        temperature: `T`, default 2.
        rampup_epochs: epochs to ramp the soft-target term up (0: none, the
            paper's).
        **kwargs: base layer keyword arguments.

    Example:

    >>> method = keras_one.methods.CLILR()
    >>> student = method.build_student("resnet32", num_branches=4)
    >>> distiller = keras_one.Distiller(student, method)
    """

    info = MethodInfo(name="cl_ilr", branches=3)
    loss_names = ("ce", "kl")
    required_outputs = ("branch_logits",)

    def __init__(
        self,
        hard_target_weight=0.5,
        temperature=2.0,
        rampup_epochs=0,
        **kwargs,
    ):
        super().__init__(
            temperature=temperature, rampup_epochs=rampup_epochs, **kwargs
        )
        if not 0.0 <= hard_target_weight <= 1.0:
            raise ValueError(
                "hard_target_weight must lie in [0, 1]; got "
                f"{hard_target_weight}."
            )
        self.hard_target_weight = float(hard_target_weight)

    def build_student(
        self,
        model="resnet32",
        num_classes=10,
        input_shape=(32, 32, 3),
        num_branches=None,
        **model_kwargs,
    ):
        """Builds a multi-branch network with ILR's gradient rescaling.

        Same arguments as `Method.build_student`; a `GradientScale` of
        `1 / num_branches` sits between the shared trunk and the branches.
        """
        from keras_one.models import rescale_trunk_gradient

        student = super().build_student(
            model,
            num_classes=num_classes,
            input_shape=input_shape,
            num_branches=num_branches,
            **model_kwargs,
        )
        return rescale_trunk_gradient(student)

    def compute_losses(self, labels, outputs, epoch):
        logits = [ops.cast(z, "float32") for z in outputs["branch_logits"]]
        num_branches = len(logits)
        total = sum(logits)
        kl = 0.0
        for z in logits:
            target = ops.stop_gradient((total - z) / (num_branches - 1))
            kl = kl + distillation_kl(target, z, self.temperature)
        beta = self.hard_target_weight
        weight = rampup_weight(epoch, self.rampup_epochs)
        return {
            "ce": beta * sum(cross_entropy(labels, z) for z in logits),
            "kl": (1.0 - beta) * weight * kl,
        }

    def get_config(self):
        return {
            **super().get_config(),
            "hard_target_weight": self.hard_target_weight,
        }
