"""A run killed with SIGKILL mid-epoch resumes from its backup exactly.

`train_resumable.py` trains every registered method (those with a ramp-up
get a short one, so the epoch counter matters) for 3 epochs of 6 steps
with `keras.callbacks.BackupAndRestore(save_freq=3)`, one method after the
other. The first run leaves each method after batch 4 of epoch 1, two
batches after its last backup (taken after batch 2), and is killed with
SIGKILL at the last method; the same command started again must train
exactly the remaining batches of every method and end with the weights of
an uninterrupted run. Keras' callback alone would restart epoch 1 from its
first batch (21 steps instead of 18, other weights).
"""

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from keras_one import methods

HERE = os.path.dirname(os.path.abspath(__file__))
SCRIPT = os.path.join(HERE, "train_resumable.py")
TIMEOUT = 600
METHODS = methods.names()


def command(backup_dir, output, block_at=None):
    arguments = [sys.executable, SCRIPT, "--methods", ",".join(METHODS)]
    arguments += ["--backup-dir", str(backup_dir)]
    arguments += ["--output", str(output)]
    if block_at:
        arguments += ["--block-at", block_at]
    return arguments


def load(output):
    with open(f"{output}.json") as file:
        report = json.load(file)
    return report, dict(np.load(f"{output}.npz"))


@pytest.mark.slow
def test_killed_run_resumes_to_the_same_weights(tmp_path):
    killed = tmp_path / "killed"
    straight = tmp_path / "straight"
    first = subprocess.Popen(
        command(tmp_path / "backup", killed, block_at="1:4"),
        cwd=HERE,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    uninterrupted = subprocess.Popen(
        command(tmp_path / "straight_backup", straight),
        cwd=HERE,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + TIMEOUT
        while not os.path.exists(f"{killed}.ready"):
            assert first.poll() is None, first.communicate()[1][-5000:]
            assert time.monotonic() < deadline, "the run never blocked"
            time.sleep(0.5)
        for method in METHODS:
            metadata = tmp_path / "backup" / method / "training_metadata.json"
            with open(metadata) as file:
                record = json.load(file)
            # The backup is mid-epoch: after batch 2 of epoch 1 (of 0 to 5).
            assert record == {"epoch": 1, "batch": 2}, method
        first.send_signal(signal.SIGKILL)
        first.wait(timeout=60)
        assert first.returncode == -signal.SIGKILL
        assert not os.path.exists(f"{killed}.npz")

        # The same command again.
        rerun = subprocess.run(
            command(tmp_path / "backup", killed, block_at="1:4"),
            cwd=HERE,
            capture_output=True,
            text=True,
            timeout=TIMEOUT,
        )
        assert rerun.returncode == 0, rerun.stderr[-5000:]
        _, errors = uninterrupted.communicate(timeout=TIMEOUT)
        assert uninterrupted.returncode == 0, errors[-5000:]
    finally:
        for process in (first, uninterrupted):
            if process.poll() is None:
                process.kill()
                process.communicate()

    resumed_runs, resumed_arrays = load(killed)
    reference_runs, reference_arrays = load(straight)
    assert sorted(resumed_runs) == sorted(reference_runs) == sorted(METHODS)
    for method in METHODS:
        check_resumed(
            method,
            resumed_runs[method],
            weights_of(resumed_arrays, method),
            reference_runs[method],
            weights_of(reference_arrays, method),
        )


def weights_of(arrays, method):
    prefix = f"{method}/"
    return {
        path[len(prefix) :]: value
        for path, value in arrays.items()
        if path.startswith(prefix)
    }


def check_resumed(method, resumed, resumed_weights, reference, weights):
    assert resumed["resumed"] and not reference["resumed"], method
    assert resumed["steps"] == reference["steps"] == 18, method
    # The epoch counter (read by the ramp-ups) is right after the restart.
    epochs = [epoch for epoch, _, _ in resumed["current_epochs"]]
    assert epochs == [1] * 6 + [2] * 6, method
    for epoch, _, current_epoch in resumed["current_epochs"]:
        assert current_epoch == epoch, method
    (train_steps,) = [
        value
        for path, value in resumed_weights.items()
        if path.endswith(":train_steps")
    ]
    assert int(train_steps) == 18, method
    assert sorted(resumed_weights) == sorted(weights), method
    for path, value in weights.items():
        np.testing.assert_allclose(
            resumed_weights[path],
            value,
            rtol=1e-6,
            atol=1e-7,
            err_msg=f"{method}: {path}",
        )
    np.testing.assert_allclose(
        resumed["history"]["loss"][-1],
        reference["history"]["loss"][-1],
        err_msg=method,
    )
