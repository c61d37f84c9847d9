"""The command line is fast where it should be, and records what it used.

- `keras-one --help` (keras_one_cli, outside the package) answers without
  importing TensorFlow, Keras or keras_one; its static lists agree with the
  method registry.
- A tensorflow-datasets name that is not prepared fails in seconds when the
  machine is offline, naming `data_dir=` (the API) or `--data-dir` (the
  command), instead of tfds' minutes of retries.
- A tfds source records its data dir in results.json.

(`keras-one evaluate` of every export format and the values results.json
records are checked in test_export_preprocessing.py, on the run and exports
its tests share.)
"""

import json
import os
import shutil
import subprocess
import sys
import textwrap
import threading
import time

import pytest
import tensorflow_datasets as tfds

import keras_one_cli
from keras_one import cli
from keras_one import data
from keras_one import methods
from keras_one.data import _network

# Python's start and argparse, nothing more: generous on a loaded machine.
HELP_SECONDS = 1.0
OFFLINE_SECONDS = 10.0
HEAVY_MODULES = ("keras", "keras_one", "numpy", "tensorflow")


def _run_without_heavy_imports(argv):
    """Runs keras_one_cli.main(argv) in a fresh Python: (seconds, result)."""
    script = textwrap.dedent(
        f"""
        import json, sys, time
        start = time.perf_counter()
        import keras_one_cli
        try:
            status = keras_one_cli.main({argv!r})
        except SystemExit as exit:
            status = exit.code
        seconds = time.perf_counter() - start
        heavy = sorted(
            name for name in sys.modules
            if name.split(".")[0] in {HEAVY_MODULES!r}
        )
        print(json.dumps({{"status": status, "seconds": seconds,
                           "heavy": heavy}}), file=sys.stderr)
        """
    )
    start = time.perf_counter()
    completed = subprocess.run(
        [sys.executable, "-c", script],
        capture_output=True,
        text=True,
        timeout=60,
    )
    seconds = time.perf_counter() - start
    *log, last = completed.stderr.strip().splitlines()
    return seconds, json.loads(last), completed.stdout, log


@pytest.mark.parametrize(
    "argv, status, expected",
    [
        (["--help"], 0, "keras-one train --dataset cifar10"),
        (["train", "--help"], 0, "--rampup-epochs"),
        (["evaluate", "--help"], 0, "SavedModel folder or .tflite"),
        (["export", "--help"], 0, "--no-preprocessing"),
        (["predict", "--help"], 0, "IMAGE_OR_FOLDER"),
        ([], 2, "usage: keras-one"),
        (["train", "--method", "nope"], 2, "invalid choice: 'nope'"),
        (["train", "--epochs", "0"], 2, "must be a positive integer"),
    ],
)
def test_help_and_bad_flags_answer_without_tensorflow(argv, status, expected):
    seconds = []
    for _ in range(3):  # the best of 3: the machine may be busy
        wall, result, out, log = _run_without_heavy_imports(argv)
        seconds.append(wall)
        assert result["status"] == status
        assert result["heavy"] == []
        if status == 0 or not argv:  # help, on stdout; nothing on stderr
            assert expected in out and log == []
        else:  # argparse's usage and one-line error, and nothing else
            assert log[0].startswith("usage: keras-one")
            assert log[-1].startswith("keras-one train: error: ")
            assert expected in log[-1]
            assert not any("tensorflow" in line.lower() for line in log)
        if min(seconds) < HELP_SECONDS:
            break
    assert min(seconds) < HELP_SECONDS, seconds


def test_the_keras_one_command_is_the_fast_entry_point():
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    with open(os.path.join(root, "setup.py")) as file:
        assert '["keras-one=keras_one_cli:main"]' in file.read()
    script = shutil.which("keras-one", path=os.path.dirname(sys.executable))
    if script is None:
        pytest.skip("keras-one is not installed beside this Python")
    with open(script) as file:
        if "keras_one_cli" not in file.read():
            pytest.skip(f"{script} predates keras_one_cli: pip install -e .")
    start = time.perf_counter()
    completed = subprocess.run(
        [script, "--help"], capture_output=True, text=True, timeout=60
    )
    assert completed.returncode == 0
    assert completed.stderr == ""
    assert "keras-one train" in completed.stdout
    assert time.perf_counter() - start < 10 * HELP_SECONDS


