"""The pieces of a CIFAR training recipe that the examples share.

Every example in `examples/` trains on CIFAR-10 as the papers do, or, with
`--small`, on the bundled digits in seconds; the teacher-based methods
first train their teachers; and each example reports the accuracy of the
plain Keras models it exports. Each of these is one call here, so that an
example copied on its own still runs:

    train_ds, test_ds, info = keras_one.recipes.load_data(small=False)
    teacher = keras_one.recipes.train_teacher(
        56, train_ds, test_ds, info, epochs=240,
        optimizer=keras.optimizers.SGD(
            keras_one.recipes.step_decay(0.05, [150, 180, 210], len(train_ds)),
            momentum=0.9,
        ),
    )
    print(keras_one.recipes.accuracy(teacher, test_ds))
"""

import keras

from keras_one import models

# Batches of the bundled digits (1,437 training images) in a small run.
SMALL_BATCH_SIZE = 64


def load_data(small=False, batch_size=128, seed=0):
    """CIFAR-10 as the papers train on it, or the bundled digits.

    Args:
        small: `False` for CIFAR-10 (`keras_one.data.load("cifar10")`:
            downloaded by tensorflow-datasets, normalized with CIFAR-10's
            per-channel mean and standard deviation, with pad-4 random
            crops and horizontal flips in training); `True` for the 8x8
            digits bundled with scikit-learn (`keras_one.data.load(
            "digits")`: no download, normalized, not augmented, so that a
            run of seconds learns them) in batches of `SMALL_BATCH_SIZE`.
        batch_size: examples per batch of CIFAR-10.
        seed: seed of the shuffling and of the augmentation.

    Returns:
        `(train_ds, test_ds, info)`, as `keras_one.data.load` returns them:
        `tf.data.Dataset`s of `(images, labels)` batches and a
        `keras_one.data.DatasetInfo` (`num_classes`, `input_shape`, ...).

    Example:

    >>> train_ds, test_ds, info = load_data(small=True)
    >>> info.name, info.num_classes, info.input_shape
    ('digits', 10, (8, 8, 1))
    """
    # Imported here: keras_one.data imports TensorFlow, which `import
    # keras_one` leaves out on the other backends.
    from keras_one import data

    if small:
        return data.load(
            "digits", batch_size=SMALL_BATCH_SIZE, augment=False, seed=seed
        )
    return data.load("cifar10", batch_size=batch_size, seed=seed)


def step_decay(learning_rate, milestones, steps_per_epoch, factor=0.1):
    """A learning rate multiplied by `factor` at each milestone epoch.

    The step schedule of the papers' recipes (e.g. x0.1 at epochs 150 and
    225 of 300), as a schedule over optimizer steps for any Keras
    optimizer.

    Args:
        learning_rate: the initial learning rate.
        milestones: the epochs after which the rate drops, increasing.
        steps_per_epoch: optimizer steps per epoch (`len(train_ds)`).
        factor: the factor of each drop.

    Returns:
        A `keras.optimizers.schedules.PiecewiseConstantDecay`.

    Example:

    >>> schedule = step_decay(0.1, milestones=[2, 4], steps_per_epoch=10)
    >>> [round(float(schedule(step)), 6) for step in (0, 20, 21, 41)]
    [0.1, 0.1, 0.01, 0.001]
    """
    return keras.optimizers.schedules.PiecewiseConstantDecay(
        [int(m) * int(steps_per_epoch) for m in milestones],
        [learning_rate * factor**i for i in range(len(milestones) + 1)],
    )


def train_teacher(
    depth,
    train_ds,
    test_ds,
    info,
    epochs,
    optimizer,
    weight_decay=5e-4,
    verbose=2,
):
    """Trains a single CIFAR ResNet, the teacher of KD, EKD or SOKD.

    Args:
        depth: depth of `keras_one.models.cifar_resnet` (6n + 2).
        train_ds: batched training dataset of `(images, labels)`.
        test_ds: batched test dataset, evaluated after each epoch.
        info: the `keras_one.data.DatasetInfo` of the data.
        epochs: number of epochs.
        optimizer: a Keras optimizer.
        weight_decay: coupled weight decay of the network.
        verbose: Keras verbosity of `fit`.

    Returns:
        The trained `keras.Model` (logits output), named
        `teacher_resnet{depth}`.
    """
    teacher = models.cifar_resnet(
        depth,
        num_classes=info.num_classes,
        num_branches=1,
        input_shape=info.input_shape,
        weight_decay=weight_decay,
        name=f"teacher_resnet{depth}",
    )
    teacher.compile(
        optimizer=optimizer,
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=["accuracy"],
    )
    teacher.fit(
        train_ds,
        epochs=epochs,
        validation_data=test_ds,
        shuffle=False,  # the datasets shuffle themselves
        verbose=verbose,
    )
    return teacher


def accuracy(model, dataset):
    """Top-1 accuracy of a model of logits on a dataset.

    For a teacher, or a branch or ensemble exported as a plain Keras model
    (`Distiller.get_branch_model`, `get_ensemble_model`). The model is
    neither compiled nor changed.

    Args:
        model: a model whose output is logits `(batch, num_classes)`.
        dataset: batches of `(images, labels)`.

    Returns:
        The accuracy, a float.
    """
    metric = keras.metrics.SparseCategoricalAccuracy()
    for images, labels in dataset:
        metric.update_state(labels, model.predict_on_batch(images))
    return float(metric.result())
