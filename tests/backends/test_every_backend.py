"""Every method trains alike on the TensorFlow, JAX and PyTorch backends.

One process per backend (`train_two_steps.py`) trains each method's tiny
Distiller two steps from the same starting weights (written by the
TensorFlow process). The logged loss and every term of each step, and every
weight after each step, must agree with TensorFlow's within float32
round-off: rtol 2e-5 and atol 1e-6 on the logs, atol 2e-6 on the weights
(measured on this CPU, Keras 3.15.1: at most 9.6e-7 absolute on the logs,
8.3e-7 relative on those of 0.1 or more, and 3.6e-7 on the weights, for
every method; two SGD steps at learning
rate 0.05 move a weight by about 1e-2, so a wrong gradient or update
fails). The first step's loss comes from identical weights; the second
checks the gradients, the optimizer update, BatchNormalization statistics
and the method's schedules.

`EMAProbe` checks the `after_train_step` hook: its averages after each
step must equal the NumPy recomputation from the student's weights.
"""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

HERE = os.path.dirname(os.path.abspath(__file__))
SCRIPT = os.path.join(HERE, "train_two_steps.py")
BACKENDS = ("tensorflow", "jax", "torch")


def run(backend, weights, output):
    env = dict(os.environ, KERAS_BACKEND=backend)
    process = subprocess.run(
        [sys.executable, SCRIPT, "--weights", weights, "--output", output],
        cwd=HERE,
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert process.returncode == 0, process.stderr[-5000:]
    with open(output + ".json") as file:
        record = json.load(file)
    assert record["backend"] == backend
    return record["logs"], dict(np.load(output + ".npz"))


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    folder = tmp_path_factory.mktemp("backends")
    weights = str(folder / "start.npz")
    return {
        backend: run(backend, weights, str(folder / backend))
        for backend in BACKENDS
    }


@pytest.mark.slow
@pytest.mark.parametrize("backend", ["jax", "torch"])
def test_same_losses_and_weights_as_tensorflow(runs, backend):
    reference_logs, reference_weights = runs["tensorflow"]
    logs, weights = runs[backend]
    assert sorted(logs) == sorted(reference_logs)
    for name, steps in reference_logs.items():
        for step, expected in enumerate(steps):
            actual = logs[name][step]
            assert sorted(actual) == sorted(expected), name
            for key, value in expected.items():
                np.testing.assert_allclose(
                    actual[key],
                    value,
                    rtol=2e-5,
                    atol=1e-6,
                    err_msg=f"{name}, step {step}, {key}",
                )
    trained = sorted(k for k in reference_weights if "step" in k)
    assert trained and trained == sorted(k for k in weights if "step" in k)
    for key in trained:
        value = reference_weights[key]
        np.testing.assert_allclose(
            weights[key], value, rtol=0, atol=2e-6, err_msg=key
        )


@pytest.mark.slow
@pytest.mark.parametrize("backend", BACKENDS)
def test_after_train_step_updates_the_ema(runs, backend):
    _, weights = runs[backend]

    def values(when, kind):
        prefix = f"ema/{when}/{kind}/"
        return [v for k, v in sorted(weights.items()) if k.startswith(prefix)]

    average = values("initial", "average")
    initial = values("initial", "student")
    assert len(average) == len(initial) > 0
    for a, w in zip(average, initial, strict=True):
        np.testing.assert_array_equal(a, w)
    for step in ("step0", "step1"):
        student = values(step, "student")
        expected = [
            0.5 * a + 0.5 * w for a, w in zip(average, student, strict=True)
        ]
        average = values(step, "average")
        assert len(average) == len(expected) > 0
        for actual, wanted in zip(average, expected, strict=True):
            np.testing.assert_allclose(actual, wanted, rtol=1e-6, atol=1e-7)
    moved = values("step1", "average")
    assert any(
        not np.allclose(a, b)
        for a, b in zip(moved, values("initial", "average"), strict=True)
    ), "the averages did not move"
