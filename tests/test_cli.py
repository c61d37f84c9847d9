import json

import keras
import numpy as np
import pytest
import tensorflow as tf

from keras_one import cli
from keras_one import data


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory):
    """One short `keras-one train` run shared by the tests below."""
    out = tmp_path_factory.mktemp("run")
    cli.main(
        ["train", "--epochs", "2", "--verbose", "0", "--output-dir", str(out)]
    )
    return out


def test_train_writes_results_and_curves(trained_run):
    results = json.loads((trained_run / "results.json").read_text())
    # The test accuracy is the last epoch's validation accuracy (the test
    # split) of the baseline's history.
    baseline = results["baseline"]
    np.testing.assert_allclose(
        baseline["accuracy"], baseline["history"]["val_accuracy"][-1]
    )
    assert len(baseline["history"]["val_accuracy"]) == 2
    assert len(results["one"]["branch_accuracy"]) == 3
    assert results["one"]["ensemble_accuracy"] > 0.5  # real learning
    assert len(results["one"]["history"]["val_ensemble_accuracy"]) == 2
    assert results["dataset"]["num_test_examples"] == 360
    assert (trained_run / "learning_curves.png").stat().st_size > 10_000
    assert (trained_run / "distiller.keras").exists()
    assert any((trained_run / "logs").rglob("events.out.tfevents*"))


def test_evaluate_matches_training_results(trained_run, capsys, tmp_path):
    scores_path = tmp_path / "scores.json"
    cli.main(
        [
            "evaluate",
            str(trained_run / "distiller.keras"),
            "--verbose",
            "0",
            "--output",
            str(scores_path),
        ]
    )
    assert "ensemble_accuracy" in capsys.readouterr().out
    scores = json.loads(scores_path.read_text())
    results = json.loads((trained_run / "results.json").read_text())
    np.testing.assert_allclose(
        scores["ensemble_accuracy"], results["one"]["ensemble_accuracy"]
    )


@pytest.mark.parametrize(
    "fmt, branch",
    [
        ("keras", "1"),
        ("keras", "ensemble"),
        ("savedmodel", "1"),
        ("tflite", "1"),
    ],
)
def test_export_formats(trained_run, tmp_path, fmt, branch):
    output = (
        tmp_path
        / {"keras": "b.keras", "savedmodel": "b", "tflite": "b.tflite"}[fmt]
    )
    cli.main(
        [
            "export",
            str(trained_run / "distiller.keras"),
            "--branch",
            branch,
            "--format",
            fmt,
            "--output",
            str(output),
            # The bare network, on normalized images (the default export
            # normalizes raw images itself: test_export_preprocessing.py).
            "--no-preprocessing",
        ]
    )
    distiller = keras.saving.load_model(trained_run / "distiller.keras")
    _, test_ds, _ = data.load("digits", augment=False)
    images = next(iter(test_ds))[0][:4].numpy()
    outputs = distiller.predict(images, verbose=0)
    if branch == "ensemble":
        expected = outputs["ensemble_logits"]
    else:
        expected = outputs["branch_logits"][int(branch)]
    if fmt == "keras":
        got = keras.saving.load_model(output).predict(images, verbose=0)
    elif fmt == "savedmodel":
        saved_model = tf.saved_model.load(str(output))  # keep a reference
        got = saved_model.serve(images).numpy()
    else:
        interpreter = tf.lite.Interpreter(model_path=str(output))
        runner = interpreter.get_signature_runner()
        got = next(iter(runner(**{
            runner.get_input_details().popitem()[0]: images
        }).values()))  # fmt: skip
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-4)

    # `keras-one evaluate` scores every export format as the distiller
    # scored that output.
    evaluate = ["evaluate", str(output), "--verbose", "0"]
    scores_path = tmp_path / "scores.json"
    cli.main([*evaluate, "--output", str(scores_path)])
    scores = json.loads(scores_path.read_text())
    results = json.loads((trained_run / "results.json").read_text())["one"]
    if branch == "ensemble":
        expected_accuracy = results["ensemble_accuracy"]
    else:
        expected_accuracy = results["branch_accuracy"][int(branch)]
    np.testing.assert_allclose(scores["accuracy"], expected_accuracy, atol=1e-6)


