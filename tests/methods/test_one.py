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
    # The official code: the learned gate, the teacher detached in the KL.
    assert method.gate == "learned" and method.detach_teacher is True
    assert method.required_outputs == ("branch_logits", "ensemble_logits")


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


def random_outputs(seed=0, batch=8, classes=5):
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, classes, batch)
    branch_logits = [rng.normal(size=(batch, classes)) * 2 for _ in range(3)]
    ensemble_logits = rng.normal(size=(batch, classes)) * 2
    return labels, branch_logits, ensemble_logits


@pytest.mark.backend_portable
@pytest.mark.parametrize("detach_teacher", [True, False])
def test_average_gate_loss_matches_numpy(detach_teacher):
    labels, branch_logits, ensemble_logits = random_outputs()
    method = ONE(gate="average", detach_teacher=detach_teacher)
    for epoch in (0, 30, 100):
        terms = method.compute_losses(
            labels,
            {
                "branch_logits": [
                    ops.convert_to_tensor(z) for z in branch_logits
                ],
                # Ignored: the teacher is the mean of the branches.
                "ensemble_logits": ops.convert_to_tensor(ensemble_logits),
            },
            epoch,
        )
        expected = np_one_loss(
            labels, branch_logits, np.mean(branch_logits, axis=0), epoch
        )
        for name, value in zip(
            ("ce", "ensemble_ce", "kl"), expected, strict=True
        ):
            np.testing.assert_allclose(
                ops.convert_to_numpy(terms[name]), value, rtol=1e-5
            )


@pytest.mark.backend_portable
def test_attached_teacher_loss_matches_numpy():
    labels, branch_logits, ensemble_logits = random_outputs(seed=2)
    terms = ONE(detach_teacher=False).compute_losses(
        labels,
        {
            "branch_logits": [ops.convert_to_tensor(z) for z in branch_logits],
            "ensemble_logits": ops.convert_to_tensor(ensemble_logits),
        },
        40,
    )
    expected = np_one_loss(labels, branch_logits, ensemble_logits, 40)
    for name, value in zip(("ce", "ensemble_ce", "kl"), expected, strict=True):
        np.testing.assert_allclose(
            ops.convert_to_numpy(terms[name]), value, rtol=1e-5
        )


def np_kl_gradients(teacher, students, T):
    """Gradients of `sum_i sum_batch KL_T(teacher || students[i])`.

    With respect to the teacher and to each student, written out:
    d/ds KL = T (q - p), d/dt KL = T p * ((log p - log q) - KL / T^2),
    with p = softmax(t / T) and q = softmax(s / T).
    """

    def log_softmax(z):
        return np_log_softmax(z / T)

    log_p = log_softmax(teacher)
    p = np.exp(log_p)
    teacher_gradient = np.zeros_like(teacher)
    student_gradients = []
    for s in students:
        log_q = log_softmax(s)
        kl = np.sum(p * (log_p - log_q), axis=1, keepdims=True)
        student_gradients.append(T * (np.exp(log_q) - p))
        teacher_gradient += T * p * ((log_p - log_q) - kl)
    return teacher_gradient, student_gradients


@pytest.mark.backend_portable
def test_attached_teacher_sends_the_kl_gradient_to_the_teacher(gradients):
    rng = np.random.default_rng(1)
    branch_values = [rng.normal(size=(4, 3)) for _ in range(2)]
    ensemble_value = rng.normal(size=(4, 3))
    branch = [keras.Variable(z) for z in branch_values]
    ensemble = keras.Variable(ensemble_value)

    def kl():
        terms = ONE(rampup_epochs=0, detach_teacher=False).compute_losses(
            np.array([0, 1, 2, 0]),
            {"branch_logits": branch, "ensemble_logits": ensemble},
            0,
        )
        return ops.sum(terms["kl"])

    got_teacher, *got_branches = gradients(kl, [ensemble, *branch])
    want_teacher, want_branches = np_kl_gradients(
        ensemble_value, branch_values, 3.0
    )
    np.testing.assert_allclose(got_teacher, want_teacher, rtol=1e-4, atol=1e-6)
    for got, want in zip(got_branches, want_branches, strict=True):
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-6)


