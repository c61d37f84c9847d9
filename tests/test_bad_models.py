"""Bad models, bad files and non-finite values: each loud, never silent.

NaN or inf in the inputs, the loss or the weights stops training and
evaluation with an error that says which (the inputs are named as inputs,
not as weights); a model with non-finite weights is never saved nor
exported; a damaged .keras file or image is named as damaged; subclassed
and not-yet-built students train; a student ending in `keras.ops.softmax`
is refused like one ending in a Softmax layer.
"""

import os
import re
import zipfile

import h5py
import keras
import numpy as np
import pytest

from keras_one import Distiller
from keras_one import _run_folder
from keras_one import cli
from keras_one import experiment
from keras_one import export
from keras_one import methods
from keras_one.distiller import nonfinite_error

portable = pytest.mark.backend_portable


def one_distiller(make_student, branches=2):
    distiller = Distiller(
        make_student(num_branches=branches), methods.ONE(rampup_epochs=0)
    )
    distiller.compile(optimizer=keras.optimizers.SGD(0.05))
    return distiller


def poison(variables):
    for variable in variables:
        variable.assign(np.full(variable.shape, np.nan, variable.dtype))


def kernels(model):
    return [v for v in model.trainable_variables if "kernel" in v.path]


class PoisonLastStep(keras.callbacks.Callback):
    """Makes the weights NaN after the last step of epoch `epoch`.

    The loss of every step stays finite: only the weight check at the end
    of the epoch can see it.
    """

    def __init__(self, variables, epoch):
        super().__init__()
        self.variables, self.epoch = variables, epoch

    def on_epoch_begin(self, epoch, logs=None):
        self.current = epoch

    def on_train_batch_end(self, batch, logs=None):
        if self.current == self.epoch and batch == self.params["steps"] - 1:
            # JAX: the variables hold the step's values after a sync only.
            getattr(self.model, "jax_state_sync", lambda: None)()
            poison(self.variables)


def one_line_error(argv):
    with pytest.raises(SystemExit) as exit_info:
        cli.main(argv)
    error = exit_info.value.code
    assert isinstance(error, str) and "\n" not in error, error
    assert error.startswith("keras-one: error: ")
    return error


# === Non-finite values in training ===


@portable
def test_a_nan_in_the_last_batch_only_stops_fit(make_student, tiny_data):
    x, y = tiny_data
    sample_weight = np.ones(len(y), "float32")
    sample_weight[-1] = np.nan  # the last of 3 batches of 32
    distiller = one_distiller(make_student)
    with pytest.raises(FloatingPointError) as error:
        distiller.fit(
            x,
            y,
            sample_weight=sample_weight,
            batch_size=32,
            shuffle=False,
            verbose=0,
        )
    message = str(error.value)
    assert "The training loss became nan at epoch 0, batch 2" in message
    # The sample weight made the update NaN; the inputs were fine.
    assert "The inputs were finite. The weights now hold NaN" in message
    assert "sample weights holding NaN" in message


@portable
def test_nan_weights_after_the_last_step_are_caught(make_student, tiny_data):
    x, y = tiny_data
    distiller = one_distiller(make_student)
    with pytest.raises(FloatingPointError) as error:
        distiller.fit(
            x,
            y,
            batch_size=32,
            epochs=2,
            verbose=0,
            callbacks=[PoisonLastStep(kernels(distiller.student), epoch=0)],
        )
    message = str(error.value)
    assert message.startswith(
        "The weights hold NaN or infinite values at the end of epoch 0 ("
    )
    assert "although the training loss was finite" in message
    assert "the last update diverged" in message
    assert len(distiller.history.history.get("loss", [])) == 0


@portable
@pytest.mark.parametrize("index", [0, 95], ids=["first_batch", "last_batch"])
def test_nan_inputs_are_named_as_inputs_not_weights(
    make_student, tiny_data, index
):
    x, y = tiny_data
    x = x.copy()
    x[index, 2, 3, 0] = np.nan  # one pixel of one image
    distiller = one_distiller(make_student)
    with pytest.raises(FloatingPointError) as error:
        distiller.fit(x, y, batch_size=32, shuffle=False, verbose=0)
    message = str(error.value)
    batch = index // 32
    assert f"The training loss became nan at epoch 0, batch {batch}" in message
    assert "The inputs are at fault, not the training" in message
    assert "1 batch of training inputs held NaN or inf values" in message
    assert "np.isfinite" in message
    assert "the weights already hold" not in message
    assert "learning rate" not in message


