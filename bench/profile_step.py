"""Where a training step spends its time: CPU time per kind of operation.

Builds one variant of `throughput.py` (the same networks, batch and
optimizer), warms it up, then profiles `--steps` steps and prints, per
kind of operation, its time per step, its share and how many it runs per
step. The TensorFlow variants are profiled with TensorFlow's profiler
(`tf.profiler.experimental`: the time of each kernel, by op type, as
`Conv2DBackpropFilter`, `FusedBatchNormGradV3`, `ReluGrad`; oneDNN's
kernels carry TensorFlow's `_MklNative` prefix); `torch` and
`torch_bf16` with PyTorch's (`torch.profiler`, self CPU time by `aten`
operator). Ops run inside others (a `tf.function`'s call, PyTorch's
autograd nodes) are not counted twice: only the innermost kernels are.

Profiling costs time itself, so the step time it prints (measured without
the profiler, with the process's CPU time) is the one to quote; the
table says where that time goes. Compare variants with `throughput.py`,
which alternates them; this script explains a ratio, it does not measure
one.

Example (one thread, as the README's mixed-precision section):

    python bench/profile_step.py --variant one_bf16 --threads 1 \
        --output bench/results/profile_one_bf16.json
"""

import argparse
import collections
import glob
import importlib.util
import json
import os
import re
import sys
import tempfile
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import throughput  # noqa: E402

# The variants this script can profile: those that run in its process.
VARIANTS = tuple(
    name for name in throughput.ALL_VARIANTS
    if name not in throughput.OTHER_BACKENDS
)  # fmt: skip
# A TensorFlow kernel's event: "<op name>:<op type>", no spaces.
_TF_KERNEL = re.compile(r"^[^\s:]+:(\w+)$")


def build_parser():
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--variant", default="one_bf16", choices=VARIANTS)
    parser.add_argument("--model", default="resnet32")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--branches", type=int, default=3)
    parser.add_argument("--num-classes", type=int, default=10)
    parser.add_argument("--image-size", type=int, default=32)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--warmup-steps", type=int, default=3)
    parser.add_argument(
        "--steps", type=int, default=5, help="steps timed, then profiled"
    )
    parser.add_argument("--top", type=int, default=15, help="rows printed")
    parser.add_argument("--output", default=None, help="JSON results path")
    return parser


def _throughput_args(args):
    """`throughput.py`'s arguments for the same variant and network."""
    return throughput.build_parser().parse_args(
        ["--model", args.model, "--batch-size", str(args.batch_size),
         "--branches", str(args.branches),
         "--num-classes", str(args.num_classes),
         "--image-size", str(args.image_size)]
        + (["--threads", str(args.threads)] if args.threads else [])
    )  # fmt: skip


def tensorflow_kernel_times(step, steps):
    """{op type: [seconds, count]} over `steps` calls of `step`."""
    import tensorflow as tf
    from tensorflow.tsl.profiler.protobuf import xplane_pb2

    with tempfile.TemporaryDirectory() as directory:
        tf.profiler.experimental.start(directory)
        try:
            for _ in range(steps):
                step()
        finally:
            tf.profiler.experimental.stop()
        (path,) = glob.glob(f"{directory}/**/*.xplane.pb", recursive=True)
        space = xplane_pb2.XSpace()
        with open(path, "rb") as file:
            space.ParseFromString(file.read())
    times = collections.defaultdict(lambda: [0.0, 0])
    for plane in space.planes:
        for line in plane.lines:
            for event in line.events:
                name = plane.event_metadata[event.metadata_id].name
                match = _TF_KERNEL.match(name)
                if match:
                    times[match.group(1)][0] += event.duration_ps * 1e-12
                    times[match.group(1)][1] += 1
    return times


