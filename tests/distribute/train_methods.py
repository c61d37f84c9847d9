"""Trains a tiny Distiller for each method; writes weights and logs.

Launched by `test_every_method.py` in a fresh process, because logical
devices, op determinism and dtype policies are process-wide and must be
set before any TensorFlow op. For every method in `--methods` and every
run in `--runs`, it builds the same tiny student and method from the same
seed, trains it (SGD with momentum, sample weights, a `tf.data` dataset
in batches of 32 in a fixed order) and records:

- `<run>/<method>/<variable path>` in `<output>.npz`: every variable after
  training (weights, BatchNormalization statistics, `current_epoch`);
- `<run>/<method>` in `<output>.json`: the epoch logs, the running loss
  after each batch, the optimizer class, the number of steps, the size of
  every batch each replica trained on (counted as it ran; not under XLA),
  the dtype of the student's logits and of each loss term returned by the
  method; or the traceback if that method failed.

Runs (a run name followed by `@m1+m2` runs only for those methods):

- `single`: one device, 95 examples: batches of 32, 32 and 31 per epoch.
- `single_seed_1`: the same from seed 1 instead of 0.
- `single_even`: one device, 96 examples: three batches of 32 per epoch.
- `xla`, `xla_even`: `single` and `single_even` with `jit_compile=True`.
  XLA compiles a step for each batch shape, so the uneven last batch of
  `xla` costs a second compilation (about 7 s of CPU here); `xla_even`
  checks a method's XLA lowering with one.
- `mirrored`: a 2-replica `MirroredStrategy` over 2 logical CPUs with
  `synchronized_batch_norm=True`, same data: each epoch's last batch of 31
  splits unevenly, 16 / 15, over the replicas.
- `mirrored_per_replica_bn`: the same with per-replica BatchNormalization.
- `mixed_float16`, `mixed_bfloat16`: 96 examples under that dtype policy;
  also records the first batch's loss of the same Distiller in float32,
  and how far the method's loss terms on the student's low-precision
  outputs are from the same terms on those outputs cast to float32 (see
  `float32_terms`).

Usage:
    python train_methods.py --output /tmp/out --methods one,dml \
        --runs single,mirrored,mirrored_per_replica_bn@one --policy float64
"""

import argparse
import contextlib
import json
import os
import sys
import time
import traceback

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

RUNS = {
    # name: (strategy, synchronized_batch_norm, examples, seed, policy,
    # jit_compile); a policy of None is --policy.
    "single": (None, True, 95, 0, None, False),
    "single_seed_1": (None, True, 95, 1, None, False),
    "single_even": (None, True, 96, 0, None, False),
    "xla": (None, True, 95, 0, None, True),
    "xla_even": (None, True, 96, 0, None, True),
    "mirrored": ("mirrored", True, 95, 0, None, False),
    "mirrored_per_replica_bn": ("mirrored", False, 95, 0, None, False),
    "mixed_float16": (None, True, 96, 0, "mixed_float16", False),
    "mixed_bfloat16": (None, True, 96, 0, "mixed_bfloat16", False),
}


def parse_args(argv):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--output", required=True)
    parser.add_argument("--methods", required=True)
    parser.add_argument("--runs", default="single")
    parser.add_argument("--policy", default="float32")
    parser.add_argument("--determinism", action="store_true")
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--learning-rate", type=float, default=0.05)
    return parser.parse_args(argv)


def parse_runs(spec, methods):
    """`[(run, method), ...]` in order, from e.g. `single,mirrored@one`."""
    plan = []
    for method in methods:
        for item in spec.split(","):
            run, _, only = item.partition("@")
            if run not in RUNS:
                raise ValueError(f"Unknown run {run!r}; known: {list(RUNS)}")
            if not only or method in only.split("+"):
                plan.append((run, method))
    return plan


def float32_terms(distiller, x, y, epoch):
    """Whether the method computes its loss terms in float32.

    Under a mixed policy the student's outputs are float16 or bfloat16.
    The method's terms on them must be the terms on the same outputs cast
    to float32 (a lossless cast): equal up to float32 round-off if the
    method casts before its softmax and KL, off by the low precision's
    round-off (1e-3) if it computes in float16 or bfloat16.

    Returns `(difference, control)`: the largest relative difference over
    the terms, and how far a softmax computed in the compute dtype is from
    float64's on the first branch's logits (so `difference` would show it).
    `epoch` past the ramp-up makes every term count.
    """
    import keras
    import numpy as np
    from keras import ops

    def to_float32(value):
        if keras.backend.is_float_dtype(value.dtype):
            return ops.cast(value, "float32")
        return value

    outputs = distiller(x, training=False)
    outputs.update(distiller.method(x, outputs, training=False))
    labels = ops.convert_to_tensor(y)
    epoch = ops.convert_to_tensor(epoch, "float32")
    low = distiller.method.compute_losses(labels, outputs, epoch)
    float32_outputs = keras.tree.map_structure(to_float32, outputs)
    high = distiller.method.compute_losses(labels, float32_outputs, epoch)
    difference = 0.0
    for name, value in high.items():
        expected = ops.convert_to_numpy(value).astype("float64")
        got = ops.convert_to_numpy(ops.cast(low[name], "float32"))
        scale = max(float(np.max(np.abs(expected))), 1e-30)
        error = float(np.max(np.abs(got - expected))) / scale
        difference = max(difference, error)
    logits = outputs["branch_logits"][0]
    low_softmax = ops.convert_to_numpy(ops.cast(ops.softmax(logits), "float32"))
    logits = ops.convert_to_numpy(ops.cast(logits, "float32")).astype("f8")
    exp = np.exp(logits - logits.max(axis=-1, keepdims=True))
    reference = exp / exp.sum(axis=-1, keepdims=True)
    control = float(np.max(np.abs(low_softmax - reference) / reference))
    return difference, control


