import keras
from keras import layers

from keras_one.layers.fused_conv2d import FusedConv2D
from keras_one.layers.fused_dense import FusedDense
from keras_one.layers.fused_layer import branch_slice
from keras_one.layers.fused_layer import check_tensorflow_backend
from keras_one.models import resnet_blocks


@keras.saving.register_keras_serializable(package="keras_one")
class FusedBranches(keras.Model):
    """`N` identical ResNet branches computed as one network.

    A multi-branch network (ONE and its peers) replicates the last stages
    of a ResNet `N` times. Built as `N` separate copies, every convolution
    of the branches is a separate small kernel. This network holds the `N`
    copies' weights side by side and computes all branches at once: the
    branches' feature maps lie side by side on the channel axis,
    convolutions that read a branch's own maps are grouped convolutions
    (`keras_one.layers.FusedConv2D`), the first convolutions, which all
    read the shared input, are one convolution with `N` times the filters,
    BatchNormalization is per channel (so per branch) anyway, and the `N`
    classifiers are one batched product (`keras_one.layers.FusedDense`).
    The result is that of `N` copies given the same weights, up to float
    rounding: see `set_branch_weights` and `branch_model`.

    The branches are the CIFAR ResNet stages of
    `keras_one.models.cifar_resnet`, laid out by the same functions
    (`keras_one.models.resnet_blocks`): for each stage `(filters, blocks,
    strides)`, `blocks` residual blocks; then global average pooling and a
    Dense classifier per branch. With `stem_filters` the branches start
    with their own 3x3 convolution + BN + ReLU (independent networks, as
    DML trains). `cifar_resnet(..., fused=True)` builds its branches with
    this network.

    Needs the TensorFlow backend (for TensorFlow's grouped convolution
    kernel): on the JAX and PyTorch backends it raises an error, and
    `cifar_resnet(..., fused=False)` builds the same network as `N` copies.

    Args:
        num_branches: `N`, at least 1.
        stages: a list of `(filters, blocks, strides)`, one per stage.
        num_classes: units of each branch's classifier.
        input_shape: shape of the shared features that every branch reads,
            `(height, width, channels)`.
        block: `"basic"` or `"bottleneck"`.
        stem_filters: filters of a per-branch stem convolution, or `None`.
        first_stage: number of the first stage, used to name the layers
            (`stage3_block1_conv1`, ...) as those of `cifar_resnet`.
        regularizer: a regularizer of every weight (kernels, biases, BN
            scales and offsets), e.g. `keras.regularizers.L2(5e-5)`.
        **kwargs: `keras.Model` keyword arguments, such as `name`.

    Input shape:
        `(batch, height, width, channels)`, channels last: the shared
        features that every branch reads.

    Output shape:
        A dict with `"logits"`: a list of `N` tensors `(batch,
        num_classes)`; `"features"`: a list of `N` pooled features `(batch,
        filters)`, what each classifier reads; `"feature_maps"`: a list of
        `N` maps `(batch, h, w, filters)`, the last block's outputs.

    Example:

    >>> branches = FusedBranches(
    ...     3, stages=[(64, 3, 2)], num_classes=10, input_shape=(16, 16, 32))
    >>> outputs = branches(np.zeros((2, 16, 16, 32), "float32"))
    >>> [tuple(z.shape) for z in outputs["logits"]]
    [(2, 10), (2, 10), (2, 10)]
    >>> plain = branches.branch_model(0)  # built-in Keras layers only
    >>> sorted({type(layer).__module__.split(".")[0]
    ...         for layer in plain.layers})
    ['keras']
    """

    def __init__(
        self,
        num_branches,
        stages,
        num_classes,
        input_shape,
        block="basic",
        stem_filters=None,
        first_stage=1,
        regularizer=None,
        **kwargs,
    ):
        check_tensorflow_backend(type(self).__name__)
        if int(num_branches) < 1:
            raise ValueError(
                f"FusedBranches needs num_branches >= 1; got {num_branches}."
            )
        if block not in resnet_blocks.BLOCKS:
            raise ValueError(
                f"block must be one of {resnet_blocks.BLOCKS}; got {block!r}."
            )
        stages = [tuple(int(v) for v in stage) for stage in stages]
        if not stages or any(len(s) != 3 or min(s) < 1 for s in stages):
            raise ValueError(
                "stages must be a non-empty list of (filters, blocks, "
                f"strides) with positive integers; got {stages}."
            )
        input_shape = tuple(input_shape)
        if len(input_shape) != 3:
            raise ValueError(
                "FusedBranches reads feature maps: input_shape must be "
                f"(height, width, channels); got {input_shape}."
            )
        num_branches = int(num_branches)
        regularizer = keras.regularizers.get(regularizer)

        # === Layers ===
        inputs = keras.Input(input_shape, name="shared_features")
        # BatchNormalization is per channel: one layer serves N branches.
        _, batch_norm = resnet_blocks.plain_layers(regularizer)

        def conv(x, filters, kernel_size, strides, name):
            return FusedConv2D(
                num_branches,
                filters,
                kernel_size,
                strides,
                shared_input=x is inputs,
                kernel_initializer=resnet_blocks.conv_initializer(),
                kernel_regularizer=regularizer,
                name=name,
            )(x)

        outputs = _branch_graph(
            inputs,
            stages,
            num_classes,
            block,
            stem_filters,
            first_stage,
            conv,
            batch_norm,
            classifier=lambda x: FusedDense(
                num_branches,
                num_classes,
                kernel_initializer=resnet_blocks.classifier_initializer(),
                kernel_regularizer=regularizer,
                bias_regularizer=regularizer,
                name="logits",
            )(x),
        )

        # === Functional Model ===
        def split(x):
            return [
                branch_slice(x, i, num_branches) for i in range(num_branches)
            ]

        super().__init__(
            inputs=inputs,
            outputs={
                "logits": split(outputs["logits"]),
                "features": split(outputs["features"]),
                "feature_maps": split(outputs["feature_map"]),
            },
            **kwargs,
        )

        # === Config ===
        self.num_branches = num_branches
        self.stages = stages
        self.num_classes = int(num_classes)
        self.branch_input_shape = input_shape
        self.block = block
        self.stem_filters = stem_filters
        self.first_stage = int(first_stage)
        self.regularizer = regularizer

    # === Per-branch weights ===

    def branch_model(self, index, name=None):
        """Branch `index` as a model of built-in Keras layers.

        Its layers are named as those of `keras_one.models.cifar_resnet`'s
        branches and hold copies of branch `index`'s current weights.

        Args:
            index: the branch, `0 <= index < num_branches`.
            name: model name; defaults to `branch_{index}`.

        Returns:
            A functional `keras.Model` from the shared features to a dict
            with `logits`, `features` and `feature_map`.
        """
        self._check_index(index)
        regularizer = self.regularizer
        conv, batch_norm = resnet_blocks.plain_layers(
            regularizer, fused_batch_norm=False
        )
        inputs = keras.Input(self.branch_input_shape, name="shared_features")
        outputs = _branch_graph(
            inputs,
            self.stages,
            self.num_classes,
            self.block,
            self.stem_filters,
            self.first_stage,
            conv,
            batch_norm,
            classifier=lambda x: resnet_blocks.classifier(
                x, self.num_classes, regularizer, "logits"
            ),
        )
        model = keras.Model(inputs, outputs, name=name or f"branch_{index}")
        for layer in model.layers:
            if layer.weights:
                fused = self.get_layer(layer.name).get_weights()
                layer.set_weights(
                    [branch_slice(w, index, self.num_branches) for w in fused]
                )
        return model

    def set_branch_weights(self, index, branch):
        """Copies a plain branch's weights into branch `index`.

        Args:
            index: the branch to overwrite, `0 <= index < num_branches`.
            branch: a model holding built-in Keras layers named as those
                of `branch_model` (and of the branches of
                `keras_one.models.cifar_resnet`): `stage3_block1_conv1`,
                `stage3_block1_bn1`, ..., `logits`. For example the branch
                `student.get_layer("branch_0")` of an unfused student.
        """
        self._check_index(index)
        for layer in self.layers:
            if not layer.weights:
                continue
            try:
                source = branch.get_layer(layer.name)
            except ValueError:
                raise ValueError(
                    f"The branch {branch.name!r} has no layer {layer.name!r}; "
                    "set_branch_weights needs a branch of the same structure "
                    "(the layers of keras_one.models.cifar_resnet's "
                    "branches)."
                ) from None
            values = source.get_weights()
            fused = layer.get_weights()
            shares = [branch_slice(w, index, self.num_branches) for w in fused]
            if [v.shape for v in values] != [s.shape for s in shares]:
                raise ValueError(
                    f"Layer {layer.name!r} of {branch.name!r} has weights of "
                    f"shapes {[v.shape for v in values]}; branch {index} of "
                    f"{self.name!r} needs {[s.shape for s in shares]}."
                )
            for weight, value in zip(fused, values, strict=True):
                size = value.shape[-1]
                weight[..., index * size : (index + 1) * size] = value
            layer.set_weights(fused)

    def _check_index(self, index):
        if not 0 <= index < self.num_branches:
            raise ValueError(
                f"Branch index {index} is out of range: {self.name!r} has "
                f"{self.num_branches} branches."
            )

    # === Plain-Keras form ===

    def expand(self, inputs, training=None, mask=None):
        """The same computation written with built-in Keras layers.

        Applies the `N` branches unfused (`branch_model`, holding copies of
        the current weights) to `inputs`; used to export a branch or the
        ensemble as a plain Keras model that loads without keras_one. An
        exported branch computes only its own branch.
        """
        outputs = [
            self.branch_model(i)(inputs, training=training, mask=mask)
            for i in range(self.num_branches)
        ]
        return {
            "logits": [o["logits"] for o in outputs],
            "features": [o["features"] for o in outputs],
            "feature_maps": [o["feature_map"] for o in outputs],
        }

    # === Config ===

    def get_config(self):
        return {
            "name": self.name,
            "trainable": self.trainable,
            "num_branches": self.num_branches,
            "stages": [list(stage) for stage in self.stages],
            "num_classes": self.num_classes,
            "input_shape": list(self.branch_input_shape),
            "block": self.block,
            "stem_filters": self.stem_filters,
            "first_stage": self.first_stage,
            "regularizer": keras.regularizers.serialize(self.regularizer),
        }

    @classmethod
    def from_config(cls, config):
        return cls(**config)


def _branch_graph(
    inputs,
    stages,
    num_classes,
    block,
    stem_filters,
    first_stage,
    conv,
    batch_norm,
    classifier,
):
    """The branches' layers on `inputs`, made by the given layer makers.

    One description for the fused network and for a plain branch: they
    differ only in the layers they are made of.
    """
    x = inputs
    channels = inputs.shape[-1]
    if stem_filters:
        x = resnet_blocks.stem(x, stem_filters, conv, batch_norm)
        channels = stem_filters
    for offset, (filters, blocks, strides) in enumerate(stages):
        x, channels = resnet_blocks.residual_stage(
            x,
            channels,
            filters,
            blocks,
            strides,
            block,
            conv,
            batch_norm,
            f"stage{first_stage + offset}",
        )
    features = layers.GlobalAveragePooling2D(name="avg_pool")(x)
    return {
        "logits": classifier(features),
        "features": features,
        "feature_map": x,
    }
