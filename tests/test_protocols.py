import re

import keras
import numpy as np
import pytest

from keras_one import protocols


def rates(protocol, steps, steps_per_epoch):
    schedule = protocol.learning_rate_schedule(steps_per_epoch)
    return np.array([float(schedule(step)) for step in steps])


@pytest.mark.backend_portable
def test_one_steps_down_from_the_first_step_of_epochs_151_and_225():
    protocol = protocols.get("one")
    spe = 7
    # Last step of epoch 150, first of 151; last of 224, first of 225.
    steps = [0, 151 * spe - 1, 151 * spe, 225 * spe - 1, 225 * spe]
    np.testing.assert_allclose(
        rates(protocol, steps, spe), [0.1, 0.1, 0.01, 0.01, 0.001], rtol=1e-6
    )
    optimizer = protocol.optimizer(spe)
    assert isinstance(optimizer, keras.optimizers.SGD)
    assert optimizer.momentum == 0.9 and not optimizer.nesterov
    assert (protocol.epochs, protocol.batch_size) == (300, 128)
    assert protocol.weight_decay == 1e-4


@pytest.mark.backend_portable
def test_pcl_and_mcl_okd():
    pcl = protocols.get("pcl")
    np.testing.assert_allclose(
        rates(pcl, [150 * 3 - 1, 150 * 3, 225 * 3], 3),
        [0.1, 0.01, 0.001],
        rtol=1e-6,
    )
    assert pcl.optimizer(3).nesterov
    mcl = protocols.get("mcl_okd")
    spe = 5
    middle, end = rates(mcl, [150 * spe, 300 * spe], spe)
    assert middle == pytest.approx(0.025, rel=1e-5)
    assert end == pytest.approx(0.0, abs=1e-9)
    assert (mcl.batch_size, mcl.weight_decay, mcl.nesterov) == (64, 5e-4, True)


def test_the_module_table_states_what_each_protocol_sets():
    rows = re.findall(r"^\| `(\w+)` \|(.*)$", protocols.__doc__, re.MULTILINE)
    assert [name for name, _ in rows] == list(protocols.names())
    for name, row in rows:
        protocol = protocols.get(name)
        cells = [cell.strip() for cell in row.split("|")]
        epochs, batch, sgd, rate, decay, _ = cells
        assert int(epochs) == protocol.epochs
        assert int(batch) == protocol.batch_size
        assert sgd.startswith("Nesterov") == protocol.nesterov
        assert float(rate.split(",")[0]) == protocol.learning_rate
        milestones = tuple(int(m) for m in re.findall(r"\b\d{3}\b", rate))
        assert milestones == protocol.milestones
        assert ("cosine" in rate) == (protocol.schedule == "cosine")
        assert float(decay) == protocol.weight_decay


@pytest.mark.parametrize("name", ["ONE", "paper", None, 3])
def test_unknown_protocols_are_refused_in_one_line(name):
    with pytest.raises(ValueError, match=r"Unknown protocol .*one of"):
        protocols.get(name)


def test_a_bad_steps_per_epoch_is_refused():
    with pytest.raises(ValueError, match="steps_per_epoch"):
        protocols.get("one").optimizer(0)


def test_the_command_line_knows_the_protocols_without_importing_keras():
    import keras_one_cli

    assert keras_one_cli.PROTOCOLS == protocols.names()


def _train_arguments(monkeypatch, argv):
    """The arguments `keras-one train` would train with (no training)."""
    from keras_one import cli

    seen = {}
    monkeypatch.setattr(cli, "train", lambda args: seen.update(vars(args)))
    assert cli.main(["train", *argv]) == 0
    return seen


def test_protocol_sets_the_recipe_flags(monkeypatch, tmp_path):
    args = _train_arguments(
        monkeypatch, ["--protocol", "one", "--output-dir", str(tmp_path)]
    )
    assert args["epochs"] == 300 and args["batch_size"] == 128
    assert args["learning_rate"] == 0.1 and args["weight_decay"] == 1e-4
    assert args["schedule"] == "step" and args["protocol"] == "one"
    args = _train_arguments(monkeypatch, ["--protocol", "mcl_okd"])
    assert (args["batch_size"], args["learning_rate"]) == (64, 0.05)
    assert args["schedule"] == "cosine"


@pytest.mark.parametrize(
    "flags, named",
    [
        (["--epochs", "300"], "--epochs"),
        (["--batch-size", "128"], "--batch-size"),
        (["--learning-rate", "0.1"], "--learning-rate"),
        (["--weight-decay", "1e-4"], "--weight-decay"),
        (["--schedule", "step"], "--schedule"),
        (["--epochs=10", "--schedule=cosine"], "--epochs, --schedule"),
    ],
)
def test_recipe_flags_given_with_a_protocol_are_refused(
    monkeypatch, flags, named
):
    with pytest.raises(SystemExit) as stop:
        _train_arguments(monkeypatch, ["--protocol", "one", *flags])
    message = str(stop.value)
    assert "\n" not in message
    assert f"drop {named} (or drop --protocol)" in message
    assert "--epochs 300, --batch-size 128" in message


def test_an_unknown_protocol_is_refused_by_the_parser(capsys):
    from keras_one import cli

    with pytest.raises(SystemExit) as stop:
        cli.main(["train", "--protocol", "paper"])
    assert stop.value.code == 2
    assert "--protocol: invalid choice: 'paper'" in capsys.readouterr().err


def test_the_experiment_trains_with_the_protocols_optimizer():
    from keras_one import experiment

    optimizer = experiment.optimizer_for("one", 0.5, 300, 10, "cosine")
    assert not optimizer.nesterov
    with pytest.raises(ValueError, match=r"trains 300 epochs; got epochs=3"):
        experiment.optimizer_for("one", 0.1, 3, 10)
    optimizer = experiment.optimizer_for(None, 0.5, 3, 10, "cosine")
    assert optimizer.nesterov


def test_results_describe_the_protocols_optimizer_and_schedule():
    import argparse

    from keras_one import cli

    assert cli._optimizer_description("one") == (
        "SGD, momentum 0.9 (protocol one)"
    )
    assert cli._optimizer_description(None) == "SGD, Nesterov momentum 0.9"
    args = argparse.Namespace(protocol="one", schedule="step")
    assert cli._schedule_description(args) == (
        "step: x0.1 from epochs 151 and 225 (0-based)"
    )
    args = argparse.Namespace(protocol="mcl_okd", schedule="cosine")
    assert cli._schedule_description(args) == "cosine decay to 0"


def test_the_readme_table_states_what_each_protocol_sets():
    import pathlib

    readme = (pathlib.Path(__file__).parent.parent / "README.md").read_text()
    table = readme.index("| `--protocol` |")
    readme = readme[table : readme.index("\n\n", table)]
    rows = re.findall(r"^\| `(\w+)` \| ([^|]+) \|(.*)$", readme, re.MULTILINE)
    rows = {name: cells for name, _, cells in rows if name in protocols.names()}
    assert sorted(rows) == sorted(protocols.names())
    for name, row in rows.items():
        protocol = protocols.get(name)
        epochs, batch, sgd, rate, decay, _ = (c.strip() for c in row.split("|"))
        assert (int(epochs), int(batch)) == (
            protocol.epochs,
            protocol.batch_size,
        )
        assert sgd.startswith("Nesterov") == protocol.nesterov
        assert float(rate.split(",")[0]) == protocol.learning_rate
        milestones = tuple(int(m) for m in re.findall(r"\b\d{3}\b", rate))
        assert milestones == protocol.milestones
        assert float(decay) == protocol.weight_decay
