import keras
import numpy as np
import pytest
from keras import ops

from keras_one import export
from keras_one.layers import PeerAttention

pytestmark = pytest.mark.backend_portable


def np_softmax(z):
    e = np.exp(z - z.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


def build(num_peers=3, dim=16, classes=5, projection_dim=None):
    features = [keras.Input((dim,)) for _ in range(num_peers)]
    logits = [keras.Input((classes,)) for _ in range(num_peers)]
    layer = PeerAttention(
        projection_dim, return_attention_weights=True, name="attention"
    )
    targets, attention = layer(features, logits)
    model = keras.Model([*features, *logits], [*targets, attention])
    return model, layer


def random_inputs(num_peers=3, dim=16, classes=5, batch=4, seed=0):
    rng = np.random.default_rng(seed)
    return [
        rng.normal(size=(batch, dim)).astype("float32")
        for _ in range(num_peers)
    ] + [
        rng.normal(size=(batch, classes)).astype("float32") * 3
        for _ in range(num_peers)
    ]


def test_shapes_and_weights():
    model, layer = build()
    assert [tuple(o.shape) for o in model.outputs] == [(None, 5)] * 3 + [
        (None, 3, 3)
    ]
    # Bias-free query and key projections, 16 -> 16 // 8 = 2 by default.
    assert [tuple(w.shape) for w in layer.trainable_weights] == [(16, 2)] * 2
    assert layer.compute_output_shape([(None, 16)] * 3, [(None, 5)] * 3) == (
        [(None, 5)] * 3,
        (None, 3, 3),
    )
    _, layer = build(projection_dim=4)
    assert layer.query.units == 4 and layer.key.units == 4


def test_matches_numpy():
    model, layer = build()
    inputs = random_inputs()
    outputs = [ops.convert_to_numpy(y) for y in model(inputs)]
    features, logits = np.stack(inputs[:3], 1), np.stack(inputs[3:], 1)
    q = features @ layer.query.kernel.numpy()
    k = features @ layer.key.kernel.numpy()
    attention = np_softmax(np.einsum("bid,bjd->bij", q, k))
    targets = np.einsum("bij,bjc->bic", attention, logits)
    np.testing.assert_allclose(outputs[3], attention, rtol=1e-5)
    for i in range(3):
        np.testing.assert_allclose(
            outputs[i], targets[:, i], rtol=1e-5, atol=1e-6
        )
    np.testing.assert_allclose(np.sum(outputs[3], -1), 1.0, rtol=1e-6)


def test_expand_matches_call_and_needs_no_keras_one():
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
    model.save(tmp_path / "attention.keras")
    loaded = keras.saving.load_model(
        tmp_path / "attention.keras", safe_mode=True
    )
    for a, b in zip(model(inputs), loaded(inputs), strict=True):
        np.testing.assert_allclose(
            ops.convert_to_numpy(a), ops.convert_to_numpy(b), rtol=1e-6
        )


def test_projections_learn_from_the_targets(gradients):
    model, layer = build()
    inputs = random_inputs(seed=3)

    def loss():
        return ops.sum(model(inputs)[0][:, 0])

    grads = gradients(loss, layer.trainable_weights)
    assert all(np.any(g != 0) for g in grads)


def test_errors():
    with pytest.raises(ValueError, match="at least 2 peers"):
        PeerAttention()([keras.Input((8,))], [keras.Input((3,))])
    with pytest.raises(ValueError, match="branch_features"):
        PeerAttention()([keras.Input((2, 2, 8))] * 2, [keras.Input((3,))] * 2)
