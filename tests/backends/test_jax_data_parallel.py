"""`keras.distribution.DataParallel` on JAX gives the weights of one device.

A subprocess with two JAX CPU devices
(`XLA_FLAGS=--xla_force_host_platform_device_count=2`) trains ONE, OKDDip
(BatchNormalization in its attention), KD (a frozen teacher) and the
stateful `EMAProbe` (whose auxiliary layer trains at its own learning
rate from the second epoch) for two `fit` epochs of three steps on one
device and under
`DataParallel` over both, from the same weights. JAX computes on the global
batch (BatchNormalization statistics included), so the weights must agree
within float32 round-off: atol 2e-6 (measured here: at most 3.6e-7). The
parallel run's weights must live on both devices, so a run that silently
fell back to one device fails.
"""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

HERE = os.path.dirname(os.path.abspath(__file__))
SCRIPT = os.path.join(HERE, "train_jax_data_parallel.py")
METHODS = ("one", "okddip", "kd", "ema_probe")

pytest.importorskip("jax")


@pytest.mark.slow
def test_data_parallel_equals_one_device(tmp_path):
    env = dict(
        os.environ,
        KERAS_BACKEND="jax",
        # Not the suite's `--xla_backend_optimization_level=0`
        # (tests/conftest.py): with it the sharded EMA probe (then with
        # ONE's learned gate) ended 1.3e-4 from one device's; with the
        # default optimizations it ends within 3.6e-7.
        # The two devices are threads that meet at every all-reduce; XLA
        # aborts the process when one waits 40 s for the other (it did
        # once, on a 2-core machine loaded three times over): here a hang
        # guard of 10 minutes, inside the subprocess timeout of 15.
        XLA_FLAGS="--xla_force_host_platform_device_count=2 "
        "--xla_cpu_collective_call_warn_stuck_timeout_seconds=120 "
        "--xla_cpu_collective_call_terminate_timeout_seconds=600",
    )
    output = str(tmp_path / "run")
    process = subprocess.run(
        [sys.executable, SCRIPT, "--output", output, *METHODS],
        cwd=HERE,
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert process.returncode == 0, process.stderr[-5000:]
    with open(output + ".json") as file:
        record = json.load(file)
    assert record["devices"] == 2
    assert record["sharded"] == {name: 2 for name in METHODS}
    weights = dict(np.load(output + ".npz"))
    for name in METHODS:
        keys = sorted(k for k in weights if k.startswith(f"{name}/single/"))
        assert keys, name
        moved = False
        for key in keys:
            parallel = weights[key.replace("/single/", "/parallel/")]
            start = weights[key.replace("/single/", "/start/")]
            np.testing.assert_allclose(
                parallel, weights[key], rtol=0, atol=2e-6, err_msg=key
            )
            moved = moved or not np.allclose(weights[key], start)
        assert moved, f"{name} did not train"