def main(argv):
    args = parse_args(argv)
    plan = parse_runs(args.runs, args.methods.split(","))
    uses_mirrored = any(RUNS[run][0] == "mirrored" for run, _ in plan)

    import tensorflow as tf

    if uses_mirrored:
        cpu = tf.config.list_physical_devices("CPU")[0]
        tf.config.set_logical_device_configuration(
            cpu, [tf.config.LogicalDeviceConfiguration()] * 2
        )
    if args.determinism:
        tf.config.experimental.enable_op_determinism()

    import keras
    import method_zoo
    import numpy as np

    # One strategy for the whole process: a second MirroredStrategy in a
    # process can mismatch its collective ops' keys with the first one's.
    mirrored = None
    if uses_mirrored:
        mirrored = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])

    arrays, report = {}, {}
    for run, method in plan:
        strategy, synchronized, num_examples, seed, policy, jit = RUNS[run]
        x, y = method_zoo.make_images(num_examples)
        sample_weight = np.random.default_rng(1).uniform(0.5, 1.5, len(y))
        # No full garbage collection (about 0.2 s of CPU a call in this
        # process); Python's own collector still frees the old runs.
        keras.backend.clear_session(free_memory=False)
        # After clear_session, which resets the global dtype policy.
        keras.config.set_dtype_policy(policy or args.policy)
        start = time.process_time()
        try:
            scope = mirrored.scope() if strategy else contextlib.nullcontext()
            with scope:
                distiller = method_zoo.make_distiller(
                    method, seed=seed, synchronized_batch_norm=synchronized
                )
                method_zoo.compile_distiller(
                    distiller,
                    keras.optimizers.SGD(args.learning_rate, momentum=0.9),
                    jit_compile=jit,
                )
            dtypes, logits_dtype = method_zoo.term_dtypes(
                distiller, x[:8], y[:8]
            )
            batch_losses = method_zoo.BatchLosses()
            batch_sizes = []
            if not jit:
                method_zoo.count_batches(distiller, batch_sizes)
            history = distiller.fit(
                method_zoo.batch_dataset(
                    method_zoo.student_inputs(distiller, x),
                    y,
                    sample_weight,
                ),
                epochs=args.epochs,
                shuffle=False,  # (in order already; no warning)
                verbose=0,
                callbacks=[batch_losses],
            )
        except Exception:
            report[f"{run}/{method}"] = {"error": traceback.format_exc()}
            print(f"FAILED {run}/{method}", flush=True)
            continue
        for path, value in method_zoo.weights_of(distiller).items():
            arrays[f"{run}/{method}/{path}"] = value
        float32_first_loss = float32_terms_difference = None
        softmax_control = None
        if (policy or args.policy).startswith("mixed"):
            float32_terms_difference, softmax_control = float32_terms(
                distiller,
                method_zoo.student_inputs(distiller, x[:8]),
                y[:8],
                epoch=10,
            )
            # The same Distiller (same seed, same initial weights) in
            # float32: its loss on the first batch, as `fit` logs it.
            keras.backend.clear_session(free_memory=False)
            keras.config.set_dtype_policy("float32")
            reference = method_zoo.make_distiller(method, seed=seed)
            batch = (
                method_zoo.student_inputs(reference, x[:32]),
                y[:32],
                sample_weight[:32],
            )
            inputs, labels, weights = batch
            loss = reference.compute_loss(
                inputs,
                labels,
                reference(inputs, training=True),
                weights,
                training=True,
            )
            float32_first_loss = float(loss)
        report[f"{run}/{method}"] = {
            "history": history.history,
            "batch_losses": batch_losses.losses,
            "optimizer": type(distiller.optimizer).__name__,
            "jit_compile": bool(distiller.jit_compile),
            "steps": int(distiller.optimizer.iterations.numpy()),
            # The size of each batch a replica trained on, as it ran
            # (None under XLA).
            "batch_sizes": None if jit else batch_sizes,
            "determinism": args.determinism,
            "cpu_seconds": time.process_time() - start,
            "logits_dtype": logits_dtype,
            "term_dtypes": dtypes,
            "float32_first_loss": float32_first_loss,
            "float32_terms_difference": float32_terms_difference,
            "softmax_control": softmax_control,
            # The flag is set only while a step runs: never left behind.
            "synchronized_after_fit": any(
                getattr(layer, "synchronized", False)
                for layer in method_zoo.all_layers(distiller)
            ),
        }
        print(
            f"trained {run}/{method} in {time.process_time() - start:.1f} s "
            "of CPU time",
            flush=True,
        )
    np.savez(args.output + ".npz", **arrays)
    with open(args.output + ".json", "w") as file:
        json.dump(report, file)


if __name__ == "__main__":
    main(sys.argv[1:])
