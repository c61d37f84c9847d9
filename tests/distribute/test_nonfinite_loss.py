"""The Distiller stops `fit` with a clear error on a NaN or infinite loss."""

import keras
import numpy as np
import pytest

from keras_one import Distiller
from keras_one import methods


def distiller_for(make_student, **compile_kwargs):
    student = make_student(num_branches=2)
    distiller = Distiller(student, methods.ONE(rampup_epochs=2))
    distiller.compile(optimizer=keras.optimizers.SGD(0.05), **compile_kwargs)
    return distiller


def test_nan_loss_stops_training_at_that_batch(make_student, tiny_data):
    x, y = tiny_data
    sample_weight = np.ones(len(y), "float32")
    sample_weight[40] = np.nan  # in the second batch of 32
    distiller = distiller_for(make_student)
    with pytest.raises(FloatingPointError) as error:
        distiller.fit(
            x,
            y,
            sample_weight=sample_weight,
            batch_size=32,
            epochs=2,
            shuffle=False,
            verbose=0,
        )
    message = str(error.value)
    assert "The training loss became nan at epoch 0, batch 1" in message
    assert "(non-finite: loss, ce, ensemble_ce, kl)" in message
    for fix in ("learning rate", "normalize", "loss scaling"):
        assert fix in message
    # Stopped at once: the guard runs beside the training loop, which
    # notices its error at the next batch at the latest (of 6).
    assert int(distiller.optimizer.iterations.numpy()) in (2, 3)


def test_infinite_loss_is_caught(make_student, tiny_data):
    x, y = tiny_data
    sample_weight = np.ones(len(y), "float32")
    sample_weight[5] = np.inf
    distiller = distiller_for(make_student)
    with pytest.raises(FloatingPointError, match="at epoch 0, batch 0"):
        distiller.fit(
            x,
            y,
            sample_weight=sample_weight,
            batch_size=32,
            shuffle=False,
            verbose=0,
        )


def test_nan_inputs_are_caught(make_student, tiny_data):
    """NaN images make NaN gradients, weights, then a NaN loss."""
    x, y = tiny_data
    x = x.copy()
    x[40] = np.nan
    distiller = distiller_for(make_student)
    with pytest.raises(FloatingPointError, match="at epoch 0, batch [12]"):
        distiller.fit(x, y, batch_size=32, epochs=2, shuffle=False, verbose=0)


def test_finite_training_is_untouched(make_student, tiny_data):
    x, y = tiny_data
    distiller = distiller_for(make_student)
    history = distiller.fit(x, y, batch_size=32, epochs=2, verbose=0)
    assert np.all(np.isfinite(history.history["loss"]))


@pytest.mark.slow
def test_nan_is_caught_under_xla(make_student, tiny_data):
    """XLA drops in-graph checks; the guard reads the logs instead."""
    x, y = tiny_data
    sample_weight = np.ones(len(y), "float32")
    sample_weight[40] = np.nan
    distiller = distiller_for(make_student, jit_compile=True)
    assert distiller.jit_compile
    with pytest.raises(FloatingPointError, match="at epoch 0, batch 1"):
        distiller.fit(
            x,
            y,
            sample_weight=sample_weight,
            batch_size=32,
            shuffle=False,
            verbose=0,
        )
