"""PyTorch's default initialization and the layers' weight arguments.

The gate, attention and fusion layers are `torch.nn.Linear` layers in the
official code of their methods, left at PyTorch's default initialization:
`kaiming_uniform_(a=sqrt(5))` for the weight, which is
`U(-1/sqrt(fan_in), 1/sqrt(fan_in))`, here a built-in Keras
`VarianceScaling`, so the layers save and load with `safe_mode=True`.

The bias starts at zero, not at PyTorch's `U(-1/sqrt(fan_in),
1/sqrt(fan_in))`: with a `RandomUniform` bias, training under JAX's
`keras.distribution.DataParallel` ended 7e-4 away from one device's
training (tests/backends/test_jax_data_parallel.py, Keras 3.15.1; the
cause is not found yet), where a zero bias keeps the two equal.
"""

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
    """A fresh bias initializer: zeros by default, or a copy of one.

    PyTorch's default bias of a layer with `fan_in` inputs is
    `U(-1/sqrt(fan_in), 1/sqrt(fan_in))`; the default here is zeros (see
    the module's docstring).

    Args:
        fan_in: the number of inputs of the layer.
        initializer: `None` for PyTorch's default, or a
            `keras.initializers.Initializer`.

    Returns:
        A `keras.initializers.Initializer` (or `initializer` itself, if it
        is a plain function).
    """
    if initializer is None:
        # Zeros, not PyTorch's uniform law: see the module's docstring.
        return keras.initializers.Zeros()
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
