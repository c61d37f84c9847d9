"""examples/tuner_search.py runs as written (in its --small mode)."""

import pathlib
import re
import runpy
import sys

import pytest

EXAMPLE = pathlib.Path(__file__).parent.parent / "examples" / "tuner_search.py"


@pytest.mark.slow
def test_tuner_search_small(tmp_path, capsys, monkeypatch):
    # Run as a script (`__main__`, its own argv), in this process: a new
    # Python would import TensorFlow again for seconds of CPU.
    argv = [str(EXAMPLE), "--small", "--directory", str(tmp_path)]
    monkeypatch.setattr(sys, "argv", argv)
    runpy.run_path(str(EXAMPLE), run_name="__main__")
    stdout = capsys.readouterr().out
    assert "Search: 2 trials" in stdout
    assert "Objective (val_ensemble_accuracy): " in stdout
    # It learned: better than chance (10 classes) on the test split.
    match = re.search(r"chosen model: ensemble (\d\.\d+)", stdout)
    assert match and float(match.group(1)) > 0.2
    assert (tmp_path / "keras_one_search").is_dir()
