"""Multi-run pipelines: ensembles, self-distillation, Born-Again Networks.

The pipelines train tiny dense networks on the bundled digits for one or
two epochs per stage: enough for every promise checked here (the ensemble's
average, the frozen teachers, the chain of generations, the resume that
ends with an uninterrupted run's weights, the refusals).
"""

import inspect
import json
import os
import socket

import keras
import numpy as np
import pytest

from keras_one import pipelines
from keras_one import recipes


def build_model():
    # BatchNormalization: a teacher run in training mode would move its
    # statistics, which the frozen-teacher check would see.
    return keras.Sequential(
        [
            keras.Input((8, 8, 1)),
            keras.layers.Flatten(),
            keras.layers.Dense(16),
            keras.layers.BatchNormalization(),
            keras.layers.ReLU(),
            keras.layers.Dense(10),
        ]
    )


def fresh_data():
    """The digits, as a new process loads them (never iterated).

    TensorFlow combines a dataset's shuffle seed with the global seed of
    the moment the dataset is built: it is set first.
    """
    keras.utils.set_random_seed(0)
    train_ds, test_ds, _ = recipes.load_data(small=True)
    return train_ds, test_ds


def softmax(z):
    e = np.exp(z - z.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


class Watch(keras.callbacks.Callback):
    """Records each stage trained, and checks each distillation's teacher.

    The teacher must be frozen (not trainable, no variable among the
    Distiller's trainable ones) and end each stage with the weights and
    BatchNormalization statistics it started with, which must be those
    of the `expected_teacher(stage)` files.
    """

    def __init__(self, expected_teacher=None):
        super().__init__()
        self.expected_teacher = expected_teacher
        self.stages = []  # [stage, epochs trained]
        self.teachers = {}

    def on_train_begin(self, logs=None):
        name = self.model.name.removesuffix("_distiller")
        self.stages.append([name, 0])
        method = getattr(self.model, "method", None)
        if method is None:
            self.before = None
            return
        teacher = method.teacher
        assert not teacher.trainable
        frozen = {id(v) for v in teacher.weights}
        assert not any(id(v) in frozen for v in self.model.trainable_variables)
        self.before = teacher.get_weights()
        self.teachers[name] = (method.alpha, method.temperature, teacher)
        if self.expected_teacher is not None:
            files = self.expected_teacher(name)
            expected = [w for path in files for w in weights(path)]
            assert_same(self.before, expected)

    def on_epoch_end(self, epoch, logs=None):
        self.stages[-1][1] += 1

    def on_train_end(self, logs=None):
        if self.before is not None:
            assert_same(self.model.method.teacher.get_weights(), self.before)


def weights(path):
    return keras.saving.load_model(path).get_weights()


def assert_same(got, expected, rtol=0.0):
    assert len(got) == len(expected)
    for a, b in zip(got, expected, strict=True):
        np.testing.assert_allclose(a, b, rtol=rtol, atol=rtol * 1e-1)


class InterruptAfter(keras.callbacks.Callback):
    """Ctrl-C at the end of epoch `epoch` of stage `stage`.

    It comes after the stage's backup callbacks: the epoch is backed up.
    """

    def __init__(self, stage, epoch):
        super().__init__()
        self.stage, self.epoch = stage, epoch

    def on_epoch_end(self, epoch, logs=None):
        name = self.model.name.removesuffix("_distiller")
        if name == self.stage and epoch == self.epoch:
            raise KeyboardInterrupt


# === The ensemble ===


def test_ensemble_model_averages_logits_or_probabilities(tmp_path):
    keras.utils.set_random_seed(1)
    members = []
    for index in range(3):
        model = build_model()
        model.name = f"member_{index}"
        members.append(model)
    images = np.random.default_rng(0).normal(size=(5, 8, 8, 1))
    images = images.astype("float32")
    logits = np.stack([m.predict_on_batch(images) for m in members])
    ensemble = pipelines.ensemble_model(members)
    np.testing.assert_allclose(
        ensemble.predict_on_batch(images), logits.mean(0), atol=1e-6
    )
    ensemble = pipelines.ensemble_model(members, average="probabilities")
    got = ensemble.predict_on_batch(images)
    np.testing.assert_allclose(
        softmax(got), softmax(logits).mean(0), rtol=1e-5, atol=1e-7
    )
    # Its output is logits: log of the mean probability.
    np.testing.assert_allclose(
        got, np.log(softmax(logits).mean(0)), rtol=1e-5, atol=1e-5
    )
    # It shares the members' weights and saves as a plain Keras model.
    assert ensemble.count_params() == sum(m.count_params() for m in members)
    path = tmp_path / "ensemble.keras"
    ensemble.save(path)
    loaded = keras.saving.load_model(path)
    np.testing.assert_allclose(loaded.predict_on_batch(images), got)


def test_ensemble_model_refuses_what_it_cannot_average():
    with pytest.raises(ValueError, match="at least 2 models"):
        pipelines.ensemble_model([build_model()])
    same = [build_model(), build_model()]
    for model in same:
        model.name = "net"
    with pytest.raises(ValueError, match=r"distinct names; \['net'\]"):
        pipelines.ensemble_model(same)
    with pytest.raises(ValueError, match="average must be one of"):
        pipelines.ensemble_model([build_model(), build_model()], "median")


# === Pipelines ===


def test_defaults_are_the_data_the_command_reads():
    for name, defaults in pipelines.DEFAULTS.items():
        signature = inspect.signature(getattr(pipelines, name))
        for key, value in defaults.items():
            assert signature.parameters[key].default == value, (name, key)


def test_born_again_chains_frozen_generations(tmp_path):
    train_ds, test_ds = fresh_data()

    def teacher_files(stage):
        previous = int(stage.split("_")[1]) - 1
        return [tmp_path / f"generation_{previous}.keras"]

    watch = Watch(teacher_files)
    models, accuracy = pipelines.born_again(
        build_model,
        train_ds,
        test_ds,
        epochs=1,
        directory=tmp_path,
        generations=2,
        callbacks=[watch],
        verbose=0,
    )
    assert watch.stages == [
        ["generation_0", 1],
        ["generation_1", 1],
        ["generation_2", 1],
    ]
    # BAN's loss: the teacher's softmax at T = 1, no labels.
    for stage in ("generation_1", "generation_2"):
        assert watch.teachers[stage][:2] == (1.0, 1.0)
    names = [model.name for model in models["generations"]]
    assert names == ["generation_0", "generation_1", "generation_2"]
    for index, model in enumerate(models["generations"]):
        assert_same(
            model.get_weights(), weights(tmp_path / f"{names[index]}.keras")
        )
        scores = json.loads((tmp_path / f"{names[index]}.json").read_text())
        assert accuracy["generations"][index] == scores["accuracy"]
        assert len(scores["history"]["loss"]) == 1
        assert 0.1 < scores["accuracy"] <= 1.0
    # BAN-Ens: the born-again generations 1 and 2, not generation 0.
    ensemble = models["ensemble"]
    assert [layer.name for layer in ensemble.layers[1:3]] == names[1:]
    assert accuracy["ensemble"] == recipes.accuracy(ensemble, test_ds)
    # Finished: no backup, no lock, no temporary file.
    assert sorted(os.listdir(tmp_path)) == sorted(
        ["pipeline.json"]
        + [f"{n}{e}" for n in names for e in (".keras", ".json")]
    )


def run_ensemble(folder, callbacks=()):
    train_ds, test_ds = fresh_data()
    return pipelines.ensemble_distillation(
        build_model,
        train_ds,
        test_ds,
        epochs=2,
        directory=folder,
        members=2,
        callbacks=callbacks,
        verbose=0,
    )


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    folder = tmp_path_factory.mktemp("uninterrupted")
    members = [folder / "member_0.keras", folder / "member_1.keras"]
    watch = Watch(lambda stage: members)
    models, accuracy = run_ensemble(folder, [watch])
    return folder, models, accuracy, watch


def test_ensemble_distillation_distils_the_frozen_ensemble(uninterrupted):
    folder, models, accuracy, watch = uninterrupted
    assert watch.stages == [["member_0", 2], ["member_1", 2], ["student", 2]]
    alpha, temperature, teacher = watch.teachers["student"]
    assert (alpha, temperature) == (0.9, 4.0)  # KD's defaults
    # The teacher was the logit average of the saved members.
    assert teacher.layers[-1].average == "logits"
    assert len(models["members"]) == 2
    test_ds = fresh_data()[1]
    assert accuracy["ensemble"] == recipes.accuracy(models["ensemble"], test_ds)
    assert_same(
        models["student"].get_weights(), weights(folder / "student.keras")
    )
    record = json.loads((folder / "pipeline.json").read_text())
    assert record["stages"] == ["member_0", "member_1", "student"]


def test_an_interrupted_pipeline_resumes_to_the_uninterrupted_result(
    uninterrupted, tmp_path
):
    reference, _, expected, _ = uninterrupted
    # Ctrl-C after the first of member_1's two epochs.
    with pytest.raises(KeyboardInterrupt):
        run_ensemble(tmp_path, [InterruptAfter("member_1", 0)])
    assert (tmp_path / "member_0.keras").exists()
    assert not (tmp_path / "member_1.keras").exists()
    assert (tmp_path / "backup" / "member_1.epoch-00001").is_dir()
    assert not (tmp_path / "run.lock").exists()
    finished = (tmp_path / "member_0.keras").stat().st_mtime_ns
    # The rerun trains only what is missing: member_1's second epoch and
    # the student.
    watch = Watch()
    models, accuracy = run_ensemble(tmp_path, [watch])
    assert watch.stages == [["member_1", 1], ["student", 2]]
    assert (tmp_path / "member_0.keras").stat().st_mtime_ns == finished
    for name in ("member_0", "member_1", "student"):
        assert_same(
            weights(tmp_path / f"{name}.keras"),
            weights(reference / f"{name}.keras"),
            rtol=1e-5,
        )
    np.testing.assert_allclose(
        accuracy["members"], expected["members"], atol=1e-6
    )
    for key in ("ensemble", "student"):
        assert accuracy[key] == pytest.approx(expected[key], abs=1e-6)
    history = json.loads((tmp_path / "member_1.json").read_text())["history"]
    straight = json.loads((reference / "member_1.json").read_text())["history"]
    np.testing.assert_allclose(history["loss"], straight["loss"], rtol=1e-5)
    assert not (tmp_path / "backup").exists()
    # A third call trains nothing.
    watch = Watch()
    run_ensemble(tmp_path, [watch])
    assert watch.stages == []


# === Refusals ===


@pytest.mark.parametrize(
    "function, options, message",
    [
        ("ensemble_distillation", {"members": 1}, "members must be an"),
        ("ensemble_distillation", {"members": 2.0}, "members must be an"),
        ("self_distillation", {"generations": 0}, "generations must be"),
        ("born_again", {"generations": 0}, "generations must be"),
        ("born_again", {"alpha": 1.5}, r"alpha must lie in \[0, 1\]"),
        ("self_distillation", {"temperature": 0}, "temperature must be > 0"),
        ("ensemble_distillation", {"average": "mean"}, "average must be"),
        ("born_again", {"epochs": 0}, "epochs must be an integer >= 1"),
    ],
)
def test_bad_arguments_are_refused_before_training(
    tmp_path, function, options, message
):
    train_ds, test_ds = fresh_data()
    arguments = {"epochs": 1, "directory": tmp_path / "run", **options}
    with pytest.raises(ValueError, match=message):
        getattr(pipelines, function)(
            build_model, train_ds, test_ds, **arguments
        )
    assert not (tmp_path / "run" / "pipeline.json").exists()


def test_a_folder_of_another_run_is_refused(tmp_path):
    train_ds, test_ds = fresh_data()

    def ban(folder, **options):
        return pipelines.born_again(
            build_model,
            train_ds,
            test_ds,
            epochs=1,
            directory=folder,
            verbose=0,
            **options,
        )

    # Other settings.
    other = tmp_path / "other"
    other.mkdir()
    (other / "pipeline.json").write_text(
        json.dumps({"pipeline": "born_again", "epochs": 1, "alpha": 0.5})
    )
    with pytest.raises(ValueError, match="holds a pipeline with other") as e:
        ban(other)
    assert "alpha: 1.0 here, 0.5 there" in str(e.value)
    # Stage files without a record.
    stray = tmp_path / "stray"
    stray.mkdir()
    (stray / "generation_0.keras").write_text("not ours")
    with pytest.raises(ValueError, match="not this pipeline's folder"):
        ban(stray)
    # A live run's lock (another host's is taken as live).
    locked = tmp_path / "locked"
    locked.mkdir()
    lock = {"pid": 1, "host": socket.gethostname() + "-elsewhere"}
    (locked / "run.lock").write_text(json.dumps(lock))
    with pytest.raises(RuntimeError, match="Another run"):
        ban(locked)
    assert json.loads((locked / "run.lock").read_text()) == lock
    assert os.listdir(locked) == ["run.lock"]
    # Not a function building models.
    with pytest.raises(TypeError, match="build_model must be a function"):
        pipelines.born_again(
            "resnet8", train_ds, test_ds, epochs=1, directory=tmp_path / "x"
        )
