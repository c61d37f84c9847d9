"""`keras-one pipeline`: runs, is interrupted, resumes, refuses bad flags.

One uninterrupted run (`reference`) and one run stopped by Ctrl-C in its
second stage and resumed (`interrupted`) are shared by the tests: the
smallest pipeline with a stage to resume (self-distillation, one distilled
generation, 2 epochs on the digits; `--model tiny`, a dense network, stands
for a ResNet). The resumed run must end with the uninterrupted run's
weights.
"""

import contextlib
import io
import json
import os
import subprocess
import sys

import keras
import numpy as np
import pytest

from keras_one import cli
from keras_one import models
from keras_one import pipelines

RUN = ["pipeline", "self", "--generations", "1", "--epochs", "2"]
RUN += ["--model", "tiny", "--batch-size", "256", "--verbose", "0"]


def tiny(num_classes, input_shape, num_branches, weight_decay):
    """A dense network: the command's wiring, without a ResNet's cost."""
    assert num_branches == 1
    return keras.Sequential(
        [
            keras.Input(input_shape),
            keras.layers.Flatten(),
            keras.layers.Dense(16),
            keras.layers.BatchNormalization(),
            keras.layers.ReLU(),
            keras.layers.Dense(num_classes),
        ]
    )


@pytest.fixture(scope="module", autouse=True)
def tiny_model():
    """`--model tiny` builds `tiny`; the other names are the library's."""
    known = models.get
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(
            models, "get", lambda name: tiny if name == "tiny" else known(name)
        )
        yield


class InterruptAfter(keras.callbacks.Callback):
    """Ctrl-C at the end of the first epoch of `stage` (once backed up)."""

    def __init__(self, stage):
        super().__init__()
        self.stage = stage

    def on_epoch_end(self, epoch, logs=None):
        if self.model.name == f"{self.stage}_distiller" and epoch == 0:
            raise KeyboardInterrupt


def weights(path):
    return keras.saving.load_model(path).get_weights()


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    folder = tmp_path_factory.mktemp("reference") / "run"
    assert cli.main([*RUN, "--output-dir", str(folder)]) == 0
    return folder


@pytest.fixture(scope="module")
def interrupted(tmp_path_factory):
    """A run stopped by Ctrl-C in generation_1, then resumed.

    Returns the folder, the exit status, the last line of stderr and the
    files after the interruption.
    """
    folder = tmp_path_factory.mktemp("interrupted") / "run"
    real = pipelines.self_distillation

    def interrupting(*args, **kwargs):
        kwargs["callbacks"] = [InterruptAfter("generation_1")]
        return real(*args, **kwargs)

    errors = io.StringIO()
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(pipelines, "self_distillation", interrupting)
        with pytest.raises(SystemExit) as exit_info:
            with contextlib.redirect_stderr(errors):
                cli.main([*RUN, "--output-dir", str(folder)])
    files = sorted(
        str(path.relative_to(folder)) for path in folder.rglob("*.*")
    )
    return {
        "folder": folder,
        "status": exit_info.value.code,
        "errors": errors.getvalue(),
        "files": files,
    }


def test_ctrl_c_exits_130_with_the_resume_command(interrupted):
    folder = interrupted["folder"]
    assert interrupted["status"] == 130
    assert interrupted["errors"].strip().splitlines()[-1] == (
        f"keras-one: interrupted; resume with: keras-one pipeline --resume "
        f"{folder}"
    )
    assert "Traceback" not in interrupted["errors"]
    assert "generation_0.keras" in interrupted["files"]
    assert "generation_1.keras" not in interrupted["files"]
    assert (
        "backup/generation_1.epoch-00001/epochs.json" in (interrupted["files"])
    )
    assert "run.lock" not in interrupted["files"]
    assert "results.json" not in interrupted["files"]
    record = json.loads((folder / "run.json").read_text())
    assert record["status"] == "running"


