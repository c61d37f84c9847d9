import keras
import numpy as np
import pytest
from keras import ops

import keras_one
from keras_one.methods import ONE


def np_log_softmax(z):
    z = z - z.max(axis=-1, keepdims=True)
    return z - np.log(np.exp(z).sum(axis=-1, keepdims=True))


def np_one_loss(labels, branch_logits, ensemble_logits, epoch, T=3.0, R=80):
    """ONE's loss written from the paper, per example."""
    n = len(labels)

    def ce(z):
        return -np_log_softmax(z)[np.arange(n), labels]

    def kl(t, s):
        p = np.exp(np_log_softmax(t / T))
        return (
            T
            * T
            * np.sum(
                p * (np_log_softmax(t / T) - np_log_softmax(s / T)), axis=1
            )
        )

    w = np.exp(-5.0 * (1.0 - min(epoch, R) / R) ** 2)
    return (
        sum(ce(z) for z in branch_logits),
        ce(ensemble_logits),
        w * sum(kl(ensemble_logits, z) for z in branch_logits),
    )


def test_defaults_are_the_papers():
    method = ONE()
    assert method.temperature == 3.0 and method.rampup_epochs == 80
    assert method.head == "gate"


@pytest.mark.backend_portable
def test_loss_matches_numpy():
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 5, 8)
    branch_logits = [rng.normal(size=(8, 5)) * 2 for _ in range(3)]
    ensemble_logits = rng.normal(size=(8, 5)) * 2
    for epoch in (0, 30, 100):
        terms = ONE().compute_losses(
            labels,
            {
                "branch_logits": [
                    ops.convert_to_tensor(z) for z in branch_logits
                ],
                "ensemble_logits": ops.convert_to_tensor(ensemble_logits),
            },
            epoch,
        )
        expected = np_one_loss(labels, branch_logits, ensemble_logits, epoch)
        for name, value in zip(
            ("ce", "ensemble_ce", "kl"), expected, strict=True
        ):
            np.testing.assert_allclose(
                ops.convert_to_numpy(terms[name]), value, rtol=1e-5
            )


@pytest.mark.backend_portable
def test_kl_sends_no_gradient_to_the_teacher(gradients):
    rng = np.random.default_rng(1)
    branch = [keras.Variable(rng.normal(size=(4, 3))) for _ in range(2)]
    ensemble = keras.Variable(rng.normal(size=(4, 3)))

    def kl():
        terms = ONE(rampup_epochs=0).compute_losses(
            np.array([0, 1, 2, 0]),
            {"branch_logits": branch, "ensemble_logits": ensemble},
            0,
        )
        return ops.sum(terms["kl"])

    ensemble_gradient, *branch_gradients = gradients(kl, [ensemble, *branch])
    assert not np.any(ensemble_gradient)
    assert all(np.any(g) for g in branch_gradients)


@pytest.mark.backend_portable
def test_gate_learns_only_through_the_ensemble_cross_entropy(
    make_student, tiny_data, gradients
):
    x, y = tiny_data
    student = make_student(num_branches=3)
    gate = student.get_layer("gated_ensemble")

    def term(name):
        outputs = student(x[:16], training=True)
        terms = ONE(rampup_epochs=0).compute_losses(y[:16], outputs, 0)
        return ops.mean(terms[name])

    kl_gradients = gradients(lambda: term("kl"), gate.trainable_weights)
    assert not any(np.any(g) for g in kl_gradients)
    ce_gradients = gradients(
        lambda: term("ensemble_ce"), gate.trainable_weights
    )
    assert all(np.any(g) for g in ce_gradients)


def test_fit_reduces_the_loss(make_student, tiny_data):
    x, y = tiny_data
    distiller = keras_one.Distiller(
        make_student(num_branches=3), ONE(rampup_epochs=2)
    )
    distiller.compile(optimizer=keras.optimizers.SGD(0.05, momentum=0.9))
    before = distiller.evaluate(x, y, verbose=0, return_dict=True)
    history = distiller.fit(x, y, epochs=6, batch_size=16, verbose=0)
    after = distiller.evaluate(x, y, verbose=0, return_dict=True)
    assert history.history["ce"][-1] < 0.5 * history.history["ce"][0]
    assert after["ce"] < before["ce"]
    assert after["ensemble_accuracy"] > 0.8
