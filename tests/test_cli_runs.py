"""`keras-one train` runs: interrupted, resumed, locked, never overwritten.

One uninterrupted run (`reference`) and one run interrupted twice
(`killed_run`: a real SIGINT, then a real SIGKILL of its `--resume`) are
shared by the tests; each test asserts one promise: the message, the exit
status and what is left on disk. The resumed run must end with the
uninterrupted run's weights.
"""

import errno
import json
import os
import signal
import socket
import subprocess
import sys
import time

import keras
import numpy as np
import pytest

from keras_one import _atomic
from keras_one import _run_folder
from keras_one import cli
from keras_one import experiment

# The smallest run that resumes mid-way: 2 epochs of ONE on the digits.
TRAIN = ["train", "--epochs", "2", "--no-baseline", "--verbose", "0"]
TIMEOUT = 300


def command(*arguments):
    return [sys.executable, "-m", "keras_one.cli", *arguments]


def start(*arguments):
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}
    return subprocess.Popen(
        command(*arguments),
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        # Ctrl-C's default, even where this test runs with SIGINT ignored (a
        # background job of a script), which the command would respect.
        preexec_fn=default_sigint,
    )


def default_sigint():
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def wait_for(path, process):
    """Waits until `path` exists (the process must still be running)."""
    deadline = time.monotonic() + TIMEOUT
    while not os.path.exists(path):
        if process.poll() is not None:
            raise AssertionError(process.communicate()[1][-3000:])
        assert time.monotonic() < deadline, f"{path} never appeared"
        time.sleep(0.05)


def leftovers(folder):
    """Temporary files of atomic writes, anywhere in `folder`."""
    return [
        os.path.join(root, name)
        for root, folders, files in os.walk(folder)
        for name in files + folders
        if ".tmp" in name
    ]


def listing(folder):
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*"))


def weights(path):
    return keras.saving.load_model(path).get_weights()


def resume_message(folder):
    command = f"keras-one train --resume {folder}"
    return f"keras-one: interrupted; resume with: {command}"


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """An uninterrupted run, with --overwrite into a folder of an old run."""
    folder = tmp_path_factory.mktemp("reference")
    (folder / "notes.txt").write_text("not keras-one's")
    (folder / "results.json").write_text('{"old": true}')
    (folder / "run.json").write_text('{"arguments": {}}')
    # A backup the run must not resume from.
    (folder / "backup" / "one.epoch-00001").mkdir(parents=True)
    (folder / "backup" / "one.epoch-00001" / "epochs.json").write_text("{")
    assert cli.main([*TRAIN, "--output-dir", str(folder), "--overwrite"]) == 0
    return folder


@pytest.fixture(scope="module")
def killed_run(tmp_path_factory):
    """A run stopped by SIGINT in epoch 2, its --resume by SIGKILL after it.

    Returns the folder and, per signal, the exit status, stderr and files.
    """
    folder = tmp_path_factory.mktemp("killed") / "run"
    outcome = {"folder": folder}
    processes = []
    try:
        # Ctrl-C once the first epoch is backed up.
        first = start(*TRAIN, "--output-dir", str(folder))
        processes.append(first)
        wait_for(folder / "backup" / "one.epoch-00001", first)
        first.send_signal(signal.SIGINT)
        _, errors = first.communicate(timeout=TIMEOUT)
        outcome["sigint"] = (first.returncode, errors, listing(folder))
        # The resumed run, killed once its second epoch is backed up
        # (while it evaluates and writes its files).
        second = start("train", "--resume", str(folder), "--verbose", "0")
        processes.append(second)
        wait_for(folder / "backup" / "one.epoch-00002", second)
        second.send_signal(signal.SIGKILL)
        second.communicate(timeout=TIMEOUT)
        outcome["sigkill"] = (second.returncode, second.pid, listing(folder))
    finally:
        for process in processes:
            if process.poll() is None:
                process.kill()
                process.communicate()
    return outcome