@portable
def test_evaluate_names_nan_inputs(make_student, tiny_data):
    x, y = tiny_data
    x = x.copy()
    x[50] = np.inf
    distiller = one_distiller(make_student)
    with pytest.raises(
        FloatingPointError,
        match=r"^The evaluation inputs hold NaN or infinite values \(1 "
        r"batch\), so the evaluation loss and metrics mean nothing\. "
        r"Check the data evaluated",
    ):
        distiller.evaluate(x, y, batch_size=32, verbose=0)


@portable
def test_validation_with_nan_inputs_stops_fit(make_student, tiny_data):
    x, y = tiny_data
    x_val = x.copy()
    x_val[3] = np.nan
    distiller = one_distiller(make_student)
    with pytest.raises(
        FloatingPointError,
        match=r"^The validation inputs hold NaN or infinite values at the "
        r"end of epoch 0 \(1 batch\).*Check validation_data",
    ):
        distiller.fit(
            x, y, validation_data=(x_val, y), batch_size=32, verbose=0
        )


@portable
def test_evaluate_names_nan_weights(make_student, tiny_data):
    x, y = tiny_data
    distiller = one_distiller(make_student)
    distiller.evaluate(x, y, verbose=0)  # finite: no error
    poison(kernels(distiller.student))
    with pytest.raises(
        FloatingPointError,
        match=r"^The evaluation loss is nan: the weights hold NaN or "
        r"infinite values in \d+ weights \(",
    ):
        distiller.evaluate(x, y, verbose=0)


def test_the_baseline_refuses_nan_images(tiny_data):
    import tensorflow as tf

    x, y = tiny_data
    x = x.copy()
    x[40] = np.nan
    dataset = tf.data.Dataset.from_tensor_slices((x, y)).batch(32)
    info = {"num_classes": 4, "input_shape": (8, 8, 1)}
    with pytest.raises(FloatingPointError) as error:
        experiment.train_baseline(
            "resnet8", dataset, dataset, info, 1, verbose=0
        )
    assert str(error.value).startswith(
        "The images of a batch hold NaN or infinite values: the inputs are "
        "at fault, not the training."
    )
    assert error.value.inputs_at_fault


@pytest.mark.parametrize("stage", ["baseline", "one"])
def test_a_backup_is_never_overwritten_with_nan_weights(
    make_student, tiny_data, tmp_path, stage
):
    import tensorflow as tf

    x, y = tiny_data
    backup = _run_folder.Stage(str(tmp_path), stage)
    assert backup.restore() == 0
    dataset = tf.data.Dataset.from_tensor_slices((x, y)).batch(32)
    info = {"num_classes": 4, "input_shape": (8, 8, 1)}

    class Poison(PoisonLastStep):
        def on_train_begin(self, logs=None):
            self.variables = kernels(self.model)

    callbacks = [*backup.callbacks(), Poison([], epoch=1)]
    with pytest.raises(FloatingPointError, match="NaN or inf"):
        if stage == "baseline":
            experiment.train_baseline(
                "resnet8", dataset, None, info, 2, callbacks=callbacks
            )
        else:
            distiller = one_distiller(make_student)
            distiller.fit(
                dataset, epochs=2, verbose=0, shuffle=False, callbacks=callbacks
            )
    folder = tmp_path / _run_folder.BACKUP
    assert sorted(p.name for p in folder.glob(f"{stage}.epoch-*")) == [
        f"{stage}.epoch-00001"
    ]
    saved = list(folder.rglob("*.weights.h5"))
    assert saved
    for path in saved:
        assert all(np.all(np.isfinite(v)) for v in h5_arrays(path)), path


def h5_arrays(path):
    """Every array of the HDF5 file `path`."""
    arrays = []

    def collect(_, item):
        if isinstance(item, h5py.Dataset):
            arrays.append(item[()])

    with h5py.File(path) as file:
        file.visititems(collect)
    assert arrays
    return arrays


# === Models with non-finite weights are neither exported nor saved ===


@portable
def test_a_branch_with_nan_weights_is_not_exported(make_student):
    distiller = one_distiller(make_student)
    poison(kernels(distiller.student))
    with pytest.raises(ValueError, match="holds NaN or infinite values in"):
        distiller.get_branch_model(0)
    with pytest.raises(ValueError, match="Train it again"):
        distiller.get_ensemble_model()


