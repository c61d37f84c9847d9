import keras
import numpy as np
import pytest
import tensorflow as tf

from keras_one.layers import FusedBatchNormalization

EPSILON = 1e-5


def pair(shape, **kwargs):
    """A Keras BatchNormalization and a fused one with the same weights."""
    plain = keras.layers.BatchNormalization(
        momentum=0.9, epsilon=EPSILON, **kwargs
    )
    fused = FusedBatchNormalization(momentum=0.9, epsilon=EPSILON, **kwargs)
    plain.build(shape)
    fused.build(shape)
    rng = np.random.default_rng(1)
    channels = shape[-1]
    weights = [
        rng.normal(size=channels),
        rng.normal(size=channels),
        rng.normal(size=channels),
        rng.uniform(0.5, 2.0, size=channels),
    ]
    plain.set_weights([w.astype("float32") for w in weights])
    fused.set_weights([w.astype("float32") for w in weights])
    return plain, fused


def inputs(shape=(6, 5, 5, 3), seed=0):
    rng = np.random.default_rng(seed)
    return rng.normal(2.0, 3.0, size=shape).astype("float32")


def test_matches_numpy_batch_norm_in_training():
    x = inputs()
    _, fused = pair(x.shape)
    gamma, beta, moving_mean, moving_variance = fused.get_weights()
    y = fused(x, training=True)
    mean = x.mean(axis=(0, 1, 2))
    variance = x.var(axis=(0, 1, 2))  # biased, as Keras
    expected = gamma * (x - mean) / np.sqrt(variance + EPSILON) + beta
    np.testing.assert_allclose(y, expected, rtol=1e-4, atol=1e-4)
    new_mean, new_variance = fused.get_weights()[2:]
    np.testing.assert_allclose(
        new_mean, 0.9 * moving_mean + 0.1 * mean, rtol=1e-5, atol=1e-6
    )
    np.testing.assert_allclose(
        new_variance, 0.9 * moving_variance + 0.1 * variance, rtol=1e-5
    )


def test_matches_numpy_batch_norm_in_inference():
    x = inputs()
    _, fused = pair(x.shape)
    gamma, beta, mean, variance = fused.get_weights()
    expected = gamma * (x - mean) / np.sqrt(variance + EPSILON) + beta
    np.testing.assert_allclose(
        fused(x, training=False), expected, rtol=1e-5, atol=1e-5
    )
    # Inference leaves the moving statistics alone.
    np.testing.assert_array_equal(fused.get_weights()[2], mean)


@pytest.mark.parametrize("training", [True, False])
def test_same_outputs_and_gradients_as_keras(training):
    x = tf.constant(inputs())
    plain, fused = pair(x.shape)
    results = []
    for layer in (plain, fused):
        with tf.GradientTape() as tape:
            tape.watch(x)
            y = layer(x, training=training)
            loss = tf.reduce_sum(y * tf.sin(y))
        grads = tape.gradient(loss, [x, *layer.trainable_weights])
        results.append((y, grads, layer.get_weights()))
    (y_a, g_a, w_a), (y_b, g_b, w_b) = results
    np.testing.assert_allclose(y_a, y_b, rtol=1e-5, atol=1e-5)
    for a, b in zip(g_a, g_b, strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4)
    for a, b in zip(w_a, w_b, strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-6)


def test_falls_back_to_keras_where_the_kernel_does_not_apply():
    for shape in [(6, 3), (6, 4, 3)]:
        x = inputs(shape)
        plain, fused = pair(shape)
        np.testing.assert_allclose(
            fused(x, training=True), plain(x, training=True), atol=1e-5
        )
    x64 = inputs().astype("float64")
    plain = keras.layers.BatchNormalization(dtype="float64")
    fused = FusedBatchNormalization(dtype="float64")
    np.testing.assert_allclose(
        fused(x64, training=True), plain(x64, training=True), atol=1e-10
    )
    np.testing.assert_allclose(fused.get_weights()[3], plain.get_weights()[3])
    x = inputs()
    plain = keras.layers.BatchNormalization(center=False)
    fused = FusedBatchNormalization(center=False)
    np.testing.assert_allclose(
        fused(x, training=True), plain(x, training=True), atol=1e-5
    )


def test_mixed_bfloat16():
    x = inputs()
    plain, _ = pair(x.shape)
    fused = FusedBatchNormalization(
        momentum=0.9, epsilon=EPSILON, dtype="mixed_bfloat16"
    )
    fused.build(x.shape)
    fused.set_weights(plain.get_weights())
    y = fused(x, training=True)
    assert keras.backend.standardize_dtype(y.dtype) == "bfloat16"
    np.testing.assert_allclose(
        np.asarray(tf.cast(y, "float32")),
        plain(x, training=True),
        rtol=2e-2,
        atol=2e-2,
    )
    # Statistics in float32, from the bfloat16 inputs: a float32 layer on
    # those same (rounded) inputs updates the moving statistics to float32
    # round-off; bfloat16 statistics would be off by about 1e-3.
    reference, _ = pair(x.shape)
    rounded = tf.cast(tf.cast(x, "bfloat16"), "float32")
    reference(rounded, training=True)
    for index in (2, 3):
        np.testing.assert_allclose(
            fused.get_weights()[index],
            reference.get_weights()[index],
            rtol=1e-6,
        )


def test_trains_a_model_and_round_trips(tmp_path):
    x = inputs((32, 4, 4, 2))
    y = (x.mean(axis=(1, 2, 3)) > 2.0).astype("int32")
    model = keras.Sequential(
        [
            keras.Input((4, 4, 2)),
            keras.layers.Conv2D(4, 3, padding="same"),
            FusedBatchNormalization(),
            keras.layers.GlobalAveragePooling2D(),
            keras.layers.Dense(2),
        ]
    )
    model.compile(
        keras.optimizers.SGD(0.1),
        keras.losses.SparseCategoricalCrossentropy(from_logits=True),
    )
    history = model.fit(x, y, epochs=5, batch_size=8, verbose=0)
    assert history.history["loss"][-1] < history.history["loss"][0]
    model.save(tmp_path / "model.keras")
    loaded = keras.saving.load_model(tmp_path / "model.keras")
    assert isinstance(loaded.layers[1], FusedBatchNormalization)
    np.testing.assert_allclose(loaded(x), model(x), rtol=1e-6)


def test_expand_gives_a_plain_batch_normalization():
    x = inputs()
    _, fused = pair(x.shape)
    symbolic = keras.Input(x.shape[1:])
    plain_model = keras.Model(symbolic, fused.expand(symbolic))
    layer = plain_model.layers[-1]
    assert type(layer) is keras.layers.BatchNormalization
    assert layer.momentum == fused.momentum
    np.testing.assert_allclose(
        plain_model(x, training=False), fused(x, training=False), atol=1e-5
    )