def test_overwrite_replaces_the_old_run_and_keeps_other_files(reference):
    results = json.loads((reference / "results.json").read_text())
    assert "old" not in results and len(results["one"]["branch_accuracy"]) == 3
    assert (reference / "notes.txt").read_text() == "not keras-one's"
    record = json.loads((reference / "run.json").read_text())
    assert record["status"] == "finished"
    assert record["arguments"]["epochs"] == 2
    # Finished: no backup, no lock, no temporary file left.
    assert not (reference / "backup").exists()
    assert not (reference / "run.lock").exists()
    assert leftovers(reference) == []


def test_ctrl_c_exits_130_with_the_resume_command(killed_run):
    folder = killed_run["folder"]
    status, errors, files = killed_run["sigint"]
    assert status == 130
    assert errors.strip().splitlines()[-1] == resume_message(folder)
    assert "Traceback" not in errors
    # The first epoch's backup is kept; no result was written, no lock left.
    assert "backup/one.epoch-00001/epochs.json" in files
    assert "run.json" in files
    assert "results.json" not in files and "distiller.keras" not in files
    assert "run.lock" not in files


def test_sigkill_leaves_a_stale_lock_and_no_partial_file(killed_run):
    folder = killed_run["folder"]
    status, pid, files = killed_run["sigkill"]
    assert status == -signal.SIGKILL
    assert "backup/one.epoch-00002/epochs.json" in files
    # The killed run's lock stays, with its (now dead) process.
    owner = json.loads((folder / "run.lock").read_text())
    assert owner == {"pid": pid, "host": socket.gethostname()}
    assert not _run_folder.is_live(owner)
    # A file under its final name is whole (or absent).
    if (folder / "results.json").exists():
        json.loads((folder / "results.json").read_text())
    assert not (folder / "distiller.keras").exists() or weights(
        folder / "distiller.keras"
    )


def test_resume_ends_with_the_weights_of_an_uninterrupted_run(
    killed_run, reference, capsys
):
    folder = killed_run["folder"]
    assert cli.main(["train", "--resume", str(folder), "--verbose", "0"]) == 0
    # The killed run's stale lock was taken over, then released.
    assert not (folder / "run.lock").exists()
    for got, expected in zip(
        weights(folder / "distiller.keras"),
        weights(reference / "distiller.keras"),
        strict=True,
    ):
        np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6)
    resumed = json.loads((folder / "results.json").read_text())["one"]
    straight = json.loads((reference / "results.json").read_text())["one"]
    assert resumed["history"].keys() == straight["history"].keys()
    for key, values in straight["history"].items():
        np.testing.assert_allclose(resumed["history"][key], values, rtol=1e-5)
    assert json.loads((folder / "run.json").read_text())["status"] == "finished"
    assert not (folder / "backup").exists() and leftovers(folder) == []
    # Resuming a finished run does nothing.
    capsys.readouterr()
    assert cli.main(["train", "--resume", str(folder)]) == 0
    assert "has finished; nothing to resume" in capsys.readouterr().err


@pytest.mark.filterwarnings("ignore:No artists with labels")
def test_a_failed_model_save_leaves_complete_results(tmp_path, monkeypatch):
    folder = tmp_path / "run"

    class FullDisk:
        num_branches = 3

        def save(self, path):
            with open(path, "wb") as file:
                file.write(b"PK\x03\x04 half a zip")
            raise OSError(errno.ENOSPC, "No space left on device")

    def trained(method, **recipe):
        scores = {"branch_accuracy": [0.8, 0.7, 0.6], "ensemble_accuracy": 0.9}
        return FullDisk(), scores

    monkeypatch.setattr(experiment, "train_distiller", trained)
    error = one_line_error([*TRAIN, "--output-dir", str(folder)])
    assert error.startswith(f"keras-one: error: could not write {folder}/")
    assert "distiller.keras (OSError: [Errno 28] No space left" in error
    assert error.endswith(f"keras-one train --resume {folder}")
    results = json.loads((folder / "results.json").read_text())
    assert results["one"]["branch_accuracy"] == [0.8, 0.7, 0.6]
    assert results["arguments"]["output_dir"] == str(folder)
    assert not (folder / "distiller.keras").exists()
    assert (folder / "learning_curves.png").exists()
    assert leftovers(folder) == [] and not (folder / "run.lock").exists()
    record = json.loads((folder / "run.json").read_text())
    assert record["status"] == "running"  # to resume, not finished