def test_resume_ends_with_the_uninterrupted_weights(
    interrupted, reference, capsys
):
    folder = interrupted["folder"]
    before = (folder / "generation_0.keras").stat().st_mtime_ns
    capsys.readouterr()
    assert cli.main(["pipeline", "--resume", str(folder)]) == 0
    out = capsys.readouterr().out
    assert "generation_0: finished before" in out
    assert "generation_1, resumed after epoch 1" in out
    assert (folder / "generation_0.keras").stat().st_mtime_ns == before
    for name in ("generation_0", "generation_1"):
        for got, expected in zip(
            weights(folder / f"{name}.keras"),
            weights(reference / f"{name}.keras"),
            strict=True,
        ):
            np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6)
    resumed = json.loads((folder / "results.json").read_text())
    straight = json.loads((reference / "results.json").read_text())
    np.testing.assert_allclose(
        resumed["accuracy"]["generations"],
        straight["accuracy"]["generations"],
        atol=1e-6,
    )
    # The recorded flags, and the pipeline's defaults (KD's alpha and T).
    assert resumed["arguments"]["epochs"] == 2
    assert resumed["options"] == {
        "generations": 1,
        "alpha": 0.9,
        "temperature": 4.0,
    }
    assert json.loads((folder / "run.json").read_text())["status"] == (
        "finished"
    )
    assert not (folder / "backup").exists()
    assert not (folder / "run.lock").exists()
    # Resuming a finished run does nothing.
    assert cli.main(["pipeline", "--resume", str(folder)]) == 0
    assert "has finished; nothing to resume" in capsys.readouterr().err


@pytest.fixture
def no_data(monkeypatch):
    """Fails any data loading: the refusals come before it."""
    from keras_one import data

    def load(*args, **kwargs):
        raise AssertionError("the data was loaded")

    monkeypatch.setattr(data, "load", load)


@pytest.mark.parametrize(
    "argv, message",
    [
        (["ensemble", "--members", "1"], "argument --members: must be at"),
        (["ban", "--generations", "0"], "argument --generations: must be"),
        (["ban", "--alpha", "1.5"], "argument --alpha: must lie in [0, 1]"),
        (["self", "--temperature", "0"], "argument --temperature: must be"),
        (["mean"], "argument PIPELINE: invalid choice: 'mean'"),
        (["srm", "--epochs", "0"], "argument --epochs: must be a positive"),
        (
            ["srm", "--sparsity-ratio", "0"],
            "argument --sparsity-ratio: must lie in (0, 1]: 0",
        ),
        (
            ["srm", "--codeword-multiplier", "-2"],
            "argument --codeword-multiplier: must be a positive number",
        ),
        (
            ["blockwise", "--teacher-layers", "stage1_block1_out,"],
            "argument --teacher-layers: must be layer names separated by",
        ),
    ],
)
def test_bad_values_are_refused_by_the_parser(argv, message, no_data, capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["pipeline", *argv])
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err.strip().splitlines()[-1]


def one_line_error(argv):
    with pytest.raises(SystemExit) as exit_info:
        cli.main(argv)
    error = exit_info.value.code
    assert isinstance(error, str) and "\n" not in error, error
    assert error.startswith("keras-one: error: ")
    return error


@pytest.mark.parametrize(
    "argv, message",
    [
        ([], "pipeline needs PIPELINE, one of ensemble, self, ban, srm"),
        (
            ["ensemble", "--generations", "2"],
            "--generations applies to the self and ban pipelines, not to "
            "ensemble: leave out --generations",
        ),
        (
            ["ban", "--members", "3"],
            "--members applies to the ensemble pipeline,",
        ),
        (["self", "--average", "probabilities"], "leave out --average"),
        (
            ["ensemble", "--teacher-model", "resnet20"],
            "--teacher-model applies to the srm and blockwise pipelines",
        ),
        (
            ["blockwise", "--sparsity-ratio", "0.1"],
            "--sparsity-ratio applies to the srm pipeline, not to blockwise",
        ),
    ],
)
def test_flags_of_other_pipelines_are_refused(argv, message, no_data):
    assert message in one_line_error(["pipeline", *argv])


