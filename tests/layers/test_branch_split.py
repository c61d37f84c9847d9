import keras
import numpy as np
import pytest
from keras import ops

from keras_one.layers import BranchSplit

pytestmark = pytest.mark.backend_portable


@pytest.mark.parametrize(
    "block, weights_per_branch",
    [
        (keras.layers.Dense(4), 2),
        (keras.Sequential([keras.layers.Dense(6), keras.layers.Dense(4)]), 4),
    ],
)
def test_shapes_and_independent_weights(block, weights_per_branch):
    inputs = keras.Input((8,))
    layer = BranchSplit(block, num_branches=3)
    outputs = layer(inputs)
    assert [tuple(o.shape) for o in outputs] == [(None, 4)] * 3
    assert layer.compute_output_shape((None, 8)) == [(None, 4)] * 3
    assert len(layer.trainable_weights) == 3 * weights_per_branch
    model = keras.Model(inputs, outputs)
    x = np.random.default_rng(0).normal(size=(5, 8)).astype("float32")
    y0, y1, _ = [ops.convert_to_numpy(y) for y in model(x)]
    assert not np.allclose(y0, y1)  # fresh weights in every branch


def test_factory_block():
    layer = BranchSplit(lambda: keras.layers.Dense(2), num_branches=2)
    outputs = layer(keras.Input((3,)))
    assert len(outputs) == 2 and len(layer.trainable_weights) == 4


def test_serialization_round_trip(tmp_path):
    inputs = keras.Input((8,))
    block = keras.Sequential([keras.layers.Dense(4, activation="relu")])
    outputs = BranchSplit(block, num_branches=2, name="split")(inputs)
    model = keras.Model(inputs, outputs)
    x = np.random.default_rng(0).normal(size=(5, 8)).astype("float32")
    path = tmp_path / "model.keras"
    model.save(path)
    loaded = keras.saving.load_model(path, safe_mode=True)
    for a, b in zip(model(x), loaded(x), strict=True):
        np.testing.assert_allclose(
            ops.convert_to_numpy(a), ops.convert_to_numpy(b)
        )
    assert loaded.get_layer("split").get_config()["num_branches"] == 2


def test_training_through_the_branches():
    inputs = keras.Input((4,))
    outputs = keras.layers.Average()(
        BranchSplit(keras.layers.Dense(1), num_branches=2)(inputs)
    )
    model = keras.Model(inputs, outputs)
    model.compile(optimizer=keras.optimizers.SGD(0.1), loss="mse")
    rng = np.random.default_rng(0)
    x = rng.normal(size=(64, 4)).astype("float32")
    y = x @ np.array([1.0, -2.0, 0.5, 3.0], "float32")
    before = model.evaluate(x, y, verbose=0)
    model.fit(x, y, epochs=20, verbose=0)
    assert model.evaluate(x, y, verbose=0) < 0.1 * before


def test_too_few_branches():
    with pytest.raises(ValueError, match="at least 2 branches"):
        BranchSplit(keras.layers.Dense(2), num_branches=1)
