"""Networks: CIFAR ResNets and a converter to multi-branch networks."""

from keras_one.models.cifar_resnet import cifar_resnet
from keras_one.models.fused_branches import FusedBranches
from keras_one.models.gradient_rescaling import rescale_trunk_gradient
from keras_one.models.heads import HEADS
from keras_one.models.multi_branch import make_multi_branch
from keras_one.models.oec_resnet import oec_resnet


def get(name):
    """Returns a network builder by name: `"resnet<depth>"` (CIFAR ResNet).

    The builder takes `num_classes`, `input_shape`, `num_branches` and
    `head` keyword arguments.

    Raises:
        ValueError: for an unknown name.
    """
    import functools

    key = str(name).lower().replace("-", "")
    if key.startswith("resnet") and key[len("resnet") :].isdigit():
        depth = int(key[len("resnet") :])
        return functools.partial(cifar_resnet, depth)
    raise ValueError(
        f"Unknown model {name!r}. Known models: resnet<depth> with depth "
        "6n + 2 (resnet8, resnet20, resnet32, resnet56, resnet110)."
    )
