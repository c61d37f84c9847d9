import keras
from keras import layers

from keras_one.layers.fused_batch_normalization import FusedBatchNormalization
from keras_one.layers.fused_branches import FusedBranches
from keras_one.models import heads
from keras_one.models.multi_branch import make_multi_branch

STAGE_WIDTHS = (16, 32, 64)


def _conv(filters, kernel_size, strides, weight_decay, name):
    # He-normal with fan_out, as the official code initializes convolutions.
    return layers.Conv2D(
        filters,
        kernel_size,
        strides=strides,
        padding="same",
        use_bias=False,
        kernel_initializer=keras.initializers.VarianceScaling(
            2.0, mode="fan_out", distribution="untruncated_normal"
        ),
        kernel_regularizer=_l2(weight_decay),
        name=name,
    )


def _batch_norm(weight_decay, name):
    # torch BatchNorm2d defaults: momentum 0.1 (Keras 0.9), epsilon 1e-5.
    # Keras' BatchNormalization, computed by TensorFlow's fused kernel.
    return FusedBatchNormalization(
        momentum=0.9,
        epsilon=1e-5,
        gamma_regularizer=_l2(weight_decay),
        beta_regularizer=_l2(weight_decay),
        name=name,
    )


def _l2(weight_decay):
    # torch's coupled weight decay `wd` adds wd * w to the gradient: the
    # gradient of (wd / 2) * ||w||^2.
    return keras.regularizers.L2(weight_decay / 2) if weight_decay else None


def _basic_block(x, filters, strides, weight_decay, name):
    shortcut = x
    x = _conv(filters, 3, strides, weight_decay, f"{name}_conv1")(x)
    x = _batch_norm(weight_decay, f"{name}_bn1")(x)
    x = layers.ReLU(name=f"{name}_relu1")(x)
    x = _conv(filters, 3, 1, weight_decay, f"{name}_conv2")(x)
    x = _batch_norm(weight_decay, f"{name}_bn2")(x)
    if strides != 1 or shortcut.shape[-1] != filters:
        shortcut = _conv(filters, 1, strides, weight_decay, f"{name}_down")(
            shortcut
        )
        shortcut = _batch_norm(weight_decay, f"{name}_down_bn")(shortcut)
    x = layers.Add(name=f"{name}_add")([x, shortcut])
    return layers.ReLU(name=f"{name}_out")(x)


def _bottleneck_block(x, filters, strides, weight_decay, name):
    shortcut = x
    x = _conv(filters, 1, 1, weight_decay, f"{name}_conv1")(x)
    x = _batch_norm(weight_decay, f"{name}_bn1")(x)
    x = layers.ReLU(name=f"{name}_relu1")(x)
    x = _conv(filters, 3, strides, weight_decay, f"{name}_conv2")(x)
    x = _batch_norm(weight_decay, f"{name}_bn2")(x)
    x = layers.ReLU(name=f"{name}_relu2")(x)
    x = _conv(filters * 4, 1, 1, weight_decay, f"{name}_conv3")(x)
    x = _batch_norm(weight_decay, f"{name}_bn3")(x)
    if strides != 1 or shortcut.shape[-1] != filters * 4:
        shortcut = _conv(filters * 4, 1, strides, weight_decay, f"{name}_down")(
            shortcut
        )
        shortcut = _batch_norm(weight_decay, f"{name}_down_bn")(shortcut)
    x = layers.Add(name=f"{name}_add")([x, shortcut])
    return layers.ReLU(name=f"{name}_out")(x)


