"""Networks: CIFAR ResNets and a converter to multi-branch networks."""

from keras_one.models.batch_normalization import with_fused_batch_normalization
from keras_one.models.cifar_resnet import cifar_resnet
from keras_one.models.external_network import external_network
from keras_one.models.fused_branches import FusedBranches
from keras_one.models.gradient_rescaling import rescale_trunk_gradient
from keras_one.models.heads import HEADS
from keras_one.models.multi_branch import make_multi_branch
from keras_one.models.multi_branch import split_points
from keras_one.models.oec_resnet import oec_resnet
from keras_one.models.pretrained_teacher import pretrained_teacher


def get(name):
    """Returns a network builder by name.

    Names: `"resnet<depth>"` (a CIFAR ResNet, `cifar_resnet`),
    `"hub:<preset>"` (a keras-hub classifier preset, e.g.
    `"hub:resnet_18_imagenet"`, or a local preset folder) and
    `"applications:<Name>"` (a `keras.applications` model, e.g.
    `"applications:MobileNetV2"`); the last two through
    `external_network`. The builder takes `num_classes`, `input_shape`,
    `num_branches` and `head` keyword arguments.

    Raises:
        ValueError: for an unknown name, a ResNet depth other than
            6n + 2 (a keras-hub preset is checked against the built-in
            ones without downloading it).
        ImportError: for a `"hub:"` name without keras-hub installed.
    """
    import functools

    from keras_one.models.external_network import check_name
    from keras_one.models.resnet_blocks import cifar_stages

    if ":" in str(name):
        check_name(str(name))
        return functools.partial(external_network, str(name))
    key = str(name).lower().replace("-", "")
    if key.startswith("resnet") and key[len("resnet") :].isdigit():
        depth = int(key[len("resnet") :])
        cifar_stages(depth)  # a depth other than 6n + 2: one clear error
        return functools.partial(cifar_resnet, depth)
    raise ValueError(
        f"Unknown model {name!r}. Known models: resnet<depth> with depth "
        "6n + 2 (resnet8, resnet20, resnet32, resnet56, resnet110), "
        "hub:<keras-hub preset> (e.g. hub:resnet_18_imagenet) and "
        "applications:<Name> (e.g. applications:MobileNetV2)."
    )