@pytest.mark.backend_portable
@pytest.mark.parametrize("detach_teacher", [True, False])
def test_average_gate_kl_gradient(gradients, detach_teacher):
    rng = np.random.default_rng(3)
    branch_values = [rng.normal(size=(4, 3)) for _ in range(3)]
    branch = [keras.Variable(z) for z in branch_values]

    def kl():
        terms = ONE(
            rampup_epochs=0, gate="average", detach_teacher=detach_teacher
        ).compute_losses(np.array([0, 1, 2, 0]), {"branch_logits": branch}, 0)
        return ops.sum(terms["kl"])

    got = gradients(kl, branch)
    teacher_gradient, want = np_kl_gradients(
        np.mean(branch_values, axis=0), branch_values, 3.0
    )
    if not detach_teacher:  # the teacher is the mean of the branches
        want = [g + teacher_gradient / 3 for g in want]
    for g, w in zip(got, want, strict=True):
        np.testing.assert_allclose(g, w, rtol=1e-4, atol=1e-6)


def test_average_gate_builds_a_mean_student_and_refuses_a_gated_one(
    make_student,
):
    method = ONE(gate="average")
    assert method.head == "mean" and ONE.head == "gate"
    student = method.build_student(
        "resnet8", num_classes=4, input_shape=(8, 8, 1)
    )
    assert "gate_weights" not in student.output
    assert "ensemble_logits" in student.output
    keras_one.Distiller(student, method)
    keras_one.Distiller(make_student(head=None), ONE(gate="average"))
    with pytest.raises(ValueError, match="head='mean'"):
        keras_one.Distiller(make_student(head="gate"), ONE(gate="average"))
    with pytest.raises(ValueError, match="ensemble_logits"):
        keras_one.Distiller(make_student(head=None), ONE())


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"gate": "gated"}, "gate must be 'learned'"),
        ({"gate": None}, "gate must be 'learned'"),
        ({"detach_teacher": 1}, "detach_teacher must be True"),
        ({"detach_teacher": "no"}, "detach_teacher must be True"),
    ],
)
def test_bad_options_are_refused(kwargs, message):
    with pytest.raises(ValueError, match=message):
        ONE(**kwargs)


def test_options_round_trip_through_config():
    method = ONE(gate="average", detach_teacher=np.bool_(False))
    config = method.get_config()
    assert config["gate"] == "average" and config["detach_teacher"] is False
    clone = ONE.from_config(config)
    assert (clone.gate, clone.detach_teacher, clone.head) == (
        "average",
        False,
        "mean",
    )


@pytest.mark.backend_portable
def test_options_survive_a_keras_file(tiny_data, tmp_path):
    x, y = tiny_data
    method = ONE(rampup_epochs=0, gate="average", detach_teacher=False)
    student = method.build_student(
        "resnet8", num_classes=4, input_shape=(8, 8, 1)
    )
    distiller = keras_one.Distiller(student, method)
    distiller.compile(optimizer=keras.optimizers.SGD(0.05, momentum=0.9))
    history = distiller.fit(x, y, epochs=2, batch_size=32, verbose=0)
    assert history.history["loss"][-1] < history.history["loss"][0]
    path = str(tmp_path / "one.keras")
    distiller.save(path)
    loaded = keras.saving.load_model(path, safe_mode=True)
    assert isinstance(loaded.method, ONE)
    assert loaded.method.gate == "average"
    assert loaded.method.detach_teacher is False
    expected = distiller.evaluate(x, y, verbose=0, return_dict=True)
    got = loaded.evaluate(x, y, verbose=0, return_dict=True)
    for name in ("loss", "ce", "ensemble_ce", "kl"):
        np.testing.assert_allclose(got[name], expected[name], rtol=1e-5)