def test_export_and_evaluate_never_overwrite_by_surprise(trained_run, tmp_path):
    distiller = str(trained_run / "distiller.keras")
    before = (trained_run / "distiller.keras").read_bytes()

    def refused(argv):
        with pytest.raises(SystemExit) as exit_info:
            cli.main(argv)
        error = exit_info.value.code
        assert isinstance(error, str) and "\n" not in error
        return error

    # The distiller itself: never, --overwrite or not (checked before it
    # is loaded), as an export or as evaluate's scores.
    for extra in ([], ["--overwrite"]):
        error = refused(["export", distiller, "--output", distiller, *extra])
        assert "the file this command reads: choose another --output" in error
    error = refused(["evaluate", distiller, "--output", distiller])
    assert "the file this command reads" in error
    assert (trained_run / "distiller.keras").read_bytes() == before

    # Another existing file: only with --overwrite.
    export = ["export", distiller, "--branch", "2", "--no-preprocessing"]
    output = tmp_path / "b.keras"
    output.write_text("an earlier export")
    error = refused([*export, "--output", str(output)])
    assert f"--output {output} exists: choose another --output, or " in error
    assert "pass --overwrite to replace it" in error
    assert output.read_text() == "an earlier export"
    cli.main([*export, "--output", str(output), "--overwrite"])
    assert keras.saving.load_model(output).name  # a model now
    scores = tmp_path / "scores.json"
    scores.write_text("{}")
    evaluate = ["evaluate", str(output), "--verbose", "0"]
    error = refused([*evaluate, "--output", str(scores)])
    assert "pass --overwrite to replace it" in error
    cli.main([*evaluate, "--output", str(scores), "--overwrite"])
    assert "accuracy" in json.loads(scores.read_text())

    # The default path next to the distiller: a second export is refused.
    default = trained_run / "distiller_branch2.keras"
    assert not default.exists()
    cli.main([*export])
    assert default.exists()
    error = refused([*export])
    assert f"--output {default} exists" in error
    default.unlink()
    default.with_name(default.name + ".json").unlink()


