"""Exports take the dataset's raw images and `keras-one predict` names them.

- `keras-one evaluate` takes every format `keras-one export` writes.
- results.json holds every value the run used, defaults resolved.

One tiny digits run (two epochs of ONE, no baseline) is shared by every
test; its branch 0 is exported as .keras, SavedModel and TFLite with the
dataset's preprocessing built in, and as the bare network
(--no-preprocessing) as .keras and SavedModel.
"""

import json
import os
import platform
import shutil
import subprocess
import sys
import textwrap

import keras
import numpy as np
import pytest
import tensorflow as tf

import keras_one
from keras_one import cli
from keras_one import data
from keras_one import methods

NUM_PNGS = 6


# One run, and every export, for all the tests of this module (the same
# run serves the checks of its results.json, so its flags are not all
# defaults).
TRAIN = [
    "train",
    "--epochs",
    "2",
    "--batch-size",
    "128",
    "--seed",
    "3",
    "--temperature",
    "2",
    "--no-baseline",
    "--verbose",
    "0",
]


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    folder = tmp_path_factory.mktemp("export_preprocessing")
    run_dir = folder / "run"
    assert cli.main([*TRAIN, "--output-dir", str(run_dir)]) == 0
    distiller = str(run_dir / "distiller.keras")
    exports = {}
    for fmt, name in [
        ("keras", "branch0.keras"),
        ("savedmodel", "branch0_savedmodel"),
        ("tflite", "branch0.tflite"),
    ]:
        exports[fmt] = str(folder / name)
        output = ["--output", exports[fmt]]
        cli.main(["export", distiller, "--format", fmt, *output])
    exports["bare"] = str(folder / "bare.keras")
    cli.main(
        ["export", distiller, "--no-preprocessing", "--output", exports["bare"]]
    )
    exports["bare_savedmodel"] = str(folder / "bare_savedmodel")
    cli.main(
        [
            "export",
            distiller,
            "--format",
            "savedmodel",
            "--no-preprocessing",
            "--output",
            exports["bare_savedmodel"],
        ]
    )
    _, raw_test, info = data.load("digits", augment=False, raw=True)
    _, test, _ = data.load("digits", augment=False)
    batches = list(raw_test.as_numpy_iterator())
    raw_x = np.concatenate([images for images, _ in batches])
    y = np.concatenate([labels for _, labels in batches])
    x = np.concatenate([images for images, _ in test.as_numpy_iterator()])
    # 8-bit PNGs of the first test digits (0..16 mapped to 0..255).
    png_dir = folder / "pngs"
    png_dir.mkdir()
    for i in range(NUM_PNGS):
        pixels = np.round(raw_x[i] * 255 / 16).astype("uint8")
        tf.io.write_file(
            str(png_dir / f"digit{i}.png"), tf.io.encode_png(pixels)
        )
    with open(run_dir / "results.json") as file:
        results = json.load(file)
    return dict(
        folder=folder,
        run_dir=run_dir,
        distiller=distiller,
        exports=exports,
        results=results,
        reported=results["one"]["branch_accuracy"][0],
        info=info,
        raw_x=raw_x,
        x=x,
        y=y,
        png_dir=str(png_dir),
    )


def test_results_and_sidecars_hold_class_names_and_preprocessing(run):
    dataset = run["results"]["dataset"]
    assert dataset["class_names"] == [str(i) for i in range(10)]
    preprocessing = dataset["preprocessing"]
    assert preprocessing == run["info"].preprocessing
    assert preprocessing["pixel_scale"] == 1 / 16
    assert preprocessing["raw_pixel_max"] == 16
    assert preprocessing["input_shape"] == [8, 8, 1]
    assert len(preprocessing["mean"]) == len(preprocessing["std"]) == 1
    exports = run["exports"]
    sidecars = [
        exports["keras"] + ".json",
        os.path.join(exports["savedmodel"], "keras_one.json"),
        exports["tflite"] + ".json",
    ]
    for path in sidecars:
        with open(path) as file:
            sidecar = json.load(file)
        assert sidecar["input"] == "raw"
        assert sidecar["output"] == "logits"
        assert sidecar["class_names"] == dataset["class_names"]
        assert sidecar["preprocessing"] == preprocessing
    with open(exports["bare"] + ".json") as file:
        bare = json.load(file)
    assert bare["input"] == "normalized"
    assert bare["preprocessing"] == preprocessing