def _subcommands(parser):
    """`{name: subparser}` of an argparse parser's subcommands."""
    (action,) = parser._subparsers._group_actions
    return dict(action.choices)


def test_the_method_names_read_from_the_sources_are_the_registry():
    assert list(keras_one_cli.known_methods()) == methods.names()
    # Both parsers say the same: the names read from the sources and the
    # live registry's.
    fast, full = keras_one_cli.build_parser(), cli.build_parser()
    assert fast.format_help() == full.format_help()
    fast_commands, full_commands = _subcommands(fast), _subcommands(full)
    assert sorted(fast_commands) == sorted(full_commands)
    for name, subparser in fast_commands.items():
        assert subparser.format_help() == full_commands[name].format_help()
    # The defaults the help text states are the methods'.
    train_help = " ".join(fast_commands["train"].format_help().split())
    one = methods.get("one")
    assert "(default: one)" in train_help
    assert "3 for ONE" in train_help and one.info.branches == 3
    assert one().temperature == 3.0
    assert "ONE's 80 of 300" in train_help
    assert methods.rampup_epochs(one, 300) == 80


def test_the_entry_point_runs_commands_through_keras_one_cli():
    with pytest.raises(SystemExit) as raised:
        keras_one_cli.main(["evaluate", "missing.keras"])
    assert raised.value.code == "keras-one: error: no such file: missing.keras"


def test_python_m_keras_one_cli_still_works():
    completed = subprocess.run(
        [sys.executable, "-m", "keras_one.cli", "train", "--help"],
        capture_output=True,
        text=True,
        timeout=300,
        env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3"),
    )
    assert completed.returncode == 0, completed.stderr[-2000:]
    assert "--method" in completed.stdout


# --- tensorflow-datasets offline ------------------------------------------


@pytest.fixture
def offline(monkeypatch):
    """No connection succeeds, and tfds must not start downloading."""

    def refuse(address, timeout=None):
        raise OSError(101, "Network is unreachable")

    def no_download(*args, **kwargs):
        pytest.fail("tfds started a download (minutes of retries offline)")

    monkeypatch.setattr(_network.socket, "create_connection", refuse)
    monkeypatch.setattr(
        tfds.core.DatasetBuilder, "download_and_prepare", no_download
    )
    for variable in ("http_proxy", "https_proxy", "HTTP_PROXY", "HTTPS_PROXY"):
        monkeypatch.delenv(variable, raising=False)


def test_an_offline_tfds_name_fails_in_seconds_naming_data_dir(
    offline, tmp_path
):
    start = time.perf_counter()
    with pytest.raises(ConnectionError) as raised:
        data.load("cifar10", data_dir=str(tmp_path / "tfds"))
    assert time.perf_counter() - start < OFFLINE_SECONDS
    message = str(raised.value)
    assert "www.cs.toronto.edu:443 ([Errno 101] Network is unreachable)" in (
        message
    )
    assert "data_dir='/path/to/tensorflow_datasets'" in message
    assert str(tmp_path / "tfds") in message


def test_the_command_names_the_data_dir_flag(offline, tmp_path):
    run_dir = tmp_path / "run"
    data_dir = tmp_path / "tfds"
    argv = ["train", "--dataset", "cifar10", "--data-dir", str(data_dir)]
    start = time.perf_counter()
    with pytest.raises(SystemExit) as raised:
        cli.main([*argv, "--output-dir", str(run_dir)])
    assert time.perf_counter() - start < OFFLINE_SECONDS
    message = raised.value.code
    assert isinstance(message, str) and "\n" not in message
    assert message.startswith(
        f"keras-one: error: --dataset cifar10 is not prepared in --data-dir "
        f"{data_dir} and cannot be downloaded, this machine looks offline "
        "(could not reach www.cs.toronto.edu:443"
    )
    assert "pass --data-dir DIR holding a prepared copy" in message
    assert "data_dir=" not in message  # the flag, not the API argument
    assert not run_dir.exists()  # refused before the run folder was made


