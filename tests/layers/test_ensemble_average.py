import keras
import numpy as np
import pytest
from keras import ops

from keras_one.layers import EnsembleAverage

pytestmark = pytest.mark.backend_portable


def np_softmax(z):
    e = np.exp(z - z.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


def members_logits(members=3, batch=4, classes=5):
    rng = np.random.default_rng(0)
    return [
        (3 * rng.normal(size=(batch, classes))).astype("float32")
        for _ in range(members)
    ]


def test_shapes_and_no_weights():
    logits = [keras.Input((5,)) for _ in range(3)]
    layer = EnsembleAverage("probabilities")
    assert tuple(layer(logits).shape) == (None, 5)
    assert layer.weights == []
    assert layer.compute_output_shape([(None, 5)] * 3) == (None, 5)


@pytest.mark.parametrize("average", ["logits", "probabilities"])
def test_matches_numpy(average):
    logits = members_logits()
    got = ops.convert_to_numpy(EnsembleAverage(average)(logits))
    if average == "logits":
        np.testing.assert_allclose(got, np.mean(logits, axis=0), rtol=1e-6)
    else:
        mean = np.mean([np_softmax(z) for z in logits], axis=0)
        np.testing.assert_allclose(np_softmax(got), mean, rtol=1e-5)
        np.testing.assert_allclose(got, np.log(mean), rtol=1e-5, atol=1e-6)


def test_serialization_round_trip():
    layer = EnsembleAverage("probabilities", name="ensemble_logits")
    config = keras.saving.serialize_keras_object(layer)
    restored = keras.saving.deserialize_keras_object(config)
    assert isinstance(restored, EnsembleAverage)
    assert restored.average == "probabilities"
    assert restored.name == "ensemble_logits"


def test_training_through_it_updates_every_member():
    images = keras.Input((6,))
    members = [keras.layers.Dense(4) for _ in range(2)]
    output = EnsembleAverage("probabilities")([m(images) for m in members])
    model = keras.Model(images, output)
    model.compile(
        "sgd", keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    )
    before = [m.get_weights()[0].copy() for m in members]
    x = np.random.default_rng(1).normal(size=(8, 6)).astype("float32")
    model.train_on_batch(x, np.arange(8) % 4)
    for member, kernel in zip(members, before, strict=True):
        assert not np.allclose(member.get_weights()[0], kernel)


def test_bad_arguments():
    with pytest.raises(ValueError, match="average must be one of"):
        EnsembleAverage("median")
    with pytest.raises(ValueError, match="at least 2 members"):
        EnsembleAverage()([keras.Input((5,))])
    with pytest.raises(ValueError, match="the same classes"):
        EnsembleAverage()([keras.Input((5,)), keras.Input((4,))])
