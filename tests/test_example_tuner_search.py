"""examples/tuner_search.py runs as written (in its --small mode)."""

import pathlib
import re
import subprocess
import sys

import pytest

EXAMPLE = pathlib.Path(__file__).parent.parent / "examples" / "tuner_search.py"


@pytest.mark.slow
def test_tuner_search_small(tmp_path):
    result = subprocess.run(
        [sys.executable, str(EXAMPLE), "--small", "--directory", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "Search: 2 trials" in result.stdout
    assert "Objective (val_ensemble_accuracy): " in result.stdout
    # It learned: better than chance (10 classes) on the test split.
    match = re.search(r"chosen model: ensemble (\d\.\d+)", result.stdout)
    assert match and float(match.group(1)) > 0.2
    assert (tmp_path / "keras_one_search").is_dir()
