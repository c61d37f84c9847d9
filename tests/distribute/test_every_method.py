"""Every registered method under tf.distribute, XLA, mixed precision and
op determinism.

Each mode is a `train_methods.py` run in a fresh process (logical devices,
op determinism and dtype policies are process-wide). The runs start when
the first test of this module needs one, two at a time, and every test
reads the weights and logs they wrote.

Why float64 for the MirroredStrategy comparison: a replica sums its half
of the batch, one device the whole batch, so float32 results differ by
round-off (1e-7); a pre-activation that round-off moves across zero
switches a ReLU's gradient on or off, and after a few steps single
variables can differ by 1e-4 while the algorithm is the same. In float64
that round-off is far below the 1e-5 tolerance, so the comparison checks
the algorithm (global-batch loss, synchronized BatchNormalization), not
the luck of round-off. The loss terms themselves stay float32, as always.

XLA is compared in float32 over one epoch (3 steps), where XLA's other
rounding has no time to grow: it stays below 40% of the same tolerances
(measured on an AVX2-only EPYC; MCL-OKD's memory bank is the closest;
on an AVX-512 Xeon with oneDNN, MCL-OKD's `dot` log, 0.0189, moved by
3.3e-7, 1.75e-5 relative: logs far below 1, like weights, are compared
with an absolute 1e-6),
for 72% of the CPU time of float64 over 6 steps (428 s against 593 s,
two separate runs, both with the tests' XLA flags, see conftest.py). It
still checks XLA's lowering of every op of every method's step, on 3
updates of every variable.
"""

import json
import os
import subprocess
import sys
import threading

import numpy as np
import pytest

from keras_one import methods

HERE = os.path.dirname(os.path.abspath(__file__))
METHODS = methods.names()
# A guard against a hung run, not a speed limit: on an AVX2-only 2-core
# AMD EPYC beside the rest of the suite, the `xla` sweep (13 methods, each
# compiled by XLA; 20-40 s of CPU each) took more than 900 s in float64.
TIMEOUT = 2400

# Three processes on two lanes, the split with the shortest longer lane
# (CPU times on an AVX2-only EPYC: xla 428 s, mirrored 403 s, mixed 365 s):
# `xla`, and `mirrored` then `mixed`. The `single` runs of `mirrored` and
# `mixed` are the same training in two processes with op determinism on:
# the determinism test compares them (a run's own policy overrides
# `--policy`). XLA is checked on batches of one shape (`xla_even` against
# `single_even`, one compilation per method) and, for ONE, on the uneven
# last batch as well (`xla` against `single`). Keras turns XLA off under op
# determinism, so `xla` runs without it.
SWEEPS = {
    "mirrored": [
        "--policy",
        "float64",
        "--determinism",
        "--runs",
        "single,mirrored,mirrored_per_replica_bn@one",
    ],
    "xla": [
        "--policy",
        "float32",
        "--epochs",
        "1",
        "--runs",
        "single_even,xla_even,single@one,xla@one",
    ],
    "mixed": [
        "--policy",
        "float64",
        "--determinism",
        "--runs",
        "mixed_float16,mixed_bfloat16,single,single_seed_1@one",
    ],
}
LANES = (("xla",), ("mirrored", "mixed"))


class Sweeps:
    """Runs the sweeps in subprocesses, two at a time, on first use."""

    def __init__(self, directory):
        self.directory = directory
        self.results = {}
        self.done = {name: threading.Event() for name in SWEEPS}
        self.started = False

    def _run(self, name):
        output = os.path.join(self.directory, name)
        command = [
            sys.executable,
            os.path.join(HERE, "train_methods.py"),
            "--output",
            output,
            "--methods",
            ",".join(METHODS),
            *SWEEPS[name],
        ]
        try:
            process = subprocess.run(
                command,
                cwd=HERE,
                capture_output=True,
                text=True,
                timeout=TIMEOUT,
            )
            # Its progress and CPU times, kept next to its results.
            with open(output + ".log", "w") as file:
                file.write(process.stdout + process.stderr)
            if process.returncode:
                raise RuntimeError(
                    f"{name} failed:\n{process.stdout}\n{process.stderr}"
                )
            with open(output + ".json") as file:
                report = json.load(file)
            arrays = dict(np.load(output + ".npz"))
            self.results[name] = (report, arrays)
        except Exception as error:  # reported by the test that needs it
            self.results[name] = error

    def _worker(self, names):
        for name in names:
            self._run(name)
            self.done[name].set()

    def get(self, name):
        if not self.started:
            self.started = True
            for lane in LANES:
                threading.Thread(
                    target=self._worker, args=(lane,), daemon=True
                ).start()
        assert self.done[name].wait(TIMEOUT * 3), f"{name} timed out"
        result = self.results[name]
        if isinstance(result, Exception):
            raise result
        return result


