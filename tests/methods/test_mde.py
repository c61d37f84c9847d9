import keras
import numpy as np
import pytest
from keras import ops

import keras_one
from keras_one.layers import FeatureFusion
from keras_one.methods import MDE


def np_log_softmax(z):
    z = z - z.max(axis=-1, keepdims=True)
    return z - np.log(np.exp(z).sum(axis=-1, keepdims=True))


def np_diversity(labels, logits, T):
    """Mean pairwise cosine similarity of the softened non-target
    predictions, computed by dropping the label's column."""
    n, num_classes = logits[0].shape
    keep = np.ones((n, num_classes), bool)
    keep[np.arange(n), labels] = False
    q = [
        np.exp(np_log_softmax(z[keep].reshape(n, num_classes - 1) / T))
        for z in logits
    ]
    sims = [
        np.sum(q[i] * q[j], 1)
        / (np.linalg.norm(q[i], axis=1) * np.linalg.norm(q[j], axis=1))
        for i in range(len(q))
        for j in range(i + 1, len(q))
    ]
    return np.mean(sims, axis=0)


def np_mde_loss(labels, branch, ensemble, epoch, lam=1.0, T=3.0, R=80):
    n = len(labels)

    def ce(z):
        return -np_log_softmax(z)[np.arange(n), labels]

    def kl(t, s):
        log_p, log_q = np_log_softmax(t / T), np_log_softmax(s / T)
        return T * T * np.sum(np.exp(log_p) * (log_p - log_q), axis=1)

    w = np.exp(-5.0 * (1.0 - min(epoch, R) / R) ** 2)
    return (
        sum(ce(z) for z in branch),
        ce(ensemble),
        w * sum(kl(ensemble, z) for z in branch),
        lam * np_diversity(labels, branch, T),
    )


def test_defaults():
    method = MDE()
    assert method.temperature == 3.0 and method.rampup_epochs == 80
    assert method.diversity_weight == 1.0 and method.head == "feature_fusion"
    assert MDE.from_config(MDE(0.3).get_config()).diversity_weight == 0.3
    with pytest.raises(ValueError, match="diversity_weight"):
        MDE(diversity_weight=-1)


@pytest.mark.backend_portable
@pytest.mark.parametrize("num_branches,lam", [(2, 1.0), (3, 0.5)])
def test_loss_matches_numpy(num_branches, lam):
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 6, 8)
    branch = [rng.normal(size=(8, 6)) * 2 for _ in range(num_branches)]
    ensemble = rng.normal(size=(8, 6)) * 2
    for epoch in (0, 100):
        terms = MDE(diversity_weight=lam).compute_losses(
            labels,
            {
                "branch_logits": [ops.convert_to_tensor(z) for z in branch],
                "ensemble_logits": ops.convert_to_tensor(ensemble),
            },
            epoch,
        )
        expected = np_mde_loss(labels, branch, ensemble, epoch, lam)
        for name, value in zip(MDE.loss_names, expected, strict=True):
            np.testing.assert_allclose(
                ops.convert_to_numpy(terms[name]), value, rtol=1e-5
            )


@pytest.mark.backend_portable
def test_diversity_ignores_the_label_and_falls_with_disagreement():
    labels = np.array([0, 0])
    same = np.array([[5.0, 1.0, 2.0, 0.0], [5.0, 1.0, 2.0, 0.0]])
    method = MDE(temperature=1.0)
    # Only the label's logit differs: the non-target beliefs are equal.
    shifted = same.copy()
    shifted[:, 0] = -3.0
    np.testing.assert_allclose(
        ops.convert_to_numpy(
            method.classifier_diversity(labels, [same, shifted])
        ),
        1.0,
        rtol=1e-6,
    )
    # Different second guesses are less similar.
    other = np.array([[5.0, 2.0, 1.0, 0.0], [5.0, 0.0, 1.0, 2.0]])
    diversity = method.classifier_diversity(labels, [same, other])
    assert np.all(ops.convert_to_numpy(diversity) < 0.95)


@pytest.mark.backend_portable
def test_teacher_is_detached_and_fusion_learns_from_its_ce(
    make_student, tiny_data, gradients
):
    x, y = tiny_data
    student = make_student(num_branches=3, head="feature_fusion")
    fusion = student.get_layer("feature_fusion")
    assert isinstance(fusion, FeatureFusion)

    def term(name):
        outputs = student(x[:16], training=True)
        terms = MDE(rampup_epochs=0).compute_losses(y[:16], outputs, 0)
        return ops.mean(terms[name])

    kl_gradients = gradients(lambda: term("kl"), fusion.trainable_weights)
    assert not any(np.any(g) for g in kl_gradients)
    ce_gradients = gradients(
        lambda: term("ensemble_ce"), fusion.trainable_weights
    )
    assert all(np.any(g) for g in ce_gradients)
    classifier = student.get_layer("branch_1").trainable_weights[-2]
    (gradient,) = gradients(lambda: term("diversity"), [classifier])
    assert np.all(np.isfinite(gradient)) and np.any(gradient != 0)


@pytest.mark.backend_portable
def test_fit_save_load_and_export(
    make_student, tiny_data, tmp_path, numpy_outputs
):
    x, y = tiny_data
    student = make_student(num_branches=3, head="feature_fusion")
    distiller = keras_one.Distiller(student, MDE(rampup_epochs=2))
    distiller.compile(optimizer=keras.optimizers.SGD(0.05, momentum=0.9))
    before = distiller.evaluate(x, y, verbose=0, return_dict=True)
    history = distiller.fit(x, y, epochs=5, batch_size=16, verbose=0)
    after = distiller.evaluate(x, y, verbose=0, return_dict=True)
    assert history.history["ce"][-1] < 0.5 * history.history["ce"][0]
    assert after["ensemble_ce"] < before["ensemble_ce"]
    assert after["ensemble_accuracy"] > 0.8

    outputs = numpy_outputs(student, x)
    distiller.save(tmp_path / "mde.keras")
    loaded = keras.saving.load_model(tmp_path / "mde.keras", safe_mode=True)
    reloaded = numpy_outputs(loaded.student, x)
    for key in ("ensemble_logits", "gate_weights"):
        np.testing.assert_allclose(
            reloaded[key], outputs[key], rtol=1e-5, atol=1e-6
        )
    ensemble = distiller.get_ensemble_model()
    np.testing.assert_allclose(
        ensemble.predict(x, verbose=0), outputs["ensemble_logits"], atol=1e-5
    )
    branch = distiller.get_branch_model(1)
    np.testing.assert_allclose(
        branch.predict(x, verbose=0), outputs["branch_logits"][1], atol=1e-5
    )


def test_warns_about_a_student_without_feature_fusion(make_student):
    with pytest.warns(UserWarning, match="head='feature_fusion'"):
        keras_one.Distiller(make_student(num_branches=2), MDE())
