import json

import keras
import numpy as np
import pytest
from keras import ops

import keras_one
from keras_one import cli
from keras_one import models
from keras_one.methods import PCL

SHAPE = (8, 8, 1)


def np_log_softmax(z):
    z = z - z.max(axis=-1, keepdims=True)
    return z - np.log(np.exp(z).sum(axis=-1, keepdims=True))


def np_pcl_loss(labels, logits, ensemble, mean_logits, epoch, T=3.0, R=80):
    """PCL's loss (Wu and Gong 2021), each term per example."""
    n, m = len(labels), len(logits)

    def ce(z):
        return -np_log_softmax(z)[np.arange(n), labels]

    def kl(t, s):
        log_p, log_q = np_log_softmax(t / T), np_log_softmax(s / T)
        return T * T * np.sum(np.exp(log_p) * (log_p - log_q), axis=1)

    w = np.exp(-5.0 * (1.0 - min(epoch, R) / R) ** 2)
    mean_kl = 0.0
    for i in range(m):
        for other in range(m):
            if other != i:
                mean_kl = mean_kl + kl(mean_logits[other], logits[i])
    return {
        "ce": sum(ce(z) for z in logits),
        "ensemble_ce": ce(ensemble),
        "ensemble_kl": w * sum(kl(ensemble, z) for z in logits),
        "mean_teacher_kl": w / (m - 1) * mean_kl,
    }


def views_of(x, num_views):
    """Distinct views of the images: view `v` is shifted `v` pixels across."""
    return tuple(np.roll(x, view, axis=2) for view in range(num_views))


def make_distiller(num_peers=2, **method_kwargs):
    method = PCL(**method_kwargs)
    student = method.build_student(
        "resnet8", num_classes=4, input_shape=SHAPE, num_branches=num_peers
    )
    distiller = keras_one.Distiller(student, method)
    distiller.compile(optimizer=keras.optimizers.SGD(0.05, momentum=0.9))
    return distiller


def values(variables):
    return [ops.convert_to_numpy(v.value) for v in variables]


def test_defaults_are_the_papers():
    method = PCL()
    assert method.temperature == 3.0 and method.rampup_epochs == 80
    assert method.max_decay == 0.999
    info = PCL.info
    assert (info.name, info.branches, info.min_branches) == ("pcl", 3, 2)
    assert info.head == "linear_fusion"
    assert keras_one.methods.rampup_epochs(PCL, 300) == 80
    student = method.build_student("resnet8", num_classes=4, input_shape=SHAPE)
    assert [x.name for x in student.inputs] == ["view_0", "view_1", "view_2"]
    assert len(student.output["branch_logits"]) == 3
    # The fusion: Dense(C) on the 3 peers' 64-channel pooled features.
    fusion = student.get_layer("fusion_logits")
    assert tuple(fusion.kernel.shape) == (3 * 64, 4)
    # One trunk, shared by the views: a 3-view student has the weights of
    # a 1-view one.
    one_view = models.cifar_resnet(
        8, num_classes=4, input_shape=SHAPE, head="linear_fusion"
    )
    assert student.count_params() == one_view.count_params()


@pytest.mark.backend_portable
def test_loss_matches_numpy():
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 5, 8)
    logits = [rng.normal(size=(8, 5)) * 2 for _ in range(3)]
    mean_logits = [rng.normal(size=(8, 5)) * 2 for _ in range(3)]
    ensemble = rng.normal(size=(8, 5)) * 2
    for epoch in (0, 40, 100):
        terms = PCL().compute_losses(
            ops.convert_to_tensor(labels),
            {
                "branch_logits": [ops.convert_to_tensor(z) for z in logits],
                "ensemble_logits": ops.convert_to_tensor(ensemble),
                "mean_branch_logits": [
                    ops.convert_to_tensor(z) for z in mean_logits
                ],
            },
            epoch,
        )
        expected = np_pcl_loss(labels, logits, ensemble, mean_logits, epoch)
        assert sorted(terms) == sorted(PCL.loss_names) == sorted(expected)
        for name, value in expected.items():
            np.testing.assert_allclose(
                ops.convert_to_numpy(terms[name]), value, rtol=1e-5
            )