def cifar_resnet(
    depth=32,
    num_classes=10,
    num_branches=3,
    branch_stage=3,
    head="gate",
    input_shape=(32, 32, 3),
    weight_decay=1e-4,
    fused=False,
    name=None,
):
    """A CIFAR ResNet as in ONE's official code, optionally multi-branch.

    The network of He et al. (2016) for 32x32 images, as in the official
    ONE code (Lan et al., NeurIPS 2018): a 3x3 convolution with 16 filters,
    then three stages of `n = (depth - 2) / 6` residual blocks with 16, 32
    and 64 filters (the 2nd and 3rd stride 2), global average pooling and a
    linear classifier. Depths below 44 use basic blocks, depths from 44 on
    bottleneck blocks (expansion 4), as in that code. Convolutions are
    He-normal (fan-out) initialized; BatchNormalization uses torch's
    momentum and epsilon; `weight_decay` is torch's coupled weight decay
    (an L2 penalty of `weight_decay / 2` on every weight).

    With `num_branches >= 2` the stages from `branch_stage` on are
    replicated into branches (ONE's default: the last stage, 3 branches) and
    `head` combines them (see `keras_one.models.make_multi_branch`).

    Args:
        depth: 6n + 2 (20, 32, 44, 56, 110, ...; 8 for a tiny network).
        num_classes: number of classes.
        num_branches: number of branches; 1 gives the plain single-branch
            network (the baseline), whose output is its logits.
        branch_stage: the first replicated stage: 1, 2 or 3; 0 replicates
            the stem too, giving independent networks (as DML trains).
        head: ensemble head for multi-branch networks: `"gate"` (ONE),
            `"mean"`, `None`, or a head function.
        input_shape: shape of one image, channels last.
        weight_decay: coupled weight decay; 0 for none.
        fused: compute the branches as one batched network
            (`keras_one.layers.FusedBranches`: grouped convolutions over
            stacked weights) instead of `num_branches` separate copies. Same
            outputs and layer names once exported; faster where grouped
            convolutions are (see the benchmarks).
        name: model name; defaults to `resnet{depth}`.

    Returns:
        A functional `keras.Model`.

    Example:

    >>> net = cifar_resnet(depth=20, num_classes=10, num_branches=3)
    >>> len(net.output["branch_logits"])
    3
    """
    if depth < 8 or (depth - 2) % 6:
        raise ValueError(
            f"CIFAR ResNet depth must be 6n + 2 (8, 20, 32, 44, 56, 110, "
            f"...); got {depth}."
        )
    if branch_stage not in (0, 1, 2, 3):
        raise ValueError(
            f"branch_stage must be 0, 1, 2 or 3; got {branch_stage}."
        )
    blocks_per_stage = (depth - 2) // 6
    block = _bottleneck_block if depth >= 44 else _basic_block
    name = name or f"resnet{depth}"

    # === Layers ===
    inputs = keras.Input(input_shape, name="image")
    x = _conv(STAGE_WIDTHS[0], 3, 1, weight_decay, "stem_conv")(inputs)
    x = _batch_norm(weight_decay, "stem_bn")(x)
    x = layers.ReLU(name="stem_relu")(x)
    split_at = "image" if branch_stage == 0 else "stem_relu"
    for stage, filters in enumerate(STAGE_WIDTHS, start=1):
        for index in range(blocks_per_stage):
            strides = 2 if stage > 1 and index == 0 else 1
            block_name = f"stage{stage}_block{index + 1}"
            x = block(x, filters, strides, weight_decay, block_name)
            if stage == branch_stage - 1:
                split_at = f"{block_name}_out"
    x = layers.GlobalAveragePooling2D(name="avg_pool")(x)
    logits = layers.Dense(
        num_classes,
        kernel_regularizer=_l2(weight_decay),
        bias_regularizer=_l2(weight_decay),
        name="logits",
    )(x)

    # === Functional Model ===
    model = keras.Model(inputs, logits, name=name)
    if num_branches == 1:
        return model
    if fused:
        return _fused_multi_branch(
            model,
            split_at,
            num_branches,
            head,
            stages=[
                (filters, blocks_per_stage, 1 if stage == 1 else 2)
                for stage, filters in enumerate(STAGE_WIDTHS, start=1)
                if stage >= branch_stage
            ],
            block="bottleneck" if depth >= 44 else "basic",
            stem_filters=STAGE_WIDTHS[0] if branch_stage == 0 else None,
            first_stage=max(branch_stage, 1),
            num_classes=num_classes,
            weight_decay=weight_decay,
            name=name,
        )
    return make_multi_branch(
        model, split_at, num_branches=num_branches, head=head, name=name
    )


def _fused_multi_branch(
    model, split_at, num_branches, head, weight_decay, name, **branch_kwargs
):
    """`make_multi_branch`'s network, with the branches fused."""
    shared_features = model.get_layer(split_at).output
    branches = FusedBranches(
        num_branches,
        regularizer=_l2(weight_decay),
        name="fused_branches",
        **branch_kwargs,
    )(shared_features)
    outputs = {
        "branch_logits": branches["logits"],
        "shared_features": shared_features,
        "branch_features": branches["features"],
        "branch_feature_maps": branches["feature_maps"],
    }
    outputs.update(heads.get(head)(outputs))
    return keras.Model(model.input, outputs, name=name)
