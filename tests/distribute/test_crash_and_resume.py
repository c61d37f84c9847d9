"""A run that crashed mid-epoch resumes from its backup exactly.

`train_resumable.py` trains every registered method (those with a ramp-up
get a short one, so the epoch counter matters) for 3 epochs of 6 steps
with `keras.callbacks.BackupAndRestore(save_freq=3)`, one method after the
other. The first run keeps, for each method, the backup folder as it is
after batch 4 of epoch 1 (two batches after its last backup, taken after
batch 2): what a crash there leaves on disk. It trains the method on to
the end as the uninterrupted reference, and at the last method it stops
there and is killed with SIGKILL. The same command started again must
resume every method from its backup, train exactly the remaining batches
and end with the weights of the uninterrupted run. Keras' callback alone
would restart epoch 1 from its first batch (21 steps instead of 18, other
weights).
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
TIMEOUT = 1200  # a hang guard (the test took 316 s on a slow 2-core CPU)
# PCL is left out until its known defect is fixed: its training is not
# reproducible under heavy CPU load (with op determinism on, in float32 and
# float64; cause not found, see *Known defect (PCL, perhaps not only)* in
# the README), so its resumed run cannot be compared with another one.
METHODS = [name for name in methods.names() if name != "pcl"]


def command(backup_dir, output):
    arguments = [sys.executable, SCRIPT, "--methods", ",".join(METHODS)]
    arguments += ["--backup-dir", str(backup_dir)]
    arguments += ["--output", str(output), "--block-at", "1:4"]
    return arguments


def load(output, kind, method):
    with open(output / kind / f"{method}.json") as file:
        report = json.load(file)
    return report, dict(np.load(output / kind / f"{method}.npz"))


def written(output, kind):
    folder = output / kind
    if not folder.exists():
        return []
    return sorted(path.stem for path in folder.glob("*.json"))


@pytest.mark.slow
def test_killed_run_resumes_to_the_same_weights(tmp_path):
    backup = tmp_path / "backup"
    output = tmp_path / "run"
    last = METHODS[-1]
    first = subprocess.Popen(
        command(backup, output),
        cwd=HERE,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + TIMEOUT
        while not os.path.exists(f"{output}.ready"):
            assert first.poll() is None, first.communicate()[1][-5000:]
            assert time.monotonic() < deadline, "the run never blocked"
            time.sleep(0.5)
        for method in METHODS:
            folder = (
                backup / method
                if method == last
                else (backup / "crashed" / method)
            )
            with open(folder / "training_metadata.json") as file:
                record = json.load(file)
            # The backup is mid-epoch: after batch 2 of epoch 1 (of 0 to 5).
            assert record == {"epoch": 1, "batch": 2}, method
        first.send_signal(signal.SIGKILL)
        first.wait(timeout=60)
        assert first.returncode == -signal.SIGKILL
    finally:
        if first.poll() is None:
            first.kill()
            first.communicate()
    # Killed before the last method's reference and before any resume.
    assert written(output, "straight") == sorted(set(METHODS) - {last})
    assert written(output, "resumed") == []

    # The same command again.
    rerun = subprocess.run(
        command(backup, output),
        cwd=HERE,
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
    )
    assert rerun.returncode == 0, rerun.stderr[-5000:]
    assert written(output, "straight") == written(output, "resumed")
    assert written(output, "resumed") == sorted(METHODS)
    for method in METHODS:
        check_resumed(
            method,
            *load(output, "resumed", method),
            *load(output, "straight", method),
        )


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
