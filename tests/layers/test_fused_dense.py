import keras
import numpy as np
import pytest
from keras import ops

from keras_one.layers import FusedDense
from keras_one.layers.fused_layer import branch_slice

pytestmark = pytest.mark.backend_portable


def test_same_as_separate_dense_layers():
    layer = FusedDense(3, 4, bias_initializer="random_normal")
    x = np.random.default_rng(0).normal(size=(5, 3 * 6)).astype("f4")
    y = ops.convert_to_numpy(layer(x))
    assert y.shape == (5, 12) == layer.compute_output_shape(x.shape)
    kernel = ops.convert_to_numpy(layer.kernel)
    bias = ops.convert_to_numpy(layer.bias)
    for i in range(3):
        expected = branch_slice(x, i, 3) @ branch_slice(kernel, i, 3)
        expected += branch_slice(bias, i, 3)
        np.testing.assert_allclose(
            branch_slice(y, i, 3), expected, rtol=1e-5, atol=1e-5
        )


def test_weights_and_symbolic_shapes():
    layer = FusedDense(2, 10)
    outputs = layer(keras.Input((2 * 64,)))
    assert tuple(outputs.shape) == (None, 20)
    assert [tuple(w.shape) for w in layer.trainable_weights] == [
        (64, 20),
        (20,),
    ]


def test_branches_are_initialized_independently():
    layer = FusedDense(
        3, 200, kernel_initializer=keras.initializers.GlorotUniform(seed=1)
    )
    layer.build((None, 3 * 100))
    kernel = ops.convert_to_numpy(layer.kernel)
    shares = [branch_slice(kernel, i, 3) for i in range(3)]
    assert not np.allclose(shares[0], shares[1])
    # Glorot-uniform with one branch's fans: limit sqrt(6 / (100 + 200)).
    limit = np.sqrt(6 / 300)
    for share in shares:
        assert np.abs(share).max() <= limit
        assert np.abs(share).max() > 0.95 * limit


def test_serialization_round_trip(tmp_path):
    inputs = keras.Input((2 * 3,))
    outputs = FusedDense(
        2, 4, kernel_regularizer=keras.regularizers.L2(1e-3), name="logits"
    )(inputs)
    model = keras.Model(inputs, outputs)
    model.save(tmp_path / "fused_dense.keras")
    loaded = keras.saving.load_model(
        tmp_path / "fused_dense.keras", safe_mode=True
    )
    x = np.random.default_rng(1).normal(size=(2, 6)).astype("f4")
    np.testing.assert_allclose(
        ops.convert_to_numpy(loaded(x)),
        ops.convert_to_numpy(model(x)),
        rtol=1e-6,
    )
    config = model.get_layer("logits").get_config()
    assert FusedDense.from_config(config).get_config() == config
    assert config["num_branches"] == 2 and config["units"] == 4


def test_training_through_the_layer():
    rng = np.random.default_rng(2)
    x = rng.normal(size=(64, 2 * 3)).astype("f4")
    y = np.stack([x[:, :3].sum(-1), x[:, 3:].sum(-1)], axis=-1)
    model = keras.Sequential([keras.Input((6,)), FusedDense(2, 1)])
    model.compile(optimizer=keras.optimizers.Adam(0.05), loss="mse")
    history = model.fit(x, y, epochs=30, batch_size=16, verbose=0)
    assert history.history["loss"][-1] < 0.05 * history.history["loss"][0]


def test_errors():
    with pytest.raises(ValueError, match="num_branches >= 1"):
        FusedDense(0, 4)
    with pytest.raises(ValueError, match="multiple of 3"):
        FusedDense(3, 4)(keras.Input((7,)))
