import keras
import numpy as np
import pytest
from keras import ops

from keras_one import export
from keras_one.layers import FeatureFusion

pytestmark = pytest.mark.backend_portable


def np_softmax(z):
    e = np.exp(z - z.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


def np_batch_norm(x, norm):
    gamma, beta, mean, variance = [w.numpy() for w in norm.weights]
    return gamma * (x - mean) / np.sqrt(variance + 1e-5) + beta


def build(num_branches=3, channels=4, classes=5):
    maps = [keras.Input((6, 6, channels)) for _ in range(num_branches)]
    logits = [keras.Input((classes,)) for _ in range(num_branches)]
    layer = FeatureFusion(
        num_branches, return_fusion_weights=True, name="fusion"
    )
    ensemble, weights = layer(maps, logits)
    return keras.Model([*maps, *logits], [ensemble, weights]), layer


def random_inputs(num_branches=3, channels=4, classes=5, batch=3, seed=0):
    rng = np.random.default_rng(seed)
    maps = [
        rng.normal(size=(batch, 6, 6, channels)).astype("float32")
        for _ in range(num_branches)
    ]
    logits = [
        rng.normal(size=(batch, classes)).astype("float32") * 2
        for _ in range(num_branches)
    ]
    return maps + logits


def test_shapes_and_weights():
    model, layer = build()
    assert [tuple(o.shape) for o in model.outputs] == [(None, 5), (None, 3)]
    shapes = [tuple(w.shape) for w in layer.trainable_weights]
    # 1x1 conv, its BN, Dense(N) kernel and bias, its BN.
    assert shapes == [(1, 1, 12, 4), (4,), (4,), (4, 3), (3,), (3,), (3,)]
    assert len(layer.non_trainable_weights) == 4
    assert layer.compute_output_shape(
        [(None, 6, 6, 4)] * 3, [(None, 5)] * 3
    ) == ((None, 5), (None, 3))


def test_matches_numpy_in_inference_mode():
    model, layer = build()
    inputs = random_inputs()
    for norm in (layer.fuse_norm, layer.attention_norm):
        size = norm.gamma.shape[0]
        norm.moving_mean.assign(np.linspace(-0.3, 0.2, size))
        norm.moving_variance.assign(np.linspace(0.5, 1.5, size))
    maps, logits = inputs[:3], inputs[3:]
    fused = np.concatenate(maps, -1) @ layer.fuse_conv.kernel.numpy()[0, 0]
    fused = np.maximum(np_batch_norm(fused, layer.fuse_norm), 0)
    kernel, bias = layer.attention_dense.get_weights()
    scores = fused.mean(axis=(1, 2)) @ kernel + bias
    scores = np_batch_norm(scores, layer.attention_norm)
    weights = np_softmax(np.maximum(scores, 0))
    expected = np.einsum("bn,nbc->bc", weights, np.stack(logits))
    ensemble, got_weights = [
        ops.convert_to_numpy(y) for y in model(inputs, training=False)
    ]
    np.testing.assert_allclose(got_weights, weights, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(ensemble, expected, rtol=1e-5, atol=1e-5)


def test_expand_matches_call():
    model, _ = build()
    inputs = random_inputs(seed=1)
    plain = export.plain_keras_model(model, lambda out: out, name="plain")
    for a, b in zip(model(inputs), plain(inputs), strict=True):
        np.testing.assert_allclose(
            ops.convert_to_numpy(a),
            ops.convert_to_numpy(b),
            rtol=1e-5,
            atol=1e-6,
        )


def test_serialization_round_trip(tmp_path):
    model, _ = build()
    inputs = random_inputs(seed=2)
    model.save(tmp_path / "fusion.keras")
    loaded = keras.saving.load_model(tmp_path / "fusion.keras", safe_mode=True)
    for a, b in zip(model(inputs), loaded(inputs), strict=True):
        np.testing.assert_allclose(
            ops.convert_to_numpy(a), ops.convert_to_numpy(b), rtol=1e-6
        )


def test_learns_from_the_ensemble(gradients):
    model, layer = build(num_branches=2)
    inputs = [keras.Variable(v) for v in random_inputs(num_branches=2, seed=3)]

    def loss():
        ensemble, _ = model(inputs, training=True)
        return ops.mean(ensemble[:, 0])

    weights = layer.trainable_weights
    grads = gradients(loss, weights + inputs)
    # The Dense's bias feeds a training-mode BatchNorm, which subtracts the
    # batch mean: its gradient is zero up to round-off (exactly zero on some
    # backends). Every other weight and every input learns.
    paths = [w.path for w in weights] + [f"input {i}" for i in range(4)]
    bias = paths.index("fusion/fusion_dense/bias")
    np.testing.assert_allclose(grads[bias], 0.0, atol=1e-5)
    for path, grad in zip(paths, grads, strict=True):
        if path != paths[bias]:
            assert np.max(np.abs(grad)) > 1e-4, path


def test_errors():
    with pytest.raises(ValueError, match="at least 2 branches"):
        FeatureFusion(1)
    with pytest.raises(ValueError, match="received 2 feature maps"):
        FeatureFusion(3)([keras.Input((4, 4, 2))] * 2, [keras.Input((3,))] * 3)
    with pytest.raises(ValueError, match="branch_feature_maps"):
        FeatureFusion(2)([keras.Input((8,))] * 2, [keras.Input((3,))] * 2)
