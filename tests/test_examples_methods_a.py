"""The DML, CL-ILR, OKDDip, FFL and MDE examples run as written (--small).

All five run in one subprocess (each as `__main__`, through `runpy`) so
TensorFlow is imported once; the run is bounded by a timeout.
"""

import pathlib
import re
import subprocess
import sys

import pytest

EXAMPLES = pathlib.Path(__file__).parent.parent / "examples"
NAMES = ("dml", "cl_ilr", "okddip", "ffl", "mde")
SCRIPT = """
import runpy, sys
for path in sys.argv[1:]:
    sys.argv = [path, "--small"]
    print(f"=== start {path}", flush=True)
    runpy.run_path(path, run_name="__main__")
    print(f"=== end {path}", flush=True)
"""
EXPECTED = {
    "dml": ["network 0 accuracy", "network 1 accuracy", "ensemble"],
    "cl_ilr": ["head 3 accuracy", "exported head 0 accuracy"],
    "okddip": ["peer 2 accuracy", "exported leader accuracy"],
    "ffl": ["branch 1 accuracy", "exported fused classifier accuracy"],
    "mde": ["classifier diversity loss", "exported ensemble accuracy"],
}


@pytest.fixture(scope="module")
def outputs():
    paths = [str(EXAMPLES / f"{name}_cifar10.py") for name in NAMES]
    result = subprocess.run(
        [sys.executable, "-c", SCRIPT, *paths],
        capture_output=True,
        text=True,
        timeout=400,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    sections = {}
    for name, path in zip(NAMES, paths, strict=True):
        start = result.stdout.index(f"=== start {path}")
        end = result.stdout.index(f"=== end {path}")
        sections[name] = result.stdout[start:end]
    return sections


@pytest.mark.slow
@pytest.mark.parametrize("name", NAMES)
def test_example_runs_and_reports(outputs, name):
    out = outputs[name]
    for line in EXPECTED[name]:
        assert line in out
    accuracies = [
        float(match)
        for match in re.findall(r"^[a-z0-9 ()]+ accuracy ([0-9.]+)$", out, re.M)
    ]
    # One epoch on the digits already beats chance (10%) by far.
    assert accuracies and min(accuracies) > 0.3
