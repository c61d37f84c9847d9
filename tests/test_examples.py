"""The examples of the core run as written (in their --small mode).

Those on one device run in one subprocess (TensorFlow imported once); the
distributed one in its own, as it sets up two logical CPUs before
TensorFlow starts.
"""

import pytest
from example_runner import run_examples

ONE_DEVICE = (
    "custom_layers.py",
    "one_cifar10.py",
    "mobilenet_multi_branch.py",
)


@pytest.fixture(scope="module")
def one_device(tmp_path_factory):
    cwd = tmp_path_factory.mktemp("examples")
    return run_examples(ONE_DEVICE, cwd=cwd, timeout=600), cwd


@pytest.mark.slow
def test_custom_layers(one_device):
    outputs, _ = one_device
    assert "exported branch 0 accuracy" in outputs["custom_layers.py"]


@pytest.mark.slow
def test_one_cifar10(one_device):
    outputs, cwd = one_device
    assert "ensemble:" in outputs["one_cifar10.py"]
    assert (cwd / "one_cifar10_branch0.keras").exists()


@pytest.mark.slow
def test_mobilenet_multi_branch(one_device):
    outputs, _ = one_device
    assert "one branch:" in outputs["mobilenet_multi_branch.py"]


@pytest.mark.slow
def test_distributed_training(tmp_path):
    # Its own process: it sets up two logical CPUs before TensorFlow starts.
    out = run_examples(["distributed_training.py"], cwd=tmp_path, timeout=300)
    assert "2 replica(s)" in out["distributed_training.py"]
    assert "ensemble accuracy" in out["distributed_training.py"]
