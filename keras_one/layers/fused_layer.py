import keras
from keras import ops


def check_tensorflow_backend(name):
    """Raises a clear error unless Keras runs on the TensorFlow backend.

    The fused branches compute their grouped convolutions with TensorFlow's
    own kernel; on the other backends the same network is built as `N`
    separate branches.
    """
    backend = keras.backend.backend()
    if backend != "tensorflow":
        raise NotImplementedError(
            f"{name} computes the branches' grouped convolutions with "
            "TensorFlow's kernels and needs the TensorFlow backend "
            f"(KERAS_BACKEND=tensorflow); Keras runs on {backend!r}. Build "
            "the branches separately instead: "
            "keras_one.models.cifar_resnet(..., fused=False) computes the "
            "same network as N copies on every backend."
        )


def branch_slice(value, index, num_branches):
    """Branch `index`'s share of a fused weight or output.

    The fused layers hold the weights of their branches side by side on the
    last axis (and so does a BatchNormalization of their outputs): branch
    `i`'s share of a value with `N * k` entries on that axis is
    `value[..., i * k : (i + 1) * k]`.
    """
    size = value.shape[-1] // num_branches
    return value[..., index * size : (index + 1) * size]


class FusedLayer(keras.layers.Layer):
    """Base of the layers that compute `N` branches' copies of a layer as one.

    A fused layer stands for `num_branches` copies of a built-in layer, each
    with its own weights. It holds each weight of the copies side by side on
    the last axis (see `branch_slice`), and its outputs lie side by side on
    the last axis the same way. Subclasses create their weights with
    `add_branch_weight`, which initializes every branch's share as a
    separate weight of the built-in layer would be: with the fan-in and
    fan-out of one branch, and independent values.

    Args:
        num_branches: `N`, at least 1.
        **kwargs: base layer keyword arguments, such as `name`.
    """

    def __init__(self, num_branches, **kwargs):
        super().__init__(**kwargs)
        if int(num_branches) < 1:
            raise ValueError(
                f"{type(self).__name__} needs num_branches >= 1; got "
                f"{num_branches}."
            )
        self.num_branches = int(num_branches)

    def add_branch_weight(
        self, name, branch_shape, initializer, regularizer=None
    ):
        """Adds a weight holding `num_branches` weights of `branch_shape`.

        Args:
            name: the weight's name.
            branch_shape: shape of one branch's weight.
            initializer: initializer of one branch's weight, called once per
                branch.
            regularizer: regularizer of the whole weight.

        Returns:
            The variable, of shape `branch_shape[:-1] + (N *
            branch_shape[-1],)`.
        """
        branch_shape = tuple(branch_shape)
        initializer = keras.initializers.get(initializer)

        def initialize(shape, dtype=None):
            # A fresh initializer per branch: an initializer called twice
            # with its own seed gives the same values.
            config = initializer.get_config()
            if "seed" in config:
                config["seed"] = None
            return ops.concatenate(
                [
                    type(initializer).from_config(config)(
                        branch_shape, dtype=dtype
                    )
                    for _ in range(self.num_branches)
                ],
                axis=-1,
            )

        return self.add_weight(
            shape=branch_shape[:-1] + (self.num_branches * branch_shape[-1],),
            initializer=initialize,
            regularizer=regularizer,
            name=name,
        )

    def get_config(self):
        return {**super().get_config(), "num_branches": self.num_branches}
