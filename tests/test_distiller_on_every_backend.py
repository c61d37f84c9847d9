"""Distiller behaviours that differ by backend in how, not whether, they hold.

Runs on TensorFlow, JAX and PyTorch (`backend_portable`).
"""

import keras
import numpy as np
import pytest

import keras_one

pytestmark = pytest.mark.backend_portable


def tiny_distiller():
    student = keras_one.models.cifar_resnet(
        depth=8, num_branches=2, input_shape=(8, 8, 1), num_classes=4
    )
    distiller = keras_one.Distiller(
        student, keras_one.methods.ONE(rampup_epochs=1)
    )
    distiller.compile(optimizer="sgd")
    return distiller


def test_labels_outside_the_classes_stop_training():
    x = np.random.default_rng(0).random((16, 8, 8, 1)).astype("float32")
    y = np.full(16, 7)
    distiller = tiny_distiller()
    if keras.backend.backend() != "jax":
        with pytest.raises(Exception, match=r"Labels must lie in \[0, 4\)"):
            distiller.fit(x, y, epochs=1, verbose=0)
    else:
        # JAX cannot raise inside a compiled step: the loss is made NaN,
        # and fit's guard names the labels among the causes.
        with pytest.raises(FloatingPointError, match="labels outside"):
            distiller.fit(x, y, epochs=1, verbose=0)


def test_train_on_batch_needs_the_epoch_length_for_a_ramp_up():
    x = np.zeros((4, 8, 8, 1), "float32")
    y = np.arange(4)
    distiller = tiny_distiller()
    with pytest.raises(ValueError, match="steps_per_epoch"):
        distiller.train_on_batch(x, y)
    distiller.steps_per_epoch = 2
    distiller.train_on_batch(x, y)
    distiller.train_on_batch(x, y)
    assert float(distiller.current_epoch) == 1.0


@pytest.mark.parametrize("steps", [0, -3, 1.5, True, None])
def test_bad_epoch_length_is_refused(steps):
    distiller = tiny_distiller()
    with pytest.raises((ValueError, TypeError), match="steps_per_epoch"):
        distiller.steps_per_epoch = steps


def test_weighted_metrics_are_refused_with_the_fix():
    distiller = tiny_distiller()
    with pytest.raises(ValueError, match="Pass them as `metrics`"):
        distiller.compile(optimizer="sgd", weighted_metrics=["accuracy"])


def test_predictions_refuse_to_become_an_array():
    """`np.argmax(distiller.predict(x), -1)` raises instead of giving 0s."""
    x = np.random.default_rng(0).random((5, 8, 8, 1)).astype("float32")
    distiller = tiny_distiller()
    outputs = distiller.predict(x, batch_size=4, verbose=0)
    assert isinstance(outputs, dict)
    assert sorted(outputs) == ["branch_logits", "ensemble_logits"]
    assert outputs["ensemble_logits"].shape == (5, 4)
    assert [z.shape for z in outputs["branch_logits"]] == [(5, 4)] * 2
    with pytest.raises(TypeError, match=r"np.argmax\(outputs\['ensemble_"):
        np.argmax(outputs, -1)
    with pytest.raises(TypeError, match="returns a dict of logits"):
        np.asarray(outputs)
    # One entry is an array, as expected.
    assert np.argmax(outputs["ensemble_logits"], -1).shape == (5,)