@pytest.mark.backend_portable
def test_mean_network_follows_the_decay_schedule(tiny_data):
    """`th' <- a th' + (1 - a) th`, `a = min(1 - 1/(k + 1), max_decay)`."""
    x, y = tiny_data
    keras.utils.set_random_seed(0)
    # A low cap, so that it is reached within the 4 steps.
    distiller = make_distiller(rampup_epochs=2, max_decay=0.6)
    method, student = distiller.method, distiller.student
    distiller.steps_per_epoch = 2
    inputs = views_of(x[:32], 2)
    expected = values(student.trainable_variables)
    for mean, weight in zip(values(method.mean_weights), expected, strict=True):
        np.testing.assert_array_equal(mean, weight)
    for step, decay in enumerate([0.0, 0.5, 0.6, 0.6]):
        np.testing.assert_allclose(
            ops.convert_to_numpy(method.mean_decay()), decay, rtol=1e-6
        )
        distiller.train_on_batch(inputs, y[:32])
        weights = values(student.trainable_variables)
        expected = [
            decay * mean + (1.0 - decay) * w
            for mean, w in zip(expected, weights, strict=True)
        ]
        for actual, wanted in zip(
            values(method.mean_weights), expected, strict=True
        ):
            np.testing.assert_allclose(actual, wanted, rtol=1e-5, atol=1e-6)
        assert int(ops.convert_to_numpy(method.mean_updates.value)) == step + 1
    # After the copy of the first step, the mean lags the live weights.
    assert any(
        not np.allclose(mean, w, atol=1e-4)
        for mean, w in zip(values(method.mean_weights), weights, strict=True)
    )


@pytest.mark.backend_portable
def test_mean_network_keeps_its_own_batch_norm_statistics(tiny_data):
    x, y = tiny_data
    distiller = make_distiller(rampup_epochs=2)
    method, student = distiller.method, distiller.student
    distiller.steps_per_epoch = 1
    inputs = views_of(x[:32], 2)
    # The first update copies the weights: the mean network and the student
    # differ from the third step on.
    distiller.train_on_batch(inputs, y[:32])
    distiller.train_on_batch(inputs, y[:32])
    # In training, the mean network normalizes with its batch statistics
    # and updates its own moving statistics from them.
    mean_weights = values(method.mean_weights)
    statistics = values(method.mean_statistics)
    _, expected = student.stateless_call(
        mean_weights, statistics, inputs, training=True
    )
    distiller.train_on_batch(inputs, y[:32])
    for actual, wanted in zip(
        values(method.mean_statistics), expected, strict=True
    ):
        np.testing.assert_allclose(
            actual, ops.convert_to_numpy(wanted), rtol=1e-5, atol=1e-6
        )
    assert any(
        not np.allclose(a, b)
        for a, b in zip(
            values(method.mean_statistics),
            values(student.non_trainable_variables),
            strict=True,
        )
    )


@pytest.mark.backend_portable
def test_only_the_fusions_cross_entropy_trains_it(tiny_data, gradients):
    x, _ = tiny_data
    labels = ops.convert_to_tensor(np.arange(16) % 4)
    distiller = make_distiller(rampup_epochs=0)
    method, student = distiller.method, distiller.student
    inputs = views_of(x[:16], 2)
    fusion = student.get_layer("fusion_logits").trainable_weights
    peer_conv = student.get_layer("branch_0").trainable_weights[:1]

    def term(name):
        outputs = distiller(inputs, training=True)
        outputs.update(method(inputs, outputs, training=False))
        return ops.mean(method.compute_losses(labels, outputs, 0)[name])

    assert all(
        np.any(g) for g in gradients(lambda: term("ensemble_ce"), fusion)
    )
    for name in ("ce", "ensemble_kl", "mean_teacher_kl"):
        grads = gradients(lambda name=name: term(name), fusion)
        assert not any(np.any(g) for g in grads)
    # The fusion's cross-entropy reaches the peers through the concat.
    (grad,) = gradients(lambda: term("ensemble_ce"), peer_conv)
    assert np.any(grad)


def test_fit_save_load_and_export(tiny_data, tmp_path):
    x, y = tiny_data
    inputs = views_of(x, 3)
    distiller = make_distiller(num_peers=3, rampup_epochs=2)
    method = distiller.method
    history = distiller.fit(inputs, y, epochs=4, batch_size=16, verbose=0)
    assert history.history["ce"][-1] < 0.5 * history.history["ce"][0]
    assert int(method.mean_updates.numpy()) == 4 * 6

    # The mean teachers are the mean network's peer logits, each peer on
    # its own view, as the exported mean peers compute them.
    outputs = distiller(inputs, training=False)
    mean_logits = method(inputs, outputs, training=False)["mean_branch_logits"]
    for index in range(3):
        exported = method.get_mean_branch_model(index)
        assert len(exported.inputs) == 1
        np.testing.assert_allclose(
            exported.predict(inputs[index], verbose=0),
            mean_logits[index],
            rtol=1e-5,
            atol=1e-5,
        )
    assert not np.allclose(mean_logits[0], outputs["branch_logits"][0])
    deployed = method.get_mean_branch_model(0)
    assert all(
        type(layer).__module__.startswith("keras.") for layer in deployed.layers
    )
    accuracy = keras_one.recipes.accuracy(deployed, [(x, y)])
    assert accuracy > 0.8
    # The live peer alone: one input, the live weights.
    live = distiller.get_branch_model(2)
    assert [t.name for t in live.inputs] == ["view_2"]
    np.testing.assert_allclose(
        live.predict(inputs[2], verbose=0),
        outputs["branch_logits"][2],
        rtol=1e-5,
        atol=1e-5,
    )

    distiller.save(tmp_path / "pcl.keras")
    deployed.save(tmp_path / "deployed.keras")
    loaded = keras.saving.load_model(tmp_path / "pcl.keras", safe_mode=True)
    for a, b in zip(
        values(method.mean_weights + method.mean_statistics),
        values(loaded.method.mean_weights + loaded.method.mean_statistics),
        strict=True,
    ):
        np.testing.assert_array_equal(a, b)
    assert int(loaded.method.mean_updates.numpy()) == 4 * 6
    reloaded = keras.saving.load_model(tmp_path / "deployed.keras")
    np.testing.assert_allclose(
        loaded.method.get_mean_branch_model(0).predict(x, verbose=0),
        reloaded.predict(x, verbose=0),
        rtol=1e-6,
        atol=1e-6,
    )
    # `keras-one export` writes the model PCL deploys: the mean peer.
    output = str(tmp_path / "mean_peer_1.keras")
    cli.main(
        ["export", str(tmp_path / "pcl.keras"), "--branch", "1"]
        + ["--output", output, "--no-preprocessing"]
    )
    np.testing.assert_allclose(
        keras.saving.load_model(output).predict(inputs[1], verbose=0),
        method.get_mean_branch_model(1).predict(inputs[1], verbose=0),
        rtol=1e-6,
        atol=1e-6,
    )
    # Training resumes the schedule of the mean network.
    loaded.fit(inputs, y, epochs=1, batch_size=48, verbose=0)
    assert int(loaded.method.mean_updates.numpy()) == 4 * 6 + 2


