"""PyTorch's default initialization and the layers' weight arguments.

The gate, attention and fusion layers are `torch.nn.Linear` layers in the
official code of their methods, left at PyTorch's default initialization:
`kaiming_uniform_(a=sqrt(5))` for the weight, which is
`U(-1/sqrt(fan_in), 1/sqrt(fan_in))`, and the same uniform law for the
bias. Both are built-in Keras initializers (`VarianceScaling` and
`RandomUniform`), so the layers save and load with `safe_mode=True`.
"""

import math

import keras


def kernel_initializer(initializer=None):
    """A fresh kernel initializer: PyTorch's default, or a copy of one.

    PyTorch's default is `VarianceScaling(1/3, "fan_in", "uniform")`, whose
    limit `sqrt(3 * scale / fan_in)` is `1/sqrt(fan_in)`. A given
    initializer is copied, so that each weight draws its own values (a
    Keras initializer called twice returns the same values).

    Args:
        initializer: `None` for PyTorch's default, or a
            `keras.initializers.Initializer`.

    Returns:
        A `keras.initializers.Initializer` (or `initializer` itself, if it
        is a plain function).
    """
    if initializer is None:
        return keras.initializers.VarianceScaling(
            1.0 / 3.0, mode="fan_in", distribution="uniform"
        )
    return _copy(initializer)


def bias_initializer(fan_in, initializer=None):
    """A fresh bias initializer: PyTorch's default, or a copy of one.

    PyTorch's default bias of a layer with `fan_in` inputs is
    `U(-1/sqrt(fan_in), 1/sqrt(fan_in))`.

    Args:
        fan_in: the number of inputs of the layer.
        initializer: `None` for PyTorch's default, or a
            `keras.initializers.Initializer`.

    Returns:
        A `keras.initializers.Initializer` (or `initializer` itself, if it
        is a plain function).
    """
    if initializer is None:
        limit = 1.0 / math.sqrt(fan_in)
        return keras.initializers.RandomUniform(-limit, limit)
    return _copy(initializer)


def _copy(initializer):
    if isinstance(initializer, keras.initializers.Initializer):
        return type(initializer).from_config(initializer.get_config())
    return initializer


def get_initializer(identifier):
    """`None` (PyTorch's default), or `keras.initializers.get(identifier)`."""
    if identifier is None:
        return None
    return keras.initializers.get(identifier)


def serialize_initializer(initializer):
    """The config of an initializer, `None` for PyTorch's default."""
    if initializer is None:
        return None
    return keras.initializers.serialize(initializer)
