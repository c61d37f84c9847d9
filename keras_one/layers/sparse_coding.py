import keras
from keras import ops


@keras.saving.register_keras_serializable(package="keras_one")
class SparseCoding(keras.layers.Layer):
    """Sigmoid codes of feature vectors over a learned codebook, top-k kept.

    The sparse representation layer of Sparse Representation Matching
    (SRM; Tran, Gabbouj and Iosifidis, arXiv:2103.17012, official code
    viebboy/SRM, `cifar100/code/Layers.py`): every feature vector `x` (the
    last axis, `D` channels, e.g. one pixel of a feature map) gets the
    codes `s = sigmoid(x . W + b)` over `num_codewords` codewords (the
    columns of `W`, shape `D x K`) with one scalar bias `b`. With
    `sparsity = k`, only the `k` largest codes of each vector are kept
    (the others set to 0), as the official code keeps them: every code at
    least the `k`-th largest (ties with it are kept too). The gradient
    flows through the kept codes; the choice of them is constant.

    `reconstruct(codes)` maps codes back to features, `codes . W^T`: SRM
    fits `W` and `b` by minimizing `MSE(x, reconstruct(layer(x)))`. With
    `sparsity=None` the layer returns every code: SRM's student heads.

    Initialization as the official code's: `W` is
    `torch.nn.init.kaiming_uniform_` of a `D x K` tensor, whose fan-in is
    `K` (`U(+-sqrt(6 / K))`, Keras' fan-out of this kernel), and `b` is
    `U(-1, 1)`.

    Args:
        num_codewords: `K`, the number of codewords (codes per vector).
        sparsity: `k`, the codes kept per vector (1 to `K`), or `None` to
            keep them all.
        **kwargs: base layer keyword arguments, such as `name`.

    Input shape:
        `(..., D)`, e.g. `(batch, height, width, channels)`.

    Output shape:
        `(..., num_codewords)`.

    Example:

    >>> x = keras.Input((4, 4, 8))
    >>> layer = SparseCoding(16, sparsity=2)
    >>> codes = layer(x)
    >>> tuple(codes.shape), tuple(layer.reconstruct(codes).shape)
    ((None, 4, 4, 16), (None, 4, 4, 8))
    """

    def __init__(self, num_codewords, sparsity=None, **kwargs):
        super().__init__(**kwargs)
        num_codewords = int(num_codewords)
        if num_codewords < 1:
            raise ValueError(
                f"num_codewords must be >= 1; got {num_codewords}."
            )
        if sparsity is not None and not 1 <= int(sparsity) <= num_codewords:
            raise ValueError(
                f"sparsity must lie in [1, num_codewords={num_codewords}] "
                f"or be None; got {sparsity}."
            )
        self.num_codewords = num_codewords
        self.sparsity = None if sparsity is None else int(sparsity)

    def build(self, input_shape):
        self.codewords = self.add_weight(
            shape=(input_shape[-1], self.num_codewords),
            initializer=keras.initializers.VarianceScaling(
                2.0, mode="fan_out", distribution="uniform"
            ),
            name="codewords",
        )
        self.bias = self.add_weight(
            shape=(),
            initializer=keras.initializers.RandomUniform(-1.0, 1.0),
            name="bias",
        )

    def call(self, inputs):
        codes = ops.sigmoid(ops.matmul(inputs, self.codewords) + self.bias)
        if self.sparsity is None:
            return codes
        kth = ops.top_k(codes, self.sparsity)[0][..., -1:]
        keep = ops.stop_gradient(ops.cast(codes >= kth, codes.dtype))
        return codes * keep

    def reconstruct(self, codes):
        """The features the codes stand for: `codes . W^T`."""
        return ops.matmul(codes, ops.transpose(self.codewords))

    def compute_output_shape(self, input_shape):
        return (*input_shape[:-1], self.num_codewords)

    def get_config(self):
        return {
            **super().get_config(),
            "num_codewords": self.num_codewords,
            "sparsity": self.sparsity,
        }