@pytest.fixture(scope="module")
def sweeps(tmp_path_factory):
    return Sweeps(str(tmp_path_factory.mktemp("sweeps")))


def run_of(sweeps, sweep, run, method):
    """The report and `{variable path: value}` of one run of one method."""
    report, arrays = sweeps.get(sweep)
    entry = report[f"{run}/{method}"]
    if "error" in entry:
        pytest.fail(f"{sweep}: {run}/{method} failed:\n{entry['error']}")
    prefix = f"{run}/{method}/"
    weights = {
        key[len(prefix) :]: value
        for key, value in arrays.items()
        if key.startswith(prefix)
    }
    return entry, weights


def assert_same_weights(expected, actual, rtol, atol):
    assert sorted(expected) == sorted(actual)
    for path in expected:
        np.testing.assert_allclose(
            actual[path], expected[path], rtol=rtol, atol=atol, err_msg=path
        )


def global_relative_difference(expected, actual):
    num = sum(np.sum((expected[k] - actual[k]) ** 2) for k in expected)
    den = sum(np.sum(expected[k] ** 2) for k in expected)
    return float(np.sqrt(num / den))


def assert_same_logs(expected, actual, rtol, atol=1e-7):
    assert sorted(expected) == sorted(actual)
    for name in expected:
        np.testing.assert_allclose(
            actual[name], expected[name], rtol=rtol, atol=atol, err_msg=name
        )


# === MirroredStrategy ===


@pytest.mark.slow
@pytest.mark.parametrize("method", METHODS)
def test_mirrored_strategy_matches_one_device(sweeps, method):
    """2 replicas train as one device does: weights, losses, metrics.

    95 examples in batches of 32: every epoch ends with a batch of 31 that
    splits 16 / 15 over the replicas, still the global-batch update.
    """
    single, single_weights = run_of(sweeps, "mirrored", "single", method)
    mirrored, mirrored_weights = run_of(sweeps, "mirrored", "mirrored", method)
    assert mirrored["logits_dtype"] == single["logits_dtype"] == "float64"
    assert mirrored["steps"] == single["steps"] == 6
    # The batches each replica trained on, as counted while they ran: each
    # its half of every global batch, the last one split 16 / 15.
    assert single["batch_sizes"] == [32, 32, 31] * 2
    assert sorted(mirrored["batch_sizes"]) == sorted([16] * 10 + [15] * 2)
    assert global_relative_difference(single_weights, mirrored_weights) < 1e-5
    assert_same_weights(single_weights, mirrored_weights, 1e-5, 1e-6)
    assert_same_logs(single["history"], mirrored["history"], 1e-5)
    assert not mirrored["synchronized_after_fit"]


@pytest.mark.slow
def test_per_replica_batch_norm_is_another_algorithm(sweeps):
    """Without synchronized BN, each replica normalizes its half-batch.

    That is what PyTorch's DataParallel does, and a different training
    from one device's: this is why `synchronized_batch_norm` exists.
    """
    _, single_weights = run_of(sweeps, "mirrored", "single", "one")
    _, per_replica_weights = run_of(
        sweeps, "mirrored", "mirrored_per_replica_bn", "one"
    )
    difference = global_relative_difference(single_weights, per_replica_weights)
    assert difference > 1e-3


# === XLA ===


def assert_xla_matches(reference, reference_weights, compiled, weights):
    assert compiled["jit_compile"] and not reference["jit_compile"]
    assert compiled["logits_dtype"] == reference["logits_dtype"] == "float32"
    assert compiled["steps"] == reference["steps"] == 3
    assert global_relative_difference(reference_weights, weights) < 1e-5
    assert_same_weights(reference_weights, weights, 1e-5, 1e-6)
    # As the weights: float32 round-off is relative to the magnitudes a
    # log is computed from, so a log far below 1 gets an absolute 1e-6.
    assert_same_logs(reference["history"], compiled["history"], 1e-5, 1e-6)


