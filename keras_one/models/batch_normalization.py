"""Faster batch normalization in a network built elsewhere."""

import keras

from keras_one.layers.fused_batch_normalization import FusedBatchNormalization


def with_fused_batch_normalization(model):
    """A copy of `model` whose BatchNormalization layers run fused.

    Every `keras.layers.BatchNormalization` of `model` (in nested models
    too) becomes a `keras_one.layers.FusedBatchNormalization` with the same
    configuration and weights: the same results up to float rounding, in
    training and in inference, computed on the TensorFlow backend by one
    fused kernel instead of Keras' elementary operations. The other layers
    are copies with the same weights; `model` itself is left as it is.

    This matters most under mixed precision: Keras casts a `bfloat16` or
    `float16` feature map to float32 before normalizing it and back after,
    while the fused kernel reads it as it is. On a CPU with AMX (CIFAR
    ResNet-32 ONE-3, one thread, `mixed_bfloat16`) the training step takes
    about half the time (see the README's mixed-precision section and
    `bench/throughput.py`'s `one_keras_bn_bf16`). `keras_one.models`'
    own networks use `FusedBatchNormalization` already; this gives a network
    from `keras.applications`, keras-hub or your own code the same, before
    `make_multi_branch` or a `Distiller`. On the JAX and PyTorch backends
    the layers compute as Keras' own, so the copy changes nothing there.
    `keras_one.export` turns the layers back into plain
    `BatchNormalization`.

    Args:
        model: a functional or `Sequential` `keras.Model` (Keras can copy
            those; a subclassed model builds its layers in its own code:
            create them as `FusedBatchNormalization` there).

    Returns:
        A new `keras.Model` of the same structure, built, with `model`'s
        weights.

    Raises:
        ValueError: `model` is not a functional or `Sequential` model.

    Example:

    >>> base = keras.Sequential([
    ...     keras.Input((8, 8, 3)), keras.layers.Conv2D(4, 3),
    ...     keras.layers.BatchNormalization(), keras.layers.ReLU()])
    >>> fused = with_fused_batch_normalization(base)
    >>> type(fused.layers[1]).__name__
    'FusedBatchNormalization'
    >>> x = np.random.default_rng(0).normal(size=(2, 8, 8, 3))
    >>> np.allclose(fused(x), base(x), atol=1e-5)
    True
    """
    if not isinstance(model, keras.Model):
        raise ValueError(
            "with_fused_batch_normalization needs a keras.Model (functional "
            f"or Sequential); got {type(model).__name__}."
        )
    # A functional model has `inputs`; a subclassed one has none.
    if not (
        isinstance(model, keras.Sequential) or getattr(model, "inputs", None)
    ):
        raise ValueError(
            "with_fused_batch_normalization needs a functional or Sequential "
            f"model; {type(model).__name__} is a subclassed model: create its "
            "layers as keras_one.layers.FusedBatchNormalization instead."
        )

    def clone(layer):
        if type(layer) is keras.layers.BatchNormalization:
            return FusedBatchNormalization.from_config(layer.get_config())
        return layer.__class__.from_config(layer.get_config())

    copy = keras.models.clone_model(model, clone_function=clone, recursive=True)
    copy.set_weights(model.get_weights())
    return copy
