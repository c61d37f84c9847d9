import keras
from keras import layers

from keras_one.models import heads
from keras_one.models import resnet_blocks


def oec_resnet(
    depth=32,
    num_classes=10,
    num_students=5,
    head="mean",
    input_shape=(32, 32, 3),
    weight_decay=1e-4,
    name=None,
):
    """CIFAR ResNet students of decreasing width on a shared stem (OEC).

    The network of Online Ensemble Model Compression (Walawalkar, Shen and
    Savvides, ECCV 2020; official code github.com/Devwalkar/BOC-KD): a
    shared stem (3x3 convolution with 16 filters, BatchNormalization,
    ReLU) feeds `S = num_students` students of the same depth; student `j`
    (counted from 0) has three stages of `n = (depth - 2) / 6` basic
    residual blocks with `int(w * (S - j) / S)` filters for `w` = 16, 32,
    64 (x1, 0.8, 0.6, 0.4, 0.2 for `S = 5`), its own global average pooling
    and classifier. As in the official code, every depth uses basic blocks
    (so depth 110 is a basic-block net, unlike ONE's bottleneck ResNet-110),
    and a block whose input and output widths differ has a 1x1 projection
    shortcut. Convolutions are He-normal (fan-out) initialized as in
    `keras_one.models.cifar_resnet` (the official code uses Xavier-normal).

    Each student alone (stem included) is exportable with
    `Distiller.get_branch_model(j)`: its graph holds no layer of the other
    students.

    Args:
        depth: 6n + 2 (20, 32, 44, 56, 110, ...; 8 for a tiny network).
        num_classes: number of classes.
        num_students: `S`, at least 2; the paper uses 5.
        head: ensemble head: `"mean"` (the OEC teacher: the average of the
            student logits), `"gate"`, `None`, or a head function (see
            `keras_one.models.heads`).
        input_shape: shape of one image, channels last.
        weight_decay: coupled weight decay (an L2 penalty of
            `weight_decay / 2`); 0 for none.
        name: model name; defaults to `oec_resnet{depth}`.

    Returns:
        A functional `keras.Model` whose output is a dict with
        `branch_logits` (one per student, widest first), `branch_features`
        (pooled), `branch_feature_maps` (last stage), `branch_stage_features`
        (per student, the outputs of its three stages, for OEC's hints),
        `shared_features` (the stem's output), and the head's outputs.

    Example:

    >>> net = oec_resnet(depth=20, num_classes=100, num_students=5)
    >>> [s[-1].shape[-1] for s in net.output["branch_stage_features"]]
    [64, 51, 38, 25, 12]
    """
    stages = resnet_blocks.cifar_stages(depth)
    if int(num_students) < 2:
        raise ValueError(
            f"OEC needs at least 2 students; got num_students={num_students}."
        )
    num_students = int(num_students)
    regularizer = resnet_blocks.l2(weight_decay)
    conv, batch_norm = resnet_blocks.plain_layers(regularizer)

    # === Layers ===
    inputs = keras.Input(input_shape, name="image")
    stem_filters = stages[0][0]
    shared_features = resnet_blocks.stem(inputs, stem_filters, conv, batch_norm)
    outputs = {
        "branch_logits": [],
        "branch_features": [],
        "branch_feature_maps": [],
        "branch_stage_features": [],
        "shared_features": shared_features,
    }
    for student in range(num_students):
        fraction = (num_students - student) / num_students
        x, channels = shared_features, stem_filters
        stage_features = []
        for stage, (width, blocks, strides) in enumerate(stages, start=1):
            x, channels = resnet_blocks.residual_stage(
                x,
                channels,
                max(1, int(width * fraction)),
                blocks,
                strides,
                "basic",
                conv,
                batch_norm,
                f"student{student}_stage{stage}",
            )
            stage_features.append(x)
        pooled = layers.GlobalAveragePooling2D(name=f"student{student}_pool")(x)
        logits = resnet_blocks.classifier(
            pooled, num_classes, regularizer, f"student{student}_logits"
        )
        outputs["branch_logits"].append(logits)
        outputs["branch_features"].append(pooled)
        outputs["branch_feature_maps"].append(x)
        outputs["branch_stage_features"].append(stage_features)
    outputs.update(heads.get(head, regularizer)(outputs))

    # === Functional Model ===
    return keras.Model(inputs, outputs, name=name or f"oec_resnet{depth}")
