import keras
import numpy as np
import pytest
from keras import ops

import keras_one
from keras_one.layers import FusionClassifier
from keras_one.methods import FFL


def np_log_softmax(z):
    z = z - z.max(axis=-1, keepdims=True)
    return z - np.log(np.exp(z).sum(axis=-1, keepdims=True))


def np_ffl_loss(labels, branch_logits, fused_logits, epoch, T=3.0, R=80):
    """FFL's loss (Kim et al. 2020, official code), per example."""
    n = len(labels)

    def ce(z):
        return -np_log_softmax(z)[np.arange(n), labels]

    def kl(t, s):
        log_p, log_q = np_log_softmax(t / T), np_log_softmax(s / T)
        return T * T * np.sum(np.exp(log_p) * (log_p - log_q), axis=1)

    w = np.exp(-5.0 * (1.0 - min(epoch, R) / R) ** 2)
    return (
        sum(ce(z) for z in branch_logits),
        ce(fused_logits),
        w * sum(kl(fused_logits, z) for z in branch_logits),
        w * kl(np.mean(branch_logits, axis=0), fused_logits),
    )


def test_defaults_are_the_papers():
    method = FFL()
    assert method.temperature == 3.0 and method.rampup_epochs == 80
    assert method.head == "fusion_classifier"
    student = method.build_student(
        "resnet8", num_classes=4, input_shape=(8, 8, 1)
    )
    assert len(student.output["branch_logits"]) == 2
    fusion = student.get_layer("fusion_classifier")
    assert isinstance(fusion, FusionClassifier)
    # Fuses two 64-channel maps: depthwise on 128, 1x1 back to 64.
    assert tuple(fusion.depthwise.kernel.shape) == (3, 3, 128, 1)
    assert tuple(fusion.pointwise.kernel.shape) == (1, 1, 128, 64)


@pytest.mark.backend_portable
def test_loss_matches_numpy():
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 5, 8)
    branch_logits = [rng.normal(size=(8, 5)) * 2 for _ in range(2)]
    fused_logits = rng.normal(size=(8, 5)) * 2
    for epoch in (0, 50, 100):
        terms = FFL().compute_losses(
            labels,
            {
                "branch_logits": [
                    ops.convert_to_tensor(z) for z in branch_logits
                ],
                "ensemble_logits": ops.convert_to_tensor(fused_logits),
            },
            epoch,
        )
        expected = np_ffl_loss(labels, branch_logits, fused_logits, epoch)
        for name, value in zip(FFL.loss_names, expected, strict=True):
            np.testing.assert_allclose(
                ops.convert_to_numpy(terms[name]), value, rtol=1e-5
            )


@pytest.mark.backend_portable
def test_targets_are_detached(gradients):
    rng = np.random.default_rng(1)
    branch = [keras.Variable(rng.normal(size=(4, 3))) for _ in range(2)]
    fused = keras.Variable(rng.normal(size=(4, 3)))

    def term(name):
        terms = FFL(rampup_epochs=0).compute_losses(
            np.array([0, 1, 2, 0]),
            {"branch_logits": branch, "ensemble_logits": fused},
            0,
        )
        return ops.sum(terms[name])

    # Gradients with respect to [fused, *branch]; zero where detached.
    # The fused classifier teaches the branches, not the other way round...
    fused_gradient, *branch_gradients = gradients(
        lambda: term("kl"), [fused, *branch]
    )
    assert not np.any(fused_gradient)
    assert all(np.any(g) for g in branch_gradients)
    # ...and the branches' mean teaches the fused classifier.
    fused_gradient, *branch_gradients = gradients(
        lambda: term("fusion_kl"), [fused, *branch]
    )
    assert not any(np.any(g) for g in branch_gradients)
    assert np.any(fused_gradient)


@pytest.mark.backend_portable
def test_fit_save_load_and_export(
    make_student, tiny_data, tmp_path, numpy_outputs
):
    x, y = tiny_data
    student = make_student(num_branches=2, head="fusion_classifier")
    distiller = keras_one.Distiller(student, FFL(rampup_epochs=2))
    distiller.compile(optimizer=keras.optimizers.SGD(0.05, momentum=0.9))
    before = distiller.evaluate(x, y, verbose=0, return_dict=True)
    history = distiller.fit(x, y, epochs=5, batch_size=16, verbose=0)
    after = distiller.evaluate(x, y, verbose=0, return_dict=True)
    assert history.history["ce"][-1] < 0.5 * history.history["ce"][0]
    assert after["ensemble_ce"] < before["ensemble_ce"]
    assert after["ensemble_accuracy"] > 0.8  # the fused classifier

    outputs = numpy_outputs(student, x)
    distiller.save(tmp_path / "ffl.keras")
    loaded = keras.saving.load_model(tmp_path / "ffl.keras", safe_mode=True)
    np.testing.assert_allclose(
        numpy_outputs(loaded.student, x)["ensemble_logits"],
        outputs["ensemble_logits"],
        rtol=1e-5,
        atol=1e-6,
    )
    fused = distiller.get_ensemble_model()
    assert "fusion_classifier" not in [layer.name for layer in fused.layers]
    np.testing.assert_allclose(
        fused.predict(x, verbose=0), outputs["ensemble_logits"], atol=1e-5
    )
    branch = distiller.get_branch_model(0)
    np.testing.assert_allclose(
        branch.predict(x, verbose=0), outputs["branch_logits"][0], atol=1e-5
    )


def test_warns_about_a_student_without_the_fusion_classifier(make_student):
    with pytest.warns(UserWarning, match="head='fusion_classifier'"):
        keras_one.Distiller(make_student(num_branches=2), FFL())
