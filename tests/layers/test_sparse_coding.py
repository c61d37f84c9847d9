import keras
import numpy as np
import pytest
from keras import ops

from keras_one.layers import SparseCoding

pytestmark = pytest.mark.backend_portable


def numpy_codes(x, codewords, bias, sparsity):
    """SRM's codes as the official code computes them, in NumPy."""
    codes = 1.0 / (1.0 + np.exp(-(x @ codewords + bias)))
    if sparsity is None:
        return codes
    kth = np.sort(codes, axis=-1)[..., -sparsity][..., None]
    return codes * (codes >= kth)


@pytest.mark.parametrize("sparsity", [1, 3, None])
def test_codes_and_reconstruction_match_numpy(sparsity):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(2, 3, 3, 5)).astype("float32")
    layer = SparseCoding(8, sparsity=sparsity)
    codes = ops.convert_to_numpy(layer(x))
    codewords, bias = (ops.convert_to_numpy(w) for w in layer.weights)
    assert codewords.shape == (5, 8) and bias.shape == ()
    expected = numpy_codes(x, codewords, bias, sparsity)
    np.testing.assert_allclose(codes, expected, rtol=1e-5, atol=1e-6)
    kept = (codes > 0).sum(-1)
    assert (kept == (sparsity or 8)).all()
    reconstruction = ops.convert_to_numpy(layer.reconstruct(codes))
    np.testing.assert_allclose(
        reconstruction, expected @ codewords.T, rtol=1e-5, atol=1e-5
    )
    assert layer.compute_output_shape((None, 3, 3, 5)) == (None, 3, 3, 8)
    assert len(layer.trainable_weights) == 2


def test_official_initialization():
    layer = SparseCoding(50)
    layer.build((None, 20))
    codewords, bias = (ops.convert_to_numpy(w) for w in layer.weights)
    # torch's kaiming_uniform_ of a D x K tensor: fan-in K.
    limit = np.sqrt(6.0 / 50)
    assert np.abs(codewords).max() <= limit
    assert np.abs(codewords).max() > 0.8 * limit
    assert -1.0 <= bias <= 1.0


def test_gradient_reaches_only_the_kept_codes(gradients):
    x = keras.Variable(np.ones((1, 4), "float32"))
    layer = SparseCoding(6, sparsity=2)
    codes = ops.convert_to_numpy(layer(x))
    (grad,) = gradients(lambda: ops.sum(layer(x)), [layer.codewords])
    dropped = codes[0] == 0
    assert dropped.sum() == 4
    assert (grad[:, dropped] == 0).all()
    assert (grad[:, ~dropped] != 0).all()


def test_saves_and_loads_in_safe_mode(tmp_path):
    inputs = keras.Input((2, 2, 4))
    model = keras.Model(
        inputs, SparseCoding(6, sparsity=2, name="code")(inputs)
    )
    path = tmp_path / "coder.keras"
    model.save(path)
    loaded = keras.saving.load_model(path, safe_mode=True)
    layer = loaded.get_layer("code")
    assert isinstance(layer, SparseCoding)
    assert (layer.num_codewords, layer.sparsity) == (6, 2)
    x = np.random.default_rng(1).normal(size=(3, 2, 2, 4)).astype("float32")
    np.testing.assert_allclose(
        ops.convert_to_numpy(loaded(x)), ops.convert_to_numpy(model(x))
    )


@pytest.mark.parametrize(
    "arguments, message",
    [
        ((0,), "num_codewords must be >= 1"),
        ((4, 0), r"sparsity must lie in \[1, num_codewords=4\]"),
        ((4, 5), r"sparsity must lie in \[1, num_codewords=4\]"),
    ],
)
def test_bad_sizes_are_refused(arguments, message):
    with pytest.raises(ValueError, match=message):
        SparseCoding(*arguments)
