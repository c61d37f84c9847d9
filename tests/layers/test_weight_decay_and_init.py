"""The gate, attention and fusion layers: PyTorch's init, weight decay.

The official codes of ONE, OKDDip, FFL (and PCL's reimplementation) leave
these modules' `nn.Linear` layers at PyTorch's default initialization
(uniform in `+-1/sqrt(fan_in)`, kernel and bias) and apply weight decay to
every parameter. Checked for each layer: the default initialization, the
`regularizer` on every trainable weight, the initializer and regularizer
arguments through `get_config` and a `.keras` file (`safe_mode=True`), and
the heads of `keras_one.models.heads` passing the network's regularizer.
"""

import keras
import numpy as np
import pytest
from keras import ops

from keras_one.layers import FeatureFusion
from keras_one.layers import FusionClassifier
from keras_one.layers import GatedEnsemble
from keras_one.layers import PeerAttention
from keras_one.models import heads

pytestmark = pytest.mark.backend_portable

CHANNELS = 64  # fan_in of every Dense layer below
CLASSES = 5
BRANCHES = 3


def gated_ensemble(**kwargs):
    layer = GatedEnsemble(BRANCHES, name="gate", **kwargs)
    inputs = [keras.Input((4, 4, CHANNELS))] + [
        keras.Input((CLASSES,)) for _ in range(BRANCHES)
    ]
    output = layer(inputs[0], inputs[1:])
    return layer, inputs, [output], [layer.gate_dense]


def peer_attention(**kwargs):
    layer = PeerAttention(name="attention", **kwargs)
    features = [keras.Input((CHANNELS,)) for _ in range(BRANCHES)]
    logits = [keras.Input((CLASSES,)) for _ in range(BRANCHES)]
    outputs = layer(features, logits)
    return layer, features + logits, outputs, [layer.query, layer.key]


def fusion_classifier(**kwargs):
    layer = FusionClassifier(CLASSES, name="fusion", **kwargs)
    maps = [keras.Input((4, 4, CHANNELS)) for _ in range(2)]
    output = layer(maps)
    return layer, maps, [output], [layer.classifier]


def feature_fusion(**kwargs):
    layer = FeatureFusion(BRANCHES, name="fusion", **kwargs)
    maps = [keras.Input((4, 4, CHANNELS)) for _ in range(BRANCHES)]
    logits = [keras.Input((CLASSES,)) for _ in range(BRANCHES)]
    output = layer(maps, logits)
    return layer, maps + logits, [output], [layer.attention_dense]


LAYERS = {
    "gated_ensemble": gated_ensemble,
    "peer_attention": peer_attention,
    "fusion_classifier": fusion_classifier,
    "feature_fusion": feature_fusion,
}


def values(weight):
    return ops.convert_to_numpy(weight.value)


def random_inputs(inputs, seed=0):
    rng = np.random.default_rng(seed)
    return [
        rng.normal(size=(2, *x.shape[1:])).astype("float32") for x in inputs
    ]


@pytest.mark.parametrize("name", sorted(LAYERS))
def test_dense_layers_have_pytorch_default_initialization(name):
    keras.utils.set_random_seed(0)
    _, _, _, denses = LAYERS[name]()
    limit = 1.0 / np.sqrt(CHANNELS)
    kernels = [values(d.kernel) for d in denses]
    for kernel in kernels:
        # U(-1/sqrt(fan_in), 1/sqrt(fan_in)): inside the limit, near it,
        # and spread as a uniform law (std limit / sqrt(3)); glorot's
        # limit, sqrt(6 / (fan_in + fan_out)), would be over twice as wide.
        assert np.max(np.abs(kernel)) <= limit
        assert np.max(np.abs(kernel)) > 0.9 * limit
        np.testing.assert_allclose(
            np.std(kernel), limit / np.sqrt(3), rtol=0.25
        )
    for dense in denses:
        if dense.use_bias:
            bias = values(dense.bias)
            # Zero (not PyTorch's uniform law): see _pytorch_init.
            np.testing.assert_array_equal(bias, 0.0)
    if len(kernels) > 1:  # query and key draw their own values
        assert not np.allclose(kernels[0], kernels[1])


@pytest.mark.parametrize("name", sorted(LAYERS))
def test_initializer_arguments(name):
    keras.utils.set_random_seed(0)
    kwargs = {"kernel_initializer": keras.initializers.Constant(0.5)}
    if name != "peer_attention":
        kwargs["bias_initializer"] = "ones"
    _, _, _, denses = LAYERS[name](**kwargs)
    for dense in denses:
        np.testing.assert_array_equal(values(dense.kernel), 0.5)
        if dense.use_bias:
            np.testing.assert_array_equal(values(dense.bias), 1.0)


