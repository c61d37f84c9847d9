import subprocess
import sys

import keras
import numpy as np
import pytest
import tensorflow as tf

import keras_one
from keras_one.methods import ONE


def compiled(student, lr=0.05, **kwargs):
    distiller = keras_one.Distiller(student, ONE(rampup_epochs=2))
    distiller.compile(
        optimizer=keras.optimizers.SGD(lr, momentum=0.9), **kwargs
    )
    return distiller


def one_loss(distiller, x, y, training, epoch=None):
    """ONE's loss per example, from the student's outputs."""
    outputs = distiller.student(x, training=training)
    if epoch is None:
        epoch = float(distiller.current_epoch)
    terms = distiller.method.compute_losses(y, outputs, epoch)
    return sum(np.asarray(t) for t in terms.values()), outputs


def test_logs_every_term_and_every_branch(make_student, tiny_data):
    x, y = tiny_data
    distiller = compiled(make_student(num_branches=3))
    history = distiller.fit(
        x, y, epochs=1, batch_size=32, validation_data=(x, y), verbose=0
    )
    names = ["loss", "ce", "ensemble_ce", "kl"] + [
        f"{p}_accuracy"
        for p in ("branch_0", "branch_1", "branch_2", "ensemble")
    ]
    assert sorted(history.history) == sorted(
        names + [f"val_{n}" for n in names]
    )


def test_epoch_values_are_exact_aggregates(make_student, tiny_data):
    x, y = tiny_data
    distiller = compiled(make_student(num_branches=2))
    # 96 examples in batches of 40: the last batch is smaller, so a plain
    # average of batch values would be wrong.
    scores = distiller.evaluate(
        x, y, batch_size=40, verbose=0, return_dict=True
    )
    loss, outputs = one_loss(distiller, x, y, training=False)
    regularization = float(sum(distiller.student.losses))
    np.testing.assert_allclose(
        scores["loss"], loss.mean() + regularization, rtol=1e-5
    )
    ensemble = np.argmax(outputs["ensemble_logits"], axis=-1)
    np.testing.assert_allclose(
        scores["ensemble_accuracy"], np.mean(ensemble == y), atol=1e-6
    )
    branch = np.argmax(outputs["branch_logits"][1], axis=-1)
    np.testing.assert_allclose(
        scores["branch_1_accuracy"], np.mean(branch == y), atol=1e-6
    )


def test_training_logs_are_exact_aggregates(make_student, tiny_data):
    x, y = tiny_data
    # With a zero learning rate the weights stay put, so the per-batch
    # training losses can be recomputed exactly.
    distiller = compiled(make_student(num_branches=2), lr=0.0)
    history = distiller.fit(
        x, y, epochs=1, batch_size=40, shuffle=False, verbose=0
    )
    regularization = float(sum(distiller.student.losses))
    batches = [
        one_loss(distiller, x[i : i + 40], y[i : i + 40], True, epoch=0)[0]
        for i in range(0, 96, 40)
    ]
    expected = np.concatenate(batches).mean() + regularization
    np.testing.assert_allclose(history.history["loss"][0], expected, rtol=1e-5)


def test_sample_weight(make_student, tiny_data):
    x, y = tiny_data
    distiller = compiled(make_student(num_branches=2, weight_decay=0.0))
    weights = np.linspace(0.0, 2.0, len(y)).astype("float32")
    scores = distiller.evaluate(
        x, y, sample_weight=weights, batch_size=96, verbose=0, return_dict=True
    )
    loss, outputs = one_loss(distiller, x, y, training=False)
    np.testing.assert_allclose(
        scores["loss"], np.mean(loss * weights), rtol=1e-5
    )
    correct = np.argmax(outputs["ensemble_logits"], -1) == y
    np.testing.assert_allclose(
        scores["ensemble_accuracy"],
        np.sum(correct * weights) / np.sum(weights),
        atol=1e-6,
    )


