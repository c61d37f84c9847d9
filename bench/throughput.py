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
  It logs only the loss and has no ramp-up (distillation weight 1) and
  no label check, so the Distiller's per-branch accuracies, loss-term
  means, step counter and ramp-up weight count in its overhead.
- `handwritten_fused`: the same on the fused student.
- `*_xla`: `baseline`, `one`, `one_fused` with `jit_compile=True`.
- `*_bf16`: `one`, `one_fused`, `one_keras_bn` under the `mixed_bfloat16`
  policy.
- `torch`: ONE in PyTorch (channels-last), if torch is installed.
- `torch_bf16`: the same under `torch.autocast("cpu", torch.bfloat16)`,
  PyTorch's mixed precision (the reference of `one_bf16`).
- `one_jax`, `one_torch`: `one` on Keras' JAX and PyTorch backends
  (`cifar_resnet(fused=False)`, `FusedBatchNormalization` computing as
  Keras' own there), each in a process of its own that sets
  `KERAS_BACKEND`, and trained by the `Distiller`'s `train_on_batch`
  (its per-call overhead on JAX, the variables' state taken out and
  written back, is included). The parent process sends it each window
  and reads back the seconds it measured with its own clock, so
  `--cpu-time` counts that process's CPU time. `--threads` sets
  PyTorch's threads; JAX has no setting for its threads, so its
  process is bound to `--threads` CPUs instead (`os.sched_setaffinity`).
- `one_jax_bf16`: `one_jax` under the `mixed_bfloat16` policy.

Example (the figures of the README):

    python bench/throughput.py --model resnet32 --batch-size 128 \
        --rounds 6 --window-steps 4 --output results/throughput.json
"""

import argparse
import importlib.metadata
import importlib.util
import json
import math
import os
import statistics
import subprocess
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
    "one_keras_bn_bf16",
    "torch",
    "torch_bf16",
    "one_jax",
    "one_torch",
    "one_jax_bf16",
)
# The variants that run `one` on another Keras backend, in a process of
# their own (the benchmark's own process runs TensorFlow).
OTHER_BACKENDS = {"one_jax": "jax", "one_torch": "torch", "one_jax_bf16": "jax"}
# Optional packages, and the variants that need them.
REQUIREMENTS = {"torch": "torch", "torch_bf16": "torch", **OTHER_BACKENDS}
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
    ("one_bf16", "one_keras_bn_bf16", "fused BN : Keras BN (ONE, bfloat16)"),
    ("torch", "one", "PyTorch : keras-one ONE (N copies)"),
    ("torch", "one_fused", "PyTorch : keras-one ONE (fused)"),
    ("one_jax", "one", "JAX backend : TensorFlow (ONE)"),
    ("one_torch", "one", "PyTorch backend : TensorFlow (ONE)"),
    ("torch", "one_torch", "PyTorch : keras-one ONE on PyTorch"),
    ("torch_bf16", "torch", "bfloat16 : float32 (PyTorch autocast)"),
    ("torch_bf16", "one_bf16", "PyTorch autocast : keras-one ONE, bfloat16"),
    ("one_jax_bf16", "one_jax", "bfloat16 : float32 (ONE on JAX)"),
    ("one_jax_bf16", "one_bf16", "JAX backend : TensorFlow (ONE, bfloat16)"),
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
    # Internal: runs one of OTHER_BACKENDS for the benchmark's process.
    parser.add_argument(
        "--worker", choices=OTHER_BACKENDS, help=argparse.SUPPRESS
    )
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
    if name in ("torch", "torch_bf16"):
        from torch_one import TorchONEStep

        return TorchONEStep(
            images,
            labels,
            depth=_depth(args.model),
            num_classes=args.num_classes,
            num_branches=args.branches,
            threads=args.threads,
            bfloat16=name == "torch_bf16",
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
            if name.startswith("one_keras_bn"):
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


def build_backend_variant(args, images, labels):
    """`one` on this process's Keras backend (JAX or PyTorch): a step.

    `one_jax_bf16` builds it under the `mixed_bfloat16` policy.

    The same student, method and optimizer as `one`, trained by the
    Distiller's `train_on_batch`, which returns when the step is done.
    """
    import keras

    from keras_one import Distiller
    from keras_one import methods

    if args.worker.endswith("_bf16"):
        keras.config.set_dtype_policy("mixed_bfloat16")
    model = Distiller(_network(args, num_branches=args.branches), methods.ONE())
    model.compile(optimizer=_sgd())
    # As after `one`'s `fit(steps_per_epoch=1)`: one step per epoch.
    model.steps_per_epoch = 1
    images = keras.ops.convert_to_tensor(images)
    labels = keras.ops.convert_to_tensor(labels)

    def step():
        return model.train_on_batch(images, labels)

    return step


class BackendProcess:
    """Runs one of `OTHER_BACKENDS` in a process of its own.

    The process (this script with `--worker`) builds the variant on its
    Keras backend, then times each window it is sent with its own clock.
    Calling the object times a window of `steps` steps there.
    """

    def __init__(self, name, args):
        argv = [sys.executable, os.path.abspath(__file__), "--worker", name]
        for option in (
            "model",
            "batch_size",
            "branches",
            "num_classes",
            "image_size",
            "threads",
        ):
            value = getattr(args, option)
            if value is not None:
                argv += [f"--{option.replace('_', '-')}", str(value)]
        if args.cpu_time:
            argv.append("--cpu-time")
        environment = {**os.environ, "KERAS_BACKEND": OTHER_BACKENDS[name]}
        self.name = name
        self.process = subprocess.Popen(
            argv,
            env=environment,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        self.info = json.loads(self._read())

    def __call__(self, steps):
        self.process.stdin.write(f"{steps}\n")
        self.process.stdin.flush()
        return float(self._read())

    def _read(self):
        line = self.process.stdout.readline()
        if not line:
            raise RuntimeError(
                f"The {self.name} process ended (exit status "
                f"{self.process.wait()}); its error is printed above."
            )
        return line

    def close(self):
        self.process.stdin.close()
        self.process.wait()


def serve(args):
    """The `--worker` process: builds the variant, then times windows.

    It answers on its own copy of the standard output, and sends what
    the libraries print there to the standard error instead.
    """
    channel = os.fdopen(os.dup(sys.stdout.fileno()), "w", buffering=1)
    os.dup2(sys.stderr.fileno(), sys.stdout.fileno())
    backend = OTHER_BACKENDS[args.worker]
    info = {}
    if args.threads and backend == "jax":
        cpus = sorted(os.sched_getaffinity(0))[: args.threads]
        os.sched_setaffinity(0, cpus)
        info["cpus"] = cpus
    if args.threads and backend == "torch":
        import torch

        torch.set_num_threads(args.threads)
        torch.set_num_interop_threads(args.threads)
        info["torch_threads"] = torch.get_num_threads()
    window = timed(build_backend_variant(args, *make_batch(args)), args)
    import keras

    info["backend"] = keras.backend.backend()
    info["dtype_policy"] = keras.config.dtype_policy().name
    channel.write(json.dumps(info) + "\n")
    for line in sys.stdin:
        channel.write(f"{window(int(line))!r}\n")


def _sync(result):
    """Waits for a step's results (TensorFlow may run asynchronously)."""
    if hasattr(result, "get_value"):  # a `tf.experimental.Optional`
        result = result.get_value()
    if isinstance(result, dict):
        for value in result.values():
            _sync(value)
    elif hasattr(result, "numpy"):
        result.numpy()


# === Timing ===


def timed(step, args):
    """A window of `step`: runs it `steps` times, returns the seconds."""
    clock = time.process_time if args.cpu_time else time.perf_counter

    def window(steps):
        result = None
        start = clock()
        for _ in range(steps):
            result = step()
        _sync(result)
        return clock() - start

    return window


def measure(windows, args):
    """Times the variants in interleaved windows; returns img/s per round.

    `windows` maps each variant to a function that runs `n` training steps
    and returns the seconds they took (`timed`, or a `BackendProcess`).
    """
    if args.warmup_steps:
        for window in windows.values():
            window(args.warmup_steps)
    speeds = {name: [] for name in windows}
    order = list(windows)
    for round_index in range(args.rounds):
        # Every other round runs the variants in reverse order.
        for name in order if round_index % 2 == 0 else order[::-1]:
            seconds = windows[name](args.window_steps)
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


def make_batch(args):
    """The fixed batch every variant trains on (the same in every process)."""
    rng = np.random.default_rng(0)
    shape = (args.batch_size, args.image_size, args.image_size, 3)
    images = rng.normal(size=shape).astype("float32")
    labels = rng.integers(0, args.num_classes, args.batch_size).astype("int32")
    return images, labels


def main(argv=None):
    args = build_parser().parse_args(argv)
    # Before any measurement: the machine is recorded after it.
    _machine_info().check_thread_variables()
    if args.worker:
        return serve(args)
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    import tensorflow as tf

    if args.threads:
        tf.config.threading.set_intra_op_parallelism_threads(args.threads)
        tf.config.threading.set_inter_op_parallelism_threads(args.threads)
    variants = list(args.variants or ALL_VARIANTS)
    for name, package in REQUIREMENTS.items():
        if name in variants and importlib.util.find_spec(package) is None:
            print(
                f"skipping {name}: {package} is not installed "
                f"(pip install {package})"
            )
            variants.remove(name)
    images, labels = make_batch(args)
    windows, processes = {}, {}
    try:
        for name in variants:
            start = time.perf_counter()
            if name in OTHER_BACKENDS:
                windows[name] = processes[name] = BackendProcess(name, args)
            else:
                step = build_variant(name, args, images, labels)
                windows[name] = timed(step, args)
            print(f"built {name} in {time.perf_counter() - start:.0f} s")
        load_before = os.getloadavg()
        speeds = measure(windows, args)
        load_after = os.getloadavg()
    finally:
        for process in processes.values():
            process.close()
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
        "machine": _machine(processes),
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


def _machine(processes):
    """The CPU model, TensorFlow's thread counts (`--threads`, else
    `TF_NUM_INTRAOP_THREADS` and `TF_NUM_INTEROP_THREADS`, else its
    default), the libraries, and each backend process's threads."""
    machine = _machine_info().describe()
    try:
        import torch

        machine["torch"] = torch.__version__
        machine["torch_threads"] = torch.get_num_threads()
    except ImportError:
        pass
    if "one_jax" in processes:
        machine["jax"] = importlib.metadata.version("jax")
    # Each backend process's Keras backend, and its bound CPUs or threads.
    for name, process in processes.items():
        machine[name] = process.info
    return machine


def _machine_info():
    """`bench/machine_info.py`, imported from this script's directory."""
    directory = os.path.dirname(os.path.abspath(__file__))
    if directory not in sys.path:
        sys.path.insert(0, directory)
    import machine_info

    return machine_info


if __name__ == "__main__":
    main()
