import keras
from keras import ops

from keras_one.layers.fused_layer import FusedLayer


@keras.saving.register_keras_serializable(package="keras_one")
class FusedDense(FusedLayer):
    """`N` branches' Dense layers computed as one batched product.

    Stands for `num_branches` copies of `keras.layers.Dense(units)`, branch
    `i` reading the `i`-th of `N` equal groups of input features (the
    branches' features side by side, as the other fused layers give them).
    The `N` products are one batched matrix product; output units `[i *
    units, (i + 1) * units)` belong to branch `i`. The kernel and the bias
    hold the branches' kernels and biases side by side on their last axis,
    each kernel initialized as a separate weight.

    Uses `keras.ops` only, so it runs on every backend.

    Args:
        num_branches: `N`, at least 1.
        units: units of each branch.
        kernel_initializer: initializer of each branch's kernel.
        bias_initializer: initializer of each branch's bias.
        kernel_regularizer: regularizer of the kernel.
        bias_regularizer: regularizer of the bias.
        **kwargs: base layer keyword arguments, such as `name`.

    Input shape:
        `(batch, N * features)`.

    Output shape:
        `(batch, N * units)`.

    Example:

    >>> layer = FusedDense(3, units=10)
    >>> x = np.zeros((2, 3 * 64), "float32")  # 3 branches' 64 features
    >>> tuple(layer(x).shape), tuple(layer.kernel.shape)
    ((2, 30), (64, 30))
    """

    def __init__(
        self,
        num_branches,
        units,
        kernel_initializer="glorot_uniform",
        bias_initializer="zeros",
        kernel_regularizer=None,
        bias_regularizer=None,
        **kwargs,
    ):
        super().__init__(num_branches, **kwargs)
        self.units = int(units)
        self.kernel_initializer = keras.initializers.get(kernel_initializer)
        self.bias_initializer = keras.initializers.get(bias_initializer)
        self.kernel_regularizer = keras.regularizers.get(kernel_regularizer)
        self.bias_regularizer = keras.regularizers.get(bias_regularizer)
        self.input_spec = keras.layers.InputSpec(ndim=2)

    def build(self, input_shape):
        features = input_shape[-1]
        if features % self.num_branches:
            raise ValueError(
                f"{self.name!r} reads {self.num_branches} branches' "
                f"features, so its input size must be a multiple of "
                f"{self.num_branches}; got {features}."
            )
        self.features = features // self.num_branches
        self.kernel = self.add_branch_weight(
            "kernel",
            (self.features, self.units),
            self.kernel_initializer,
            self.kernel_regularizer,
        )
        self.bias = self.add_branch_weight(
            "bias", (self.units,), self.bias_initializer, self.bias_regularizer
        )

    def call(self, inputs):
        n = self.num_branches
        features = ops.reshape(inputs, (-1, n, self.features))
        kernel = ops.reshape(self.kernel, (self.features, n, self.units))
        outputs = ops.einsum("bnf,fnu->bnu", features, kernel)
        return ops.reshape(outputs, (-1, n * self.units)) + self.bias

    def compute_output_shape(self, input_shape):
        return (input_shape[0], self.num_branches * self.units)

    def get_config(self):
        return {
            **super().get_config(),
            "units": self.units,
            "kernel_initializer": keras.initializers.serialize(
                self.kernel_initializer
            ),
            "bias_initializer": keras.initializers.serialize(
                self.bias_initializer
            ),
            "kernel_regularizer": keras.regularizers.serialize(
                self.kernel_regularizer
            ),
            "bias_regularizer": keras.regularizers.serialize(
                self.bias_regularizer
            ),
        }
