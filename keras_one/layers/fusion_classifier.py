import keras
from keras import ops

from keras_one.layers import _pytorch_init


@keras.saving.register_keras_serializable(package="keras_one")
class FusionClassifier(keras.layers.Layer):
    """FFL's fusion module: a classifier on the branches' fused feature maps.

    Implements the fusion module of Feature Fusion Learning (FFL; Kim, Hyun,
    Chung and Kwak, ICPR 2020, arXiv:1904.09058) as in its official code:
    the last feature maps of the branches (`C` channels each) are
    concatenated along channels, then

    depthwise 3x3 convolution (`N*C` channels) -> BatchNorm -> ReLU
    -> 1x1 convolution to `C` channels -> BatchNorm -> ReLU
    -> global average pooling -> `Dense(num_classes)`

    gives the fused logits `z_F`. The paper fuses two branches; any number
    `N >= 2` works the same way. Convolutions have no bias and are
    He-normal initialized with torch's fan (`k * k * out_channels`), the
    dense layer uses torch's default initialization (`torch.nn.Linear`'s:
    kernel and bias uniform in `+-1/sqrt(fan_in)`), and BatchNorm torch's
    momentum and epsilon, as in the official code.

    Weight decay: the official code trains the fusion module with its own
    SGD optimizer, whose weight decay (1e-5, `train_FFL.py`) applies to
    every parameter of the module; `regularizer` gives it here (the
    `"fusion_classifier"` head of `keras_one.models.heads` passes that
    official 1e-5 when the network is regularized).

    Args:
        num_classes: number of classes.
        data_format: `"channels_last"` or `"channels_first"`. Defaults to
            `keras.config.image_data_format()`.
        kernel_initializer: initializer of the `Dense` kernel. `None` (the
            default) for PyTorch's default, `keras.initializers.
            VarianceScaling(1/3, mode="fan_in", distribution="uniform")`.
        bias_initializer: initializer of the `Dense` bias. `None` (the
            default) for PyTorch's default, uniform in `+-1/sqrt(fan_in)`.
        regularizer: regularizer of every weight of the module (the
            convolution kernels, the BatchNormalization scales and offsets,
            the `Dense` kernel and bias), e.g.
            `keras.regularizers.L2(weight_decay / 2)` for PyTorch's coupled
            weight decay `weight_decay`; `None` (the default) for none.
        **kwargs: base layer keyword arguments, such as `name`.

    Call arguments:
        feature_maps: a list of `N >= 2` tensors of one shape
            `(batch, height, width, C)` (channels last): the student's
            `branch_feature_maps`.

    Output shape:
        `(batch, num_classes)`.

    Example:

    >>> maps = [keras.Input((8, 8, 64)) for _ in range(2)]
    >>> tuple(FusionClassifier(10)(maps).shape)
    (None, 10)
    """

    def __init__(
        self,
        num_classes,
        data_format=None,
        kernel_initializer=None,
        bias_initializer=None,
        regularizer=None,
        **kwargs,
    ):
        super().__init__(**kwargs)
        if int(num_classes) < 1:
            raise ValueError(f"num_classes must be >= 1; got {num_classes}.")
        self.num_classes = int(num_classes)
        self.data_format = data_format or keras.config.image_data_format()
        self.kernel_initializer = _pytorch_init.get_initializer(
            kernel_initializer
        )
        self.bias_initializer = _pytorch_init.get_initializer(bias_initializer)
        self.regularizer = keras.regularizers.get(regularizer)

    def _channels_axis(self):
        return -1 if self.data_format == "channels_last" else 1

    def build(self, feature_maps_shape):
        shapes = [tuple(shape) for shape in feature_maps_shape]
        if len(shapes) < 2 or any(len(s) != 4 for s in shapes):
            raise ValueError(
                "FusionClassifier needs the 4D feature maps of at least 2 "
                f"branches; got shapes {shapes}. Pass the student's "
                "`branch_feature_maps` (its branches must end in global "
                "pooling + Dense)."
            )
        if len({s[1:] for s in shapes}) != 1:
            raise ValueError(
                "FusionClassifier needs feature maps of one shape; got "
                f"{shapes}."
            )
        channels = shapes[0][self._channels_axis()]
        fused_channels = channels * len(shapes)
        layers = keras.layers
        self.depthwise = layers.DepthwiseConv2D(
            3,
            padding="same",
            use_bias=False,
            data_format=self.data_format,
            # torch's n = k * k * out_channels, the fan_in of Keras'
            # depthwise kernel.
            depthwise_initializer=keras.initializers.VarianceScaling(
                2.0, mode="fan_in", distribution="untruncated_normal"
            ),
            depthwise_regularizer=self.regularizer,
            name=f"{self.name}_depthwise",
        )
        self.depthwise_norm = layers.BatchNormalization(
            axis=self._channels_axis(),
            momentum=0.9,
            epsilon=1e-5,
            gamma_regularizer=self.regularizer,
            beta_regularizer=self.regularizer,
            name=f"{self.name}_depthwise_bn",
        )
        self.pointwise = layers.Conv2D(
            channels,
            1,
            use_bias=False,
            data_format=self.data_format,
            kernel_initializer=keras.initializers.VarianceScaling(
                2.0, mode="fan_out", distribution="untruncated_normal"
            ),
            kernel_regularizer=self.regularizer,
            name=f"{self.name}_pointwise",
        )
        self.pointwise_norm = layers.BatchNormalization(
            axis=self._channels_axis(),
            momentum=0.9,
            epsilon=1e-5,
            gamma_regularizer=self.regularizer,
            beta_regularizer=self.regularizer,
            name=f"{self.name}_pointwise_bn",
        )
        self.pool = layers.GlobalAveragePooling2D(
            data_format=self.data_format, name=f"{self.name}_pool"
        )
        self.classifier = layers.Dense(
            self.num_classes,
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
        fused_shape = list(shapes[0])
        fused_shape[self._channels_axis()] = fused_channels
        self.depthwise.build(tuple(fused_shape))
        self.depthwise_norm.build(tuple(fused_shape))
        self.pointwise.build(tuple(fused_shape))
        reduced_shape = self.pointwise.compute_output_shape(tuple(fused_shape))
        self.pointwise_norm.build(reduced_shape)
        self.classifier.build((None, channels))

    def call(self, feature_maps, training=None):
        fused = ops.concatenate(feature_maps, axis=self._channels_axis())
        x = self.depthwise_norm(self.depthwise(fused), training=training)
        x = ops.relu(x)
        x = self.pointwise_norm(self.pointwise(x), training=training)
        x = ops.relu(x)
        return self.classifier(self.pool(x))

    def expand(self, feature_maps, training=None):
        """The same computation written with built-in Keras layers.

        Shares this layer's weights; used to export the fused classifier
        as a plain Keras model that loads without keras_one.
        """
        layers = keras.layers
        fused = layers.Concatenate(axis=self._channels_axis())(feature_maps)
        x = layers.ReLU()(self.depthwise_norm(self.depthwise(fused)))
        x = layers.ReLU()(self.pointwise_norm(self.pointwise(x)))
        return self.classifier(self.pool(x))

    def compute_output_shape(self, feature_maps_shape):
        return (feature_maps_shape[0][0], self.num_classes)

    def get_config(self):
        return {
            **super().get_config(),
            "num_classes": self.num_classes,
            "data_format": self.data_format,
            "kernel_initializer": _pytorch_init.serialize_initializer(
                self.kernel_initializer
            ),
            "bias_initializer": _pytorch_init.serialize_initializer(
                self.bias_initializer
            ),
            "regularizer": keras.regularizers.serialize(self.regularizer),
        }
