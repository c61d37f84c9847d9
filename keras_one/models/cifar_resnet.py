import keras
from keras import layers

from keras_one.models import heads
from keras_one.models import resnet_blocks
from keras_one.models.fused_branches import FusedBranches
from keras_one.models.multi_branch import make_multi_branch


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
    views=1,
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
        fused: compute the branches as one network
            (`keras_one.models.FusedBranches`: grouped convolutions over the
            branches' weights side by side) instead of `num_branches`
            separate copies. Same outputs, and the same layer names once
            exported; faster where grouped convolutions are (see the
            benchmarks). Needs the TensorFlow backend.
        name: model name; defaults to `resnet{depth}`.
        views: 1, or `num_branches` to give every branch its own view of
            the input (one image input per branch, the trunk run once per
            view, as PCL trains; see `keras_one.models.make_multi_branch`).
            Not with `fused=True`.

    Returns:
        A functional `keras.Model`.

    Example:

    >>> net = cifar_resnet(depth=20, num_classes=10, num_branches=3)
    >>> len(net.output["branch_logits"])
    3
    """
    stages = resnet_blocks.cifar_stages(depth)
    if branch_stage not in (0, 1, 2, 3):
        raise ValueError(
            f"branch_stage must be 0, 1, 2 or 3; got {branch_stage}."
        )
    block = resnet_blocks.cifar_block(depth)
    regularizer = resnet_blocks.l2(weight_decay)
    conv, batch_norm = resnet_blocks.plain_layers(regularizer)
    name = name or f"resnet{depth}"

    # === Layers ===
    inputs = keras.Input(input_shape, name="image")
    stem_filters = stages[0][0]
    x = resnet_blocks.stem(inputs, stem_filters, conv, batch_norm)
    channels = stem_filters
    split_at = "image" if branch_stage == 0 else "stem_relu"
    for stage, (filters, blocks, strides) in enumerate(stages, start=1):
        x, channels = resnet_blocks.residual_stage(
            x,
            channels,
            filters,
            blocks,
            strides,
            block,
            conv,
            batch_norm,
            f"stage{stage}",
        )
        if stage == branch_stage - 1:
            split_at = f"stage{stage}_block{blocks}_out"
    x = layers.GlobalAveragePooling2D(name="avg_pool")(x)
    logits = resnet_blocks.classifier(x, num_classes, regularizer, "logits")

    # === Functional Model ===
    model = keras.Model(inputs, logits, name=name)
    if num_branches == 1:
        return model
    if not fused:
        return make_multi_branch(
            model,
            split_at,
            num_branches=num_branches,
            head=head,
            name=name,
            views=views,
            head_regularizer=regularizer,
        )
    if views != 1:
        raise ValueError(
            "fused=True computes every branch on one input: it does not "
            f"take views={views}. Use fused=False."
        )
    # The same branches, computed as one network.
    shared_features = model.get_layer(split_at).output
    branches = FusedBranches(
        num_branches,
        stages=stages[max(branch_stage, 1) - 1 :],
        num_classes=num_classes,
        input_shape=shared_features.shape[1:],
        block=block,
        stem_filters=stem_filters if branch_stage == 0 else None,
        first_stage=max(branch_stage, 1),
        regularizer=regularizer,
        name="fused_branches",
    )(shared_features)
    outputs = {
        "branch_logits": branches["logits"],
        "shared_features": shared_features,
        "branch_features": branches["features"],
        "branch_feature_maps": branches["feature_maps"],
    }
    outputs.update(heads.get(head, regularizer)(outputs))
    return keras.Model(inputs, outputs, name=name)
