"""Trains a tiny Distiller for each method; writes weights and logs.

Launched by `test_every_method.py` in a fresh process, because logical
devices, op determinism and dtype policies are process-wide and must be
set before any TensorFlow op. For every method in `--methods` and every
run in `--runs`, it builds the same tiny student and method from the same
seed, trains it (SGD with momentum, `shuffle=False`, sample weights) and
records:

- `<run>/<method>/<variable path>` in `<output>.npz`: every variable after
  training (weights, BatchNormalization statistics, `current_epoch`);
- `<run>/<method>` in `<output>.json`: the epoch logs, the running loss
  after each batch, the optimizer class, the number of steps, the dtype
  of the student's logits and of each loss term returned by the method;
  or the traceback if that method failed.

Runs (a run name followed by `@m1+m2` runs only for those methods):

- `single`: one device, 96 examples (3 batches of 32 per epoch).
- `single_seed_1`: the same from seed 1 instead of 0.
- `mirrored`: a 2-replica `MirroredStrategy` over 2 logical CPUs with
  `synchronized_batch_norm=True`, same data.
- `mirrored_per_replica_bn`: the same with per-replica BatchNormalization.
- `single_uneven`, `mirrored_uneven`: 95 examples, so the last batch of 31
  splits 16 / 15 over the replicas.
- `mixed_float16`, `mixed_bfloat16`: `single` under that dtype policy;
  also records the first batch's loss of the same Distiller in float32.

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
    # name: (strategy, synchronized_batch_norm, examples, seed, policy);
    # a policy of None is --policy.
    "single": (None, True, 96, 0, None),
    "single_seed_1": (None, True, 96, 1, None),
    "mirrored": ("mirrored", True, 96, 0, None),
    "mirrored_per_replica_bn": ("mirrored", False, 96, 0, None),
    "single_uneven": (None, True, 95, 0, None),
    "mirrored_uneven": ("mirrored", True, 95, 0, None),
    "mixed_float16": (None, True, 96, 0, "mixed_float16"),
    "mixed_bfloat16": (None, True, 96, 0, "mixed_bfloat16"),
}


def parse_args(argv):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--output", required=True)
    parser.add_argument("--methods", required=True)
    parser.add_argument("--runs", default="single")
    parser.add_argument("--policy", default="float32")
    parser.add_argument("--jit", action="store_true")
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
        strategy, synchronized, num_examples, seed, policy = RUNS[run]
        x, y = method_zoo.make_images(num_examples)
        sample_weight = np.random.default_rng(1).uniform(0.5, 1.5, len(y))
        keras.backend.clear_session()
        # After clear_session, which resets the global dtype policy.
        keras.config.set_dtype_policy(policy or args.policy)
        start = time.process_time()
        try:
            scope = mirrored.scope() if strategy else contextlib.nullcontext()
            with scope:
                distiller = method_zoo.make_distiller(
                    method, seed=seed, synchronized_batch_norm=synchronized
                )
                distiller.compile(
                    optimizer=keras.optimizers.SGD(
                        args.learning_rate, momentum=0.9
                    ),
                    jit_compile=args.jit,
                )
            dtypes, logits_dtype = method_zoo.term_dtypes(
                distiller, x[:8], y[:8]
            )
            batch_losses = method_zoo.BatchLosses()
            history = distiller.fit(
                x,
                y,
                sample_weight=sample_weight,
                batch_size=32,
                epochs=args.epochs,
                shuffle=False,
                verbose=0,
                callbacks=[batch_losses],
            )
        except Exception:
            report[f"{run}/{method}"] = {"error": traceback.format_exc()}
            print(f"FAILED {run}/{method}", flush=True)
            continue
        for path, value in method_zoo.weights_of(distiller).items():
            arrays[f"{run}/{method}/{path}"] = value
        float32_first_loss = None
        if (policy or args.policy).startswith("mixed"):
            # The same Distiller (same seed, same initial weights) in
            # float32: its loss on the first batch, as `fit` logs it.
            keras.backend.clear_session()
            keras.config.set_dtype_policy("float32")
            reference = method_zoo.make_distiller(method, seed=seed)
            batch = (x[:32], y[:32], sample_weight[:32])
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
            "logits_dtype": logits_dtype,
            "term_dtypes": dtypes,
            "float32_first_loss": float32_first_loss,
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
