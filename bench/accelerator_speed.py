"""Training speed on an accelerator, on Keras' JAX or PyTorch backend.

Measures, on whatever device the backend sees (a GPU where there is one),
the images per second of `fit` for the single-branch baseline and for ONE
(trained by the `Distiller`), in float32 and under the `mixed_bfloat16`
policy, and on JAX a minimal hand-written training step with ONE's loss
(the Distiller's overhead reference, as `handwritten` in
`bench/throughput.py`). It needs neither TensorFlow nor a dataset: every
epoch is `fit` over the same in-memory random images, so it times the
training step, not the input pipeline. Variants are timed in turn, one
epoch of `--steps` steps each, in alternating order over `--rounds`
rounds after a warm-up epoch (which compiles); each variant's speed is
its median over the rounds, and each ratio the median of its per-round
ratios. From the speeds it estimates the time of the paper's protocol:
`--protocol-epochs` epochs of `--protocol-images` images (300 of 50,000:
CIFAR), training only, not counting the input pipeline or evaluation.

    KERAS_BACKEND=jax python bench/accelerator_speed.py --output speed.json

The result file records the backend, the device and the host: its CPU
model, core count and the CPUs the process may use, and on PyTorch its
thread counts (`bench/machine_info.py`).

`--summary FILE` prints the summary of a saved result again (it needs
neither Keras nor the accelerator), with each ratio's 95% confidence
interval for the median (the sign test's, as in `bench/throughput.py`).
"""

import argparse
import json
import os
import platform
import statistics
import sys
import time

VARIANTS = ("baseline", "one", "handwritten", "baseline_bf16", "one_bf16")
RATIOS = (
    ("one", "baseline", "ONE-3 : baseline"),
    ("one", "handwritten", "Distiller : hand-written (ONE)"),
    ("one_bf16", "one", "bfloat16 : float32 (ONE)"),
    ("baseline_bf16", "baseline", "bfloat16 : float32 (baseline)"),
)