def test_help_lists_methods_and_examples(capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    assert "keras-one train --dataset cifar10" in out
    with pytest.raises(SystemExit):
        cli.main(["train", "--help"])
    assert "--method" in capsys.readouterr().out


@pytest.mark.parametrize(
    "argv, message",
    [
        (["train", "--epochs", "0"], "must be a positive integer"),
        (["train", "--method", "nope"], "invalid choice: 'nope'"),
        # Not a number a training can use: refused before anything loads.
        (["train", "--learning-rate", "nan"], "must be a positive number"),
        (["train", "--learning-rate", "inf"], "must be a positive number"),
        (["train", "--temperature", "nan"], "must be a positive number"),
        (["train", "--weight-decay", "-1"], "must be a number >= 0"),
        (["train", "--weight-decay", "nan"], "must be a number >= 0"),
        (["train", "--seed", "-1"], "must be an integer from 0 to 2**32"),
        (["train", "--seed", str(2**32)], "must be an integer from 0"),
        (["train", "--rampup-epochs", "-3"], "must be an integer >= 0"),
        (["pipeline", "ban", "--weight-decay", "-1"], "must be a number >="),
        (["pipeline", "ban", "--seed", "-1"], "must be an integer from 0"),
        (["pipeline", "ban", "--learning-rate", "nan"], "a positive number"),
    ],
)
def test_bad_flags(argv, message, capsys):
    # argparse prints usage and the error, and exits with status 2.
    with pytest.raises(SystemExit) as exit_info:
        cli.main(argv)
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err


@pytest.mark.parametrize(
    "argv, message",
    [
        (["train", "--dataset", "no/such/dir"], "No file or folder"),
        (["evaluate", "missing.keras"], "no such file: missing.keras"),
    ],
)
def test_bad_paths(argv, message):
    # One line, printed by Python with exit status 1.
    with pytest.raises(SystemExit) as exit_info:
        cli.main(argv)
    error = exit_info.value.code
    assert isinstance(error, str) and "\n" not in error
    assert error.startswith("keras-one: error: ") and message in error


@pytest.mark.parametrize(
    "argv, rampup_epochs",
    [
        (["--method", "one", "--epochs", "300"], 80),  # ONE's 80 of 300
        (["--method", "one", "--epochs", "30"], 8),
        (["--method", "ffl", "--epochs", "80"], 21),
        (["--method", "dml", "--epochs", "30"], 0),  # no ramp-up in DML
        (["--method", "okddip", "--rampup-epochs", "5"], 5),
        (["--method", "cl_ilr", "--rampup-epochs", "5"], 5),
    ],
)
def test_the_ramp_up_is_the_methods_unless_given(argv, rampup_epochs):
    args = cli.build_parser().parse_args(["train", *argv])
    assert cli._make_method(args).rampup_epochs == rampup_epochs


def test_a_ramp_up_longer_than_the_training_is_refused():
    # The distillation weight would end far below 1 (ONE's would reach
    # exp(-5 (1 - 10/40)^2) = 0.06): a slip, refused before any training.
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["train", "--rampup-epochs", "40", "--epochs", "10"])
    error = exit_info.value.code
    assert isinstance(error, str) and "\n" not in error
    assert "--rampup-epochs 40 is longer than the training (--epochs 10)" in (
        error
    )
    # As long as the training is fine (the weight then reaches 1).
    args = cli.build_parser().parse_args(
        ["train", "--rampup-epochs", "10", "--epochs", "10"]
    )
    assert cli._make_method(args).rampup_epochs == 10


def test_teachers_are_asked_for_as_the_method_describes(tmp_path):
    parser = cli.build_parser()
    with pytest.raises(SystemExit, match="needs exactly one"):
        cli._make_method(parser.parse_args(["train", "--method", "sokd"]))
    with pytest.raises(SystemExit, match="once per branch"):
        cli._make_method(parser.parse_args(["train", "--method", "ekd"]))
    teacher = keras.Sequential(
        [keras.Input((8, 8, 1)), keras.layers.Flatten(), keras.layers.Dense(4)]
    )
    path = str(tmp_path / "teacher.keras")
    teacher.save(path)
    args = parser.parse_args(["train", "--method", "one", "--teacher", path])
    with pytest.raises(SystemExit, match="takes no --teacher"):
        cli._make_method(args)
    args = parser.parse_args(["train", "--method", "kd", "--teacher", path])
    method = cli._make_method(args)
    assert len(method.teachers) == 1 and method.rampup_epochs == 0


@pytest.mark.slow
def test_train_with_a_teacher(tmp_path):
    """`train --method kd --teacher PATH` distils that teacher."""
    teacher = keras.Sequential(
        [keras.Input((8, 8, 1)), keras.layers.Flatten(), keras.layers.Dense(10)]
    )
    teacher_path = str(tmp_path / "teacher.keras")
    teacher.save(teacher_path)
    out = tmp_path / "run"
    status = cli.main(
        [
            "train",
            "--method",
            "kd",
            "--teacher",
            teacher_path,
            "--epochs",
            "1",
            "--no-baseline",
            "--verbose",
            "0",
            "--output-dir",
            str(out),
        ]
    )
    assert status == 0
    results = json.loads((out / "results.json").read_text())
    assert results["arguments"]["teacher"] == [teacher_path]
    assert len(results["kd"]["branch_accuracy"]) == 1
    assert "baseline" not in results
    # The saved distiller holds the given teacher, unchanged by training.
    distiller = keras.saving.load_model(out / "distiller.keras")
    (saved_teacher,) = distiller.method.teachers
    for got, expected in zip(
        saved_teacher.get_weights(), teacher.get_weights(), strict=True
    ):
        np.testing.assert_array_equal(got, expected)