def test_callbacks_and_predict(make_student, tiny_data):
    x, y = tiny_data
    distiller = compiled(make_student(num_branches=3))
    seen = []
    callback = keras.callbacks.LambdaCallback(
        on_epoch_end=lambda epoch, logs: seen.append(sorted(logs))
    )
    stop = keras.callbacks.EarlyStopping("val_ensemble_accuracy", patience=0)
    distiller.fit(
        x,
        y,
        epochs=2,
        validation_split=0.25,
        callbacks=[callback, stop],
        verbose=0,
    )
    assert "val_ensemble_accuracy" in seen[0]
    predictions = distiller.predict(x[:5], verbose=0)
    assert sorted(predictions) == ["branch_logits", "ensemble_logits"]
    assert np.shape(predictions["branch_logits"]) == (3, 5, 4)


def test_current_epoch_follows_the_step_count(make_student, tiny_data):
    x, y = tiny_data
    distiller = compiled(make_student(num_branches=2))
    distiller.fit(x, y, epochs=3, batch_size=32, verbose=0)
    # 96 examples: 3 steps an epoch; 9 steps done, the next is in epoch 3.
    assert distiller.steps_per_epoch == 3
    assert float(distiller.current_epoch) == 3.0


def test_fit_and_train_on_batch_train_identically(make_student, tiny_data):
    """The ramp-up follows the optimizer's steps, not fit's epoch counter."""
    x, y = tiny_data

    def fresh():
        keras.utils.set_random_seed(5)
        return compiled(make_student(num_branches=2))

    by_fit = fresh()
    by_fit.fit(x, y, epochs=3, batch_size=48, shuffle=False, verbose=0)
    by_batch = fresh()
    with pytest.raises(ValueError, match="steps_per_epoch"):
        by_batch.train_on_batch(x[:48], y[:48])
    by_batch.steps_per_epoch = 2
    for _ in range(3):
        for i in (0, 48):
            by_batch.train_on_batch(x[i : i + 48], y[i : i + 48])
    assert float(by_batch.current_epoch) == 3.0
    for a, b in zip(by_fit.get_weights(), by_batch.get_weights(), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


def test_save_load_and_resume(make_student, tiny_data, tmp_path):
    x, y = tiny_data

    def fresh():
        keras.utils.set_random_seed(3)
        return compiled(make_student(num_branches=2))

    fit = dict(batch_size=16, shuffle=False, verbose=0)
    straight = fresh()
    straight.fit(x, y, epochs=3, **fit)
    first = fresh()
    first.fit(x, y, epochs=2, **fit)
    first.save(tmp_path / "distiller.keras")
    resumed = keras.saving.load_model(
        tmp_path / "distiller.keras", safe_mode=True
    )
    assert float(resumed.current_epoch) == 2.0
    resumed.fit(x, y, epochs=3, initial_epoch=2, **fit)
    for a, b in zip(straight.get_weights(), resumed.get_weights(), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("which", ["branch", "ensemble"])
def test_export_round_trip(make_student, tiny_data, tmp_path, which):
    x, y = tiny_data
    distiller = compiled(make_student(num_branches=3))
    distiller.fit(x, y, epochs=1, verbose=0)
    if which == "branch":
        model = distiller.get_branch_model(2)
        expected = distiller.predict(x, verbose=0)["branch_logits"][2]
    else:
        model = distiller.get_ensemble_model()
        expected = distiller.predict(x, verbose=0)["ensemble_logits"]
    np.testing.assert_allclose(model.predict(x, verbose=0), expected, atol=1e-5)
    path = tmp_path / "exported.keras"
    model.save(path)
    np.save(tmp_path / "x.npy", x)
    np.save(tmp_path / "expected.npy", expected)
    # A fresh interpreter that never imports keras_one loads and runs it.
    script = (
        "import sys, numpy as np, keras\n"
        f"m = keras.saving.load_model({str(path)!r}, safe_mode=True)\n"
        f"x = np.load({str(tmp_path / 'x.npy')!r})\n"
        f"e = np.load({str(tmp_path / 'expected.npy')!r})\n"
        "np.testing.assert_allclose(m.predict(x, verbose=0), e, atol=1e-5)\n"
        "assert not any(k.startswith('keras_one') for k in sys.modules)\n"
        "print('OK', len(m.layers))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", script],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert "OK" in result.stdout


def test_branch_export_contains_one_branch(make_student):
    distiller = compiled(make_student(num_branches=3))
    model = distiller.get_branch_model(0)
    names = {layer.name for layer in model.layers}
    assert "branch_0" in names and not names & {"branch_1", "branch_2"}
    single = make_student(num_branches=1)
    assert model.count_params() == single.count_params()


def test_export_of_a_student_built_with_branch_split(tiny_data):
    x, y = tiny_data
    inputs = keras.Input((8, 8, 1))
    shared = keras.layers.Conv2D(4, 3, name="trunk")(inputs)
    block = keras.Sequential(
        [keras.layers.GlobalAveragePooling2D(), keras.layers.Dense(4)]
    )
    branch_logits = keras_one.layers.BranchSplit(block, 3)(shared)
    ensemble_logits = keras_one.layers.GatedEnsemble(3)(shared, branch_logits)
    student = keras.Model(
        inputs,
        {"branch_logits": branch_logits, "ensemble_logits": ensemble_logits},
    )
    distiller = compiled(student)
    distiller.fit(x, y, epochs=1, verbose=0)
    model = distiller.get_branch_model(1)
    # Trunk (4 * 9 + 4) and one Dense(4) on 4 features: no other branch.
    assert model.count_params() == 40 + 20
    expected = distiller.predict(x, verbose=0)["branch_logits"][1]
    np.testing.assert_allclose(model.predict(x, verbose=0), expected, atol=1e-5)


def test_fewer_branches_than_the_method_needs(make_student):
    with pytest.raises(ValueError, match="at least 2 branches"):
        keras_one.Distiller(make_student(num_branches=1), ONE())


def test_missing_head(make_student):
    with pytest.raises(ValueError, match="head='gate'"):
        keras_one.Distiller(make_student(num_branches=3, head=None), ONE())


def test_outputs_not_logits_of_one_shape():
    inputs = keras.Input((4,))
    student = keras.Model(
        inputs, [keras.layers.Dense(3)(inputs), keras.layers.Dense(5)(inputs)]
    )
    with pytest.raises(ValueError, match="logits of one shape"):
        keras_one.Distiller(student, ONE())


def test_outputs_that_are_probabilities():
    inputs = keras.Input((4,))
    student = keras.Model(
        inputs,
        [keras.layers.Dense(3, activation="softmax")(inputs) for _ in range(2)],
    )
    with pytest.raises(ValueError, match="probability, not logits"):
        keras_one.Distiller(student, ONE())


def test_labels_of_the_wrong_shape(make_student, tiny_data):
    x, y = tiny_data
    distiller = compiled(make_student(num_branches=2))
    with pytest.raises(ValueError, match="one-hot"):
        distiller.fit(x, keras.utils.to_categorical(y, 4), verbose=0)


def test_labels_out_of_range(make_student, tiny_data):
    x, y = tiny_data
    distiller = compiled(make_student(num_branches=2))
    with pytest.raises(tf.errors.InvalidArgumentError, match=r"\[0, 4\)"):
        distiller.fit(x, y + 1, verbose=0)


def test_compile_rejects_a_loss(make_student):
    distiller = keras_one.Distiller(make_student(num_branches=2), ONE())
    with pytest.raises(ValueError, match="method defines"):
        distiller.compile(optimizer="sgd", loss="mse")


def test_the_optimizer_is_built_at_compile(make_student, tiny_data):
    # Keras' TensorFlow `fit` would build it inside the first traced step
    # (a slower first epoch); built at `compile`, the compiled step trains
    # as the eager one.
    x, y = tiny_data

    def trained(**kwargs):
        keras.utils.set_random_seed(3)
        distiller = compiled(make_student(), **kwargs)
        assert distiller.optimizer.built
        distiller.fit(x, y, batch_size=32, epochs=2, shuffle=False, verbose=0)
        return distiller.get_weights()

    for a, b in zip(trained(), trained(run_eagerly=True), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)
