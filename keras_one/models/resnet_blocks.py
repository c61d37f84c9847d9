"""The stem, residual blocks and stages of the CIFAR ResNets, written once.

The networks of He et al. (2016) as ONE's official code builds them: a 3x3
convolution stem, then stages of residual blocks (basic, or bottleneck with
expansion 4), each block's first convolution carrying the stage's stride and
a projection shortcut (1x1 convolution + BatchNormalization) where the shape
changes. Every ResNet builder of keras_one (`cifar_resnet`, `oec_resnet`,
`FusedBranches`) lays out its network with these functions and passes the
layers it is made of: `plain_layers` for one network, or the fused layers
that compute N branches at once.

A layer maker applies a new layer to a tensor: `conv(x, filters,
kernel_size, strides, name)` (a bias-free, same-padded convolution) and
`batch_norm(x, name)`.
"""

import keras
from keras import layers

from keras_one.layers.fused_batch_normalization import FusedBatchNormalization

STAGE_WIDTHS = (16, 32, 64)
BLOCKS = ("basic", "bottleneck")
# Output channels per filter of a block.
EXPANSION = {"basic": 1, "bottleneck": 4}
# torch's BatchNorm2d defaults: momentum 0.1 (Keras 0.9), epsilon 1e-5.
BN_MOMENTUM = 0.9
BN_EPSILON = 1e-5


def cifar_stages(depth, widths=STAGE_WIDTHS):
    """The stages of a CIFAR ResNet of `depth`.

    Args:
        depth: 6n + 2 (8, 20, 32, 44, 56, 110, ...).
        widths: filters of the three stages.

    Returns:
        `[(filters, blocks, strides), ...]`, one per stage: `n` blocks
        each, the first stage with stride 1, the others with stride 2.
    """
    if depth < 8 or (depth - 2) % 6:
        raise ValueError(
            f"CIFAR ResNet depth must be 6n + 2 (8, 20, 32, 44, 56, 110, "
            f"...); got {depth}."
        )
    blocks = (depth - 2) // 6
    return [
        (filters, blocks, 1 if index == 0 else 2)
        for index, filters in enumerate(widths)
    ]


def cifar_block(depth):
    """ONE's code: basic blocks below depth 44, bottleneck blocks from 44."""
    return "bottleneck" if depth >= 44 else "basic"


def conv_initializer():
    """He-normal with fan-out, as the official code initializes convolutions."""
    return keras.initializers.VarianceScaling(
        2.0, mode="fan_out", distribution="untruncated_normal"
    )


def classifier_initializer():
    """PyTorch's default `nn.Linear` kernel: `U(+-1/sqrt(fan_in))`.

    The official codes (ONE's and the peers' CIFAR ResNets) re-initialize
    only their convolutions and BatchNormalization layers, so their
    classifiers keep `torch.nn.Linear`'s default: `kaiming_uniform_(
    a=sqrt(5))`, a uniform kernel within `1/sqrt(fan_in)`. The bias starts
    at zero, as in `keras_one.layers` (see `keras_one.layers._pytorch_init`).
    """
    return keras.initializers.VarianceScaling(
        1.0 / 3.0, mode="fan_in", distribution="uniform"
    )


def l2(weight_decay):
    """torch's coupled weight decay `wd` as a Keras regularizer.

    It adds `wd * w` to the gradient: the gradient of `(wd / 2) * ||w||^2`.
    """
    return keras.regularizers.L2(weight_decay / 2) if weight_decay else None


