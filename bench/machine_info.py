"""What a benchmark ran on: the CPU, its thread counts and the libraries.

Shared by the benchmark scripts, which record `describe()` in every result
file they write (a speed or a run time means little without them):

    import machine_info

    results["machine"] = machine_info.describe()

`host()` is the part that needs no library (for `bench/accelerator_speed.py`,
which runs without TensorFlow).

The scripts are run from anywhere (`python bench/accuracy.py`) or loaded
by path in the tests: they put their own directory on `sys.path` first.
"""

import os
import platform


def cpu_name():
    """The CPU's model name (`model name` in /proc/cpuinfo), else the
    platform's processor name (empty on some systems)."""
    try:
        with open("/proc/cpuinfo") as file:
            for line in file:
                if line.startswith("model name"):
                    return line.partition(":")[2].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


# The instruction sets that decide the speed of float32 and bfloat16 steps
# on x86 CPUs (TensorFlow runs oneDNN by default only with AVX-512 VNNI or
# BF16 or AMX; without them its CPU kernels are Eigen's, and bfloat16 is
# emulated by both TensorFlow and PyTorch).
CPU_FEATURES = (
    "avx2",
    "avx512f",
    "avx512_vnni",
    "avx512_bf16",
    "avx_vnni",
    "amx_bf16",
    "amx_tile",
)


def cpu_features():
    """Which of `CPU_FEATURES` the CPU has (its `flags` in /proc/cpuinfo),
    plus its family and model numbers; empty where that file is absent."""
    found, numbers = set(), {}
    try:
        with open("/proc/cpuinfo") as file:
            for line in file:
                key, _, value = line.partition(":")
                key = key.strip()
                if key == "flags":
                    found.update(value.split())
                elif key in ("cpu family", "model") and key not in numbers:
                    numbers[key] = value.strip()
    except OSError:
        return {}
    return {
        "flags": [flag for flag in CPU_FEATURES if flag in found],
        "family": numbers.get("cpu family"),
        "model": numbers.get("model"),
    }


def usable_cpus():
    """How many CPUs this process may run on (its affinity mask, which
    `taskset` or a container can narrow), else `os.cpu_count()`."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # not Linux
        return os.cpu_count()


def host():
    """The machine, without importing any library, as a JSON-able dict."""
    return {
        "platform": platform.platform(),
        "cpu": cpu_name(),
        "cpu_features": cpu_features(),
        "cpu_count": os.cpu_count(),
        "usable_cpus": usable_cpus(),
    }


def check_thread_variables():
    """Refuses a `TF_NUM_INTRAOP_THREADS`/`TF_NUM_INTEROP_THREADS` that is
    not a whole number: TensorFlow ignores it silently and uses every core,
    so a benchmark would run, and be recorded, on other threads than meant.
    The scripts call this before they measure anything."""
    for kind in ("INTRA", "INTER"):
        variable = f"TF_NUM_{kind}OP_THREADS"
        value = os.environ.get(variable, "")
        if value and not value.strip().isdigit():
            raise ValueError(
                f"{variable}={value!r} is not a thread count: set it to a "
                "whole number such as 1, or unset it."
            )


def tensorflow_threads(kind):
    """TensorFlow's `"intra"`- or `"inter"`-op thread count.

    Set by `tf.config.threading`, else by the environment variable
    `TF_NUM_INTRAOP_THREADS` or `TF_NUM_INTEROP_THREADS` (which that API
    does not report), else TensorFlow's default: every CPU the process
    may run on (`usable_cpus()`).
    """
    import tensorflow as tf

    configured = getattr(
        tf.config.threading, f"get_{kind}_op_parallelism_threads"
    )()
    variable = f"TF_NUM_{kind.upper()}OP_THREADS"
    check_thread_variables()
    return configured or int(os.environ.get(variable) or 0) or usable_cpus()


def describe():
    """The machine and libraries of this process, as a JSON-able dict."""
    import keras
    import tensorflow as tf

    return {
        **host(),
        "intra_op_threads": tensorflow_threads("intra"),
        "inter_op_threads": tensorflow_threads("inter"),
        "gpus": [d.name for d in tf.config.list_physical_devices("GPU")],
        "tensorflow": tf.__version__,
        # oneDNN as asked (None: TensorFlow's default, by CPU features).
        "tf_enable_onednn_opts": os.environ.get("TF_ENABLE_ONEDNN_OPTS"),
        "keras": keras.__version__,
    }
