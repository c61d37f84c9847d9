import keras
import numpy as np
import pytest
from keras import ops

import keras_one
from keras_one.methods import OKDDip


def np_log_softmax(z):
    z = z - z.max(axis=-1, keepdims=True)
    return z - np.log(np.exp(z).sum(axis=-1, keepdims=True))


def np_okddip_loss(labels, logits, targets, epoch, T=3.0, R=80):
    """OKDDip's loss (Chen et al. 2020, official code), per example."""
    n = len(labels)

    def ce(z):
        return -np_log_softmax(z)[np.arange(n), labels]

    def kl(t, s):
        log_p, log_q = np_log_softmax(t / T), np_log_softmax(s / T)
        return T * T * np.sum(np.exp(log_p) * (log_p - log_q), axis=1)

    w = np.exp(-5.0 * (1.0 - min(epoch, R) / R) ** 2)
    peers, leader = logits[:-1], logits[-1]
    return (
        sum(ce(z) for z in logits),
        w * sum(kl(t, z) for t, z in zip(targets, peers, strict=True)),
        w * kl(np.mean(peers, axis=0), leader),
    )


def test_defaults_are_the_papers():
    method = OKDDip()
    assert method.temperature == 3.0 and method.rampup_epochs == 80
    assert method.head == "peer_attention" and method.min_branches == 3
    student = method.build_student(
        "resnet8", num_classes=4, input_shape=(8, 8, 1)
    )
    assert len(student.output["branch_logits"]) == 4
    assert len(student.output["peer_targets"]) == 3
    assert tuple(student.output["peer_attention"].shape) == (None, 3, 3)
    # The attention reads the 64-channel pooled features: 64 -> 8.
    attention = student.get_layer("peer_attention")
    assert tuple(attention.query.kernel.shape) == (64, 8)


@pytest.mark.backend_portable
def test_loss_matches_numpy():
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 5, 8)
    logits = [rng.normal(size=(8, 5)) * 2 for _ in range(4)]
    targets = [rng.normal(size=(8, 5)) * 2 for _ in range(3)]
    for epoch in (0, 40, 100):
        terms = OKDDip().compute_losses(
            labels,
            {
                "branch_logits": [ops.convert_to_tensor(z) for z in logits],
                "peer_targets": [ops.convert_to_tensor(t) for t in targets],
            },
            epoch,
        )
        expected = np_okddip_loss(labels, logits, targets, epoch)
        for name, value in zip(OKDDip.loss_names, expected, strict=True):
            np.testing.assert_allclose(
                ops.convert_to_numpy(terms[name]), value, rtol=1e-5
            )


@pytest.mark.backend_portable
def test_targets_are_not_detached(make_student, tiny_data, gradients):
    # As in the official code: the attention learns through the peers' KL,
    # and the leader's KL also reaches the peers.
    x, y = tiny_data
    student = make_student(num_branches=4, head="peer_attention")
    attention = student.get_layer("peer_attention")

    def term(name):
        outputs = student(x[:16], training=True)
        terms = OKDDip(rampup_epochs=0).compute_losses(y[:16], outputs, 0)
        return ops.mean(terms[name])

    peer_kl_gradients = gradients(
        lambda: term("peer_kl"), attention.trainable_weights
    )
    assert all(np.any(g) for g in peer_kl_gradients)
    ce_gradients = gradients(lambda: term("ce"), attention.trainable_weights)
    assert not any(np.any(g) for g in ce_gradients)
    peer_classifier = student.get_layer("branch_0").trainable_weights[-1]
    (leader_gradient,) = gradients(lambda: term("leader_kl"), [peer_classifier])
    assert np.any(leader_gradient)


def test_rejects_a_student_without_peer_targets(make_student):
    with pytest.raises(ValueError, match="peer_attention"):
        keras_one.Distiller(make_student(num_branches=4), OKDDip())


@pytest.mark.backend_portable
def test_fit_save_load_and_export(
    make_student, tiny_data, tmp_path, numpy_outputs
):
    x, y = tiny_data
    student = make_student(num_branches=4, head="peer_attention")
    distiller = keras_one.Distiller(student, OKDDip(rampup_epochs=2))
    distiller.compile(optimizer=keras.optimizers.SGD(0.05, momentum=0.9))
    before = distiller.evaluate(x, y, verbose=0, return_dict=True)
    history = distiller.fit(x, y, epochs=5, batch_size=16, verbose=0)
    after = distiller.evaluate(x, y, verbose=0, return_dict=True)
    assert history.history["ce"][-1] < 0.5 * history.history["ce"][0]
    assert after["ce"] < before["ce"]
    assert after["branch_3_accuracy"] > 0.8  # the leader

    outputs = numpy_outputs(student, x)
    distiller.save(tmp_path / "okddip.keras")
    loaded = keras.saving.load_model(tmp_path / "okddip.keras", safe_mode=True)
    reloaded = numpy_outputs(loaded.student, x)
    for key in ("branch_logits", "peer_targets"):
        for a, b in zip(outputs[key], reloaded[key], strict=True):
            np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)

    leader = distiller.get_branch_model(3)
    np.testing.assert_allclose(
        leader.predict(x, verbose=0), outputs["branch_logits"][3], atol=1e-5
    )
    assert "peer_attention" not in [layer.name for layer in leader.layers]
    ensemble = distiller.get_ensemble_model()
    mean = np.mean([z for z in outputs["branch_logits"]], axis=0)
    np.testing.assert_allclose(ensemble.predict(x, verbose=0), mean, atol=1e-5)