def test_the_command_line_refuses_a_model_with_nan_weights(tmp_path):
    model = keras.Sequential([keras.Input((8, 8, 1)), keras.layers.Flatten()])
    model.add(keras.layers.Dense(10))
    poison(kernels(model))
    path = str(tmp_path / "diverged.keras")
    model.save(path)
    for command in ("evaluate", "export"):
        error = one_line_error([command, path])
        assert re.match(
            rf"keras-one: error: {re.escape(path)} holds NaN or infinite "
            r"values in 1 weight \(\S*dense\S*/kernel\): it was saved from a "
            "diverged training",
            error,
        ), error
        assert "--learning-rate" in error


TRAIN = ["train", "--epochs", "1", "--verbose", "0"]


def nan_network(*args, **kwargs):
    network = keras.Sequential([keras.Input((8, 8, 1)), keras.layers.Flatten()])
    network.add(keras.layers.Dense(10))
    poison(kernels(network))
    return network, {"accuracy": 0.1, "history": {}}


def never(*args, **kwargs):
    raise AssertionError("this stage must not start")


@pytest.mark.parametrize(
    "diverged, message",
    [
        (
            nonfinite_error("The training loss became nan.", "(Python fix)"),
            "training --method one stopped: The training loss became nan. "
            "Nothing of it was saved (no epoch of it had finished); start a "
            "new run with a lower --learning-rate (this one: 0.1)",
        ),
        (
            nonfinite_error("The inputs held NaN.", "", inputs_at_fault=True),
            "training --method one stopped: The inputs held NaN. Nothing of "
            "it was saved (no epoch of it had finished); repair or drop the "
            "images holding NaN or inf in --dataset digits",
        ),
        (
            None,  # no error, but the weights it returns hold NaN
            "training --method one stopped: the weights hold NaN or inf in "
            "1 weight (",
        ),
    ],
    ids=["nan_loss", "nan_inputs", "nan_weights"],
)
def test_a_diverged_stage_saves_nothing(
    tmp_path, monkeypatch, diverged, message
):
    def trained(method, **recipe):
        if diverged is not None:
            raise diverged
        return nan_network()[0], {}

    monkeypatch.setattr(experiment, "train_distiller", trained)
    folder = tmp_path / "run"
    argv = [*TRAIN, "--no-baseline", "--output-dir", str(folder)]
    error = one_line_error(argv)
    assert error.startswith(f"keras-one: error: {message}"), error
    assert "Nothing of it was saved (no epoch of it had finished); " in error
    assert "(Python fix)" not in error
    for name in ("distiller.keras", "results.json", "learning_curves.png"):
        assert not (folder / name).exists()
    assert not (folder / "run.lock").exists()


def test_a_diverged_baseline_is_not_saved(tmp_path, monkeypatch):
    monkeypatch.setattr(experiment, "train_baseline", nan_network)
    monkeypatch.setattr(experiment, "train_distiller", never)
    folder = tmp_path / "run"
    error = one_line_error([*TRAIN, "--output-dir", str(folder)])
    assert re.match(
        r"keras-one: error: training the baseline stopped: the weights hold "
        r"NaN or inf in 1 weight \(\S*dense\S*/kernel\)\. Nothing of it was "
        r"saved \(no epoch of it had finished\); start a new run with a "
        r"lower --learning-rate \(this one: 0\.1\)$",
        error,
    ), error
    assert not (folder / "baseline.keras").exists()
    assert not (folder / "baseline.json").exists()


# === Damaged files ===


@pytest.fixture(scope="module")
def saved_model(tmp_path_factory):
    folder = tmp_path_factory.mktemp("models")
    model = keras.Sequential([keras.Input((8, 8, 1)), keras.layers.Flatten()])
    model.add(keras.layers.Dense(10))
    path = folder / "good.keras"
    model.save(path)
    return path