@pytest.mark.slow
@pytest.mark.parametrize("method", METHODS)
def test_xla_matches_no_xla(sweeps, method):
    """`jit_compile=True` trains to the same weights, losses and metrics.

    Compared in float32 over 3 steps (see the module docstring), to 1e-5
    like the replicas. Batches of one shape (96 examples), so XLA compiles
    each method's step once.
    """
    assert_xla_matches(
        *run_of(sweeps, "xla", "single_even", method),
        *run_of(sweeps, "xla", "xla_even", method),
    )


@pytest.mark.slow
def test_xla_with_an_uneven_last_batch(sweeps):
    """XLA compiles the step again for the last batch of 31: same training."""
    assert_xla_matches(
        *run_of(sweeps, "xla", "single", "one"),
        *run_of(sweeps, "xla", "xla", "one"),
    )


# === Mixed precision ===


@pytest.mark.slow
@pytest.mark.parametrize("policy", ["mixed_float16", "mixed_bfloat16"])
@pytest.mark.parametrize("method", METHODS)
def test_mixed_precision_trains(sweeps, method, policy):
    """Float16/bfloat16 compute, float32 losses and variables; it learns."""
    mixed, weights = run_of(sweeps, "mixed", policy, method)
    assert mixed["logits_dtype"] == policy.split("_")[1]
    expected_optimizer = (
        "LossScaleOptimizer" if policy == "mixed_float16" else "SGD"
    )
    assert mixed["optimizer"] == expected_optimizer
    assert mixed["batch_sizes"] == [32] * 6
    # The method computes every loss term (softmax, KL) in float32: its
    # terms on the low-precision outputs are its terms on those outputs
    # cast to float32, while a softmax in the compute dtype is off by more
    # than 1e-4 on these logits.
    assert set(mixed["term_dtypes"].values()) == {"float32"}, mixed[
        "term_dtypes"
    ]
    assert mixed["float32_terms_difference"] < 1e-6
    assert mixed["softmax_control"] > 1e-4
    # Variables are float32 (the step counter is an int32).
    floats = [w for w in weights.values() if w.dtype.kind == "f"]
    assert floats and all(w.dtype == np.float32 for w in floats)
    losses = mixed["batch_losses"]
    assert np.all(np.isfinite(losses))
    # The first loss is float32's (same weights, same batch) up to the
    # precision of the compute dtype, and training lowers the loss: the
    # mean of the last epoch is below the first epoch's (epoch means, not
    # the first batch: a method without a label term, such as MEAL, moves
    # its loss less in six steps than one batch differs from another).
    rtol = 1e-3 if policy == "mixed_float16" else 1e-2
    np.testing.assert_allclose(
        losses[0], mixed["float32_first_loss"], rtol=rtol
    )
    epoch_losses = mixed["history"]["loss"]
    assert len(epoch_losses) >= 2
    assert epoch_losses[-1] < epoch_losses[0]


# === Determinism ===


@pytest.mark.slow
@pytest.mark.parametrize("method", METHODS)
def test_same_seed_same_weights(sweeps, method):
    """Two processes, same seed, op determinism: bit-identical weights.

    The runs are float64 (those of the MirroredStrategy comparison): a
    nondeterministic op changes the last bits of float64 as of float32.
    """
    first, first_weights = run_of(sweeps, "mirrored", "single", method)
    second, second_weights = run_of(sweeps, "mixed", "single", method)
    assert first["determinism"] and second["determinism"]
    assert first["history"] == second["history"]
    assert sorted(first_weights) == sorted(second_weights)
    for path, value in first_weights.items():
        np.testing.assert_array_equal(second_weights[path], value, path)


@pytest.mark.slow
def test_another_seed_other_weights(sweeps):
    """The determinism test can fail: another seed gives other weights."""
    _, seed_0 = run_of(sweeps, "mirrored", "single", "one")
    _, seed_1 = run_of(sweeps, "mixed", "single_seed_1", "one")
    assert global_relative_difference(seed_0, seed_1) > 1e-2
