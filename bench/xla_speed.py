"""XLA or not: Distiller training speed with and without `jit_compile`.

For each method, builds the method's default student (a CIFAR ResNet) twice,
compiles one Distiller with `jit_compile=False` and one with
`jit_compile=True`, and times their training steps on one fixed in-memory
batch, alternating short windows (A, B, A, B, ...) so that a change in the
machine's load affects both alike. It prints the images per second of
each (median over the rounds), the XLA : no-XLA speed ratio (median of the
per-round ratios; above 1 means XLA is faster) and the time of the first
call (tracing, plus XLA compilation).

Runs on the default device: the GPU if TensorFlow sees one, else the CPU.
A short run (default: ResNet-32, batch 128, 6 rounds of 4 steps per
variant) takes about 2 minutes per method on a 2-core CPU:

    python bench/xla_speed.py --methods one dml
"""

import argparse
import json
import os
import statistics
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def build_parser():
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--methods", nargs="+", default=["one"])
    parser.add_argument("--model", default="resnet32")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--num-classes", type=int, default=10)
    parser.add_argument("--image-size", type=int, default=32)
    parser.add_argument("--policy", default="float32")
    parser.add_argument(
        "--dataset-examples",
        type=int,
        default=50000,
        help="examples in the dataset of a method that keeps state per "
        "example (MCL-OKD's memory banks); default: CIFAR's 50,000",
    )
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--window-steps", type=int, default=4)
    parser.add_argument("--warmup-steps", type=int, default=2)
    parser.add_argument("--output", default=None, help="JSON results path")
    return parser


def build_step(method_name, jit_compile, args, images, labels):
    """Returns `(step, first_call_seconds)`; `step()` runs one train step."""
    import keras
    import numpy as np
    import tensorflow as tf

    from keras_one import Distiller
    from keras_one import methods
    from keras_one import models
    from keras_one.methods.method_info import num_teachers

    keras.utils.set_random_seed(0)
    method_class = methods.get(method_name)
    info = method_class.info
    count = num_teachers(method_class)
    teachers = [
        models.get(args.model)(
            num_classes=args.num_classes,
            input_shape=images.shape[1:],
            num_branches=1,
            name=f"teacher_{i}",
        )
        for i in range(count)
    ]
    # What the method reads from its data, as its description says:
    # PCL's peers take one view of each image each, MCL-OKD's banks the
    # examples' indices (and their labels by index).
    extra = {}
    inputs = images
    if info.example_index:
        # A bank of `--dataset-examples` examples (CIFAR's 50,000 by
        # default: MCL-OKD draws its negatives from the whole bank), whose
        # first ones are the batch's.
        rest = np.random.default_rng(1).integers(
            0, args.num_classes, max(args.dataset_examples - len(labels), 0)
        )
        extra["example_labels"] = np.concatenate([labels, rest])
        index = np.arange(len(images), dtype="int32")
        inputs = {"image": images, "example_index": index}
    views = methods.data_views(method_class)
    if views > 1:
        inputs = (images,) * views
    method = methods.create(method_class, teachers=teachers or None, **extra)
    student = method.build_student(
        args.model,
        num_classes=args.num_classes,
        input_shape=images.shape[1:],
    )
    distiller = Distiller(student, method)
    distiller.compile(
        optimizer=keras.optimizers.SGD(0.1, momentum=0.9, nesterov=True),
        jit_compile=jit_compile,
    )
    if bool(distiller.jit_compile) != jit_compile:
        raise SystemExit(
            f"Keras turned jit_compile={jit_compile} into "
            f"{distiller.jit_compile} (op determinism enabled?)."
        )
    dataset = tf.data.Dataset.from_tensors((inputs, labels)).repeat()
    start = time.perf_counter()
    distiller.fit(
        dataset, steps_per_epoch=1, epochs=1, shuffle=False, verbose=0
    )
    first_call = time.perf_counter() - start
    iterator = iter(dataset)
    function = distiller.train_function
    return (lambda: function(iterator)), first_call


def _sync(result):
    """Waits for a step's results (TensorFlow may run asynchronously)."""
    if isinstance(result, dict):
        for value in result.values():
            _sync(value)
    elif hasattr(result, "numpy"):
        result.numpy()


def measure(steps, args):
    """Times the steps in interleaved windows; returns img/s per round."""
    for step in steps.values():
        for _ in range(args.warmup_steps):
            _sync(step())
    speeds = {name: [] for name in steps}
    for _ in range(args.rounds):
        for name, step in steps.items():
            start = time.perf_counter()
            for _ in range(args.window_steps):
                result = step()
            _sync(result)
            seconds = time.perf_counter() - start
            speeds[name].append(args.window_steps * args.batch_size / seconds)
    return speeds


def _machine_info():
    """`bench/machine_info.py`, imported from this script's directory."""
    import sys

    directory = os.path.dirname(os.path.abspath(__file__))
    if directory not in sys.path:
        sys.path.insert(0, directory)
    import machine_info

    return machine_info


def main(argv=None):
    args = build_parser().parse_args(argv)
    import keras
    import numpy as np
    import tensorflow as tf

    keras.config.set_dtype_policy(args.policy)
    gpus = tf.config.list_physical_devices("GPU")
    device = (
        tf.config.experimental.get_device_details(gpus[0]).get(
            "device_name", "GPU"
        )
        if gpus
        else f"CPU ({os.cpu_count()} cores)"
    )
    rng = np.random.default_rng(0)
    shape = (args.batch_size, args.image_size, args.image_size, 3)
    images = rng.normal(size=shape).astype("float32")
    labels = rng.integers(0, args.num_classes, args.batch_size)
    results = {
        "device": device,
        # The CPU model and TensorFlow's thread counts, among others.
        "machine": _machine_info().describe(),
        "model": args.model,
        "batch_size": args.batch_size,
        "policy": args.policy,
        "methods": {},
    }
    print(f"device: {device}; {args.model}, batch {args.batch_size}")
    for method in args.methods:
        steps, first_calls = {}, {}
        for jit_compile in (False, True):
            name = "xla" if jit_compile else "no_xla"
            steps[name], first_calls[name] = build_step(
                method, jit_compile, args, images, labels
            )
        speeds = measure(steps, args)
        ratios = [
            x / n for x, n in zip(speeds["xla"], speeds["no_xla"], strict=True)
        ]
        row = {
            "no_xla_img_per_s": statistics.median(speeds["no_xla"]),
            "xla_img_per_s": statistics.median(speeds["xla"]),
            "xla_speed_ratio": statistics.median(ratios),
            "ratio_min": min(ratios),
            "ratio_max": max(ratios),
            "first_call_s": first_calls,
        }
        results["methods"][method] = row
        print(
            f"{method}: no XLA {row['no_xla_img_per_s']:.0f} img/s, XLA "
            f"{row['xla_img_per_s']:.0f} img/s, XLA : no XLA = "
            f"{row['xla_speed_ratio']:.2f} (rounds {min(ratios):.2f}-"
            f"{max(ratios):.2f}); first call {first_calls['no_xla']:.0f} s "
            f"/ {first_calls['xla']:.0f} s",
            flush=True,
        )
        keras.backend.clear_session()
    if args.output:
        with open(args.output, "w") as file:
            json.dump(results, file, indent=2)


if __name__ == "__main__":
    main()