@pytest.mark.parametrize("name", sorted(LAYERS))
def test_regularizer_covers_every_trainable_weight(name):
    layer, _, _, _ = LAYERS[name]()
    assert not layer.losses
    factor = 0.25
    layer, _, _, _ = LAYERS[name](regularizer=keras.regularizers.L2(factor))
    weights = layer.trainable_weights
    assert len(layer.losses) == len(weights)
    expected = sum(factor * np.sum(values(w) ** 2) for w in weights)
    np.testing.assert_allclose(
        float(ops.convert_to_numpy(ops.sum(layer.losses))), expected, rtol=1e-5
    )


@pytest.mark.parametrize("name", sorted(LAYERS))
def test_arguments_round_trip_through_config_and_keras_file(name, tmp_path):
    kwargs = {
        "kernel_initializer": keras.initializers.RandomNormal(stddev=0.1),
        "regularizer": keras.regularizers.L2(1e-3),
    }
    if name != "peer_attention":
        kwargs["bias_initializer"] = "zeros"
    layer, inputs, outputs, _ = LAYERS[name](**kwargs)
    config = layer.get_config()
    clone = type(layer).from_config(config)
    assert clone.get_config() == config
    assert isinstance(clone.regularizer, keras.regularizers.L2)
    assert isinstance(clone.kernel_initializer, keras.initializers.RandomNormal)

    model = keras.Model(inputs, outputs)
    path = str(tmp_path / f"{name}.keras")
    model.save(path)
    loaded = keras.saving.load_model(path, safe_mode=True)
    loaded_layer = loaded.get_layer(layer.name)
    assert loaded_layer.get_config() == config
    np.testing.assert_allclose(
        float(ops.convert_to_numpy(ops.sum(loaded_layer.losses))),
        float(ops.convert_to_numpy(ops.sum(layer.losses))),
        rtol=1e-6,
    )
    x = random_inputs(inputs)
    for got, want in zip(loaded(x), model(x), strict=True):
        np.testing.assert_allclose(
            ops.convert_to_numpy(got), ops.convert_to_numpy(want), rtol=1e-5
        )


@pytest.mark.parametrize("name", sorted(LAYERS))
def test_defaults_serialize_as_none(name):
    layer, _, _, _ = LAYERS[name]()
    config = layer.get_config()
    assert config["kernel_initializer"] is None
    assert config["regularizer"] is None
    assert config.get("bias_initializer") is None


def test_bad_initializer_is_refused():
    with pytest.raises(ValueError, match="initializer"):
        GatedEnsemble(2, kernel_initializer="no_such_initializer")


# === Heads ===


def network_outputs():
    shared = keras.Input((8, 8, 16))
    maps = [
        keras.layers.Conv2D(CHANNELS, 3, padding="same")(shared)
        for _ in range(BRANCHES)
    ]
    features = [keras.layers.GlobalAveragePooling2D()(m) for m in maps]
    logits = [keras.layers.Dense(CLASSES)(f) for f in features]
    return {
        "shared_features": shared,
        "branch_logits": logits,
        "branch_features": features,
        "branch_feature_maps": maps,
    }


HEAD_LAYERS = {
    "gate": "gated_ensemble",
    "peer_attention": "peer_attention",
    "feature_fusion": "feature_fusion",
    "fusion_classifier": "fusion_classifier",
    "linear_fusion": "fusion_logits",
}


def head_model(head, regularizer=None):
    outputs = network_outputs()
    added = heads.get(head, regularizer)(outputs)
    model = keras.Model(outputs["shared_features"], added)
    return model.get_layer(HEAD_LAYERS[head])


@pytest.mark.parametrize("head", sorted(HEAD_LAYERS))
def test_heads_regularize_their_weights(head):
    assert not head_model(head).losses
    layer = head_model(head, keras.regularizers.L2(0.5))
    assert len(layer.losses) == len(layer.trainable_weights) > 0
    # FFL's official fusion module has its own weight decay, 1e-5.
    factor = 0.5 if head != "fusion_classifier" else 0.5e-5
    expected = sum(
        factor * np.sum(values(w) ** 2) for w in layer.trainable_weights
    )
    np.testing.assert_allclose(
        float(ops.convert_to_numpy(ops.sum(layer.losses))), expected, rtol=1e-5
    )


def test_linear_fusion_head_has_pytorch_default_initialization():
    keras.utils.set_random_seed(0)
    dense = head_model("linear_fusion")
    limit = 1.0 / np.sqrt(BRANCHES * CHANNELS)
    kernel, bias = values(dense.kernel), values(dense.bias)
    assert limit * 0.9 < np.max(np.abs(kernel)) <= limit
    np.testing.assert_array_equal(bias, 0.0)


def test_get_without_regularizer_returns_the_head_itself():
    assert heads.get("gate") is heads.gate_head
    assert heads.get(None)({}) == {}
    custom = lambda outputs: {}  # noqa: E731
    assert heads.get(custom, keras.regularizers.L2(1.0)) is custom
    with pytest.raises(ValueError, match="Unknown head"):
        heads.get("gated", keras.regularizers.L2(1.0))
