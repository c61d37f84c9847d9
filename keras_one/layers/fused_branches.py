import os

import keras
import numpy as np
from keras import ops

from keras_one.layers.fused_batch_normalization import FusedBatchNormalization

BLOCKS = ("basic", "bottleneck")


def _conv_initializer():
    # He-normal with fan-out, as the CIFAR ResNets (and ONE's code) use.
    return keras.initializers.VarianceScaling(
        2.0, mode="fan_out", distribution="untruncated_normal"
    )


def _tensorflow_grouped_conv():
    """Whether TensorFlow's own grouped convolution kernel can be used.

    On the TensorFlow backend with oneDNN (the default on x86 CPUs) or a
    GPU, `tf.nn.conv2d` computes grouped convolutions natively.
    """
    return (
        keras.backend.backend() == "tensorflow"
        and os.environ.get("TF_ENABLE_ONEDNN_OPTS", "1") != "0"
    )


class _PerBranchInitializer(keras.initializers.Initializer):
    """Initializes each branch's slice as if it were a separate weight.

    Fan-in and fan-out then are those of one branch, not of the stack.
    `branch_shape` is one branch's shape; the slices are concatenated along
    `axis` (the output-channel axis of a grouped kernel) or stacked on a new
    first axis (`axis=None`).
    """

    def __init__(self, initializer, num_branches, branch_shape, axis):
        self.initializer = initializer
        self.num_branches = num_branches
        self.branch_shape = tuple(branch_shape)
        self.axis = axis

    def __call__(self, shape, dtype=None):
        # A fresh initializer per branch: an initializer called twice with
        # its own (default) seed would give every branch the same values.
        config = self.initializer.get_config()
        if "seed" in config:
            config["seed"] = None
        slices = [
            type(self.initializer).from_config(config)(
                self.branch_shape, dtype=dtype
            )
            for _ in range(self.num_branches)
        ]
        if self.axis is None:
            return ops.stack(slices, axis=0)
        return ops.concatenate(slices, axis=self.axis)


