"""Shared fixtures: tiny learnable data and tiny students, fast on 2 CPUs.

The suite runs on the Keras backend that `KERAS_BACKEND` names. On JAX and
PyTorch only the tests marked `backend_portable` run (the others are
skipped): `KERAS_BACKEND=jax pytest -m backend_portable tests`.
"""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
# XLA (JAX's every computation, TensorFlow's `jit_compile=True`) compiles
# with LLVM's optimizations off, in this process and the test scripts it
# launches: the test networks compile in about 75% of the time (measured:
# every method's two JAX steps, 86 s -> 63 s); those JAX weights end
# within 3.6e-7 of TensorFlow's (3.0e-7 with the optimizations). Not for
# JAX's `DataParallel` test, which sets its own XLA_FLAGS: there the
# sharded run moved 1.3e-4 from one device's. Set XLA_FLAGS to choose
# otherwise.
if "XLA_FLAGS" not in os.environ:
    os.environ["XLA_FLAGS"] = "--xla_backend_optimization_level=0"

import keras  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
from keras import ops  # noqa: E402

from keras_one import models  # noqa: E402


def pytest_configure(config):
    config.addinivalue_line(
        "markers",
        "backend_portable: also runs on the JAX and PyTorch backends "
        "(KERAS_BACKEND=jax or torch); unmarked tests are TensorFlow only",
    )


# The test files that take longest (wall time on 2 cores: each waits for
# subprocesses or trains many networks), run first, longest first. With
# `-n 2` and `--dist loadfile` a worker takes whole files in this order, so
# the other worker works through the short files meanwhile and no long
# file is left to run alone at the end (xdist's own order, by number of
# tests, put the single-test crash-and-resume file last).
LONGEST_FIRST = (
    "tests/distribute/test_every_method.py",
    "tests/distribute/test_crash_and_resume.py",
    "tests/backends/test_every_backend.py",
    "tests/test_examples_methods_b.py",
    "tests/bench/test_bench_scripts.py",
    "tests/backends/test_jax_data_parallel.py",
    "tests/test_cli.py",
    "tests/test_examples_methods_a.py",
    "tests/test_examples.py",
)


def _longest_first(item):
    path = item.nodeid.split("::")[0]
    if path in LONGEST_FIRST:
        return LONGEST_FIRST.index(path)
    return len(LONGEST_FIRST)


def pytest_collection_modifyitems(config, items):
    missing = [p for p in LONGEST_FIRST if not (config.rootpath / p).exists()]
    if missing:
        raise pytest.UsageError(
            f"tests/conftest.py's LONGEST_FIRST lists {missing}, which do not "
            "exist: update the list to the renamed or removed test files."
        )
    # A stable sort: the files of LONGEST_FIRST in that order, then the
    # others in collection order; each file's tests stay together, in order.
    items.sort(key=_longest_first)
    backend = keras.backend.backend()
    if backend == "tensorflow":
        return
    skip = pytest.mark.skip(
        reason=f"TensorFlow only (not backend_portable); backend: {backend}"
    )
    for item in items:
        if "backend_portable" not in item.keywords:
            item.add_marker(skip)


def compute_gradients(loss_fn, variables):
    """Gradients of the scalar `loss_fn()` on the current backend, in NumPy.

    One array per `keras.Variable` of `variables` (layer weights, or inputs
    wrapped in `keras.Variable`), zeros where the loss does not depend on
    it: TensorFlow and PyTorch say None there, JAX says zeros.
    """
    backend = keras.backend.backend()
    if backend == "tensorflow":
        import tensorflow as tf

        with tf.GradientTape() as tape:
            loss = loss_fn()
        gradients = tape.gradient(loss, variables)
    elif backend == "jax":
        import jax

        def stateless_loss(values):
            mapping = list(zip(variables, values, strict=True))
            with keras.StatelessScope(state_mapping=mapping):
                return loss_fn()

        gradients = jax.grad(stateless_loss)([v.value for v in variables])
    elif backend == "torch":
        import torch

        gradients = torch.autograd.grad(
            loss_fn(), [v.value for v in variables], allow_unused=True
        )
    else:
        raise NotImplementedError(f"No gradients on backend {backend}.")
    return [
        np.zeros(v.shape, v.dtype) if g is None else ops.convert_to_numpy(g)
        for v, g in zip(variables, gradients, strict=True)
    ]


def make_images(num_examples=96, num_classes=4, shape=(8, 8, 1), seed=0):
    """Learnable images: the class is the brightest horizontal band."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, num_classes, num_examples).astype("int32")
    x = rng.normal(0.0, 0.3, (num_examples,) + tuple(shape)).astype("float32")
    band = shape[0] // num_classes
    for i, label in enumerate(y):
        x[i, label * band : (label + 1) * band] += 1.0
    return x, y


@pytest.fixture(autouse=True)
def seeded():
    # No full garbage collection per test (most of a test's setup time);
    # Python's own collector still frees what the tests leave.
    keras.backend.clear_session(free_memory=False)
    keras.utils.set_random_seed(0)
    yield


@pytest.fixture
def gradients():
    """`gradients(loss_fn, variables)`: see `compute_gradients`."""
    return compute_gradients


@pytest.fixture
def tiny_data():
    """(x, y): 96 images of 8x8x1 in 4 learnable classes."""
    return make_images()


@pytest.fixture
def make_student():
    """Builds a ResNet-8 student for 8x8x1 images in 4 classes."""

    def build(num_branches=3, head="gate", **kwargs):
        return models.cifar_resnet(
            depth=8,
            num_classes=kwargs.pop("num_classes", 4),
            num_branches=num_branches,
            head=head,
            input_shape=kwargs.pop("input_shape", (8, 8, 1)),
            **kwargs,
        )

    return build


@pytest.fixture
def numpy_outputs():
    """`numpy_outputs(model, x)`: the model's inference outputs in NumPy.

    The same structure as `model(x, training=False)`, with NumPy arrays on
    every backend (PyTorch tensors that require gradients included).
    """

    def run(model, x):
        outputs = model(x, training=False)
        return keras.tree.map_structure(ops.convert_to_numpy, outputs)

    return run
