"""Throughput benchmark: training images per second, measured as ratios.

Every variant is built, compiled and warmed up first; then the variants are
timed in turn, in short windows of `--window-steps` training steps, round
after round, in alternating order (A, B, C, C, B, A, A, B, C, ...), so that
a change in the machine's load, and any cost of coming first or last in a
round, affects them all alike. Each variant's speed is its median over the
rounds, and each ratio is the median of the per-round ratios, with a 95%
confidence interval for that median that assumes nothing about the noise
(the sign test's: order statistics of the per-round ratios).

Every step trains on one fixed in-memory batch (the same images for every
variant), so the numbers measure the training step, not the input pipeline.

Variants (`--variants`, default: all that apply):

- `baseline`: the single-branch network, `compile` + `fit`'s step.
- `one`: ONE, `N` branches (N separate copies), trained by the `Distiller`.
- `one_fused`: the same with `cifar_resnet(..., fused=True)`.
- `one_keras_bn`: `one` with Keras' own `BatchNormalization` instead of
  `keras_one.layers.FusedBatchNormalization` (the networks' default).
- `dml`: `N` separate networks trained together (DML, `branch_stage=0`).
- `dml_fused`: the same, fused.
- `handwritten`: a minimal hand-written Keras `train_step` with ONE's
  loss on the `one` student (the overhead reference of the Distiller).
- `handwritten_fused`: the same on the fused student.
- `*_xla`: `baseline`, `one`, `one_fused` with `jit_compile=True`.
- `*_bf16`: `one`, `one_fused` under the `mixed_bfloat16` policy.
- `torch`: ONE in PyTorch (channels-last), if torch is installed.

Example (the figures of the README):

    python bench/throughput.py --model resnet32 --batch-size 128 \
        --rounds 6 --window-steps 4 --output results/throughput.json
"""

import argparse
import json
import math
import os
import statistics
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402

ALL_VARIANTS = (
    "baseline",
    "one",
    "one_fused",
    "one_keras_bn",
    "dml",
    "dml_fused",
    "handwritten",
    "handwritten_fused",
    "baseline_xla",
    "one_xla",
    "one_fused_xla",
    "one_bf16",
    "one_fused_bf16",
    "torch",
)
RATIOS = (
    ("one", "dml", "ONE-3 : three networks (N copies)"),
    ("one_fused", "dml_fused", "ONE-3 : three networks (fused)"),
    ("one", "baseline", "ONE-3 : baseline"),
    ("one", "handwritten", "Distiller : hand-written (N copies)"),
    ("one_fused", "handwritten_fused", "Distiller : hand-written (fused)"),
    ("one_fused", "one", "fused : N copies"),
    ("one", "one_keras_bn", "fused BN : Keras BN (ONE)"),
    ("one_xla", "one", "XLA : no XLA (ONE)"),
    ("one_fused_xla", "one_fused", "XLA : no XLA (ONE fused)"),
    ("baseline_xla", "baseline", "XLA : no XLA (baseline)"),
    ("one_bf16", "one", "bfloat16 : float32 (ONE)"),
    ("one_fused_bf16", "one_fused", "bfloat16 : float32 (ONE fused)"),
    ("torch", "one", "PyTorch : keras-one ONE (N copies)"),
    ("torch", "one_fused", "PyTorch : keras-one ONE (fused)"),
)


