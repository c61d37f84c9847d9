"""Shared fixtures: tiny learnable data and tiny students, fast on 2 CPUs."""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402

from keras_one import models  # noqa: E402


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