def build_parser():
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--model", default="resnet32")
    parser.add_argument("--branches", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--variants", nargs="+", choices=VARIANTS)
    parser.add_argument("--protocol-epochs", type=int, default=300)
    parser.add_argument("--protocol-images", type=int, default=50000)
    parser.add_argument("--output", default=None)
    parser.add_argument(
        "--summary",
        metavar="RESULTS.json",
        help="print the summary of a saved result and exit",
    )
    return parser


def _handwritten_one(student, temperature=3.0):
    """A minimal JAX `train_step` with ONE's loss, as Keras' guide writes one.

    Like `bench/throughput.py`'s: it logs only the loss and has no ramp-up
    (distillation weight 1).
    """
    import jax
    import keras
    from keras import ops

    class HandWrittenONE(keras.Model):
        def __init__(self, student):
            super().__init__()
            self.student = student

        def call(self, inputs, training=None):
            return self.student(inputs, training=training)

        def _loss(self, trainable, non_trainable, images, labels):
            outputs, non_trainable, losses = self.stateless_call(
                trainable, non_trainable, images, training=True,
                return_losses=True,
            )  # fmt: skip
            ensemble = outputs["ensemble_logits"]
            teacher = ops.softmax(ops.stop_gradient(ensemble) / temperature)
            loss = ops.mean(
                ops.sparse_categorical_crossentropy(
                    labels, ensemble, from_logits=True
                )
            )
            for logits in outputs["branch_logits"]:
                loss += ops.mean(
                    ops.sparse_categorical_crossentropy(
                        labels, logits, from_logits=True
                    )
                )
                loss += temperature**2 * ops.mean(
                    ops.categorical_crossentropy(
                        teacher, logits / temperature, from_logits=True
                    )
                )
            return loss + sum(losses), non_trainable

        def train_step(self, state, data):
            trainable, non_trainable, optimizer_state, metrics = state
            images, labels = data
            grad = jax.value_and_grad(self._loss, has_aux=True)
            (loss, non_trainable), grads = grad(
                trainable, non_trainable, images, labels
            )
            trainable, optimizer_state = self.optimizer.stateless_apply(
                optimizer_state, grads, trainable
            )
            return {"loss": loss}, (
                trainable, non_trainable, optimizer_state, metrics,
            )  # fmt: skip

    return HandWrittenONE(student)


def build_variant(name, args):
    """A compiled model of variant `name` (its policy set while built)."""
    import keras

    from keras_one import Distiller
    from keras_one import methods
    from keras_one import models

    depth = int(args.model.removeprefix("resnet"))
    policy = "mixed_bfloat16" if name.endswith("_bf16") else "float32"
    base = name.removesuffix("_bf16")
    keras.mixed_precision.set_global_policy(policy)
    try:
        branches = 1 if base == "baseline" else args.branches
        student = models.cifar_resnet(depth=depth, num_branches=branches)
        optimizer = keras.optimizers.SGD(0.1, momentum=0.9, nesterov=True)
        if base == "baseline":
            model = student  # one branch: a plain network of logits
            model.compile(
                optimizer,
                loss=keras.losses.SparseCategoricalCrossentropy(
                    from_logits=True
                ),
                metrics=["accuracy"],
            )
        elif base == "one":
            model = Distiller(student, methods.ONE(rampup_epochs=80))
            model.compile(optimizer, metrics=["accuracy"])
        else:
            model = _handwritten_one(student)
            model.compile(optimizer)
    finally:
        keras.mixed_precision.set_global_policy("float32")
    return model


def _environment():
    """The backend, the libraries, the device and the host: its CPU model,
    core count and the CPUs this process may use (`bench/machine_info.py`),
    and on PyTorch its thread counts."""
    import keras
    import numpy as np

    record = {
        "backend": keras.backend.backend(),
        "keras": keras.__version__,
        "numpy": np.__version__,
        "python": platform.python_version(),
        **_machine_info().host(),
    }
    if record["backend"] == "jax":
        import jax

        record["jax"] = jax.__version__
        record["device"] = str(jax.devices()[0].device_kind)
    elif record["backend"] == "torch":
        import torch

        record["torch"] = torch.__version__
        record["torch_threads"] = torch.get_num_threads()
        record["torch_interop_threads"] = torch.get_num_interop_threads()
        record["device"] = (
            torch.cuda.get_device_name(0)
            if torch.cuda.is_available()
            else "cpu"
        )
    return record


def summarize(seconds, args):
    """Speeds, time ratios (with intervals) and protocol estimates."""
    count = args.steps * args.batch_size
    speed = {
        name: statistics.median(count / s for s in values)
        for name, values in seconds.items()
    }
    ratios, intervals = {}, {}
    for first, second, label in RATIOS:
        if first in seconds and second in seconds:
            # The time of the first over that of the second, per round.
            per_round = [
                a / b
                for a, b in zip(seconds[first], seconds[second], strict=True)
            ]
            ratios[label] = statistics.median(per_round)
            intervals[label] = _throughput().median_confidence_interval(
                per_round
            )
    estimate = {
        name: args.protocol_epochs * args.protocol_images / value / 3600
        for name, value in speed.items()
    }
    return {
        "images_per_second": speed,
        "time_ratios": ratios,
        "time_ratio_intervals_95": intervals,
        "protocol_training_hours": estimate,
    }


def print_summary(result):
    print(f"\n{result['environment']}")
    if "cpu" not in result["environment"]:  # files written before it was
        print("host CPU and thread counts not recorded")
    print(f"{'variant':<16}{'images/s':>10}{'protocol hours':>16}")
    for name, speed in result["images_per_second"].items():
        hours = result["protocol_training_hours"][name]
        print(f"{name:<16}{speed:>10.0f}{hours:>16.2f}")
    for label, value in result["time_ratios"].items():
        interval = result["time_ratio_intervals_95"][label]
        where = (
            f"95% CI {interval[0]:.3f}-{interval[1]:.3f}"
            if interval
            else "too few rounds for a 95% CI"
        )
        print(f"{label} (time): {value:.3f} ({where})")


def _machine_info():
    """`bench/machine_info.py`, imported from this script's directory."""
    directory = os.path.dirname(os.path.abspath(__file__))
    if directory not in sys.path:
        sys.path.insert(0, directory)
    import machine_info

    return machine_info


def _throughput():
    """`bench/throughput.py`, imported from this script's directory."""
    directory = os.path.dirname(os.path.abspath(__file__))
    if directory not in sys.path:
        sys.path.insert(0, directory)
    import throughput

    return throughput


def main(argv=None):
    args = build_parser().parse_args(argv)
    if args.summary:
        with open(args.summary) as file:
            saved = json.load(file)
        if not {"arguments", "environment", "seconds"} <= set(saved):
            raise SystemExit(
                f"{args.summary} is not a result of this script (written by "
                "--output); give one of those to --summary."
            )
        saved_args = argparse.Namespace(**saved["arguments"])
        saved.update(summarize(saved["seconds"], saved_args))
        print_summary(saved)
        return saved
    import keras
    import numpy as np

    environment = _environment()
    variants = list(args.variants or VARIANTS)
    if environment["backend"] != "jax" and "handwritten" in variants:
        variants.remove("handwritten")  # written for JAX only
    rng = np.random.default_rng(0)
    count = args.steps * args.batch_size
    images = rng.normal(size=(count, 32, 32, 3)).astype("float32")
    labels = rng.integers(0, 10, count).astype("int32")
    models_ = {}
    for name in variants:
        keras.utils.set_random_seed(0)
        started = time.perf_counter()
        models_[name] = build_variant(name, args)
        fit = models_[name].fit
        fit(images, labels, batch_size=args.batch_size, epochs=1, verbose=0)
        print(
            f"{name}: built, compiled and warmed up in "
            f"{time.perf_counter() - started:.1f} s",
            flush=True,
        )
    seconds = {name: [] for name in variants}
    for round_ in range(args.rounds):
        order = variants if round_ % 2 == 0 else variants[::-1]
        for name in order:
            started = time.perf_counter()
            models_[name].fit(
                images,
                labels,
                batch_size=args.batch_size,
                epochs=1,
                verbose=0,
                shuffle=False,
            )
            seconds[name].append(time.perf_counter() - started)
    result = {
        "arguments": vars(args),
        "environment": environment,
        "seconds": seconds,
        **summarize(seconds, args),
    }
    print_summary(result)
    if args.output:
        temporary = f"{args.output}.tmp"
        with open(temporary, "w") as file:
            json.dump(result, file, indent=1)
        os.replace(temporary, args.output)
    return result


if __name__ == "__main__":
    main()
    sys.exit(0)
