import keras
import numpy as np
import pytest
from keras import ops

from keras_one import export
from keras_one.layers import GradientScale

pytestmark = pytest.mark.backend_portable


def test_forward_is_the_exact_identity():
    x = np.random.default_rng(0).normal(size=(3, 4, 4, 2)).astype("float32")
    y = ops.convert_to_numpy(GradientScale(1 / 3)(x))
    np.testing.assert_array_equal(y, x)
    assert GradientScale(0.25).compute_output_shape((None, 4, 2)) == (
        None,
        4,
        2,
    )
    assert not GradientScale(0.5).weights


@pytest.mark.parametrize("scale", [1 / 3, 0.25, 2.0])
def test_gradient_is_multiplied_by_scale(scale, gradients):
    rng = np.random.default_rng(1)
    x = keras.Variable(rng.normal(size=(3, 5)).astype("float32"))
    w = rng.normal(size=(3, 5)).astype("float32")
    layer = GradientScale(scale)
    (got,) = gradients(
        lambda: ops.sum(ops.square(layer(x)) * ops.convert_to_tensor(w)), [x]
    )
    # d/dx sum(w x^2) = 2 w x, times the scale.
    np.testing.assert_allclose(got, scale * 2 * w * x.numpy(), rtol=1e-6)


def test_serialization_round_trip_and_plain_export(tmp_path):
    inputs = keras.Input((6,))
    hidden = keras.layers.Dense(4, name="dense_a")(inputs)
    outputs = keras.layers.Dense(2, name="dense_b")(
        GradientScale(0.5, name="scale")(hidden)
    )
    model = keras.Model(inputs, outputs)
    x = np.random.default_rng(2).normal(size=(5, 6)).astype("float32")
    model.save(tmp_path / "scale.keras")
    loaded = keras.saving.load_model(tmp_path / "scale.keras", safe_mode=True)
    assert loaded.get_layer("scale").scale == 0.5
    expected = ops.convert_to_numpy(model(x))
    np.testing.assert_array_equal(ops.convert_to_numpy(loaded(x)), expected)
    plain = export.plain_keras_model(model, lambda out: out, name="plain")
    assert not any(isinstance(layer, GradientScale) for layer in plain.layers)
    np.testing.assert_array_equal(ops.convert_to_numpy(plain(x)), expected)


def test_training_through_the_layer():
    inputs = keras.Input((3,))
    trunk = keras.layers.Dense(3, name="trunk")
    outputs = keras.layers.Dense(1)(GradientScale(0.1)(trunk(inputs)))
    model = keras.Model(inputs, outputs)
    model.compile(optimizer=keras.optimizers.SGD(0.1), loss="mse")
    x = np.random.default_rng(3).normal(size=(32, 3)).astype("float32")
    y = x.sum(axis=1, keepdims=True)
    history = model.fit(x, y, epochs=20, verbose=0)
    assert history.history["loss"][-1] < 0.5 * history.history["loss"][0]
