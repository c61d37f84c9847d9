import keras
from keras import ops


@keras.saving.register_keras_serializable(package="keras_one")
class GradientScale(keras.layers.Layer):
    """Identity in the forward pass; multiplies the gradient by `scale`.

    The backpropagation rescaling of collaborative learning with
    intermediate-level representation sharing (CL-ILR; Song and Chai,
    NeurIPS 2018, arXiv:1805.11761): placed where a shared trunk feeds `N`
    branches, with `scale = 1 / N`, it keeps the gradient that reaches the
    trunk (the sum of the `N` branches' gradients) on the scale of a single
    network's, so the shared layers are not updated `N` times too fast.

    The forward pass returns its input unchanged, bit for bit:
    `x + (scale - 1) * (x - stop_gradient(x))` is `x` (the bracket is exactly
    zero), and its gradient with respect to `x` is `scale`. Written with
    `keras.ops` only, so it works on every backend and under XLA.

    Args:
        scale: the factor applied to the gradient, e.g. `1 / num_branches`.
        **kwargs: base layer keyword arguments, such as `name`.

    Input shape:
        Any.

    Output shape:
        Same as the input.

    Example:

    >>> x = keras.Input((8, 8, 16))
    >>> y = GradientScale(1 / 3)(x)
    >>> tuple(y.shape)
    (None, 8, 8, 16)
    """

    def __init__(self, scale, **kwargs):
        super().__init__(**kwargs)
        self.scale = float(scale)
        self.built = True

    def call(self, inputs):
        residual = inputs - ops.stop_gradient(inputs)
        return inputs + (self.scale - 1.0) * residual

    def expand(self, inputs):
        """The plain-Keras form used for export: the identity.

        Exported models are for inference, where the gradient scaling
        does not matter; they need nothing from keras_one.
        """
        return inputs

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        return {**super().get_config(), "scale": self.scale}
