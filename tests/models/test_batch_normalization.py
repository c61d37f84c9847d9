import keras
import numpy as np
import pytest

from keras_one.layers import FusedBatchNormalization
from keras_one.models import with_fused_batch_normalization

# On JAX and PyTorch the fused layers compute as Keras' own: the copy must
# still be the same network there.
pytestmark = pytest.mark.backend_portable


def _network():
    """A functional network with BN at the top level and in a nested model."""
    inputs = keras.Input((8, 8, 3))
    x = keras.layers.Conv2D(4, 3, padding="same")(inputs)
    x = keras.layers.BatchNormalization(momentum=0.8, epsilon=1e-3)(x)
    block_input = keras.Input((8, 8, 4))
    y = keras.layers.Conv2D(4, 3, padding="same")(block_input)
    y = keras.layers.BatchNormalization(center=True, name="inner_bn")(y)
    block = keras.Model(block_input, keras.layers.ReLU()(y), name="block")
    x = block(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    outputs = keras.layers.Dense(3)(x)
    model = keras.Model(inputs, outputs, name="net")
    # Non-trivial statistics and weights, so that copying them matters.
    rng = np.random.default_rng(0)
    model.set_weights(
        [rng.uniform(0.5, 1.5, w.shape) for w in model.get_weights()]
    )
    return model


def _numpy(tensor):
    return np.asarray(keras.ops.convert_to_numpy(tensor), "float32")


def _batch_norms(model):
    found = []
    for layer in model.layers:
        if isinstance(layer, keras.Model):
            found += _batch_norms(layer)
        elif isinstance(layer, keras.layers.BatchNormalization):
            found.append(layer)
    return found


def test_every_batch_normalization_becomes_fused_with_its_weights():
    model = _network()
    fused = with_fused_batch_normalization(model)
    old, new = _batch_norms(model), _batch_norms(fused)
    assert len(old) == len(new) == 2
    assert all(type(layer) is keras.layers.BatchNormalization for layer in old)
    assert all(type(layer) is FusedBatchNormalization for layer in new)
    for before, after in zip(old, new, strict=True):
        assert before.get_config() == after.get_config()
    for a, b in zip(model.get_weights(), fused.get_weights(), strict=True):
        np.testing.assert_array_equal(a, b)
    x = np.random.default_rng(1).normal(size=(6, 8, 8, 3)).astype("float32")
    # Inference (moving statistics) and training (batch statistics).
    np.testing.assert_allclose(
        _numpy(fused(x)), _numpy(model(x)), rtol=1e-5, atol=1e-5
    )
    np.testing.assert_allclose(
        _numpy(fused(x, training=True)),
        _numpy(model(x, training=True)),
        rtol=1e-4,
        atol=1e-4,
    )
    # Both updated their moving statistics alike; the original is still its
    # own model (not sharing layers with the copy).
    for before, after in zip(old, new, strict=True):
        np.testing.assert_allclose(
            _numpy(after.moving_variance),
            _numpy(before.moving_variance),
            rtol=1e-5,
        )
    assert not {id(v) for v in model.weights} & {id(v) for v in fused.weights}


def test_sequential_and_saving(tmp_path):
    model = keras.Sequential(
        [keras.Input((8, 8, 3)), keras.layers.Conv2D(2, 3),
         keras.layers.BatchNormalization()]
    )  # fmt: skip
    fused = with_fused_batch_normalization(model)
    assert isinstance(fused.layers[1], FusedBatchNormalization)
    path = tmp_path / "fused.keras"
    fused.save(path)
    loaded = keras.saving.load_model(path, safe_mode=True)
    assert isinstance(loaded.layers[1], FusedBatchNormalization)
    x = np.ones((1, 8, 8, 3), "float32")
    np.testing.assert_allclose(_numpy(loaded(x)), _numpy(fused(x)), rtol=1e-6)


def test_mixed_precision_keeps_its_policy():
    keras.config.set_dtype_policy("mixed_bfloat16")
    try:
        model = _network()
    finally:
        keras.config.set_dtype_policy("float32")
    fused = with_fused_batch_normalization(model)
    for layer in _batch_norms(fused):
        assert layer.dtype_policy.name == "mixed_bfloat16"
    x = np.random.default_rng(2).normal(size=(4, 8, 8, 3)).astype("float32")
    np.testing.assert_allclose(
        _numpy(fused(x, training=True)),
        _numpy(model(x, training=True)),
        rtol=0.05,
        atol=0.05,
    )


def test_a_subclassed_model_is_refused_in_one_line():
    class Net(keras.Model):
        def __init__(self):
            super().__init__()
            self.norm = keras.layers.BatchNormalization()

        def call(self, x):
            return self.norm(x)

    net = Net()
    net(np.ones((1, 4), "float32"))
    with pytest.raises(ValueError, match="Net is a subclassed model"):
        with_fused_batch_normalization(net)
    for wrong in (keras.layers.Dense(2), "resnet20"):
        with pytest.raises(ValueError, match="needs a keras.Model.*got"):
            with_fused_batch_normalization(wrong)
