"""`fit` under MultiWorkerMirroredStrategy: two worker processes on loopback.

Keras 3.15's `fit` fails with two or more workers (keras-team/keras#20585):
first in `_maybe_symbolic_build`, which reduces a data batch across the
workers, then when it reduces the step's scalar logs with
`strategy.reduce("MEAN", value, axis=0)`. keras_one/keras_workarounds.py
avoids both; this is the test that fails without it. Here
two workers train ONE with `fit` on the two halves of each global batch
and must end with the weights of one process trained on the same global
batches. Every process has a time limit, and the workers' collectives
time out, so a hang fails the test instead of blocking CI.

Same weights alone would not show that each worker trained on its half:
workers that each trained on the whole global batch would average the
same gradient. So every process also counts the examples (and sums the
sample weights) its replica trained on: each worker half of them, the two
halves together all of them.
"""

import json
import os
import socket
import subprocess
import sys

import numpy as np
import pytest

HERE = os.path.dirname(os.path.abspath(__file__))
SCRIPT = os.path.join(HERE, "train_worker.py")
TIMEOUT = 600


def free_ports(count):
    sockets = []
    try:
        for _ in range(count):
            probe = socket.socket()
            probe.bind(("localhost", 0))
            sockets.append(probe)
        return [probe.getsockname()[1] for probe in sockets]
    finally:
        for probe in sockets:
            probe.close()


def launch(output, tf_config=None):
    env = {k: v for k, v in os.environ.items() if k != "TF_CONFIG"}
    if tf_config is not None:
        env["TF_CONFIG"] = json.dumps(tf_config)
    return subprocess.Popen(
        [sys.executable, SCRIPT, "--output", output],
        cwd=HERE,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def finish(processes):
    """Waits for every process; kills them all on a timeout or a failure."""
    try:
        for process in processes:
            output, _ = process.communicate(timeout=TIMEOUT)
            assert process.returncode == 0, output[-5000:]
    finally:
        for process in processes:
            if process.poll() is None:
                process.kill()
                process.communicate()


def load(output):
    with open(output + ".json") as file:
        report = json.load(file)
    return report, dict(np.load(output + ".npz"))


@pytest.mark.slow
def test_two_workers_train_like_one_process(tmp_path):
    ports = free_ports(2)
    cluster = {"worker": [f"localhost:{port}" for port in ports]}
    workers = [
        launch(
            str(tmp_path / f"worker_{index}"),
            {"cluster": cluster, "task": {"type": "worker", "index": index}},
        )
        for index in range(2)
    ]
    single = launch(str(tmp_path / "single"))
    finish([*workers, single])

    reference, reference_weights = load(str(tmp_path / "single"))
    assert reference["replicas"] == 1
    # 2 epochs of 96 examples.
    assert reference["examples"] == 192
    np.testing.assert_allclose(
        reference["sample_weight"], 2 * reference["total_sample_weight"]
    )
    worker_sample_weights = []
    for index in range(2):
        report, weights = load(str(tmp_path / f"worker_{index}"))
        assert report["replicas"] == 2
        assert report["examples"] == 96
        worker_sample_weights.append(report["sample_weight"])
        assert report["steps"] == reference["steps"] == 6
        assert sorted(weights) == sorted(reference_weights)
        for path, value in reference_weights.items():
            np.testing.assert_allclose(
                weights[path], value, rtol=1e-5, atol=1e-6, err_msg=path
            )
        for name, values in reference["history"].items():
            np.testing.assert_allclose(
                report["history"][name], values, rtol=1e-5, err_msg=name
            )
    # The two halves are different examples that make up the whole.
    np.testing.assert_allclose(
        sum(worker_sample_weights), reference["sample_weight"]
    )
