"""Training recipes shared by the `keras-one` command and the benchmarks.

One recipe for every run, so that a baseline and a distillation method are
trained with exactly the same data, schedule, seed and evaluation: SGD with
Nesterov momentum and a cosine learning-rate decay over all steps.
"""

import time

import keras

from keras_one import models
from keras_one.distiller import Distiller


def cosine_sgd(learning_rate, decay_steps, momentum=0.9, nesterov=True):
    """SGD with (Nesterov) momentum and a cosine decay to zero."""
    schedule = keras.optimizers.schedules.CosineDecay(
        learning_rate, decay_steps=max(int(decay_steps), 1)
    )
    return keras.optimizers.SGD(schedule, momentum=momentum, nesterov=nesterov)


class _Timer(keras.callbacks.Callback):
    """Measures the wall time of training (validation excluded)."""

    def on_train_begin(self, logs=None):
        self.seconds = 0.0

    def on_epoch_begin(self, epoch, logs=None):
        self._start = time.perf_counter()

    def on_train_batch_end(self, batch, logs=None):
        self._last = time.perf_counter()

    def on_epoch_end(self, epoch, logs=None):
        self.seconds += self._last - self._start


def _fit(model, train_ds, test_ds, epochs, verbose, callbacks):
    timer = _Timer()
    history = model.fit(
        train_ds,
        validation_data=test_ds,
        epochs=epochs,
        verbose=verbose,
        shuffle=False,  # the datasets shuffle themselves
        callbacks=list(callbacks) + [timer],
    )
    return history.history, timer.seconds


def train_baseline(
    model,
    train_ds,
    test_ds,
    info,
    epochs,
    learning_rate=0.1,
    weight_decay=5e-4,
    verbose=1,
    callbacks=(),
):
    """Trains the single-branch network, the reference of every method.

    Args:
        model: a name for `keras_one.models.get`, e.g. `"resnet20"`.
        train_ds: batched training `tf.data.Dataset` of `(images, labels)`.
        test_ds: batched test dataset.
        info: dict with `num_classes` and `input_shape`.
        epochs: number of epochs.
        learning_rate: initial learning rate of the cosine schedule.
        weight_decay: coupled weight decay of the network.
        verbose: Keras verbosity (1: progress bar).
        callbacks: extra Keras callbacks.

    Returns:
        `(model, results)`: results hold the test `accuracy`, the epoch
        `history` and `train_seconds`.
    """
    network = models.get(model)(
        num_classes=info["num_classes"],
        input_shape=info["input_shape"],
        num_branches=1,
        weight_decay=weight_decay,
    )
    network.compile(
        optimizer=cosine_sgd(learning_rate, epochs * len(train_ds)),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=[keras.metrics.SparseCategoricalAccuracy(name="accuracy")],
    )
    history, seconds = _fit(
        network, train_ds, test_ds, epochs, verbose, callbacks
    )
    scores = network.evaluate(test_ds, verbose=0, return_dict=True)
    return network, {
        "accuracy": float(scores["accuracy"]),
        "history": history,
        "train_seconds": seconds,
    }


def train_distiller(
    method,
    model,
    train_ds,
    test_ds,
    info,
    epochs,
    num_branches=3,
    learning_rate=0.1,
    weight_decay=5e-4,
    verbose=1,
    callbacks=(),
):
    """Trains `method`'s default student with the same recipe as the baseline.

    Args:
        method: a `keras_one.methods.Method` instance.
        model: a name for `keras_one.models.get`, e.g. `"resnet20"`.
        num_branches: number of branches of the student.
        The other arguments are those of `train_baseline`.

    Returns:
        `(distiller, results)`: results hold the test accuracy of every
        branch (`branch_accuracy`, a list) and of the ensemble
        (`ensemble_accuracy`), the epoch `history` and `train_seconds`.
    """
    student = method.build_student(
        model,
        num_classes=info["num_classes"],
        input_shape=info["input_shape"],
        num_branches=num_branches,
        weight_decay=weight_decay,
    )
    distiller = Distiller(student, method)
    distiller.compile(
        optimizer=cosine_sgd(learning_rate, epochs * len(train_ds))
    )
    history, seconds = _fit(
        distiller, train_ds, test_ds, epochs, verbose, callbacks
    )
    scores = distiller.evaluate(test_ds, verbose=0, return_dict=True)
    if distiller.num_branches == 1:
        branches = [float(scores["accuracy"])]
        ensemble = branches[0]
    else:
        branches = [
            float(scores[f"branch_{i}_accuracy"])
            for i in range(distiller.num_branches)
        ]
        ensemble = float(scores["ensemble_accuracy"])
    return distiller, {
        "branch_accuracy": branches,
        "ensemble_accuracy": ensemble,
        "history": history,
        "train_seconds": seconds,
    }
