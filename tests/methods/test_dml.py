import keras
import numpy as np
import pytest
from keras import ops

import keras_one
from keras_one.methods import DML


def np_log_softmax(z):
    z = z - z.max(axis=-1, keepdims=True)
    return z - np.log(np.exp(z).sum(axis=-1, keepdims=True))


def np_dml_loss(labels, logits, T):
    """DML's loss (Zhang et al. 2018, eq. 10), per example."""
    n, num_networks = len(labels), len(logits)

    def ce(z):
        return -np_log_softmax(z)[np.arange(n), labels]

    def kl(t, s):
        log_p, log_q = np_log_softmax(t / T), np_log_softmax(s / T)
        return T * T * np.sum(np.exp(log_p) * (log_p - log_q), axis=1)

    kl_total = sum(
        kl(logits[j], logits[k])
        for k in range(num_networks)
        for j in range(num_networks)
        if j != k
    )
    return sum(ce(z) for z in logits), kl_total / (num_networks - 1)


def test_defaults_are_the_papers():
    method = DML()
    assert method.temperature == 1.0 and method.rampup_epochs == 0
    assert method.head is None and method.loss_names == ("ce", "kl")


@pytest.mark.backend_portable
@pytest.mark.parametrize("num_networks,T", [(2, 1.0), (3, 1.0), (4, 2.5)])
def test_loss_matches_numpy(num_networks, T):
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 5, 8)
    logits = [rng.normal(size=(8, 5)) * 2 for _ in range(num_networks)]
    terms = DML(temperature=T).compute_losses(
        labels,
        {"branch_logits": [ops.convert_to_tensor(z) for z in logits]},
        0,
    )
    ce, kl = np_dml_loss(labels, logits, T)
    np.testing.assert_allclose(ops.convert_to_numpy(terms["ce"]), ce, rtol=1e-5)
    np.testing.assert_allclose(ops.convert_to_numpy(terms["kl"]), kl, rtol=1e-5)


@pytest.mark.backend_portable
def test_each_network_learns_only_from_its_own_kl(gradients):
    # With the peers detached, d kl / d z_k = T / (N-1) *
    # sum_{j != k} (softmax(z_k / T) - softmax(z_j / T)); without the
    # stop-gradient, z_k would also get the gradient of its peers' terms.
    rng = np.random.default_rng(1)
    T, values = 2.0, [rng.normal(size=(4, 3)) for _ in range(3)]
    logits = [keras.Variable(v) for v in values]

    def kl():
        terms = DML(temperature=T).compute_losses(
            np.array([0, 1, 2, 0]), {"branch_logits": logits}, 0
        )
        return ops.sum(terms["kl"])

    grads = gradients(kl, logits)
    probs = [np.exp(np_log_softmax(v / T)) for v in values]
    for k in range(3):
        expected = T / 2 * sum(probs[k] - probs[j] for j in range(3) if j != k)
        np.testing.assert_allclose(grads[k], expected, atol=1e-6)


def test_build_student_gives_independent_networks():
    student = DML().build_student(
        "resnet8", num_classes=4, input_shape=(8, 8, 1), weight_decay=0
    )
    single = keras_one.models.cifar_resnet(
        depth=8, num_classes=4, num_branches=1, input_shape=(8, 8, 1)
    )
    outputs = student.output
    assert len(outputs["branch_logits"]) == 2 and "ensemble_logits" not in (
        outputs
    )
    # Nothing shared: the networks read the image directly, and the student
    # has exactly twice the weights of one network.
    assert isinstance(
        outputs["shared_features"]._keras_history.operation,
        keras.layers.InputLayer,
    )
    assert student.count_params() == 2 * single.count_params()
    assert not student.losses  # weight_decay=0 was passed to the builder


@pytest.mark.backend_portable
def test_fit_reduces_the_loss_and_exports(
    make_student, tiny_data, numpy_outputs
):
    x, y = tiny_data
    student = make_student(num_branches=2, head=None, branch_stage=0)
    distiller = keras_one.Distiller(student, DML())
    distiller.compile(optimizer=keras.optimizers.SGD(0.05, momentum=0.9))
    before = distiller.evaluate(x, y, verbose=0, return_dict=True)
    history = distiller.fit(x, y, epochs=5, batch_size=16, verbose=0)
    after = distiller.evaluate(x, y, verbose=0, return_dict=True)
    assert history.history["loss"][-1] < 0.5 * history.history["loss"][0]
    assert after["ce"] < before["ce"]
    assert after["ensemble_accuracy"] > 0.8

    outputs = numpy_outputs(student, x)
    branch = distiller.get_branch_model(1)
    np.testing.assert_allclose(
        branch.predict(x, verbose=0), outputs["branch_logits"][1], atol=1e-5
    )
    ensemble = distiller.get_ensemble_model()
    mean = np.mean([z for z in outputs["branch_logits"]], axis=0)
    np.testing.assert_allclose(ensemble.predict(x, verbose=0), mean, atol=1e-5)
    # The exported branch holds one network only.
    assert branch.count_params() == student.count_params() // 2