def test_sigterm_is_handled_like_ctrl_c(tmp_path, monkeypatch, capsys):
    folder = tmp_path / "run"

    def terminated(*args, **kwargs):
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(60)
        raise AssertionError("SIGTERM did not stop the run")

    monkeypatch.setattr(experiment, "train_distiller", terminated)
    handler = signal.getsignal(signal.SIGTERM)
    with pytest.raises(SystemExit) as exit_info:
        cli.main([*TRAIN, "--output-dir", str(folder)])
    assert exit_info.value.code == 128 + signal.SIGTERM
    errors = capsys.readouterr().err
    assert errors.strip().splitlines()[-1] == resume_message(folder)
    assert "Traceback" not in errors
    assert signal.getsignal(signal.SIGTERM) is handler
    assert (folder / "run.json").exists() and not (folder / "run.lock").exists()


def one_line_error(argv):
    with pytest.raises(SystemExit) as exit_info:
        cli.main(argv)
    error = exit_info.value.code
    assert isinstance(error, str) and "\n" not in error, error
    assert error.startswith("keras-one: error: ")
    return error


@pytest.fixture
def no_data(monkeypatch):
    """Fails any data loading: the refusals come before it."""
    from keras_one import data

    def load(*args, **kwargs):
        raise AssertionError("the data was loaded")

    monkeypatch.setattr(data, "load", load)


def test_a_non_empty_output_dir_is_refused(tmp_path, no_data):
    folder = tmp_path / "taken"
    folder.mkdir()
    (folder / "mine.txt").write_text("x")
    error = one_line_error([*TRAIN, "--output-dir", str(folder)])
    assert f"--output-dir {folder} is not empty" in error
    assert "--overwrite" in error and "--resume" not in error
    assert listing(folder) == ["mine.txt"]
    # A run folder: --resume is offered.
    (folder / "run.json").write_text('{"arguments": {}}')
    error = one_line_error([*TRAIN, "--output-dir", str(folder)])
    assert f"--resume {folder}" in error and "--overwrite" in error
    assert listing(folder) == ["mine.txt", "run.json"]


def test_a_live_run_locks_its_folder(tmp_path, no_data):
    folder = tmp_path / "busy"
    folder.mkdir()
    (folder / "run.json").write_text('{"arguments": {"epochs": 2}}')
    lock = {"pid": os.getpid(), "host": socket.gethostname()}
    (folder / "run.lock").write_text(json.dumps(lock))
    before = listing(folder)
    for argv in (
        ["train", "--resume", str(folder)],
        ["train", "--output-dir", str(folder)],
        ["train", "--output-dir", str(folder), "--overwrite"],
    ):
        error = one_line_error(argv)
        assert f"another run (PID {os.getpid()} on " in error, argv
        assert f"is using {folder}" in error, argv
    assert listing(folder) == before
    assert json.loads((folder / "run.lock").read_text()) == lock


def test_a_stale_lock_is_taken_over(tmp_path):
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    stale = {"pid": dead.pid, "host": socket.gethostname()}
    (tmp_path / "run.lock").write_text(json.dumps(stale))
    assert not _run_folder.is_live(stale)
    assert _run_folder.acquire_lock(str(tmp_path)) is None
    mine = json.loads((tmp_path / "run.lock").read_text())
    assert mine == {"pid": os.getpid(), "host": socket.gethostname()}
    # A second taker finds it live.
    assert _run_folder.acquire_lock(str(tmp_path)) == mine
    _run_folder.release_lock(str(tmp_path))
    assert listing(tmp_path) == []