def plain_layers(regularizer=None, fused_batch_norm=True):
    """The layer makers of one network: `(conv, batch_norm)`.

    Convolutions are `keras.layers.Conv2D`, He-normal (fan-out)
    initialized; BatchNormalization has torch's momentum and epsilon.
    BatchNormalization is per channel, so the same `batch_norm` also serves
    N branches whose channels lie side by side.

    Args:
        regularizer: a regularizer of every weight, or `None`.
        fused_batch_norm: whether BatchNormalization is
            `keras_one.layers.FusedBatchNormalization` (computed by
            TensorFlow's fused kernel), else the built-in
            `keras.layers.BatchNormalization` (the same results).
    """
    batch_normalization = (
        FusedBatchNormalization
        if fused_batch_norm
        else layers.BatchNormalization
    )

    def conv(x, filters, kernel_size, strides, name):
        return layers.Conv2D(
            filters,
            kernel_size,
            strides=strides,
            padding="same",
            use_bias=False,
            kernel_initializer=conv_initializer(),
            kernel_regularizer=regularizer,
            name=name,
        )(x)

    def batch_norm(x, name):
        return batch_normalization(
            momentum=BN_MOMENTUM,
            epsilon=BN_EPSILON,
            gamma_regularizer=regularizer,
            beta_regularizer=regularizer,
            name=name,
        )(x)

    return conv, batch_norm


def classifier(x, num_classes, regularizer, name):
    """The linear classifier (logits) of one network.

    PyTorch's default initialization (`classifier_initializer`), zero bias.
    """
    return layers.Dense(
        num_classes,
        kernel_initializer=classifier_initializer(),
        kernel_regularizer=regularizer,
        bias_regularizer=regularizer,
        name=name,
    )(x)


def stem(x, filters, conv, batch_norm, name="stem"):
    """3x3 convolution, BatchNormalization, ReLU."""
    x = conv(x, filters, 3, 1, f"{name}_conv")
    x = batch_norm(x, f"{name}_bn")
    return layers.ReLU(name=f"{name}_relu")(x)


def residual_block(
    x, channels, filters, strides, block, conv, batch_norm, name
):
    """One residual block.

    Basic: 3x3 (with `strides`) and 3x3 convolutions. Bottleneck: 1x1, 3x3
    (with `strides`) and 1x1 convolutions, the last with `4 * filters`.
    Each convolution is followed by BatchNormalization, all but the last
    by ReLU; the shortcut is a projection (1x1 convolution with `strides`
    + BatchNormalization) where the shape changes; ReLU after the sum.
    Layers are named `{name}_conv1`, `{name}_bn1`, `{name}_relu1`, ...,
    `{name}_down`, `{name}_down_bn`, `{name}_add`, `{name}_out`.

    Args:
        x: the block's input.
        channels: channels of one network's input (for one network,
            `x.shape[-1]`): the block projects its shortcut when they differ
            from its output channels.
        filters: filters of the block (before the bottleneck's expansion).
        strides: strides of the block.
        block: `"basic"` or `"bottleneck"`.
        conv: a convolution maker (see the module docstring).
        batch_norm: a BatchNormalization maker.
        name: prefix of the layer names.

    Returns:
        The block's output.
    """
    if block == "basic":
        convs = [(filters, 3, strides), (filters, 3, 1)]
    else:
        convs = [(filters, 1, 1), (filters, 3, strides), (4 * filters, 1, 1)]
    shortcut = x
    for index, (width, kernel_size, stride) in enumerate(convs, start=1):
        x = conv(x, width, kernel_size, stride, f"{name}_conv{index}")
        x = batch_norm(x, f"{name}_bn{index}")
        if index < len(convs):
            x = layers.ReLU(name=f"{name}_relu{index}")(x)
    if strides != 1 or channels != convs[-1][0]:
        shortcut = conv(shortcut, convs[-1][0], 1, strides, f"{name}_down")
        shortcut = batch_norm(shortcut, f"{name}_down_bn")
    x = layers.Add(name=f"{name}_add")([x, shortcut])
    return layers.ReLU(name=f"{name}_out")(x)


def residual_stage(
    x, channels, filters, blocks, strides, block, conv, batch_norm, name
):
    """`blocks` residual blocks, the first with `strides`.

    The blocks are named `{name}_block1`, `{name}_block2`, ...; the other
    arguments are those of `residual_block`.

    Returns:
        `(outputs, channels)`: the stage's output and one network's output
        channels.
    """
    for index in range(blocks):
        x = residual_block(
            x,
            channels,
            filters,
            strides if index == 0 else 1,
            block,
            conv,
            batch_norm,
            f"{name}_block{index + 1}",
        )
        channels = filters * EXPANSION[block]
    return x, channels