def test_a_server_that_never_answers_is_given_up_on_in_seconds(
    monkeypatch, tmp_path
):
    released = threading.Event()

    def hang(address, timeout=None):  # a name lookup that never returns
        released.wait(60)
        raise OSError("gave up")

    monkeypatch.setattr(_network.socket, "create_connection", hang)
    monkeypatch.setattr(
        tfds.core.DatasetBuilder,
        "download_and_prepare",
        lambda *a, **k: pytest.fail("tfds started a download"),
    )
    for variable in ("http_proxy", "https_proxy", "HTTP_PROXY", "HTTPS_PROXY"):
        monkeypatch.delenv(variable, raising=False)
    start = time.perf_counter()
    try:
        with pytest.raises(ConnectionError, match="no answer within 5 s"):
            data.load("svhn", data_dir=str(tmp_path))
    finally:
        released.set()
    assert time.perf_counter() - start < OFFLINE_SECONDS


def test_a_prepared_dataset_loads_without_asking_the_network(
    monkeypatch, tmp_path
):
    def no_probe(*args, **kwargs):
        pytest.fail("a prepared dataset needs no network check")

    monkeypatch.setattr(_network, "unreachable", no_probe)
    builder = tfds.builder("cifar10", data_dir=str(tmp_path))
    builder.info.set_splits(
        tfds.core.SplitDict(
            [
                tfds.core.SplitInfo(name=name, shard_lengths=[n], num_bytes=0)
                for name, n in [("train", 8), ("test", 4)]
            ]
        )
    )
    os.makedirs(builder.data_dir)
    builder.info.write_to_directory(builder.data_dir)
    assert tfds.builder("cifar10", data_dir=str(tmp_path)).is_prepared()
    with tfds.testing.mock_data(num_examples=8, data_dir=str(tmp_path)):
        _, test_ds, info = data.load(
            "cifar10", data_dir=str(tmp_path), batch_size=4
        )
        images, labels = next(iter(test_ds))
    assert info.num_classes == 10 and len(info.class_names) == 10
    assert images.shape == (4, 32, 32, 3)


def test_what_the_network_check_asks(monkeypatch, tmp_path):
    builder = tfds.builder("cifar10", data_dir=str(tmp_path))
    (url,) = _network.download_urls(builder)
    assert url.startswith("https://www.cs.toronto.edu/")
    # An archive already downloaded is reused by tfds without the network.
    name = _network._download_name(url, builder.url_infos[url])
    (tmp_path / "downloads").mkdir()
    (tmp_path / "downloads" / name).write_bytes(b"")
    assert _network.download_urls(builder) == []
    # A dataset downloaded by hand is not downloaded at all.
    imagenet = tfds.builder("imagenet2012", data_dir=str(tmp_path))
    assert _network.download_urls(imagenet) == []
    # Behind a proxy, the proxy is what must answer.
    monkeypatch.setenv("https_proxy", "http://proxy.example:3128")
    monkeypatch.setenv("no_proxy", "internal.example")
    assert _network._address(url) == ("proxy.example", 3128)
    assert _network._address("https://internal.example/x") == (
        "internal.example",
        443,
    )
    assert _network.unreachable([]) is None


def test_a_tfds_source_records_its_data_dir(tmp_path):
    args = cli.build_parser().parse_args(
        ["train", "--dataset", "cifar10", "--data-dir", str(tmp_path)]
    )
    assert cli._data_source(args) == {
        "kind": "tensorflow-datasets",
        "data_dir": str(tmp_path),
    }
    npz = tmp_path / "d.npz"
    npz.write_bytes(b"")
    args.dataset = str(npz)
    assert cli._data_source(args) == {"kind": "npz file", "path": str(npz)}
    versions = cli._versions(with_tfds=True)
    assert versions["tensorflow_datasets"] == tfds.__version__
