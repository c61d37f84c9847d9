import keras
from keras import ops

from keras_one.layers import _pytorch_init


@keras.saving.register_keras_serializable(package="keras_one")
class FeatureFusion(keras.layers.Layer):
    """MDE's feature fusion module: branch attention from fused features.

    The Feature Fusion Module (FFM) of Multi-branch Diversity Enhancement
    (MDE; Li, Huang, Chen, Luo, Cai and Pan, ACCV 2020, arXiv:2010.00795)
    integrates the last-block feature maps of all branches to compute the
    attention that weights the branches into the ensemble teacher. No
    official code exists and the paper's abstract leaves the layout open;
    this layer is the following reading, which keeps ONE's gate (Lan et al.,
    2018) and replaces its input (the shared trunk features, which know
    nothing of what the branches computed) by the fused branch features:

    1. fuse: concatenate the `N` feature maps (`C` channels each) along
       channels -> 1x1 convolution to `C` channels (no bias) ->
       BatchNorm -> ReLU;
    2. attend: global average pooling -> `Dense(N)` -> BatchNorm -> ReLU
       -> softmax over branches, giving per-example weights `a_i`;
    3. `ensemble_logits = sum_i a_i * branch_logits[i]`.

    Weights are initialized as a PyTorch network written like ONE's
    official code would initialize them: the convolution He-normal with
    fan-out (that code's loop over every `nn.Conv2d` of the network), the
    `Dense` layer with PyTorch's default (`torch.nn.Linear`'s, as ONE's
    gate: kernel and bias uniform in `+-1/sqrt(fan_in)`). `regularizer`
    gives the module the weight decay such code applies to every
    parameter.

    Args:
        num_branches: number of branches `N`, at least 2.
        return_fusion_weights: if `True`, the layer returns
            `(ensemble_logits, weights)`; otherwise only `ensemble_logits`.
        data_format: `"channels_last"` or `"channels_first"`. Defaults to
            `keras.config.image_data_format()`.
        kernel_initializer: initializer of the attention `Dense` kernel.
            `None` (the default) for PyTorch's default, `keras.initializers.
            VarianceScaling(1/3, mode="fan_in", distribution="uniform")`.
        bias_initializer: initializer of the attention `Dense` bias. `None`
            (the default) for PyTorch's default, uniform in
            `+-1/sqrt(fan_in)`.
        regularizer: regularizer of every weight of the module (the
            convolution kernel, the BatchNormalization scales and offsets,
            the `Dense` kernel and bias), e.g.
            `keras.regularizers.L2(weight_decay / 2)` for PyTorch's coupled
            weight decay `weight_decay`; `None` (the default) for none. The
            `"feature_fusion"` head (`keras_one.models.heads`) passes the
            network's.
        **kwargs: base layer keyword arguments, such as `name`.

    Call arguments:
        feature_maps: a list of `N` tensors of one shape
            `(batch, height, width, C)` (channels last): the student's
            `branch_feature_maps`.
        branch_logits: a list of `N` tensors `(batch, num_classes)`.

    Output shape:
        `(batch, num_classes)`, and `(batch, N)` for the weights when
        `return_fusion_weights=True`.

    Example:

    >>> maps = [keras.Input((8, 8, 64)) for _ in range(3)]
    >>> logits = [keras.layers.Dense(10)(keras.layers.Flatten()(m))
    ...           for m in maps]
    >>> ensemble, weights = FeatureFusion(3, return_fusion_weights=True)(
    ...     maps, logits)
    >>> tuple(ensemble.shape), tuple(weights.shape)
    ((None, 10), (None, 3))
    """

    def __init__(
        self,
        num_branches,
        return_fusion_weights=False,
        data_format=None,
        kernel_initializer=None,
        bias_initializer=None,
        regularizer=None,
        **kwargs,
    ):
        super().__init__(**kwargs)
        if int(num_branches) < 2:
            raise ValueError(
                "FeatureFusion needs at least 2 branches; got num_branches="
                f"{num_branches}."
            )
        self.num_branches = int(num_branches)
        self.return_fusion_weights = return_fusion_weights
        self.data_format = data_format or keras.config.image_data_format()
        self.kernel_initializer = _pytorch_init.get_initializer(
            kernel_initializer
        )
        self.bias_initializer = _pytorch_init.get_initializer(bias_initializer)
        self.regularizer = keras.regularizers.get(regularizer)

    def _channels_axis(self):
        return -1 if self.data_format == "channels_last" else 1

    def build(self, feature_maps_shape, branch_logits_shape):
        shapes = [tuple(shape) for shape in feature_maps_shape]
        if (
            len(shapes) != self.num_branches
            or len(branch_logits_shape) != self.num_branches
        ):
            raise ValueError(
                f"FeatureFusion(num_branches={self.num_branches}) received "
                f"{len(shapes)} feature maps and {len(branch_logits_shape)} "
                "branch logits."
            )
        if any(len(s) != 4 for s in shapes) or len({s[1:] for s in shapes}) > 1:
            raise ValueError(
                "FeatureFusion needs 4D feature maps of one shape, one per "
                f"branch; got shapes {shapes}. Pass the student's "
                "`branch_feature_maps` (its branches must end in global "
                "pooling + Dense)."
            )
        channels = shapes[0][self._channels_axis()]
        layers = keras.layers
        self.fuse_conv = layers.Conv2D(
            channels,
            1,
            use_bias=False,
            data_format=self.data_format,
            kernel_initializer=keras.initializers.VarianceScaling(
                2.0, mode="fan_out", distribution="untruncated_normal"
            ),
            kernel_regularizer=self.regularizer,
            name=f"{self.name}_conv",
        )
        self.fuse_norm = layers.BatchNormalization(
            axis=self._channels_axis(),
            momentum=0.9,
            epsilon=1e-5,
            gamma_regularizer=self.regularizer,
            beta_regularizer=self.regularizer,
            name=f"{self.name}_conv_bn",
        )
        self.pool = layers.GlobalAveragePooling2D(
            data_format=self.data_format, name=f"{self.name}_pool"
        )
        self.attention_dense = layers.Dense(
            self.num_branches,
            kernel_initializer=_pytorch_init.kernel_initializer(
                self.kernel_initializer
            ),
            bias_initializer=_pytorch_init.bias_initializer(
                channels, self.bias_initializer
            ),
            kernel_regularizer=self.regularizer,
            bias_regularizer=self.regularizer,
            name=f"{self.name}_dense",
        )
        self.attention_norm = layers.BatchNormalization(
            momentum=0.9,
            epsilon=1e-5,
            gamma_regularizer=self.regularizer,
            beta_regularizer=self.regularizer,
            name=f"{self.name}_dense_bn",
        )
        fused_shape = list(shapes[0])
        fused_shape[self._channels_axis()] = channels * self.num_branches
        self.fuse_conv.build(tuple(fused_shape))
        self.fuse_norm.build(self.fuse_conv.compute_output_shape(fused_shape))
        self.attention_dense.build((None, channels))
        self.attention_norm.build((None, self.num_branches))

    def call(self, feature_maps, branch_logits, training=None):
        fused = ops.concatenate(feature_maps, axis=self._channels_axis())
        fused = self.fuse_norm(self.fuse_conv(fused), training=training)
        scores = self.attention_dense(self.pool(ops.relu(fused)))
        scores = self.attention_norm(scores, training=training)
        weights = ops.softmax(ops.relu(scores), axis=-1)
        stacked = ops.stack(branch_logits, axis=1)
        ensemble_logits = ops.einsum("bn,bnc->bc", weights, stacked)
        if self.return_fusion_weights:
            return ensemble_logits, weights
        return ensemble_logits

    def expand(self, feature_maps, branch_logits, training=None):
        """The same computation written with built-in Keras layers.

        Shares this layer's weights; used to export the ensemble as a plain
        Keras model that loads without keras_one.
        """
        layers = keras.layers
        fused = layers.Concatenate(axis=self._channels_axis())(feature_maps)
        fused = layers.ReLU()(self.fuse_norm(self.fuse_conv(fused)))
        scores = self.attention_norm(self.attention_dense(self.pool(fused)))
        weights = layers.Softmax()(layers.ReLU()(scores))
        num_classes = branch_logits[0].shape[-1]
        stacked = layers.Concatenate(axis=1)(
            [layers.Reshape((1, num_classes))(z) for z in branch_logits]
        )
        ensemble_logits = layers.Dot(axes=1)([weights, stacked])
        if self.return_fusion_weights:
            return ensemble_logits, weights
        return ensemble_logits

    def compute_output_shape(self, feature_maps_shape, branch_logits_shape):
        ensemble_shape = tuple(branch_logits_shape[0])
        if self.return_fusion_weights:
            return ensemble_shape, (ensemble_shape[0], self.num_branches)
        return ensemble_shape

    def get_config(self):
        return {
            **super().get_config(),
            "num_branches": self.num_branches,
            "return_fusion_weights": self.return_fusion_weights,
            "data_format": self.data_format,
            "kernel_initializer": _pytorch_init.serialize_initializer(
                self.kernel_initializer
            ),
            "bias_initializer": _pytorch_init.serialize_initializer(
                self.bias_initializer
            ),
            "regularizer": keras.regularizers.serialize(self.regularizer),
        }