def build_parser():
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--model", default="resnet32")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--branches", type=int, default=3)
    parser.add_argument("--num-classes", type=int, default=10)
    parser.add_argument("--image-size", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--window-steps", type=int, default=4)
    parser.add_argument("--warmup-steps", type=int, default=2)
    parser.add_argument(
        "--variants",
        nargs="+",
        default=None,
        choices=ALL_VARIANTS,
        help="variants to time (default: all)",
    )
    parser.add_argument(
        "--threads",
        type=int,
        default=None,
        help="intra-op threads of TensorFlow and PyTorch (default: theirs)",
    )
    parser.add_argument(
        "--cpu-time",
        action="store_true",
        help="time with the process's CPU time instead of wall time (with "
        "--threads 1: images per CPU-second, robust to other processes on "
        "a shared machine)",
    )
    parser.add_argument("--output", default=None, help="JSON results path")
    return parser


# === Variants ===


def _depth(model):
    name = model.lower().replace("-", "")
    if not name.startswith("resnet"):
        raise SystemExit(f"--model must be resnet<depth>; got {model!r}.")
    return int(name[len("resnet") :])


def _network(args, **kwargs):
    from keras_one import models

    return models.cifar_resnet(
        depth=_depth(args.model),
        num_classes=args.num_classes,
        input_shape=(args.image_size, args.image_size, 3),
        **kwargs,
    )


def _sgd():
    import keras

    return keras.optimizers.SGD(0.1, momentum=0.9, nesterov=True)


def _handwritten_model(student, temperature=3.0):
    """A minimal Keras model whose `train_step` computes ONE's loss."""
    import keras
    import tensorflow as tf

    class HandWrittenONE(keras.Model):
        def __init__(self, student):
            super().__init__()
            self.student = student

        def call(self, inputs, training=None):
            return self.student(inputs, training=training)

        def train_step(self, data):
            images, labels = data
            with tf.GradientTape() as tape:
                outputs = self.student(images, training=True)
                ensemble = outputs["ensemble_logits"]
                teacher = tf.nn.softmax(
                    tf.stop_gradient(ensemble) / temperature
                )
                loss = tf.reduce_mean(
                    tf.nn.sparse_softmax_cross_entropy_with_logits(
                        labels, ensemble
                    )
                )
                for logits in outputs["branch_logits"]:
                    loss += tf.reduce_mean(
                        tf.nn.sparse_softmax_cross_entropy_with_logits(
                            labels, logits
                        )
                    )
                    loss += temperature**2 * tf.reduce_mean(
                        tf.nn.softmax_cross_entropy_with_logits(
                            teacher, logits / temperature
                        )
                    )
                loss += tf.add_n(self.student.losses)
            variables = self.trainable_variables
            self.optimizer.apply(tape.gradient(loss, variables), variables)
            return {"loss": loss}

    return HandWrittenONE(student)


def _with_keras_batch_norm(model):
    """A copy of `model` with Keras' own BatchNormalization layers."""
    import keras

    from keras_one.layers import FusedBatchNormalization

    def clone(layer):
        config = layer.get_config()
        if isinstance(layer, FusedBatchNormalization):
            return keras.layers.BatchNormalization.from_config(config)
        return layer.__class__.from_config(config)

    return keras.models.clone_model(model, clone_function=clone, recursive=True)


def build_variant(name, args, images, labels):
    """Returns a zero-argument callable running one training step."""
    if name == "torch":
        from torch_one import TorchONEStep

        return TorchONEStep(
            images,
            labels,
            depth=_depth(args.model),
            num_classes=args.num_classes,
            num_branches=args.branches,
            threads=args.threads,
        )
    import keras
    import tensorflow as tf

    from keras_one import Distiller
    from keras_one import methods

    base = name.partition("_")[0]
    fused = "fused" in name
    jit_compile = name.endswith("_xla")
    policy = "mixed_bfloat16" if name.endswith("_bf16") else "float32"
    previous_policy = keras.config.dtype_policy()
    keras.config.set_dtype_policy(policy)
    try:
        if base == "baseline":
            model = _network(args, num_branches=1)
            model.compile(
                optimizer=_sgd(),
                loss=keras.losses.SparseCategoricalCrossentropy(
                    from_logits=True
                ),
                metrics=["accuracy"],
                jit_compile=jit_compile,
            )
        elif base == "one":
            student = _network(args, num_branches=args.branches, fused=fused)
            if name == "one_keras_bn":
                student = _with_keras_batch_norm(student)
            model = Distiller(student, methods.ONE())
            model.compile(optimizer=_sgd(), jit_compile=jit_compile)
        elif base == "dml":
            student = _network(
                args,
                num_branches=args.branches,
                branch_stage=0,
                head=None,
                fused=fused,
            )
            model = Distiller(student, methods.DML())
            model.compile(optimizer=_sgd(), jit_compile=jit_compile)
        elif base == "handwritten":
            student = _network(args, num_branches=args.branches, fused=fused)
            model = _handwritten_model(student)
            model.compile(optimizer=_sgd(), jit_compile=jit_compile)
        else:
            raise ValueError(f"Unknown variant {name!r}.")
    finally:
        keras.config.set_dtype_policy(previous_policy)
    dataset = tf.data.Dataset.from_tensors((images, labels)).repeat()
    model.fit(dataset, steps_per_epoch=1, epochs=1, verbose=0, shuffle=False)
    iterator = iter(dataset)
    function = model.train_function

    def step():
        logs = function(iterator)
        return logs

    return step


def _sync(result):
    """Waits for a step's results (TensorFlow may run asynchronously)."""
    import tensorflow as tf

    if isinstance(result, tf.experimental.Optional):
        result = result.get_value()
    if isinstance(result, dict):
        for value in result.values():
            _sync(value)
    elif hasattr(result, "numpy"):
        result.numpy()


# === Timing ===


def measure(steps, args):
    """Times the steps in interleaved windows; returns img/s per round."""
    for step in steps.values():
        for _ in range(args.warmup_steps):
            _sync(step())
    clock = time.process_time if args.cpu_time else time.perf_counter
    speeds = {name: [] for name in steps}
    order = list(steps)
    for round_index in range(args.rounds):
        # Every other round runs the variants in reverse order.
        for name in order if round_index % 2 == 0 else order[::-1]:
            step = steps[name]
            start = clock()
            for _ in range(args.window_steps):
                result = step()
            _sync(result)
            seconds = clock() - start
            speeds[name].append(args.window_steps * args.batch_size / seconds)
        line = ", ".join(f"{n} {v[-1]:.0f}" for n, v in speeds.items())
        print(f"round {round_index + 1}: {line} img/s", flush=True)
    return speeds


def median_confidence_interval(values, confidence=0.95):
    """A distribution-free confidence interval for the median of `values`.

    The sign test's interval: the `k`-th smallest and `k`-th largest value,
    with `k` the largest rank such that the median lies outside them with
    probability at most `1 - confidence` (a Binomial(n, 1/2) tail on each
    side). It assumes only independent rounds, not normal noise. Returns
    `None` when there are too few values (5 or fewer at 95%).
    """
    values = sorted(values)
    n = len(values)
    tail = (1 - confidence) / 2
    k, cumulative = 0, 0.0
    # Stops at the first k with P(Binomial(n, 1/2) <= k) > tail, so that
    # P(... <= k - 1) <= tail: the interval is (x_(k), x_(n-k+1)), 1-based.
    while True:
        cumulative += math.comb(n, k) / 2**n
        if cumulative > tail:
            break
        k += 1
    if k == 0:
        return None
    return [values[k - 1], values[n - k]]


def summarize(speeds):
    table = {
        name: {
            "median": statistics.median(values),
            "min": min(values),
            "max": max(values),
            "per_round": values,
        }
        for name, values in speeds.items()
    }
    ratios = {}
    for numerator, denominator, label in RATIOS:
        if numerator in speeds and denominator in speeds:
            # Time ratio = inverse speed ratio, round by round.
            per_round = [
                d / n
                for n, d in zip(
                    speeds[numerator], speeds[denominator], strict=True
                )
            ]
            ratios[label] = {
                "time_ratio": statistics.median(per_round),
                "ci95": median_confidence_interval(per_round),
                "per_round": per_round,
            }
    return table, ratios


def main(argv=None):
    args = build_parser().parse_args(argv)
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    import tensorflow as tf

    if args.threads:
        tf.config.threading.set_intra_op_parallelism_threads(args.threads)
        tf.config.threading.set_inter_op_parallelism_threads(args.threads)
    variants = list(args.variants or ALL_VARIANTS)
    if "torch" in variants:
        try:
            import torch  # noqa: F401
        except ImportError:
            print(
                "skipping torch: PyTorch is not installed (pip install torch)"
            )
            variants.remove("torch")
    rng = np.random.default_rng(0)
    shape = (args.batch_size, args.image_size, args.image_size, 3)
    images = rng.normal(size=shape).astype("float32")
    labels = rng.integers(0, args.num_classes, args.batch_size).astype("int32")
    steps = {}
    for name in variants:
        start = time.perf_counter()
        steps[name] = build_variant(name, args, images, labels)
        print(f"built {name} in {time.perf_counter() - start:.0f} s")
    load_before = os.getloadavg()
    speeds = measure(steps, args)
    load_after = os.getloadavg()
    table, ratios = summarize(speeds)
    print(f"\nTraining throughput, {args.model}, batch {args.batch_size}")
    print(f"load average before {load_before}, after {load_after}")
    print(f"{'variant':20s} {'img/s (median)':>15s} {'min':>7s} {'max':>7s}")
    for name, stats in table.items():
        print(
            f"{name:20s} {stats['median']:15.1f} {stats['min']:7.1f} "
            f"{stats['max']:7.1f}"
        )
    print(f"\n{'time ratio':45s} {'median':>7s} {'95% CI':>13s}")
    for label, ratio in ratios.items():
        interval = ratio["ci95"]
        interval = f"{interval[0]:.3f}-{interval[1]:.3f}" if interval else "-"
        print(f"{label:45s} {ratio['time_ratio']:7.3f} {interval:>13s}")
    results = {
        "arguments": vars(args),
        "machine": _machine(),
        "images_per_second": table,
        "time_ratios": ratios,
        # 1-, 5- and 15-minute load averages: about the number of cores
        # (2) when the machine ran nothing else.
        "load_average": {"before": load_before, "after": load_after},
    }
    if args.output:
        directory = os.path.dirname(os.path.abspath(args.output))
        os.makedirs(directory, exist_ok=True)
        with open(args.output, "w") as file:
            json.dump(results, file, indent=1)
        print(f"\nresults: {args.output}")
    return results


def _machine():
    import platform

    import keras
    import tensorflow as tf

    machine = {
        "platform": platform.platform(),
        "cpu_count": os.cpu_count(),
        "tensorflow": tf.__version__,
        "keras": keras.__version__,
        "intra_op_threads": (
            tf.config.threading.get_intra_op_parallelism_threads()
        ),
    }
    try:
        import torch

        machine["torch"] = torch.__version__
        machine["torch_threads"] = torch.get_num_threads()
    except ImportError:
        pass
    return machine


if __name__ == "__main__":
    main()
