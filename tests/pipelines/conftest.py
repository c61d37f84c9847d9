"""Tiny data, networks and callbacks for the SRM and block-wise pipelines.

Depth-8 ResNets on 32 images of 8x8x1 in 4 classes, two batches an epoch:
enough for every stage to run, save, resume and be compared.
"""

import types

import keras
import numpy as np
import pytest
import tensorflow as tf

from keras_one import models


def resnet(depth=8, **kwargs):
    return models.cifar_resnet(
        depth,
        num_classes=4,
        input_shape=(8, 8, 1),
        num_branches=1,
        weight_decay=0.0,
        **kwargs,
    )


def convnet(width=8, name=None):
    """Two conv stages named as a cifar_resnet's outputs, cheap to trace.

    `stage1_block1_out` (8x8xwidth) and `stage2_block1_out` (4x4x2width):
    the pipelines' default layers find them.
    """
    layers = keras.layers
    inputs = keras.Input((8, 8, 1))
    x = inputs
    for stage, (filters, strides) in enumerate(
        [(width, 1), (2 * width, 2)], start=1
    ):
        x = layers.Conv2D(filters, 3, strides, "same", name=f"s{stage}_conv")(x)
        x = layers.BatchNormalization(name=f"s{stage}_bn")(x)
        x = layers.ReLU(name=f"stage{stage}_block1_out")(x)
    x = layers.GlobalAveragePooling2D()(x)
    return keras.Model(inputs, layers.Dense(4, name="logits")(x), name=name)


def fresh_data():
    """The data as a new process builds it: never iterated, seeded first."""
    keras.utils.set_random_seed(0)
    rng = np.random.default_rng(0)
    y = rng.integers(0, 4, 40).astype("int32")
    x = rng.normal(0.0, 0.3, (40, 8, 8, 1)).astype("float32")
    for image, label in zip(x, y, strict=True):
        image[2 * label : 2 * label + 2] += 1.0  # the class's band
    train_ds = tf.data.Dataset.from_tensor_slices((x[:32], y[:32]))
    train_ds = train_ds.shuffle(32).batch(16)
    test_ds = tf.data.Dataset.from_tensor_slices((x[32:40], y[32:40]))
    return train_ds, test_ds.batch(8)


class Watch(keras.callbacks.Callback):
    """Records `[model name, epochs trained]` of every `fit`."""

    def __init__(self):
        super().__init__()
        self.stages = []

    def on_train_begin(self, logs=None):
        self.stages.append([self.model.name, 0])

    def on_epoch_end(self, epoch, logs=None):
        self.stages[-1][1] += 1


class InterruptAfter(keras.callbacks.Callback):
    """Ctrl-C at the end of epoch `epoch` of the model named `name`."""

    def __init__(self, name, epoch=0):
        super().__init__()
        self.name, self.epoch = name, epoch

    def on_epoch_end(self, epoch, logs=None):
        if self.model.name == self.name and epoch == self.epoch:
            raise KeyboardInterrupt


def weights(path):
    return keras.saving.load_model(path).get_weights()


def assert_same_weights(got, expected, atol=1e-6):
    got, expected = weights(got), weights(expected)
    assert len(got) == len(expected)
    for a, b in zip(got, expected, strict=True):
        assert a.shape == b.shape
        assert abs(a - b).max() <= atol + 1e-5 * abs(b).max()


@pytest.fixture(scope="session")
def tools():
    """The helpers above, for the test modules (conftest is not imported)."""
    return types.SimpleNamespace(
        resnet=resnet,
        convnet=convnet,
        fresh_data=fresh_data,
        Watch=Watch,
        InterruptAfter=InterruptAfter,
        assert_same_weights=assert_same_weights,
    )