def test_a_method_with_example_indices_trains_exports_and_evaluates(
    tmp_path,
):
    """`train --method mcl_okd`: data loaded as its description asks.

    MCL-OKD (`info.example_index`) trains and is tested on data with each
    example's index, and is constructed with the labels by index; its
    deployed (last) branch exports from images alone.
    """
    out = tmp_path / "run"
    cli.main(
        ["train", "--method", "mcl_okd", "--branches", "2", "--epochs", "1",
         "--batch-size", "256", "--no-baseline", "--verbose", "0",
         "--output-dir", str(out)]
    )  # fmt: skip
    results = json.loads((out / "results.json").read_text())
    scores = results["mcl_okd"]
    assert len(scores["branch_accuracy"]) == 2
    assert results["mcl_okd"]["history"]["nce"][0] > 0
    num_examples = results["method"]["arguments"]["num_examples"]
    assert num_examples == results["dataset"]["num_train_examples"] == 1437
    # The saved distiller is scored on indexed test data, as in training.
    evaluated = tmp_path / "scores.json"
    distiller = str(out / "distiller.keras")
    cli.main(
        ["evaluate", distiller, "--verbose", "0", "--output", str(evaluated)]
    )
    got = json.loads(evaluated.read_text())
    np.testing.assert_allclose(
        [got["branch_0_accuracy"], got["branch_1_accuracy"]],
        scores["branch_accuracy"],
        atol=1e-6,
    )
    # The deployed (last) branch, exported with its preprocessing: one
    # input, the raw images, and scored as in training.
    branch = tmp_path / "deployed.keras"
    cli.main(["export", distiller, "--branch", "1", "--output", str(branch)])
    assert len(keras.saving.load_model(branch).inputs) == 1
    deployed_scores = tmp_path / "deployed_scores.json"
    cli.main(
        ["evaluate", str(branch), "--verbose", "0"]
        + ["--output", str(deployed_scores)]
    )
    np.testing.assert_allclose(
        json.loads(deployed_scores.read_text())["accuracy"],
        scores["branch_accuracy"][1],
        atol=1e-6,
    )


def test_train_with_several_teachers(tmp_path):
    """`train --method meal --teacher A --teacher B`: both teachers kept."""
    paths, teachers = [], []
    for index in range(2):
        keras.utils.set_random_seed(index)
        teacher = keras.Sequential(
            [
                keras.Input((8, 8, 1)),
                keras.layers.Flatten(),
                keras.layers.Dense(10),
            ]
        )
        paths.append(str(tmp_path / f"teacher_{index}.keras"))
        teacher.save(paths[-1])
        teachers.append(teacher)
    out = tmp_path / "run"
    arguments = ["train", "--method", "meal", "--epochs", "1"]
    arguments += ["--teacher", paths[0], "--teacher", paths[1]]
    arguments += ["--no-baseline", "--verbose", "0", "--output-dir", str(out)]
    assert cli.main(arguments) == 0
    results = json.loads((out / "results.json").read_text())
    assert results["arguments"]["teacher"] == paths
    assert len(results["meal"]["branch_accuracy"]) == 1
    distiller = keras.saving.load_model(out / "distiller.keras")
    assert len(distiller.method.teachers) == 2
    for saved, teacher in zip(distiller.method.teachers, teachers, strict=True):
        for got, expected in zip(
            saved.get_weights(), teacher.get_weights(), strict=True
        ):
            np.testing.assert_array_equal(got, expected)
