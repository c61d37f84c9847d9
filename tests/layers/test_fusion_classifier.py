import keras
import numpy as np
import pytest
from keras import ops

from keras_one import export
from keras_one.layers import FusionClassifier

pytestmark = pytest.mark.backend_portable


def build(num_branches=2, channels=4, classes=5):
    maps = [keras.Input((6, 6, channels)) for _ in range(num_branches)]
    layer = FusionClassifier(classes, name="fusion")
    return keras.Model(maps, layer(maps)), layer


def random_maps(num_branches=2, channels=4, batch=3, seed=0):
    rng = np.random.default_rng(seed)
    return [
        rng.normal(size=(batch, 6, 6, channels)).astype("float32")
        for _ in range(num_branches)
    ]


def np_batch_norm(x, norm):
    gamma, beta, mean, variance = [w.numpy() for w in norm.weights]
    return gamma * (x - mean) / np.sqrt(variance + 1e-5) + beta


def np_depthwise_3x3(x, kernel):
    padded = np.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)))
    height, width = x.shape[1:3]
    out = np.zeros_like(x)
    for dy in range(3):
        for dx in range(3):
            window = padded[:, dy : dy + height, dx : dx + width]
            out += window * kernel[dy, dx, :, 0]
    return out


def test_shapes_and_weights():
    model, layer = build(num_branches=3)
    assert tuple(model.output.shape) == (None, 5)
    # depthwise kernel, BN gamma/beta, 1x1 kernel, BN gamma/beta, dense.
    shapes = [tuple(w.shape) for w in layer.trainable_weights]
    assert shapes == [
        (3, 3, 12, 1),
        (12,),
        (12,),
        (1, 1, 12, 4),
        (4,),
        (4,),
        (4, 5),
        (5,),
    ]
    assert len(layer.non_trainable_weights) == 4
    assert layer.compute_output_shape([(None, 6, 6, 4)] * 3) == (None, 5)


def test_matches_numpy_in_inference_mode():
    model, layer = build()
    maps = random_maps()
    # Non-trivial BatchNorm statistics.
    for norm in (layer.depthwise_norm, layer.pointwise_norm):
        size = norm.gamma.shape[0]
        norm.moving_mean.assign(np.linspace(-0.2, 0.3, size))
        norm.moving_variance.assign(np.linspace(0.5, 2.0, size))
    x = np.concatenate(maps, axis=-1)
    x = np_depthwise_3x3(x, layer.depthwise.kernel.numpy())
    x = np.maximum(np_batch_norm(x, layer.depthwise_norm), 0)
    x = x @ layer.pointwise.kernel.numpy()[0, 0]
    x = np.maximum(np_batch_norm(x, layer.pointwise_norm), 0)
    kernel, bias = layer.classifier.get_weights()
    expected = x.mean(axis=(1, 2)) @ kernel + bias
    np.testing.assert_allclose(
        ops.convert_to_numpy(model(maps, training=False)),
        expected,
        rtol=1e-4,
        atol=1e-5,
    )


def test_expand_matches_call(tmp_path):
    model, _ = build()
    maps = random_maps(seed=1)
    plain = export.plain_keras_model(model, lambda out: out, name="plain")
    np.testing.assert_allclose(
        ops.convert_to_numpy(plain(maps)),
        ops.convert_to_numpy(model(maps)),
        rtol=1e-5,
        atol=1e-6,
    )


def test_serialization_round_trip(tmp_path):
    model, _ = build()
    maps = random_maps(seed=2)
    model.save(tmp_path / "fusion.keras")
    loaded = keras.saving.load_model(tmp_path / "fusion.keras", safe_mode=True)
    np.testing.assert_allclose(
        ops.convert_to_numpy(loaded(maps)),
        ops.convert_to_numpy(model(maps)),
        rtol=1e-6,
    )


def test_trains_and_passes_gradient_to_the_maps(gradients):
    model, layer = build()
    maps = [keras.Variable(m) for m in random_maps(seed=3)]

    def loss():
        return ops.mean(model(maps, training=True)[:, 0])

    grads = gradients(loss, layer.trainable_weights + maps)
    assert all(np.any(g != 0) for g in grads)


def test_errors():
    with pytest.raises(ValueError, match="at least 2 branches"):
        FusionClassifier(3)([keras.Input((4, 4, 2))])
    with pytest.raises(ValueError, match="one shape"):
        FusionClassifier(3)([keras.Input((4, 4, 2)), keras.Input((2, 2, 2))])
