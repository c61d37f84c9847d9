import keras
import numpy as np
import pytest
from keras import ops

from keras_one.layers import FusedConv2D
from keras_one.layers.fused_layer import branch_slice


def branch_convolutions(layer, x):
    """What `layer` stands for: N separate Conv2D layers, then side by side."""
    n = layer.num_branches
    kernel = ops.convert_to_numpy(layer.kernel)
    outputs = []
    for i in range(n):
        conv = keras.layers.Conv2D(
            layer.filters,
            layer.kernel_size,
            strides=layer.strides,
            padding="same",
            use_bias=False,
        )
        branch_input = x if layer.shared_input else branch_slice(x, i, n)
        conv.build(branch_input.shape)
        conv.set_weights([branch_slice(kernel, i, n)])
        outputs.append(ops.convert_to_numpy(conv(branch_input)))
    return np.concatenate(outputs, axis=-1)


@pytest.mark.parametrize("shared_input", [False, True])
@pytest.mark.parametrize("strides", [1, 2])
def test_same_as_separate_convolutions(shared_input, strides):
    layer = FusedConv2D(3, 4, 3, strides=strides, shared_input=shared_input)
    x = np.random.default_rng(0).normal(size=(2, 5, 5, 6)).astype("f4")
    y = ops.convert_to_numpy(layer(x))
    size = 3 if strides == 2 else 5
    assert y.shape == (2, size, size, 12) == layer.compute_output_shape(x.shape)
    np.testing.assert_allclose(
        y, branch_convolutions(layer, x), rtol=1e-5, atol=1e-5
    )


def test_weights_and_symbolic_shapes():
    grouped = FusedConv2D(3, 8, 3, strides=2)
    shared = FusedConv2D(3, 8, 1, shared_input=True)
    outputs = grouped(keras.Input((None, 7, 6)))
    assert tuple(outputs.shape) == (None, None, 4, 24)
    shared(keras.Input((4, 4, 6)))
    # One kernel each: 2 input channels per branch, or all 6 when shared.
    assert [tuple(w.shape) for w in grouped.weights] == [(3, 3, 2, 24)]
    assert [tuple(w.shape) for w in shared.weights] == [(1, 1, 6, 24)]
    assert len(grouped.trainable_weights) == 1


def test_branches_are_initialized_independently():
    layer = FusedConv2D(
        3,
        64,
        3,
        kernel_initializer=keras.initializers.VarianceScaling(
            2.0, mode="fan_out", distribution="untruncated_normal", seed=1
        ),
    )
    layer.build((None, 8, 8, 3 * 32))
    kernel = ops.convert_to_numpy(layer.kernel)
    shares = [branch_slice(kernel, i, 3) for i in range(3)]
    assert not np.allclose(shares[0], shares[1])
    # The fan-out of one branch: std = sqrt(2 / (3 * 3 * 64)).
    for share in shares:
        assert abs(share.std() / np.sqrt(2 / (9 * 64)) - 1) < 0.05


def test_serialization_round_trip(tmp_path):
    inputs = keras.Input((6, 6, 4))
    x = FusedConv2D(2, 3, 3, shared_input=True, name="first")(inputs)
    outputs = FusedConv2D(
        2, 5, 1, kernel_regularizer=keras.regularizers.L2(1e-3), name="second"
    )(x)
    model = keras.Model(inputs, outputs)
    model.save(tmp_path / "fused_conv.keras")
    loaded = keras.saving.load_model(
        tmp_path / "fused_conv.keras", safe_mode=True
    )
    x = np.random.default_rng(1).normal(size=(2, 6, 6, 4)).astype("f4")
    np.testing.assert_allclose(loaded(x), model(x), rtol=1e-6, atol=1e-6)
    config = model.get_layer("second").get_config()
    assert FusedConv2D.from_config(config).get_config() == config
    assert config["num_branches"] == 2 and config["filters"] == 5
    np.testing.assert_allclose(
        ops.sum(loaded.losses), ops.sum(model.losses), rtol=1e-6
    )


def test_training_through_the_layer():
    rng = np.random.default_rng(2)
    x = rng.normal(size=(64, 4, 4, 2)).astype("f4")
    y = np.stack([x.mean(axis=(1, 2, 3)), -x.mean(axis=(1, 2, 3))], axis=-1)
    inputs = keras.Input((4, 4, 2))
    maps = FusedConv2D(2, 4, 3, shared_input=True)(inputs)
    maps = FusedConv2D(2, 1, 3)(maps)
    outputs = keras.layers.GlobalAveragePooling2D()(maps)
    model = keras.Model(inputs, outputs)
    model.compile(optimizer=keras.optimizers.Adam(0.01), loss="mse")
    history = model.fit(x, y, epochs=30, batch_size=16, verbose=0)
    assert history.history["loss"][-1] < 0.2 * history.history["loss"][0]


def test_errors():
    with pytest.raises(ValueError, match="num_branches >= 1"):
        FusedConv2D(0, 4, 3)
    with pytest.raises(ValueError, match="multiple of 3"):
        FusedConv2D(3, 4, 3)(keras.Input((4, 4, 5)))


@pytest.mark.parametrize("native", [True, False])
def test_grouped_kernel_and_split_convolutions_agree(monkeypatch, native):
    """Both ways of computing the grouped convolution, values and gradients.

    `native=False` is the path of CPUs where TensorFlow cannot train its
    grouped kernel (no oneDNN); `native=True` runs only where it can.
    """
    import tensorflow as tf

    from keras_one.layers import fused_conv2d

    if native and not fused_conv2d.native_grouped_conv():
        pytest.skip("TensorFlow cannot train grouped convolutions here")
    monkeypatch.setattr(fused_conv2d, "_NATIVE_GROUPED_CONV", native)
    layer = FusedConv2D(3, 4, 3, strides=2)
    x = tf.constant(
        np.random.default_rng(3).normal(size=(2, 5, 5, 6)), "float32"
    )
    with tf.GradientTape() as tape:
        tape.watch(x)
        y = layer(x)
        loss = tf.reduce_sum(y * y)
    grad_x, grad_kernel = tape.gradient(loss, [x, layer.kernel.value])
    reference = tf.Variable(ops.convert_to_numpy(layer.kernel))
    with tf.GradientTape() as tape:
        tape.watch(x)
        outputs = []
        for i in range(3):
            outputs.append(
                tf.nn.conv2d(
                    x[..., 2 * i : 2 * i + 2],
                    reference[..., 4 * i : 4 * i + 4],
                    2,
                    "SAME",
                )
            )
        expected = tf.concat(outputs, axis=-1)
        expected_loss = tf.reduce_sum(expected * expected)
    expected_x, expected_kernel = tape.gradient(expected_loss, [x, reference])
    np.testing.assert_allclose(y, expected, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(grad_x, expected_x, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(
        grad_kernel, expected_kernel, rtol=1e-4, atol=1e-4
    )
