"""The examples of the core run as written (in their --small mode)."""

import pathlib
import subprocess
import sys

import pytest

EXAMPLES = pathlib.Path(__file__).parent.parent / "examples"


def run_example(name, cwd):
    result = subprocess.run(
        [sys.executable, str(EXAMPLES / name), "--small"],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=cwd,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return result.stdout


@pytest.mark.slow
def test_custom_layers(tmp_path):
    out = run_example("custom_layers.py", tmp_path)
    assert "exported branch 0 accuracy" in out


@pytest.mark.slow
def test_one_cifar10(tmp_path):
    out = run_example("one_cifar10.py", tmp_path)
    assert "ensemble:" in out
    assert (tmp_path / "one_cifar10_branch0.keras").exists()


@pytest.mark.slow
def test_mobilenet_multi_branch(tmp_path):
    out = run_example("mobilenet_multi_branch.py", tmp_path)
    assert "one branch:" in out


@pytest.mark.slow
def test_distributed_training(tmp_path):
    out = run_example("distributed_training.py", tmp_path)
    assert "2 replica(s)" in out and "ensemble accuracy" in out