def torch_kernel_times(step, steps):
    """{aten operator: [self seconds, count]} over `steps` calls."""
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile

    with profile(activities=[ProfilerActivity.CPU]) as profiler:
        for _ in range(steps):
            step()
    times = {}
    for event in profiler.key_averages():
        if event.self_cpu_time_total > 0:
            times[event.key] = [event.self_cpu_time_total * 1e-6, event.count]
    return times


def profile_variant(args):
    """The variant's CPU time per step and its time per kind of op."""
    import tensorflow as tf

    if args.threads and (
        tf.config.threading.get_intra_op_parallelism_threads() != args.threads
    ):
        try:
            tf.config.threading.set_intra_op_parallelism_threads(args.threads)
            tf.config.threading.set_inter_op_parallelism_threads(args.threads)
        except RuntimeError:  # TensorFlow already ran in this process.
            raise SystemExit(
                "--threads: TensorFlow already runs in this process with "
                "other threads; call the script in a process of its own."
            ) from None
    options = _throughput_args(args)
    images, labels = throughput.make_batch(options)
    step = throughput.build_variant(args.variant, options, images, labels)
    for _ in range(args.warmup_steps):
        throughput._sync(step())
    start = time.process_time()
    for _ in range(args.steps):
        throughput._sync(step())
    seconds = (time.process_time() - start) / args.steps
    if args.variant.startswith("torch"):
        times = torch_kernel_times(step, args.steps)
    else:
        times = tensorflow_kernel_times(
            lambda: throughput._sync(step()), args.steps
        )
    total = sum(value[0] for value in times.values())
    rows = [
        {
            "op": name,
            "ms_per_step": 1e3 * value[0] / args.steps,
            "share": value[0] / total,
            "per_step": value[1] / args.steps,
        }
        for name, value in sorted(times.items(), key=lambda item: -item[1][0])
    ]
    return {
        "cpu_seconds_per_step": seconds,
        "profiled_ms_per_step": 1e3 * total / args.steps,
        "ops": rows,
    }


def main(argv=None):
    args = build_parser().parse_args(argv)
    for flag in ("batch_size", "branches", "steps", "top", "threads"):
        value = getattr(args, flag)
        if value is not None and value < 1:
            name = flag.replace("_", "-")
            raise SystemExit(f"--{name}: must be at least 1; got {value}.")
    if args.variant.startswith("torch") and not importlib.util.find_spec(
        "torch"
    ):
        raise SystemExit(
            f"--variant {args.variant}: PyTorch is not installed (pip install "
            "torch), or pick a TensorFlow variant."
        )
    if args.output and os.path.exists(args.output):
        raise SystemExit(
            f"--output {args.output} exists: give another path (a profile "
            "is not overwritten)."
        )
    throughput._machine_info().check_thread_variables()
    result = profile_variant(args)
    print(
        f"{args.variant}, {args.model}, batch {args.batch_size}: "
        f"{result['cpu_seconds_per_step']:.3f} CPU-seconds per step "
        f"({args.batch_size / result['cpu_seconds_per_step']:.0f} img per "
        f"CPU-second); profiled kernels "
        f"{result['profiled_ms_per_step']:.0f} ms per step"
    )
    print(f"{'op':40s} {'ms/step':>8s} {'share':>6s} {'per step':>8s}")
    for row in result["ops"][: args.top]:
        print(
            f"{row['op'][:40]:40s} {row['ms_per_step']:8.1f} "
            f"{100 * row['share']:5.1f}% {row['per_step']:8.0f}"
        )
    if args.output:
        record = {
            "arguments": vars(args),
            "machine": throughput._machine({}),
            **result,
        }
        directory = os.path.dirname(os.path.abspath(args.output))
        os.makedirs(directory, exist_ok=True)
        # Written whole or not at all.
        partial = f"{args.output}.partial"
        with open(partial, "w") as file:
            json.dump(record, file, indent=1)
        os.replace(partial, args.output)
        print(f"results: {args.output}")
    return result


if __name__ == "__main__":
    main()