def damaged(saved_model, folder, kind):
    """A copy of the .keras file `saved_model`, damaged in one way."""
    good = saved_model.read_bytes()
    path = folder / f"{kind}.keras"
    if kind == "truncated":
        path.write_bytes(good[:100])
    elif kind == "random_bytes":
        path.write_bytes(np.random.default_rng(0).bytes(3000))
    elif kind == "empty":
        path.write_bytes(b"")
    else:
        with zipfile.ZipFile(saved_model) as archive:
            members = {n: archive.read(n) for n in archive.namelist()}
        if kind == "corrupt_member":  # flipped bytes: a bad checksum
            data = bytearray(good)
            middle = len(data) // 2
            data[middle : middle + 64] = bytes(
                b ^ 0xFF for b in data[middle : middle + 64]
            )
            path.write_bytes(bytes(data))
            return path
        if kind == "no_weights":
            del members["model.weights.h5"]
        elif kind == "half_weights":
            weights = members["model.weights.h5"]
            members["model.weights.h5"] = weights[: len(weights) // 2]
        with zipfile.ZipFile(path, "w") as archive:
            for name, data in members.items():
                archive.writestr(name, data)
    return path


DAMAGE = {
    "truncated": "it is not a zip archive, as a .keras file is (100 bytes",
    "random_bytes": "it is not a zip archive, as a .keras file is",
    "empty": "it is not a zip archive, as a .keras file is (0 bytes",
    "corrupt_member": "its member model.weights.h5 is corrupt (bad checksum)",
    "no_weights": "it has no weights (model.weights.h5)",
    "half_weights": "Keras cannot read it (OSError: ",
}


@pytest.mark.parametrize("command", ["evaluate", "export", "predict"])
@pytest.mark.parametrize("kind", sorted(DAMAGE))
def test_a_damaged_keras_file_is_named_as_damaged(
    saved_model, tmp_path, command, kind
):
    path = damaged(saved_model, tmp_path, kind)
    image = tmp_path / "image.png"
    image.write_bytes(b"unused")
    argv = [command, str(path)] + ([str(image)] if command == "predict" else [])
    error = one_line_error(argv)
    assert error.startswith(f"keras-one: error: {path} is damaged: "), error
    assert DAMAGE[kind] in error, error
    assert error.endswith("save (or export) the model again"), error
    assert "File not found" not in error


def test_a_damaged_teacher_is_named_as_damaged(saved_model, tmp_path):
    path = damaged(saved_model, tmp_path, "truncated")
    folder = tmp_path / "run"
    argv = ["train", "--method", "kd", "--teacher", str(path)]
    error = one_line_error([*argv, "--output-dir", str(folder)])
    assert error.startswith(
        f"keras-one: error: --teacher {path} is damaged: it is not a zip "
        "archive"
    ), error
    assert not folder.exists()


def test_predict_names_a_damaged_image(saved_model, tmp_path):
    import json

    sidecar = export.metadata(
        {"input_shape": [8, 8, 1], "pixel_scale": 1.0, "raw_pixel_max": 255},
        [str(i) for i in range(10)],
        included=False,
    )
    (tmp_path / "model.keras").write_bytes(saved_model.read_bytes())
    (tmp_path / "model.keras.json").write_text(json.dumps(sidecar))
    image = tmp_path / "photo.png"
    image.write_bytes(b"\x89PNG\r\n\x1a\n" + os.urandom(40))  # cut short
    error = one_line_error(
        ["predict", str(tmp_path / "model.keras"), str(image)]
    )
    assert error == (
        f"keras-one: error: cannot read the image {image}: it is damaged or "
        "not an image (InvalidArgumentError)"
    )


# === Subclassed and not-yet-built students ===


class SubclassedBranches(keras.Model):
    """A subclassed student with three branches (a dict of logits)."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.flatten = keras.layers.Flatten()
        self.heads = [keras.layers.Dense(4) for _ in range(3)]

    def call(self, images):
        features = self.flatten(images)
        return {"branch_logits": [head(features) for head in self.heads]}


class SubclassedLogits(keras.Model):
    """A subclassed student with one output."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.flatten = keras.layers.Flatten()
        self.head = keras.layers.Dense(4)

    def call(self, images):
        return self.head(self.flatten(images))


def tiny_teacher():
    return keras.Sequential(
        [keras.Input((8, 8, 1)), keras.layers.Flatten(), keras.layers.Dense(4)]
    )


def unbuilt_sequential():
    return keras.Sequential([keras.layers.Flatten(), keras.layers.Dense(4)])


@portable
@pytest.mark.parametrize(
    "student, method",
    [
        (SubclassedBranches, lambda: methods.DML()),
        (
            SubclassedBranches,
            lambda: methods.KD(tiny_teacher(), rampup_epochs=0),
        ),
        (SubclassedLogits, lambda: methods.KD(tiny_teacher(), rampup_epochs=0)),
        (
            unbuilt_sequential,
            lambda: methods.KD(tiny_teacher(), rampup_epochs=0),
        ),
    ],
    ids=["subclassed_dml", "subclassed_kd", "one_output_kd", "unbuilt_kd"],
)
def test_students_not_built_yet_train(tiny_data, student, method):
    x, y = tiny_data
    distiller = Distiller(student(), method())
    distiller.compile(optimizer="sgd")  # before the student is built
    history = distiller.fit(x, y, batch_size=32, epochs=1, verbose=0)
    assert np.isfinite(history.history["loss"][0])
    scores = distiller.evaluate(x, y, verbose=0, return_dict=True)
    accuracy = (
        "accuracy" if distiller.num_branches == 1 else "branch_0_accuracy"
    )
    outputs = distiller.predict(x, batch_size=32, verbose=0)
    assert outputs["branch_logits"][0].shape == (len(x), 4)
    # The metric is wired to branch 0's logits, not to a stale or unbuilt
    # copy: it equals the accuracy recomputed from `predict`.
    predicted = np.argmax(outputs["branch_logits"][0], axis=-1)
    np.testing.assert_allclose(
        scores[accuracy], np.mean(predicted == y), atol=1e-6
    )


def test_a_subclassed_student_is_built_from_a_dataset(tiny_data):
    import tensorflow as tf

    x, y = tiny_data
    dataset = tf.data.Dataset.from_tensor_slices((x, y)).batch(32)
    distiller = Distiller(SubclassedBranches(), methods.DML())
    distiller.compile(optimizer="sgd")
    distiller.fit(dataset, epochs=1, verbose=0, shuffle=False)
    assert distiller.num_branches == 3 and distiller.num_classes == 4


@portable
def test_a_method_needing_branches_says_so_for_a_one_output_student(
    tiny_data,
):
    x, y = tiny_data
    distiller = Distiller(SubclassedLogits(), methods.ONE())
    distiller.compile(optimizer="sgd")
    with pytest.raises(
        ValueError, match="ONE needs a student with at least 2 branches"
    ):
        distiller.fit(x, y, epochs=1, verbose=0)


@portable
def test_a_student_not_built_needs_data_with_shapes(tiny_data):
    x, y = tiny_data

    def batches():
        while True:
            yield x[:32], y[:32]

    distiller = Distiller(SubclassedBranches(), methods.DML())
    distiller.compile(optimizer="sgd")
    with pytest.raises(
        ValueError,
        match=r"is not built yet .* cannot be read from data of type "
        r"generator\. Build it first: .*distiller\.build\(\(None, "
        r"\*image_shape\)\)",
    ):
        distiller.fit(batches(), steps_per_epoch=2, verbose=0, shuffle=False)
    # As the message says: built first, it trains on a generator.
    distiller.build((None, 8, 8, 1))
    distiller.fit(batches(), steps_per_epoch=2, verbose=0, shuffle=False)


@portable
def test_a_subclassed_student_cannot_be_exported(tiny_data):
    x, y = tiny_data
    distiller = Distiller(SubclassedBranches(), methods.DML())
    distiller.compile(optimizer="sgd")
    distiller.fit(x, y, epochs=1, verbose=0)
    with pytest.raises(
        ValueError, match="Only functional students can be exported"
    ):
        distiller.get_branch_model(0)


# === Probabilities instead of logits ===


@portable
@pytest.mark.parametrize("function", ["softmax", "sigmoid"])
def test_an_ops_softmax_output_is_refused(function):
    inputs = keras.Input((8,))
    logits = [keras.layers.Dense(4)(inputs) for _ in range(2)]
    outputs = [getattr(keras.ops, function)(z) for z in logits]
    student = keras.Model(inputs, {"branch_logits": outputs})
    with pytest.raises(
        ValueError,
        match=rf"output from operation '{function}\w*' "
        rf"\(keras\.ops\.{function}\) is a probability, not logits",
    ):
        Distiller(student, methods.DML())


@portable
def test_an_ops_log_softmax_output_is_accepted():
    inputs = keras.Input((8,))
    outputs = [
        keras.ops.log_softmax(keras.layers.Dense(4)(inputs)) for _ in range(2)
    ]
    student = keras.Model(inputs, outputs)
    assert Distiller(student, methods.DML()).num_branches == 2