def test_default_folders_are_unique_within_a_second(tmp_path):
    now = time.mktime((2024, 5, 6, 7, 8, 9, 0, 0, -1))
    parent = str(tmp_path / "keras-one-runs")
    path = _run_folder.default_path("one", "digits", now=now, parent=parent)
    assert path == os.path.join(parent, "one-digits-20240506-070809")
    first = _run_folder.make_unique(path)
    second = _run_folder.make_unique(
        _run_folder.default_path("one", "digits", now=now, parent=parent)
    )
    assert (first, second) == (path, path + "-2")
    assert os.path.isdir(first) and os.path.isdir(second)
    # A dataset path gives its file name, never subfolders.
    path = _run_folder.default_path("dml", "/data/my set.npz", now, parent)
    assert path == os.path.join(parent, "dml-my_set-20240506-070809")


@pytest.mark.skipif(
    os.name != "posix" or os.geteuid() == 0,
    reason="root writes in read-only folders",
)
def test_a_read_only_output_dir_is_refused_before_training(tmp_path, no_data):
    folder = tmp_path / "read-only"
    folder.mkdir()
    folder.chmod(0o555)
    try:
        for target in (folder, folder / "new"):
            error = one_line_error([*TRAIN, "--output-dir", str(target)])
            assert f"cannot write to {target} (Permission denied)" in error
            assert "--output-dir" in error
            assert listing(folder) == []
    finally:
        folder.chmod(0o755)


def test_resume_refuses_other_arguments(reference, no_data):
    error = one_line_error(
        ["train", "--resume", str(reference), "--epochs", "5", "--seed", "1"]
    )
    assert f"--resume {reference} continues the run" in error
    assert "drop --epochs, --seed" in error
    error = one_line_error(["train", "--resume", str(reference), "--overwrite"])
    assert "drop --overwrite" in error
    error = one_line_error(["train", "--resume", str(reference / "nothing")])
    assert "no such run folder" in error


def test_atomic_writes_keep_the_old_file_on_failure(tmp_path):
    path = tmp_path / "results.json"
    _atomic.write_json(path, {"a": 1})
    with pytest.raises(TypeError):
        _atomic.write_json(path, {"a": object()})
    assert json.loads(path.read_text()) == {"a": 1}
    model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(1)])
    model_path = tmp_path / "model.keras"
    _atomic.save_model(model, model_path)
    assert oct(model_path.stat().st_mode & 0o777) == oct(0o666 & ~umask())
    with pytest.raises(KeyboardInterrupt):
        with _atomic.replacing(model_path, suffix=".keras") as temporary:
            with open(temporary, "wb") as file:
                file.write(b"half")
            raise KeyboardInterrupt
    assert weights(model_path)
    assert listing(tmp_path) == ["model.keras", "results.json"]


def umask():
    mask = os.umask(0)
    os.umask(mask)
    return mask


def test_resume_finds_relative_paths_again_from_the_first_folder(
    tmp_path, monkeypatch
):
    # A run started in `first/` with relative paths, resumed from `other/`.
    first, other, run = tmp_path / "first", tmp_path / "other", tmp_path / "run"
    for folder in (first / "preset", first / "teacher", other, run):
        folder.mkdir(parents=True)
    (first / "data.npz").write_bytes(b"")
    arguments = vars(cli.build_parser().parse_args(["train"]))
    arguments.update(
        dataset="data.npz",
        model="hub:./preset",
        teacher=["hub:./teacher"],
        output_dir=str(run),
    )
    (run / "run.json").write_text(
        json.dumps({"arguments": arguments, "cwd": str(first)})
    )
    monkeypatch.chdir(other)
    args = cli.build_parser().parse_args(["train", "--resume", str(run)])
    resumed = cli._resume_arguments(args, ["train", "--resume", str(run)])
    assert resumed.dataset == str(first / "data.npz")
    assert resumed.model == "hub:" + os.path.join(first, "./preset")
    assert resumed.teacher == ["hub:" + os.path.join(first, "./teacher")]
    # A model name is not a path: left as it is.
    arguments["model"] = "resnet8"
    (run / "run.json").write_text(
        json.dumps({"arguments": arguments, "cwd": str(first)})
    )
    assert cli._resume_arguments(args, []).model == "resnet8"
