import keras
import numpy as np
import pytest
from keras import ops

import keras_one
from keras_one.layers import GradientScale
from keras_one.methods import CLILR


def np_log_softmax(z):
    z = z - z.max(axis=-1, keepdims=True)
    return z - np.log(np.exp(z).sum(axis=-1, keepdims=True))


def np_cl_loss(labels, logits, beta, T):
    """CL's loss (Song and Chai 2018), per example: each head's target is
    the mean logits of the other heads."""
    n, num_heads = len(labels), len(logits)

    def ce(z):
        return -np_log_softmax(z)[np.arange(n), labels]

    def kl(t, s):
        log_p, log_q = np_log_softmax(t / T), np_log_softmax(s / T)
        return T * T * np.sum(np.exp(log_p) * (log_p - log_q), axis=1)

    soft = 0.0
    for i in range(num_heads):
        others = [logits[j] for j in range(num_heads) if j != i]
        soft = soft + kl(np.mean(others, axis=0), logits[i])
    return beta * sum(ce(z) for z in logits), (1 - beta) * soft


def test_defaults_are_the_papers():
    method = CLILR()
    assert method.hard_target_weight == 0.5 and method.temperature == 2.0
    assert method.rampup_epochs == 0 and method.head is None
    config = method.get_config()
    assert CLILR.from_config(config).hard_target_weight == 0.5


@pytest.mark.backend_portable
@pytest.mark.parametrize("num_heads,beta,T", [(2, 0.5, 2.0), (4, 0.3, 3.0)])
def test_loss_matches_numpy(num_heads, beta, T):
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 6, 8)
    logits = [rng.normal(size=(8, 6)) * 2 for _ in range(num_heads)]
    terms = CLILR(hard_target_weight=beta, temperature=T).compute_losses(
        labels,
        {"branch_logits": [ops.convert_to_tensor(z) for z in logits]},
        0,
    )
    ce, kl = np_cl_loss(labels, logits, beta, T)
    np.testing.assert_allclose(ops.convert_to_numpy(terms["ce"]), ce, rtol=1e-5)
    np.testing.assert_allclose(ops.convert_to_numpy(terms["kl"]), kl, rtol=1e-5)


@pytest.mark.backend_portable
def test_targets_are_detached(gradients):
    # d kl / d z_i = (1 - beta) * T * (softmax(z_i/T) - softmax(t_i/T)):
    # nothing comes back from the other heads' terms.
    rng = np.random.default_rng(1)
    T, beta = 2.0, 0.5
    values = [rng.normal(size=(4, 3)) for _ in range(3)]
    logits = [keras.Variable(v) for v in values]

    def kl():
        terms = CLILR().compute_losses(
            np.array([0, 1, 2, 0]), {"branch_logits": logits}, 0
        )
        return ops.sum(terms["kl"])

    grads = gradients(kl, logits)
    softmax = lambda z: np.exp(np_log_softmax(z / T))  # noqa: E731
    for i in range(3):
        target = np.mean([values[j] for j in range(3) if j != i], axis=0)
        expected = (1 - beta) * T * (softmax(values[i]) - softmax(target))
        np.testing.assert_allclose(grads[i], expected, atol=1e-6)


def test_rejects_a_bad_weight():
    with pytest.raises(ValueError, match="hard_target_weight"):
        CLILR(hard_target_weight=1.5)


def test_build_student_rescales_the_trunk_gradient():
    student = CLILR().build_student(
        "resnet8", num_classes=4, input_shape=(8, 8, 1), num_branches=4
    )
    scales = [
        layer for layer in student.layers if isinstance(layer, GradientScale)
    ]
    assert len(scales) == 1 and scales[0].scale == pytest.approx(0.25)
    assert sorted(student.output) == [
        "branch_feature_maps",
        "branch_features",
        "branch_logits",
        "shared_features",
    ]


@pytest.mark.backend_portable
def test_fit_reduces_the_loss_and_exports(tiny_data, tmp_path, numpy_outputs):
    x, y = tiny_data
    method = CLILR()
    student = method.build_student(
        "resnet8", num_classes=4, input_shape=(8, 8, 1), num_branches=3
    )
    distiller = keras_one.Distiller(student, method)
    distiller.compile(optimizer=keras.optimizers.SGD(0.05, momentum=0.9))
    before = distiller.evaluate(x, y, verbose=0, return_dict=True)
    history = distiller.fit(x, y, epochs=5, batch_size=16, verbose=0)
    after = distiller.evaluate(x, y, verbose=0, return_dict=True)
    assert history.history["loss"][-1] < 0.5 * history.history["loss"][0]
    assert after["ce"] < before["ce"]
    assert after["ensemble_accuracy"] > 0.8

    outputs = numpy_outputs(student, x)
    distiller.save(tmp_path / "cl_ilr.keras")
    loaded = keras.saving.load_model(tmp_path / "cl_ilr.keras", safe_mode=True)
    assert loaded.method.hard_target_weight == 0.5
    for a, b in zip(
        numpy_outputs(loaded.student, x)["branch_logits"],
        outputs["branch_logits"],
        strict=True,
    ):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    branch = distiller.get_branch_model(2)
    assert not any(isinstance(layer, GradientScale) for layer in branch.layers)
    np.testing.assert_allclose(
        branch.predict(x, verbose=0), outputs["branch_logits"][2], atol=1e-5
    )
    ensemble = distiller.get_ensemble_model()
    mean = np.mean([z for z in outputs["branch_logits"]], axis=0)
    np.testing.assert_allclose(ensemble.predict(x, verbose=0), mean, atol=1e-5)
    # The exported branch saves and loads without keras_one's classes.
    branch.save(tmp_path / "branch.keras")
    loaded = keras.saving.load_model(tmp_path / "branch.keras", safe_mode=True)
    np.testing.assert_allclose(
        loaded.predict(x, verbose=0), outputs["branch_logits"][2], atol=1e-5
    )
