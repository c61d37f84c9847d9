"""A tiny student and method for every registered method, for the tests.

Shared by the tests of `tests/distribute/` and the training scripts they
launch in subprocesses. Every registered method is built from its
description (`info`: its teachers, its ramp-up, its fewest branches), so a
new method needs nothing here.
"""

import keras
import numpy as np

from keras_one import methods
from keras_one import models
from keras_one.methods.method_info import num_teachers

NUM_CLASSES = 4
INPUT_SHAPE = (8, 8, 1)
# The most examples a test trains on (`make_images`).
MAX_EXAMPLES = 96


def tiny_teacher(name="teacher"):
    """An untrained ResNet-8 teacher: enough to exercise the teacher path."""
    return models.cifar_resnet(
        depth=8,
        num_classes=NUM_CLASSES,
        num_branches=1,
        input_shape=INPUT_SHAPE,
        name=name,
    )


def num_branches(name):
    """As few branches as method `name` accepts, and at least 2.

    The tests check mechanics, and smaller graphs trace faster.
    """
    return max(methods.get(name).info.min_branches, 2)


def make_method(name):
    """The method `name` with test-sized arguments, read from its `info`.

    Teachers are built fresh for each call: one per branch for the methods
    that take a teacher per branch, 2 for those that take several. Methods
    with a ramp-up get a short one, so that the epoch counter matters
    within a few epochs.
    """
    method_class = methods.get(name)
    info = method_class.info
    arguments = {}
    if info.teachers == "one":
        arguments["teacher"] = tiny_teacher()
    elif info.teachers in ("per_branch", "several"):
        arguments["teachers"] = [
            tiny_teacher(f"teacher_{index}")
            for index in range(num_teachers(method_class, num_branches(name)))
        ]
    if info.rampup_fraction:
        arguments["rampup_epochs"] = 2
    if info.example_index:
        # State per training example (MCL-OKD's memory banks): the labels
        # of the examples `make_images` gives, by index, and a few
        # negatives.
        arguments["example_labels"] = make_images(MAX_EXAMPLES)[1]
        arguments["num_negatives"] = 8
    return method_class(**arguments)


def make_distiller(name, seed=0, **distiller_kwargs):
    """A Distiller training a tiny student (ResNet-8, 8x8x1, 4 classes).

    The student is the method's own `build_student` network, so each
    method gets the head and layout it needs.
    """
    from keras_one import Distiller

    keras.utils.set_random_seed(seed)
    method = make_method(name)
    student = method.build_student(
        "resnet8",
        num_classes=NUM_CLASSES,
        input_shape=INPUT_SHAPE,
        num_branches=num_branches(name),
    )
    return Distiller(student, method, **distiller_kwargs)


def compile_distiller(distiller, optimizer, **compile_kwargs):
    """`distiller.compile(optimizer, ...)`, then builds the optimizer.

    Without a strategy, Keras builds the optimizer inside the first trace
    of the training step, which makes `tf.function` trace it a second time
    (variables created in a trace): half of a tiny `fit`'s time. Built
    here, as Keras builds it under a strategy and `BackupAndRestore` before
    a restore, the step is traced once; the training is the same (the
    Distiller's variables all exist once it is constructed).
    """
    distiller.compile(optimizer=optimizer, **compile_kwargs)
    distiller.optimizer.build(distiller.trainable_variables)
    return distiller


def batch_dataset(x, y, sample_weight=None, batch_size=32):
    """`(x, y[, sample_weight])` in batches, the batch size left unknown.

    `fit` on NumPy arrays gives the batches a static size, so a last,
    smaller batch traces the training step again; this dataset's batches
    all share one trace. Sample weights are float32, as `fit` makes them.
    """
    import tensorflow as tf

    if sample_weight is None:
        data = (x, y)
    else:
        data = (x, y, np.asarray(sample_weight, "float32"))
    return tf.data.Dataset.from_tensor_slices(data).batch(batch_size)


def count_batches(distiller, sizes):
    """Appends the size of every batch a replica trains on to `sizes`.

    Wraps `distiller.train_step` (per replica under a strategy) with a
    host call that records the replica's share of the batch as it runs.
    Not under XLA, which cannot compile the host call.
    """
    import tensorflow as tf

    keras_train_step = distiller.train_step

    def record(size):
        sizes.append(int(size))
        return size

    def train_step(data):
        x, _, _ = keras.utils.unpack_x_y_sample_weight(data)
        size = tf.shape(keras.tree.flatten(x)[0])[0]
        counted = tf.numpy_function(record, [size], tf.int32, stateful=True)
        with tf.control_dependencies([counted]):
            return keras_train_step(data)

    distiller.train_step = train_step


def make_images(num_examples=MAX_EXAMPLES, seed=0):
    """Learnable images: the class is the brightest horizontal band.

    The first examples are the same for every `num_examples`.
    """
    rng = np.random.default_rng(seed)
    y = rng.integers(0, NUM_CLASSES, num_examples).astype("int32")
    x = rng.normal(0.0, 0.3, (num_examples,) + INPUT_SHAPE).astype("float32")
    band = INPUT_SHAPE[0] // NUM_CLASSES
    for i, label in enumerate(y):
        x[i, label * band : (label + 1) * band] += 1.0
    return x, y


def student_inputs(distiller, x):
    """`x` as the Distiller's student takes it.

    A student with one image input per branch (PCL's views) gets one view
    of each image per input: view `v` is `x` shifted `v` pixels across
    (a roll), so every branch sees another image. A method that keeps
    state per example (`info.example_index`, MCL-OKD) gets each image's
    index, its row in `x`, as `keras_one.data.load(..., with_index=True)`
    gives it.
    """
    if distiller.method.info.example_index:
        index = np.arange(len(x), dtype="int32")
        return {"image": x, "example_index": index}
    views = len(distiller.student.inputs)
    if views == 1:
        return x
    return tuple(np.roll(x, view, axis=2) for view in range(views))


def term_dtypes(distiller, x, y):
    """The dtypes of the method's loss terms and of the student's logits.

    Returns `({term name: dtype}, logits dtype)`, from the method's own
    `compute_losses` on a batch (before the Distiller's cast to float32).
    """
    from keras import ops

    x = student_inputs(distiller, x)
    outputs = distiller(x, training=False)
    outputs.update(distiller.method(x, outputs, training=False))
    terms = distiller.method.compute_losses(
        ops.convert_to_tensor(y), outputs, distiller.current_epoch
    )
    dtypes = {name: str(value.dtype.name) for name, value in terms.items()}
    return dtypes, str(outputs["branch_logits"][0].dtype.name)


class BatchLosses(keras.callbacks.Callback):
    """Records the logged running loss after each training batch."""

    def on_train_begin(self, logs=None):
        self.losses = []

    def on_train_batch_end(self, batch, logs=None):
        self.losses.append(float(logs["loss"]))


def weights_of(model):
    """`{"<index>:<path>": value}` of every variable of `model`.

    Weights and states, numbered in `model.weights` order: variable paths
    alone repeat (a teacher's layers and the student's, branches cloned
    with the same layer names).
    """
    return {
        f"{index:04d}:{variable.path}": np.array(variable.numpy())
        for index, variable in enumerate(model.weights)
    }


def all_layers(model):
    """`model` and every layer nested in it (public attributes only)."""
    from keras_one.distiller import _all_layers

    return list(_all_layers(model))
