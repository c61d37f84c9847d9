import numpy as np
import pytest
from keras import ops

from keras_one import losses

pytestmark = pytest.mark.backend_portable


def np_log_softmax(z):
    z = z - z.max(axis=-1, keepdims=True)
    return z - np.log(np.exp(z).sum(axis=-1, keepdims=True))


def test_cross_entropy_matches_numpy():
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(6, 5)).astype("float32")
    labels = rng.integers(0, 5, 6)
    expected = -np_log_softmax(logits)[np.arange(6), labels]
    got = ops.convert_to_numpy(losses.cross_entropy(labels, logits))
    np.testing.assert_allclose(got, expected, rtol=1e-5)


@pytest.mark.parametrize("temperature", [1.0, 3.0, 4.0])
def test_distillation_kl_matches_formula(temperature):
    rng = np.random.default_rng(1)
    teacher = rng.normal(size=(7, 10)) * 3
    student = rng.normal(size=(7, 10)) * 3
    p_t = np.exp(np_log_softmax(teacher / temperature))
    expected = temperature**2 * np.sum(
        p_t
        * (
            np_log_softmax(teacher / temperature)
            - np_log_softmax(student / temperature)
        ),
        axis=-1,
    )
    got = ops.convert_to_numpy(
        losses.distillation_kl(teacher, student, temperature)
    )
    assert got.shape == (7,)
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6)
    # Summed over classes, not averaged: equal logits give 0, and the
    # divergence of a confident teacher is far from 0.
    assert np.all(got > 0)


def test_distillation_kl_is_zero_for_identical_logits():
    z = np.random.default_rng(2).normal(size=(3, 4))
    np.testing.assert_allclose(
        ops.convert_to_numpy(losses.distillation_kl(z, z, 3.0)), 0.0, atol=1e-6
    )


@pytest.mark.parametrize("epoch", [0, 1, 40, 79, 80, 200])
def test_rampup_matches_official_formula(epoch):
    rampup_epochs = 80
    phase = 1.0 - np.clip(epoch, 0.0, rampup_epochs) / rampup_epochs
    expected = np.exp(-5.0 * phase * phase)
    got = float(losses.rampup_weight(epoch, rampup_epochs))
    np.testing.assert_allclose(got, expected, rtol=1e-6)


def test_no_rampup_is_weight_one():
    assert float(losses.rampup_weight(0, 0)) == 1.0
