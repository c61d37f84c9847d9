import keras
import numpy as np
import pytest
from keras import ops

from keras_one.layers import GatedEnsemble

pytestmark = pytest.mark.backend_portable


def np_softmax(z):
    e = np.exp(z - z.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


def build(num_branches=3, channels=6, classes=5):
    features = keras.Input((4, 4, channels))
    logits = [keras.Input((classes,)) for _ in range(num_branches)]
    layer = GatedEnsemble(num_branches, return_gate_weights=True, name="gate")
    ensemble, gate = layer(features, logits)
    return keras.Model([features, *logits], [ensemble, gate]), layer


def test_shapes_and_weights():
    model, layer = build()
    assert tuple(model.outputs[0].shape) == (None, 5)
    assert tuple(model.outputs[1].shape) == (None, 3)
    # Dense kernel + bias, BatchNorm gamma + beta.
    assert len(layer.trainable_weights) == 4
    assert len(layer.non_trainable_weights) == 2
    assert layer.compute_output_shape((None, 4, 4, 6), [(None, 5)] * 3) == (
        (None, 5),
        (None, 3),
    )


def test_matches_numpy_gate_in_inference_mode():
    model, layer = build()
    rng = np.random.default_rng(0)
    features = rng.normal(size=(2, 4, 4, 6)).astype("float32")
    logits = [rng.normal(size=(2, 5)).astype("float32") for _ in range(3)]
    ensemble, gate = [
        ops.convert_to_numpy(y)
        for y in model([features, *logits], training=False)
    ]
    kernel, bias = layer.gate_dense.get_weights()
    gamma, beta, mean, variance = layer.gate_norm.get_weights()
    scores = features.mean(axis=(1, 2)) @ kernel + bias
    scores = gamma * (scores - mean) / np.sqrt(variance + 1e-5) + beta
    expected_gate = np_softmax(np.maximum(scores, 0.0))
    expected = np.einsum("bn,nbc->bc", expected_gate, np.stack(logits))
    np.testing.assert_allclose(gate, expected_gate, rtol=1e-5)
    np.testing.assert_allclose(ensemble, expected, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(np.sum(gate, axis=-1), 1.0, rtol=1e-6)


def test_accepts_pooled_features():
    features = keras.Input((6,))
    logits = [keras.Input((5,)) for _ in range(2)]
    out = GatedEnsemble(2)(features, logits)
    assert tuple(out.shape) == (None, 5)


def test_serialization_round_trip(tmp_path):
    model, _ = build()
    rng = np.random.default_rng(1)
    inputs = [rng.normal(size=(2, 4, 4, 6)).astype("float32")] + [
        rng.normal(size=(2, 5)).astype("float32") for _ in range(3)
    ]
    model.save(tmp_path / "gate.keras")
    loaded = keras.saving.load_model(tmp_path / "gate.keras", safe_mode=True)
    for a, b in zip(model(inputs), loaded(inputs), strict=True):
        np.testing.assert_allclose(
            ops.convert_to_numpy(a), ops.convert_to_numpy(b), rtol=1e-6
        )


def test_gate_learns(gradients):
    model, layer = build(num_branches=2)
    rng = np.random.default_rng(0)
    features = rng.normal(size=(8, 4, 4, 6)).astype("float32")
    logits = [rng.normal(size=(8, 5)).astype("float32") for _ in range(2)]

    def loss():
        ensemble, _ = model([features, *logits], training=True)
        return ops.mean(ensemble[:, 0])

    weights = layer.trainable_weights
    paths = [w.path for w in weights]
    grads = dict(zip(paths, gradients(loss, weights), strict=True))
    # The gate Dense's bias feeds a training-mode BatchNorm, which subtracts
    # the batch mean: its gradient is zero up to round-off (exactly zero on
    # some backends). Every other weight learns.
    np.testing.assert_allclose(grads.pop("gate/dense/bias"), 0.0, atol=1e-5)
    assert sorted(grads) == [
        "gate/batch_norm/beta",
        "gate/batch_norm/gamma",
        "gate/dense/kernel",
    ]
    for path, grad in grads.items():
        assert np.max(np.abs(grad)) > 1e-4, path


def test_expand_matches_call():
    model, layer = build()
    features = keras.Input((4, 4, 6))
    logits = [keras.Input((5,)) for _ in range(3)]
    plain = keras.Model(
        [features, *logits], list(layer.expand(features, logits))
    )
    rng = np.random.default_rng(2)
    inputs = [rng.normal(size=(3, 4, 4, 6)).astype("float32")] + [
        rng.normal(size=(3, 5)).astype("float32") for _ in range(3)
    ]
    for a, b in zip(model(inputs), plain(inputs), strict=True):
        np.testing.assert_allclose(
            ops.convert_to_numpy(a),
            ops.convert_to_numpy(b),
            rtol=1e-5,
            atol=1e-6,
        )
    assert not any(
        type(sub).__module__.startswith("keras_one") for sub in plain.layers
    )


def test_errors():
    with pytest.raises(ValueError, match="at least 2 branches"):
        GatedEnsemble(1)
    with pytest.raises(ValueError, match="received 2 branch logits"):
        GatedEnsemble(3)(keras.Input((6,)), [keras.Input((5,))] * 2)
