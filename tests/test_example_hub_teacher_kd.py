"""examples/hub_teacher_kd.py runs offline with --small and reports."""

import re

import pytest
from example_runner import run_examples

pytest.importorskip("keras_hub")


def test_hub_teacher_kd_small_runs_and_reports(tmp_path):
    output = run_examples(["hub_teacher_kd.py"], cwd=tmp_path)[
        "hub_teacher_kd.py"
    ]
    student = re.search(r"student accuracy: ([\d.]+)%", output)
    # Two epochs on the digits: far above chance (10%); 42.8% measured.
    assert student and float(student.group(1)) > 25.0
    assert re.search(r"teacher accuracy: [\d.]+%", output)