class _FusedConv(keras.layers.Layer):
    """`num_branches` bias-free convolutions computed as one.

    With `grouped=True` the input holds the branches' feature maps side by
    side on the channel axis and branch `i`'s filters read only its own
    channels (a grouped convolution, `groups=num_branches`). With
    `grouped=False` every branch reads the same (shared) input and the
    filters are simply concatenated. Either way output channels
    `[i * filters, (i + 1) * filters)` belong to branch `i`, and the kernel
    has shape `(k, k, channels_per_branch, num_branches * filters)`.
    """

    def __init__(
        self,
        num_branches,
        filters,
        kernel_size,
        strides,
        grouped,
        kernel_initializer,
        kernel_regularizer,
        **kwargs,
    ):
        super().__init__(**kwargs)
        self.num_branches = num_branches
        self.filters = filters
        self.kernel_size = kernel_size
        self.strides = strides
        self.grouped = grouped
        self.kernel_initializer = kernel_initializer
        self.kernel_regularizer = kernel_regularizer

    def build(self, input_shape):
        channels = input_shape[-1]
        if self.grouped:
            channels //= self.num_branches
        branch_shape = (self.kernel_size, self.kernel_size, channels)
        branch_shape += (self.filters,)
        self.kernel = self.add_weight(
            shape=branch_shape[:3] + (self.num_branches * self.filters,),
            initializer=_PerBranchInitializer(
                self.kernel_initializer, self.num_branches, branch_shape, -1
            ),
            regularizer=self.kernel_regularizer,
            name="kernel",
        )

    def call(self, inputs):
        if self.grouped and _tensorflow_grouped_conv():
            # Keras' TensorFlow backend sends grouped convolutions on CPU
            # through an XLA-compiled function, about 20x slower here than
            # TensorFlow's own (oneDNN) grouped kernel, which is correct.
            import tensorflow as tf

            return tf.nn.conv2d(inputs, self.kernel, self.strides, "SAME")
        return ops.conv(inputs, self.kernel, self.strides, padding="same")

    def branch_kernel(self, index):
        start = index * self.filters
        return self.kernel[..., start : start + self.filters]

    def compute_output_shape(self, input_shape):
        size = [
            None if d is None else -(-d // self.strides)
            for d in input_shape[1:3]
        ]
        return (input_shape[0], *size, self.num_branches * self.filters)


class _FusedDense(keras.layers.Layer):
    """`num_branches` Dense layers, branch `i` reading its own features."""

    def __init__(
        self,
        num_branches,
        units,
        kernel_initializer,
        regularizer,
        **kwargs,
    ):
        super().__init__(**kwargs)
        self.num_branches = num_branches
        self.units = units
        self.kernel_initializer = kernel_initializer
        self.regularizer = regularizer

    def build(self, input_shape):
        features = input_shape[-1] // self.num_branches
        self.kernel = self.add_weight(
            shape=(self.num_branches, features, self.units),
            initializer=_PerBranchInitializer(
                self.kernel_initializer,
                self.num_branches,
                (features, self.units),
                None,
            ),
            regularizer=self.regularizer,
            name="kernel",
        )
        self.bias = self.add_weight(
            shape=(self.num_branches, self.units),
            initializer="zeros",
            regularizer=self.regularizer,
            name="bias",
        )

    def call(self, inputs):
        features = ops.reshape(
            inputs,
            (-1, self.num_branches, inputs.shape[-1] // self.num_branches),
        )
        logits = ops.einsum("bnf,nfc->bnc", features, self.kernel) + self.bias
        return [logits[:, i] for i in range(self.num_branches)]


@keras.saving.register_keras_serializable(package="keras_one")
class FusedBranches(keras.layers.Layer):
    """`N` identical ResNet branches computed as one batched network.

    A multi-branch network (ONE and its peers) replicates the last stages
    of a ResNet `N` times. Computed as `N` separate copies, every
    convolution of the branches is a separate small kernel. This layer
    holds the `N` copies' weights stacked and computes all branches at
    once: the branches' feature maps lie side by side on the channel axis,
    convolutions that read a branch's own maps are grouped convolutions
    (`groups=N`), the first convolutions, which all read the shared input,
    are one convolution with `N` times the filters, BatchNormalization is
    per channel (so per branch) anyway, and the `N` classifiers are one
    batched matrix product. The result is the same as that of `N` copies
    given the same weights (up to float rounding): see
    `set_branch_weights` and `expand`.

    The branches are the CIFAR ResNet stages of He et al. (2016), as in
    `keras_one.models.cifar_resnet`: for each stage `(filters, blocks,
    strides)`, `blocks` residual blocks (basic, or bottleneck with
    expansion 4), the first with the given stride, a projection shortcut
    (1x1 convolution + BN) where the shape changes; then global average
    pooling and a Dense classifier per branch. With `stem_filters` the
    branches start with their own 3x3 convolution + BN + ReLU (independent
    networks, as DML trains).

    Args:
        num_branches: `N`, at least 1.
        stages: a list of `(filters, blocks, strides)`, one per stage.
        num_classes: units of each branch's classifier.
        block: `"basic"` or `"bottleneck"`.
        stem_filters: filters of a per-branch stem convolution, or `None`.
        first_stage: number of the first stage, used only to name the layers
            of the plain-Keras branches built by `expand` (`stage3_block1_conv1`
            ...), which then match those of `keras_one.models.cifar_resnet`.
        regularizer: a regularizer of every weight (kernels, biases, BN
            scales and offsets), e.g. `keras.regularizers.L2(5e-5)`.
        bn_momentum: momentum of the moving BatchNormalization statistics.
        bn_epsilon: epsilon of BatchNormalization.
        **kwargs: base layer keyword arguments, such as `name`.

    Input shape:
        `(batch, height, width, channels)`, channels last: the shared
        features that every branch reads.

    Output shape:
        A dict with `"logits"`: a list of `N` tensors `(batch,
        num_classes)`; `"features"`: a list of `N` pooled features `(batch,
        filters)`, what each classifier reads; `"feature_maps"`: a list of
        `N` maps `(batch, h, w, filters)`, the last block's outputs.

    Example:

    >>> shared = keras.Input((16, 16, 32))
    >>> branches = FusedBranches(3, stages=[(64, 3, 2)], num_classes=10)
    >>> outputs = branches(shared)
    >>> [tuple(z.shape) for z in outputs["logits"]]
    [(None, 10), (None, 10), (None, 10)]
    """

    def __init__(
        self,
        num_branches,
        stages,
        num_classes,
        block="basic",
        stem_filters=None,
        first_stage=1,
        regularizer=None,
        bn_momentum=0.9,
        bn_epsilon=1e-5,
        **kwargs,
    ):
        super().__init__(**kwargs)
        if int(num_branches) < 1:
            raise ValueError(
                f"FusedBranches needs num_branches >= 1; got {num_branches}."
            )
        if block not in BLOCKS:
            raise ValueError(f"block must be one of {BLOCKS}; got {block!r}.")
        stages = [tuple(int(v) for v in stage) for stage in stages]
        if not stages or any(len(s) != 3 or min(s) < 1 for s in stages):
            raise ValueError(
                "stages must be a non-empty list of (filters, blocks, "
                f"strides) with positive integers; got {stages}."
            )
        self.num_branches = int(num_branches)
        self.stages = stages
        self.num_classes = int(num_classes)
        self.block = block
        self.stem_filters = stem_filters
        self.first_stage = int(first_stage)
        self.regularizer = keras.regularizers.get(regularizer)
        self.bn_momentum = bn_momentum
        self.bn_epsilon = bn_epsilon

    # === Structure ===

    def _plan(self, input_channels):
        """The units of one branch, in order, as plain descriptions.

        Each entry is `(name, kind, spec)`: a convolution
        `("conv", (filters, kernel_size, strides))`, a normalization
        `("bn", filters)`, or a residual block boundary.
        """
        plan = []
        channels = input_channels
        if self.stem_filters:
            plan.append(("stem", "stem", (self.stem_filters, channels)))
            channels = self.stem_filters
        expansion = 4 if self.block == "bottleneck" else 1
        for offset, (filters, blocks, strides) in enumerate(self.stages):
            for index in range(blocks):
                stride = strides if index == 0 else 1
                name = f"stage{self.first_stage + offset}_block{index + 1}"
                out = filters * expansion
                project = stride != 1 or channels != out
                plan.append((name, "block", (filters, stride, project)))
                channels = out
        return plan, channels

    def _block_convs(self, filters, stride):
        if self.block == "basic":
            return [(filters, 3, stride), (filters, 3, 1)]
        return [(filters, 1, 1), (filters, 3, stride), (4 * filters, 1, 1)]

    def build(self, input_shape):
        if len(input_shape) != 4:
            raise ValueError(
                "FusedBranches takes 4D feature maps (batch, height, width, "
                f"channels); got shape {input_shape}."
            )
        n = self.num_branches
        self._input_shape = tuple(input_shape[1:])
        plan, features = self._plan(input_shape[-1])
        self._features = features
        self._units = []
        shape = list(input_shape)
        grouped = False

        def conv(name, filters, kernel_size, strides, grouped, shape):
            layer = _FusedConv(
                n, filters, kernel_size, strides, grouped,
                _conv_initializer(), self.regularizer, name=name,
            )  # fmt: skip
            layer.build(tuple(shape))
            return layer, list(layer.compute_output_shape(tuple(shape)))

        def norm(name, channels):
            layer = FusedBatchNormalization(
                momentum=self.bn_momentum,
                epsilon=self.bn_epsilon,
                gamma_regularizer=self.regularizer,
                beta_regularizer=self.regularizer,
                name=name,
            )
            layer.build((None, None, None, channels))
            return layer

        for name, kind, spec in plan:
            if kind == "stem":
                layer, shape = conv(f"{name}_conv", spec[0], 3, 1, False, shape)
                self._units.append(
                    (name, kind, [layer, norm(f"{name}_bn", shape[-1])])
                )
                grouped = True
                continue
            filters, stride, project = spec
            block_input = shape
            layers = []
            for k, (f, size, s) in enumerate(
                self._block_convs(filters, stride), start=1
            ):
                layer, shape = conv(
                    f"{name}_conv{k}", f, size, s, grouped or k > 1, shape
                )
                layers += [layer, norm(f"{name}_bn{k}", shape[-1])]
            if project:
                layer, _ = conv(
                    f"{name}_down", shape[-1] // n, 1, stride, grouped,
                    block_input,
                )  # fmt: skip
                layers += [layer, norm(f"{name}_down_bn", shape[-1])]
            self._units.append((name, kind, layers))
            grouped = True
        self.classifier = _FusedDense(
            n,
            self.num_classes,
            keras.initializers.GlorotUniform(),
            self.regularizer,
            name="logits",
        )
        self.classifier.build((None, n * features))
        self._output_size = shape[1:3]

    # === Forward pass ===

    def call(self, inputs, training=None):
        x = inputs
        for _, kind, layers in self._units:
            if kind == "stem":
                conv, bn = layers
                x = ops.relu(bn(conv(x), training=training))
                continue
            shortcut = x
            convs = len(self._block_convs(1, 1))
            y = x
            for k in range(convs):
                y = layers[2 * k](y)
                y = layers[2 * k + 1](y, training=training)
                if k < convs - 1:
                    y = ops.relu(y)
            if len(layers) > 2 * convs:
                shortcut = layers[-1](layers[-2](x), training=training)
            x = ops.relu(y + shortcut)
        pooled = ops.mean(x, axis=(1, 2))
        features = self._split(pooled)
        return {
            "logits": self.classifier(pooled),
            "features": features,
            "feature_maps": self._split(x),
        }

    def _split(self, x):
        size = self._features
        return [
            x[..., i * size : (i + 1) * size] for i in range(self.num_branches)
        ]

    def compute_output_shape(self, input_shape):
        n, size = self.num_branches, self._features
        batch = input_shape[0]
        return {
            "logits": [(batch, self.num_classes)] * n,
            "features": [(batch, size)] * n,
            "feature_maps": [(batch, *self._output_size, size)] * n,
        }

    # === Per-branch weights ===

    def _branch_weights(self, index):
        """Branch `index`'s weights: `{layer name: [weight arrays]}`."""
        weights = {}
        for _, _, layers in self._units:
            for layer in layers:
                if isinstance(layer, _FusedConv):
                    weights[layer.name] = [
                        ops.convert_to_numpy(layer.branch_kernel(index))
                    ]
                else:
                    size = layer.gamma.shape[0] // self.num_branches
                    part = slice(index * size, (index + 1) * size)
                    weights[layer.name] = [
                        ops.convert_to_numpy(v)[part]
                        for v in (
                            layer.gamma,
                            layer.beta,
                            layer.moving_mean,
                            layer.moving_variance,
                        )
                    ]
        weights["logits"] = [
            ops.convert_to_numpy(self.classifier.kernel)[index],
            ops.convert_to_numpy(self.classifier.bias)[index],
        ]
        return weights

    def set_branch_weights(self, index, branch):
        """Copies a plain branch's weights into branch `index`.

        Args:
            index: the branch to overwrite, `0 <= index < num_branches`.
            branch: a model or layer holding built-in Keras layers named as
                those `expand` builds (and as the branches of
                `keras_one.models.cifar_resnet`): `stage3_block1_conv1`,
                `stage3_block1_bn1`, ..., `logits`. For example the branch
                `student.get_layer("branch_0")` of an unfused student.
        """
        self._check_index(index)
        for name, arrays in self._branch_weights(0).items():
            try:
                source = branch.get_layer(name)
            except ValueError:
                raise ValueError(
                    f"The branch {branch.name!r} has no layer {name!r}; "
                    "set_branch_weights needs a branch of the same structure "
                    "(the layers of keras_one.models.cifar_resnet's "
                    "branches)."
                ) from None
            values = [np.asarray(v) for v in source.get_weights()]
            if [v.shape for v in values] != [a.shape for a in arrays]:
                raise ValueError(
                    f"Layer {name!r} of {branch.name!r} has weights of shapes "
                    f"{[v.shape for v in values]}; branch {index} of "
                    f"{self.name!r} needs {[a.shape for a in arrays]}."
                )
            self._assign(index, name, values)

    def _assign(self, index, name, values):
        if name == "logits":
            for variable, value in zip(
                (self.classifier.kernel, self.classifier.bias),
                values,
                strict=True,
            ):
                full = ops.convert_to_numpy(variable).copy()
                full[index] = value
                variable.assign(full)
            return
        layer = self._layer(name)
        if isinstance(layer, _FusedConv):
            variables = [layer.kernel]
        else:
            variables = [
                layer.gamma,
                layer.beta,
                layer.moving_mean,
                layer.moving_variance,
            ]
        for variable, value in zip(variables, values, strict=True):
            full = ops.convert_to_numpy(variable).copy()
            size = value.shape[-1]
            full[..., index * size : (index + 1) * size] = value
            variable.assign(full)

    def _layer(self, name):
        for _, _, layers in self._units:
            for layer in layers:
                if layer.name == name:
                    return layer
        raise KeyError(name)

    def _check_index(self, index):
        if not 0 <= index < self.num_branches:
            raise ValueError(
                f"Branch index {index} is out of range: {self.name!r} has "
                f"{self.num_branches} branches."
            )

    # === Plain-Keras form ===

    def branch_model(self, index, input_shape=None, name=None):
        """Branch `index` as a functional model of built-in Keras layers.

        Its layers are named as those of `keras_one.models.cifar_resnet`'s
        branches and hold copies of branch `index`'s current weights.

        Args:
            index: the branch, `0 <= index < num_branches`.
            input_shape: shape of one input (defaults to the built one).
            name: model name; defaults to `branch_{index}`.

        Returns:
            A `keras.Model` from the shared features to a dict with
            `logits`, `features` and `feature_map`.
        """
        self._check_index(index)
        inputs = keras.Input(input_shape or self._input_shape)
        outputs = self._plain_branch(inputs)
        model = keras.Model(inputs, outputs, name=name or f"branch_{index}")
        weights = self._branch_weights(index)
        for layer_name, arrays in weights.items():
            model.get_layer(layer_name).set_weights(arrays)
        return model

    def _plain_branch(self, inputs):
        layers = keras.layers
        initializer = _conv_initializer()

        def conv(filters, size, strides, name):
            return layers.Conv2D(
                filters, size, strides=strides, padding="same",
                use_bias=False, kernel_initializer=initializer,
                kernel_regularizer=self.regularizer, name=name,
            )  # fmt: skip

        def norm(name):
            return layers.BatchNormalization(
                momentum=self.bn_momentum,
                epsilon=self.bn_epsilon,
                gamma_regularizer=self.regularizer,
                beta_regularizer=self.regularizer,
                name=name,
            )

        x = inputs
        for name, kind, fused in self._units:
            if kind == "stem":
                x = conv(fused[0].filters, 3, 1, f"{name}_conv")(x)
                x = norm(f"{name}_bn")(x)
                x = layers.ReLU(name=f"{name}_relu")(x)
                continue
            shortcut = x
            convs = [layer for layer in fused if isinstance(layer, _FusedConv)]
            main = [c for c in convs if not c.name.endswith("_down")]
            y = x
            for k, fused_conv in enumerate(main, start=1):
                y = conv(
                    fused_conv.filters, fused_conv.kernel_size,
                    fused_conv.strides, f"{name}_conv{k}",
                )(y)  # fmt: skip
                y = norm(f"{name}_bn{k}")(y)
                if k < len(main):
                    y = layers.ReLU(name=f"{name}_relu{k}")(y)
            if len(convs) > len(main):
                down = convs[-1]
                shortcut = conv(down.filters, 1, down.strides, f"{name}_down")(
                    x
                )
                shortcut = norm(f"{name}_down_bn")(shortcut)
            x = layers.Add(name=f"{name}_add")([y, shortcut])
            x = layers.ReLU(name=f"{name}_out")(x)
        feature_map = x
        features = layers.GlobalAveragePooling2D(name="avg_pool")(x)
        logits = layers.Dense(
            self.num_classes,
            kernel_regularizer=self.regularizer,
            bias_regularizer=self.regularizer,
            name="logits",
        )(features)
        return {
            "logits": logits,
            "features": features,
            "feature_map": feature_map,
        }

    def expand(self, inputs, training=None):
        """The same computation written with built-in Keras layers.

        Builds the `N` branches unfused (`branch_model`), holding copies of
        the current weights, and applies them to `inputs`; used to export a
        branch or the ensemble as a plain Keras model that loads without
        keras_one. An exported branch computes only its own branch.
        """
        outputs = [
            self.branch_model(i, inputs.shape[1:], name=f"branch_{i}")(inputs)
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
            **super().get_config(),
            "num_branches": self.num_branches,
            "stages": [list(stage) for stage in self.stages],
            "num_classes": self.num_classes,
            "block": self.block,
            "stem_filters": self.stem_filters,
            "first_stage": self.first_stage,
            "regularizer": keras.regularizers.serialize(self.regularizer),
            "bn_momentum": self.bn_momentum,
            "bn_epsilon": self.bn_epsilon,
        }