def test_raw_images_give_the_reported_accuracy_without_keras_one(run):
    """The issue's proof: plain Keras/TF/TFLite, raw images, same accuracy."""
    arrays = str(run["folder"] / "raw_test.npz")
    # The raw digits as uint8, as a user has them.
    np.savez(arrays, x=run["raw_x"].astype("uint8"), y=run["y"])
    script = textwrap.dedent(
        """
        import json, sys, warnings
        import numpy as np
        import keras
        import tensorflow as tf
        keras_path, saved_model, tflite, arrays = sys.argv[1:]
        with np.load(arrays) as f:
            x, y = f["x"], f["y"]
        model = keras.saving.load_model(keras_path)
        logits = model.predict(x, verbose=0)
        loaded = tf.saved_model.load(saved_model)
        saved = loaded.serve(tf.constant(x, "float32")).numpy()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            interpreter = tf.lite.Interpreter(model_path=tflite)
        interpreter.allocate_tensors()
        index = interpreter.get_input_details()[0]["index"]
        out = interpreter.get_output_details()[0]["index"]
        lite = []
        for image in x.astype("float32"):
            interpreter.set_tensor(index, image[None])
            interpreter.invoke()
            lite.append(interpreter.get_tensor(out)[0])
        assert "keras_one" not in sys.modules
        print(json.dumps({
            "accuracy": float(np.mean(np.argmax(logits, -1) == y)),
            "saved_model_diff": float(np.abs(saved - logits).max()),
            "tflite_diff": float(np.abs(np.stack(lite) - logits).max()),
            "tflite_same": bool(np.all(
                np.argmax(np.stack(lite), -1) == np.argmax(logits, -1))),
        }))
        """
    )
    exports = run["exports"]
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
    completed = subprocess.run(
        [
            sys.executable,
            "-c",
            script,
            exports["keras"],
            exports["savedmodel"],
            exports["tflite"],
            arrays,
        ],
        capture_output=True,
        text=True,
        env=env,
        cwd=str(run["folder"]),
        timeout=300,
    )
    assert completed.returncode == 0, completed.stderr[-3000:]
    scores = json.loads(completed.stdout.strip().splitlines()[-1])
    assert abs(scores["accuracy"] - run["reported"]) <= 1e-6
    assert scores["saved_model_diff"] < 1e-4
    assert scores["tflite_diff"] < 1e-3
    assert scores["tflite_same"]


def test_evaluate_feeds_raw_images_to_an_export_that_normalizes(run):
    output = str(run["folder"] / "evaluate.json")
    scores = cli.main(
        [
            "evaluate",
            run["exports"]["keras"],
            "--verbose",
            "0",
            "--output",
            output,
        ]
    )
    assert scores == 0
    with open(output) as file:
        accuracy = json.load(file)["accuracy"]
    assert abs(accuracy - run["reported"]) <= 1e-6


def test_no_preprocessing_exports_the_bare_network(run):
    import keras

    model = keras.saving.load_model(run["exports"]["bare"])
    logits = model.predict(run["x"], verbose=0)
    accuracy = np.mean(np.argmax(logits, -1) == run["y"])
    assert abs(accuracy - run["reported"]) <= 1e-6
    assert not any(layer.name == "raw_pixel_scale" for layer in model.layers)


def _expected_names(run):
    """The .keras export's own argmax on the PNGs' pixels, mapped to 0..16."""
    import keras

    model = keras.saving.load_model(run["exports"]["keras"])
    pixels = np.round(run["raw_x"][:NUM_PNGS] * 255 / 16) * 16 / 255
    return [str(i) for i in np.argmax(model.predict(pixels, verbose=0), -1)]