def test_bad_inputs_are_refused(tiny_data):
    x, y = tiny_data
    one_input = models.cifar_resnet(
        8, num_classes=4, input_shape=SHAPE, head="linear_fusion"
    )
    with pytest.raises(ValueError, match="student needs 3 image inputs"):
        keras_one.Distiller(one_input, PCL())
    one_peer = models.cifar_resnet(
        8, num_classes=4, input_shape=SHAPE, num_branches=1
    )
    with pytest.raises(ValueError, match="at least 2 branches"):
        keras_one.Distiller(one_peer, PCL())
    student = PCL().build_student("resnet8", num_classes=4, input_shape=SHAPE)
    swapped = keras.Model(student.inputs[::-1], student.output)
    with pytest.raises(ValueError, match="peer 0 must read input 0"):
        keras_one.Distiller(swapped, PCL())

    distiller = make_distiller(rampup_epochs=2)
    with pytest.raises(ValueError, match=r"load\(\.\.\., views=2\)"):
        distiller.fit(x, y, epochs=1, batch_size=16, verbose=0)
    with pytest.raises(ValueError, match="out of range"):
        distiller.method.get_mean_branch_model(2)
    with pytest.raises(ValueError, match="with its Distiller"):
        PCL().get_mean_branch_model(0)
    with pytest.raises(ValueError, match="max_decay"):
        PCL(max_decay=1.0)


@pytest.mark.parametrize(
    "arguments, message",
    [
        (dict(num_branches=3, views=2), "views must be 1"),
        (dict(num_branches=2, views=2, head="gate"), "gate"),
        (dict(num_branches=2, views=2, fused=True), "fused=True"),
    ],
)
def test_bad_views_are_refused(arguments, message):
    with pytest.raises(ValueError, match=message):
        models.cifar_resnet(8, num_classes=4, input_shape=SHAPE, **arguments)


def test_command_line_trains_evaluates_and_exports_pcl(tmp_path, capsys):
    """`keras-one train --method pcl` loads a view per peer; the scores of
    the temporal-mean peers it reports are those of their exports."""
    out = tmp_path / "run"
    cli.main(
        ["train", "--method", "pcl", "--epochs", "1", "--no-baseline"]
        + ["--verbose", "0", "--output-dir", str(out)]
    )
    results = json.loads((out / "results.json").read_text())["pcl"]
    assert len(results["branch_accuracy"]) == 3
    assert len(results["mean_branch_accuracy"]) == 3
    # The saved Distiller is evaluated on three views of the test images.
    scores_path = tmp_path / "scores.json"
    cli.main(
        ["evaluate", str(out / "distiller.keras"), "--verbose", "0"]
        + ["--output", str(scores_path)]
    )
    scores = json.loads(scores_path.read_text())
    np.testing.assert_allclose(
        scores["ensemble_accuracy"], results["ensemble_accuracy"]
    )
    # `export --branch 2` writes the mean peer, which scores as reported.
    exported = str(tmp_path / "peer_2.keras")
    cli.main(
        ["export", str(out / "distiller.keras"), "--branch", "2"]
        + ["--output", exported]
    )
    assert "temporal mean (EMA) of branch 2" in capsys.readouterr().out
    cli.main(
        ["evaluate", exported, "--verbose", "0", "--output", str(scores_path)]
        + ["--overwrite"]  # the scores of the distiller, replaced
    )
    np.testing.assert_allclose(
        json.loads(scores_path.read_text())["accuracy"],
        results["mean_branch_accuracy"][2],
    )
