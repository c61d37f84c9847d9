"""Training recipes shared by the `keras-one` command and the benchmarks.

One recipe for every run, so that a baseline and a distillation method are
trained with exactly the same data, schedule, seed and evaluation: SGD with
Nesterov momentum 0.9 and a learning-rate schedule over all steps (a cosine
decay, or ONE's official steps: x0.1 at 50% and 75% of training), or a
paper's exact recipe (`protocol=`, see `keras_one.protocols`).
"""

import time

import keras

from keras_one import models
from keras_one import protocols
from keras_one.distiller import Distiller
from keras_one.distiller import _NonFiniteLossGuard
from keras_one.distiller import nonfinite_error

SCHEDULES = ("cosine", "step")


def make_sgd(
    learning_rate, total_steps, schedule="cosine", momentum=0.9, nesterov=True
):
    """SGD with (Nesterov) momentum and a learning-rate schedule.

    Args:
        learning_rate: the initial learning rate.
        total_steps: the number of training steps of the whole run.
        schedule: `"cosine"` (decay to 0 over `total_steps`) or `"step"`
            (x0.1 at 50% and at 75% of the steps, as ONE's official 150 and
            225 of 300 epochs).
        momentum: momentum of SGD.
        nesterov: whether to use Nesterov momentum.

    Returns:
        A `keras.optimizers.SGD`.
    """
    total_steps = max(int(total_steps), 1)
    if schedule == "cosine":
        rate = keras.optimizers.schedules.CosineDecay(
            learning_rate, decay_steps=total_steps
        )
    elif schedule == "step":
        rate = keras.optimizers.schedules.PiecewiseConstantDecay(
            [total_steps // 2, (3 * total_steps) // 4],
            [learning_rate, learning_rate / 10, learning_rate / 100],
        )
    else:
        raise ValueError(
            f"Unknown schedule {schedule!r}; choose one of {SCHEDULES}."
        )
    return keras.optimizers.SGD(rate, momentum=momentum, nesterov=nesterov)


def optimizer_for(
    protocol, learning_rate, epochs, steps_per_epoch, schedule="cosine"
):
    """The optimizer of a run: `protocol`'s (a name or a `Protocol`), or
    `make_sgd(learning_rate, epochs * steps_per_epoch, schedule)`.

    A protocol fixes the epochs its schedule counts: a run of other
    `epochs` is refused, as its learning-rate steps would fall elsewhere.
    """
    if protocol is None:
        return make_sgd(learning_rate, epochs * steps_per_epoch, schedule)
    protocol = protocols.get(protocol)
    if epochs != protocol.epochs:
        raise ValueError(
            f"The protocol {protocol.name!r} trains {protocol.epochs} "
            f"epochs; got epochs={epochs}. Pass epochs={protocol.epochs} "
            "or no protocol."
        )
    return protocol.optimizer(steps_per_epoch)


def classes_and_shape(info):
    """`(num_classes, input_shape)` of a `DatasetInfo` or of a dict."""
    if isinstance(info, dict):
        return info["num_classes"], tuple(info["input_shape"])
    return info.num_classes, tuple(info.input_shape)


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
    callbacks = [*callbacks, timer]
    if not isinstance(model, Distiller):
        # The Distiller's `fit` puts the same guard first itself.
        callbacks.insert(0, _NonFiniteLossGuard())
    history = model.fit(
        train_ds,
        validation_data=test_ds,
        epochs=epochs,
        verbose=verbose,
        shuffle=False,  # the datasets shuffle themselves
        callbacks=callbacks,
    )
    return history.history, timer.seconds


# Marks the error of `_finite_images`.
_NONFINITE_IMAGES = "keras-one: the images of a batch hold NaN or inf"


def _finite_images(dataset):
    """`dataset` of `(images, labels)`, raising on NaN or infinite images.

    The baseline is a plain Keras model, which has no check of its own:
    the check runs in the input pipeline (one pass over each batch, beside
    training). Datasets of integer images (which cannot hold NaN) and
    other kinds of data are returned as they are.
    """
    import tensorflow as tf

    spec = getattr(dataset, "element_spec", None)
    if not isinstance(spec, tuple) or not any(
        s.dtype.is_floating for s in tf.nest.flatten(spec[0])
    ):
        return dataset

    def check(images, *rest):
        images = tf.nest.map_structure(
            lambda x: (
                tf.debugging.check_numerics(x, _NONFINITE_IMAGES)
                if x.dtype.is_floating
                else x
            ),
            images,
        )
        return (images, *rest)

    # (`map` keeps the dataset's length.)
    return dataset.map(
        check, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True
    )


def _raising_nonfinite_images(function, *args, **kwargs):
    """`function(*args, **kwargs)`; `_finite_images`' error made clear."""
    import tensorflow as tf

    try:
        return function(*args, **kwargs)
    except tf.errors.InvalidArgumentError as error:
        if _NONFINITE_IMAGES not in str(error):
            raise
    raise nonfinite_error(
        "The images of a batch hold NaN or infinite values: the inputs are "
        "at fault, not the training.",
        "Check the data and drop or repair those examples "
        "(np.isfinite(x).all(), or dataset.filter with "
        "tf.reduce_all(tf.math.is_finite(images))), then train again.",
        inputs_at_fault=True,
    )


def train_baseline(
    model,
    train_ds,
    test_ds,
    info,
    epochs,
    learning_rate=0.1,
    weight_decay=5e-4,
    schedule="cosine",
    verbose=1,
    callbacks=(),
    protocol=None,
):
    """Trains the single-branch network, the reference of every method.

    Args:
        model: a name for `keras_one.models.get`, e.g. `"resnet20"`.
        train_ds: batched training `tf.data.Dataset` of `(images, labels)`.
        test_ds: batched test dataset.
        info: a `keras_one.data.DatasetInfo` (or a dict with
            `num_classes` and `input_shape`).
        epochs: number of epochs.
        learning_rate: initial learning rate.
        weight_decay: coupled weight decay of the network.
        schedule: learning-rate schedule, `"cosine"` or `"step"` (see
            `make_sgd`).
        verbose: Keras verbosity (1: progress bar).
        callbacks: extra Keras callbacks.
        protocol: `None`, or a paper's recipe (a `keras_one.protocols`
            name or `Protocol`) whose optimizer and schedule replace
            `learning_rate` and `schedule`; `epochs` must be its epochs
            (pass its `weight_decay` and batch the data by its
            `batch_size` as well).

    Returns:
        `(model, results)`: results hold the test `accuracy`, the epoch
        `history` and `train_seconds`.

    Raises:
        FloatingPointError: the images, the loss or the weights hold NaN
            or inf (checked at every step, epoch end and evaluation, as
            the Distiller's `fit` does); the message says which.
    """
    num_classes, input_shape = classes_and_shape(info)
    network = models.get(model)(
        num_classes=num_classes,
        input_shape=input_shape,
        num_branches=1,
        weight_decay=weight_decay,
    )
    network.compile(
        optimizer=optimizer_for(
            protocol, learning_rate, epochs, len(train_ds), schedule
        ),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=[keras.metrics.SparseCategoricalAccuracy(name="accuracy")],
    )
    # Built now, not in the first traced step (a slower first epoch; see
    # `Distiller.compile`).
    network.optimizer.build(network.trainable_variables)
    # NaN or inf, in the images, the loss or the weights, stops training
    # with a `FloatingPointError` (as the Distiller's guard does).
    train_ds, test_ds = _finite_images(train_ds), _finite_images(test_ds)
    history, seconds = _raising_nonfinite_images(
        _fit, network, train_ds, test_ds, epochs, verbose, callbacks
    )
    scores = _raising_nonfinite_images(
        network.evaluate,
        test_ds,
        verbose=0,
        return_dict=True,
        callbacks=[_NonFiniteLossGuard()],
    )
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
    num_branches=None,
    learning_rate=0.1,
    weight_decay=5e-4,
    schedule="cosine",
    verbose=1,
    callbacks=(),
    protocol=None,
):
    """Trains `method`'s default student with the same recipe as the baseline.

    Args:
        method: a `keras_one.methods.Method` instance.
        model: a name for `keras_one.models.get`, e.g. `"resnet20"`.
        num_branches: number of branches of the student; `None` for the
            method's default, `method.info.branches` (3 for ONE, 2 for DML
            and FFL, ...).
        The other arguments are those of `train_baseline`.

    Returns:
        `(distiller, results)`: results hold the test accuracy of every
        branch (`branch_accuracy`, a list) and of the ensemble
        (`ensemble_accuracy`), the epoch `history` and `train_seconds`;
        for a method that deploys temporal means of its branches (PCL),
        also their accuracy (`mean_branch_accuracy`, a list).
    """
    num_classes, input_shape = classes_and_shape(info)
    student = method.build_student(
        model,
        num_classes=num_classes,
        input_shape=input_shape,
        num_branches=num_branches or method.info.branches,
        weight_decay=weight_decay,
    )
    distiller = Distiller(student, method)
    distiller.compile(
        optimizer=optimizer_for(
            protocol, learning_rate, epochs, len(train_ds), schedule
        )
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
    results = {
        "branch_accuracy": branches,
        "ensemble_accuracy": ensemble,
        "history": history,
        "train_seconds": seconds,
    }
    if hasattr(method, "get_mean_branch_model"):
        # PCL deploys the temporal mean of a peer, not its live weights.
        results["mean_branch_accuracy"] = [
            mean_branch_accuracy(method, index, test_ds)
            for index in range(distiller.num_branches)
        ]
    return distiller, results


def mean_branch_accuracy(method, index, dataset):
    """Accuracy of `method.get_mean_branch_model(index)` on `dataset`.

    Args:
        method: a method that deploys temporal means of its branches (PCL).
        index: the branch.
        dataset: `(images, labels)` batches; `images` may be a tuple of
            views (the evaluation views are one image repeated): the
            first is used.

    Returns:
        The accuracy, a float.
    """
    model = method.get_mean_branch_model(index)
    correct = total = 0
    for images, labels in dataset:
        if isinstance(images, (tuple, list)):
            images = images[0]
        logits = model(images, training=False)
        predicted = keras.ops.convert_to_numpy(keras.ops.argmax(logits, -1))
        labels = keras.ops.convert_to_numpy(labels).reshape(-1)
        correct += int((predicted == labels).sum())
        total += len(labels)
    return correct / max(total, 1)
