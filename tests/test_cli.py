import json

import pytest

from keras_one import cli


def test_train_writes_results_and_curves(tmp_path, capsys):
    out = tmp_path / "run"
    cli.main(
        ["train", "--epochs", "2", "--verbose", "0", "--output-dir", str(out)]
    )
    printed = capsys.readouterr().out
    for row in ("baseline (1 branch)", "ONE branch 2", "ONE ensemble"):
        assert row in printed
    results = json.loads((out / "results.json").read_text())
    assert 0.0 <= results["baseline"]["accuracy"] <= 1.0
    assert len(results["one"]["branch_accuracy"]) == 3
    assert results["one"]["ensemble_accuracy"] > 0.5  # real learning
    assert len(results["one"]["history"]["val_ensemble_accuracy"]) == 2
    assert (out / "learning_curves.png").stat().st_size > 10_000
    assert (out / "distiller.keras").exists()
    assert any((out / "logs").rglob("events.out.tfevents*"))


def test_help_lists_methods(capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["train", "--help"])
    assert exit_info.value.code == 0
    assert "--method" in capsys.readouterr().out


@pytest.mark.parametrize(
    "argv, message",
    [
        (["train", "--epochs", "0"], "must be a positive integer"),
        (["train", "--method", "nope"], "invalid choice: 'nope'"),
    ],
)
def test_bad_flags(argv, message, capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli.main(argv)
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err
