"""`keras-one train` checks every argument before anything trains.

Each wrong argument is refused with one line that names the flag to
change, with exit status 1, before the baseline (or anything) trains and
without leaving a run folder behind.
"""

import keras
import pytest

from keras_one import cli
from keras_one import experiment


def teacher(path, classes=10, shape=(8, 8, 1)):
    layers = [keras.layers.Flatten(), keras.layers.Dense(classes)]
    model = keras.Sequential([keras.Input(shape), *layers])
    model.save(path)
    return str(path)


@pytest.fixture
def no_training(monkeypatch):
    def never(*args, **kwargs):
        raise AssertionError("training started")

    monkeypatch.setattr(experiment, "train_baseline", never)
    monkeypatch.setattr(experiment, "train_distiller", never)


def refused(argv, folder):
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["train", *argv, "--output-dir", str(folder)])
    error = exit_info.value.code
    assert isinstance(error, str) and "\n" not in error, error
    assert error.startswith("keras-one: error: ")
    # Nothing is left behind.
    assert not folder.exists() or not any(folder.iterdir())
    return error


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--method", "kd"], "--method kd needs exactly one pre-trained"),
        (["--method", "sokd"], "--method sokd needs exactly one"),
        (["--method", "ekd"], "--method ekd needs pre-trained teachers"),
        (["--method", "one", "--branches", "1"], "--branches 1 is too few"),
        (["--method", "okddip", "--branches", "2"], "at least 3 branches"),
        (
            ["--method", "kd", "--branches", "3", "--teacher", "{t}"],
            "trains a single network: leave out --branches",
        ),
        (["--method", "one", "--teacher", "{t}"], "one takes no --teacher"),
        (
            ["--method", "ekd", "--teacher", "{t}", "--teacher", "{t}"]
            + ["--branches", "3"],
            "2 --teacher flags but --branches 3",
        ),
        (["--method", "kd", "--teacher", "{missing}"], "no such file"),
        (["--method", "kd", "--teacher", "{text}"], "is not a .keras file"),
        (["--method", "kd", "--teacher", "{damaged}"], "is damaged"),
        (
            ["--method", "kd", "--teacher", "{four_classes}"],
            "predicts 4 classes but --dataset digits has 10",
        ),
        (
            ["--method", "kd", "--teacher", "{rgb}"],
            "cannot take --dataset digits's images of shape (8, 8, 1)",
        ),
    ],
)
def test_wrong_arguments_are_refused_before_training(
    argv, message, tmp_path, no_training
):
    paths = {
        "t": teacher(tmp_path / "t.keras"),
        "missing": str(tmp_path / "missing.keras"),
        "text": str(tmp_path / "notes.txt"),
        "damaged": str(tmp_path / "damaged.keras"),
        "four_classes": teacher(tmp_path / "four.keras", classes=4),
        "rgb": teacher(tmp_path / "rgb.keras", shape=(32, 32, 3)),
    }
    (tmp_path / "notes.txt").write_text("not a model")
    (tmp_path / "damaged.keras").write_bytes(b"PK\x03\x04 truncated")
    argv = [arg.format(**paths) for arg in argv]
    error = refused(argv, tmp_path / "run")
    assert message in error, error
