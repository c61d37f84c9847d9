import keras
from keras import ops

from keras_one.layers.fused_layer import FusedLayer
from keras_one.layers.fused_layer import check_tensorflow_backend

# Whether this process's TensorFlow trains grouped convolutions with its
# own kernels: None until `native_grouped_conv()` first probes it.
_NATIVE_GROUPED_CONV = None


def native_grouped_conv():
    """Whether TensorFlow trains grouped convolutions natively here.

    `tf.nn.conv2d` computes a grouped convolution (input channels a
    multiple of the kernel's) on GPUs and, on CPUs, with oneDNN, forward
    and backward. TensorFlow enables oneDNN by default only on x86 CPUs
    with AVX-512 VNNI or BF16 or AMX (or with `TF_ENABLE_ONEDNN_OPTS=1`);
    without it, its CPU kernels compute the forward pass but refuse the
    gradients ("Gradients for grouped convolutions are not supported on
    CPU", seen on an AVX2-only AMD EPYC). So the answer is probed once per
    process, by running the gradient kernels of a tiny grouped
    convolution.
    """
    global _NATIVE_GROUPED_CONV
    if _NATIVE_GROUPED_CONV is None:
        import tensorflow as tf

        # Eagerly, even while a function is traced (`init_scope`, which
        # also pauses gradient tapes: hence the gradients' own kernels).
        with tf.init_scope():
            ones = tf.ones((1, 2, 2, 2))
            kernel = tf.ones((1, 1, 1, 2))  # 2 groups of 1 channel
            try:
                tf.raw_ops.Conv2DBackpropInput(
                    input_sizes=[1, 2, 2, 2],
                    filter=kernel,
                    out_backprop=ones,
                    strides=[1, 1, 1, 1],
                    padding="SAME",
                )
                tf.raw_ops.Conv2DBackpropFilter(
                    input=ones,
                    filter_sizes=[1, 1, 1, 2],
                    out_backprop=ones,
                    strides=[1, 1, 1, 1],
                    padding="SAME",
                )
                _NATIVE_GROUPED_CONV = True
            except (
                tf.errors.InvalidArgumentError,
                tf.errors.UnimplementedError,
            ):
                _NATIVE_GROUPED_CONV = False
    return _NATIVE_GROUPED_CONV


@keras.saving.register_keras_serializable(package="keras_one")
class FusedConv2D(FusedLayer):
    """`N` branches' 2D convolutions computed as one convolution.

    Stands for `num_branches` copies of `keras.layers.Conv2D(filters,
    kernel_size, strides, padding="same", use_bias=False)`. With
    `shared_input=True` every branch reads the whole input (the features
    that the branches share): the layer is one convolution with `N *
    filters` filters. Otherwise the input holds the branches' own feature
    maps side by side on the channel axis (branch `i`'s are the `i`-th of
    `N` equal groups of channels) and each branch's filters read only its
    own: a grouped convolution (`groups=N`), computed by TensorFlow's
    native grouped kernel (Keras' TensorFlow backend computes grouped
    convolutions through XLA on CPUs, about 20x slower), or, where
    TensorFlow cannot train that kernel (CPUs without oneDNN: see
    `native_grouped_conv`), as `N` convolutions of the branches' channel
    groups, concatenated. Either way output
    channels `[i * filters, (i + 1) * filters)` belong to branch `i`, and
    the kernel holds the branches' kernels side by side on its last axis,
    each initialized as a separate weight.

    Needs the TensorFlow backend: on the others it raises an error that
    says what to use instead.

    Args:
        num_branches: `N`, at least 1.
        filters: filters of each branch.
        kernel_size: height and width of the convolution window (an int).
        strides: strides of the convolution (an int).
        shared_input: whether every branch reads the whole input, rather
            than its own group of channels.
        kernel_initializer: initializer of each branch's kernel.
        kernel_regularizer: regularizer of the kernel (for an L2 penalty,
            the sum of the branches' penalties).
        **kwargs: base layer keyword arguments, such as `name`.

    Input shape:
        `(batch, height, width, channels)`: with `shared_input=False`,
        `channels` is `N` times the channels of one branch.

    Output shape:
        `(batch, ceil(height / strides), ceil(width / strides), N *
        filters)`.

    Example:

    >>> layer = FusedConv2D(3, filters=8, kernel_size=3)
    >>> x = np.zeros((2, 5, 5, 3 * 4), "float32")  # 3 branches' 4 channels
    >>> tuple(layer(x).shape), tuple(layer.kernel.shape)
    ((2, 5, 5, 24), (3, 3, 4, 24))
    """

    def __init__(
        self,
        num_branches,
        filters,
        kernel_size,
        strides=1,
        shared_input=False,
        kernel_initializer="glorot_uniform",
        kernel_regularizer=None,
        **kwargs,
    ):
        check_tensorflow_backend(type(self).__name__)
        super().__init__(num_branches, **kwargs)
        self.filters = int(filters)
        self.kernel_size = int(kernel_size)
        self.strides = int(strides)
        self.shared_input = bool(shared_input)
        self.kernel_initializer = keras.initializers.get(kernel_initializer)
        self.kernel_regularizer = keras.regularizers.get(kernel_regularizer)
        self.input_spec = keras.layers.InputSpec(ndim=4)

    def build(self, input_shape):
        channels = input_shape[-1]
        if not self.shared_input:
            if channels % self.num_branches:
                raise ValueError(
                    f"{self.name!r} reads {self.num_branches} branches' "
                    f"feature maps, so its input channels must be a "
                    f"multiple of {self.num_branches}; got {channels}."
                )
            channels //= self.num_branches
        self.kernel = self.add_branch_weight(
            "kernel",
            (self.kernel_size, self.kernel_size, channels, self.filters),
            self.kernel_initializer,
            self.kernel_regularizer,
        )

    def call(self, inputs):
        if self.shared_input:
            return ops.conv(inputs, self.kernel, self.strides, padding="same")
        # TensorFlow only (the layer needs that backend).
        import tensorflow as tf

        if native_grouped_conv():
            return tf.nn.conv2d(inputs, self.kernel, self.strides, "SAME")
        groups = zip(
            tf.split(inputs, self.num_branches, axis=-1),
            tf.split(self.kernel, self.num_branches, axis=-1),
            strict=True,
        )
        return tf.concat(
            [tf.nn.conv2d(x, k, self.strides, "SAME") for x, k in groups],
            axis=-1,
        )

    def compute_output_shape(self, input_shape):
        size = [
            None if d is None else -(-d // self.strides)
            for d in input_shape[1:3]
        ]
        return (input_shape[0], *size, self.num_branches * self.filters)

    def get_config(self):
        return {
            **super().get_config(),
            "filters": self.filters,
            "kernel_size": self.kernel_size,
            "strides": self.strides,
            "shared_input": self.shared_input,
            "kernel_initializer": keras.initializers.serialize(
                self.kernel_initializer
            ),
            "kernel_regularizer": keras.regularizers.serialize(
                self.kernel_regularizer
            ),
        }