@pytest.mark.parametrize("fmt", ["keras", "savedmodel", "tflite"])
def test_predict_prints_the_top_classes_by_name(run, fmt, capsys):
    capsys.readouterr()
    assert cli.main(["predict", run["exports"][fmt], run["png_dir"]]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == NUM_PNGS
    top = [line.split(": ", 1)[1].split(" (")[0] for line in lines]
    assert top == _expected_names(run)
    for i, line in enumerate(lines):
        assert line.startswith(os.path.join(run["png_dir"], f"digit{i}.png"))
        assert line.count("%)") == 3


def test_predict_and_export_refuse_bad_input_in_one_line(run, capsys):
    folder = run["folder"]
    corrupt = folder / "corrupt.png"
    corrupt.write_bytes(b"\x89PNG not really")
    empty = folder / "empty_folder"
    empty.mkdir(exist_ok=True)
    model = run["exports"]["keras"]
    cases = [
        (["predict", str(folder / "nope.keras"), run["png_dir"]], "no such"),
        (["predict", model, str(folder / "nope.png")], "nope.png"),
        (["predict", model, str(corrupt)], "corrupt.png: it is damaged"),
        (["predict", model, str(empty)], "no images"),
    ]
    # A distiller without its run's results.json: say which flag to pass.
    alone = folder / "alone"
    alone.mkdir(exist_ok=True)
    distiller = alone / "distiller.keras"
    distiller.write_bytes(open(run["distiller"], "rb").read())
    cases.append((["export", str(distiller)], "--dataset"))
    for argv, expected in cases:
        with pytest.raises(SystemExit) as raised:
            cli.main(argv)
        message = str(raised.value.code)
        assert message.startswith("keras-one: error: "), argv
        assert "\n" not in message, argv
        assert expected in message, (argv, message)
    assert "Traceback" not in capsys.readouterr().err


# --- evaluate every export format, and results.json ------------------------


def _evaluate(run, fmt, capsys):
    output = str(run["folder"] / f"evaluate_{fmt}.json")
    capsys.readouterr()
    argv = ["evaluate", run["exports"][fmt], "--verbose", "0"]
    assert cli.main([*argv, "--output", output]) == 0
    table = capsys.readouterr().out
    with open(output) as file:
        return json.load(file), table


def test_evaluate_takes_every_export_format(run, capsys):
    reported = run["results"]["one"]["branch_accuracy"][0]
    scores, tables = {}, {}
    for fmt in ("keras", "savedmodel", "tflite", "bare_savedmodel"):
        scores[fmt], tables[fmt] = _evaluate(run, fmt, capsys)
        assert abs(scores[fmt]["accuracy"] - reported) <= 1e-6, fmt
        assert tables[fmt] == tables["keras"], fmt  # the same table
    assert f"accuracy  {100 * reported:.2f}" in tables["keras"]
    # The cross-entropy of the formats agrees too (TFLite: to float32).
    entropy = scores["savedmodel"]["cross_entropy"]
    assert abs(scores["tflite"]["cross_entropy"] - entropy) < 1e-5
    assert abs(scores["bare_savedmodel"]["cross_entropy"] - entropy) < 1e-5


def test_the_exports_predict_the_same_classes(run):
    _, raw_test, _ = data.load("digits", augment=False, raw=True)
    batches = list(raw_test.as_numpy_iterator())
    x = np.concatenate([images for images, _ in batches]).astype("float32")
    keras_model = keras.saving.load_model(run["exports"]["keras"])
    expected = np.argmax(keras_model.predict(x, verbose=0), -1)
    for fmt in ("savedmodel", "tflite"):
        predict, shape, _ = cli._load_export(run["exports"][fmt])
        assert tuple(int(d) for d in shape) == (8, 8, 1)
        np.testing.assert_array_equal(np.argmax(predict(x), -1), expected)


def test_evaluate_refuses_an_export_it_cannot_read_in_one_line(run, tmp_path):
    alone = tmp_path / "alone.tflite"
    shutil.copy(run["exports"]["tflite"], alone)  # without its sidecar
    npz = tmp_path / "big.npz"
    rng = np.random.default_rng(0)
    np.savez(
        npz,
        x_train=rng.integers(0, 255, (20, 12, 12, 1)).astype("uint8"),
        y_train=np.arange(20) % 10,
        x_test=rng.integers(0, 255, (10, 12, 12, 1)).astype("uint8"),
        y_test=np.arange(10),
    )
    cases = [
        ([str(alone)], "has no sidecar"),
        ([run["exports"]["savedmodel"], "--dataset", str(npz)], "--dataset"),
        ([run["exports"]["tflite"], "--dataset", str(npz)], "shape [8, 8, 1]"),
    ]
    for argv, expected in cases:
        with pytest.raises(SystemExit) as raised:
            cli.main(["evaluate", *argv, "--verbose", "0"])
        message = raised.value.code
        assert isinstance(message, str), argv
        assert message.startswith("keras-one: error: "), argv
        assert "\n" not in message and expected in message, (argv, message)


def test_results_record_every_value_the_run_used(run):
    results = run["results"]
    _, _, info = data.load("digits", augment=False)
    dataset = results["dataset"]
    assert dataset["class_names"] == [str(i) for i in range(10)]
    assert dataset["preprocessing"]["mean"] == pytest.approx(list(info.mean))
    assert dataset["preprocessing"]["std"] == pytest.approx(list(info.std))
    assert dataset["preprocessing"]["pixel_scale"] == 1 / 16
    assert dataset["source"] == {"kind": "digits (scikit-learn, bundled)"}
    assert dataset["train_augmentation"] == "pad_crop"
    assert results["training"] == {
        "model": "resnet8",
        "num_branches": 3,
        "epochs": 2,
        "batch_size": 128,
        "steps_per_epoch": int(np.ceil(info.num_train_examples / 128)),
        "seed": 3,
        "optimizer": "SGD, Nesterov momentum 0.9",
        "learning_rate": 0.1,
        "schedule": "cosine",
        "weight_decay": 5e-4,
        "baseline": False,
    }
    # The ramp-up resolved from ONE's fraction (80 of 300) of 2 epochs.
    rampup = methods.rampup_epochs(methods.get("one"), 2)
    method = results["method"]
    assert method["name"] == "one"
    assert method["class"] == "keras_one.methods.one.ONE"
    assert method["rampup_epochs"] == rampup == 1
    assert method["rampup"].startswith("the method's fraction 0.2666")
    assert method["arguments"] == {
        "temperature": 2.0,
        "rampup_epochs": rampup,
        "gate": "learned",
        "detach_teacher": True,
    }
    # They are the values the saved distiller trained with.
    distiller = keras.saving.load_model(run["distiller"])
    assert distiller.method.rampup_epochs == rampup
    assert distiller.method.temperature == 2.0
    assert results["versions"] == {
        "keras_one": keras_one.__version__,
        "keras": keras.__version__,
        "backend": "tensorflow",
        "numpy": np.__version__,
        "python": platform.python_version(),
        "tensorflow": tf.__version__,
    }
    # The flags as given stay beside them (None: a default was used).
    assert results["arguments"]["rampup_epochs"] is None
    assert results["arguments"]["seed"] == 3