def test_a_folder_of_another_run_is_refused(reference, tmp_path, no_data):
    error = one_line_error(["pipeline", "ban", "--output-dir", str(reference)])
    assert f"--output-dir {reference} is not empty" in error
    error = one_line_error(
        ["pipeline", "--resume", str(reference), "--epochs", "3", "ban"]
    )
    assert "drop --epochs, PIPELINE" in error
    error = one_line_error(["train", "--resume", str(reference)])
    assert "is a keras-one pipeline run: resume it with keras-one " in error
    train_run = tmp_path / "train"
    train_run.mkdir()
    arguments = {"command": "train", "epochs": 2}
    (train_run / "run.json").write_text(json.dumps({"arguments": arguments}))
    error = one_line_error(["pipeline", "--resume", str(train_run)])
    assert "is a keras-one train run: resume it with keras-one train" in error
    assert os.listdir(train_run) == ["run.json"]


def test_an_unknown_model_is_refused_before_anything_loads(tmp_path, no_data):
    folder = tmp_path / "run"
    error = one_line_error(
        ["pipeline", "ban", "--model", "vgg3", "--output-dir", str(folder)]
    )
    assert "--model vgg3: ValueError: Unknown model 'vgg3'" in error
    assert not folder.exists()


@pytest.mark.parametrize(
    "argv, message",
    [
        (
            ["srm", "--teacher-layers", "stage1_block1_out,nowhere"],
            "--teacher-layers: the teacher 'resnet8' has no layer 'nowhere';",
        ),
        (
            [
                "blockwise",
                "--student-layers",
                "stage2_block1_out,stage1_block1_out,stage3_block1_out",
            ],
            "--student-layers: student layer 'stage2_block1_out' is 4x4 but "
            "teacher layer 'stage1_block1_out' is 8x8; pair layers",
        ),
        (
            ["srm", "--teacher-model", "vgg3"],
            "--teacher-model vgg3: ValueError: Unknown model 'vgg3'",
        ),
    ],
)
def test_bad_layers_are_refused_before_the_run_starts(argv, message, tmp_path):
    folder = tmp_path / "run"
    argv = [*argv, "--model", "resnet8", "--output-dir", str(folder)]
    if "--teacher-model" not in argv:
        argv += ["--teacher-model", "resnet8"]
    assert message in one_line_error(["pipeline", *argv])
    assert not folder.exists()


def test_the_help_states_the_pipelines_defaults():
    import keras_one_cli

    parser = keras_one_cli.build_parser()
    (action,) = parser._subparsers._group_actions
    help_text = " ".join(action.choices["pipeline"].format_help().split())
    ensemble = pipelines.DEFAULTS["ensemble_distillation"]
    self_distillation = pipelines.DEFAULTS["self_distillation"]
    ban = pipelines.DEFAULTS["born_again"]
    assert f"(default: {ensemble['members']})" in help_text
    assert (
        f"(default: {self_distillation['generations']} for self, "
        f"{ban['generations']} for ban)" in help_text
    )
    assert ensemble["alpha"] == self_distillation["alpha"] == 0.9
    assert "(default: 0.9; 1 for ban, no labels; 0.5 for srm)" in help_text
    srm = pipelines.DEFAULTS["sparse_representation_matching"]
    assert srm["alpha"] == 0.5 and srm["temperature"] == 4
    assert f"(default: {srm['codeword_multiplier']:g})" in help_text
    assert f"at least 1 (default: {srm['sparsity_ratio']:g})" in help_text
    assert ban["alpha"] == ban["temperature"] == 1.0
    assert ensemble["temperature"] == self_distillation["temperature"] == 4
    assert "(default: 4; 1 for ban)" in help_text
    assert ensemble["average"] == ban["average"] == "logits"


def test_bad_flags_answer_without_tensorflow():
    script = (
        "import sys, keras_one_cli\n"
        "try:\n"
        "    keras_one_cli.main(['pipeline', 'ensemble', '--members', '1'])\n"
        "except SystemExit as exit:\n"
        "    heavy = [m for m in sys.modules\n"
        "             if m.split('.')[0] in ('tensorflow', 'keras')]\n"
        "    print(exit.code, len(heavy))\n"
    )
    completed = subprocess.run(
        [sys.executable, "-c", script],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert completed.stdout.split() == ["2", "0"]
    error = completed.stderr.strip().splitlines()[-1]
    assert error == (
        "keras-one pipeline: error: argument --members: must be at least 2: 1"
    )
