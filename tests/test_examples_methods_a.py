"""The DML, CL-ILR, OKDDip, FFL and MDE examples run as written (--small).

All five run in one subprocess (each as `__main__`, through `runpy`) so
TensorFlow is imported once; the run is bounded by a timeout.
"""

import re

import pytest
from example_runner import run_examples

NAMES = ("dml", "cl_ilr", "okddip", "ffl", "mde")
EXPECTED = {
    "dml": ["network 0 accuracy", "network 1 accuracy", "ensemble"],
    "cl_ilr": ["head 3 accuracy", "exported head 0 accuracy"],
    "okddip": ["peer 2 accuracy", "exported leader accuracy"],
    "ffl": ["branch 1 accuracy", "exported fused classifier accuracy"],
    "mde": ["classifier diversity loss", "exported ensemble accuracy"],
}


@pytest.fixture(scope="module")
def outputs():
    sections = run_examples(
        [f"{name}_cifar10.py" for name in NAMES], timeout=400
    )
    return {name: sections[f"{name}_cifar10.py"] for name in NAMES}


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
