"""A method's own modules train at their own learning rate.

`Method.learning_rate_multipliers` gives a layer `m` times the optimizer's
learning rate. Checked against a hand-written reference that trains the
same network with two optimizers (the student's at `lr`, the auxiliary
layer's at `m * lr`), on every backend. The every-backend, JAX
data-parallel and MirroredStrategy tests (tests/backends/) train
`EMAProbe`, whose auxiliary layer has a multiplier too.
"""

import keras
import numpy as np
import pytest
from keras import ops

from keras_one import Distiller
from keras_one.losses import cross_entropy
from keras_one.methods import Method

pytestmark = pytest.mark.backend_portable

NUM_CLASSES = 3


class Auxiliary(Method):
    """Branch cross-entropies plus an auxiliary classifier on branch 0."""

    loss_names = ("ce", "auxiliary_ce")

    def __init__(self, multipliers=None, **kwargs):
        super().__init__(**kwargs)
        # `multipliers(epoch, auxiliary)` -> the dict to return.
        self.multipliers = multipliers or (lambda epoch, auxiliary: {})
        self.auxiliary = keras.layers.Dense(NUM_CLASSES, name="auxiliary")

    def call(self, inputs, outputs, training=None):
        return {"auxiliary_logits": self.auxiliary(outputs["branch_logits"][0])}

    def compute_losses(self, labels, outputs, epoch):
        return {
            "ce": sum(
                cross_entropy(labels, z) for z in outputs["branch_logits"]
            ),
            "auxiliary_ce": cross_entropy(labels, outputs["auxiliary_logits"]),
        }

    def learning_rate_multipliers(self, epoch):
        return self.multipliers(epoch, self.auxiliary)


def make_distiller(multipliers=None):
    keras.utils.set_random_seed(1)
    inputs = keras.Input((6,))
    trunk = keras.layers.Dense(8, activation="relu", name="trunk")(inputs)
    branches = [
        keras.layers.Dense(NUM_CLASSES, name=f"branch_{i}")(trunk)
        for i in range(2)
    ]
    student = keras.Model(inputs, {"branch_logits": branches})
    return Distiller(student, Auxiliary(multipliers))


def data():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(16, 6)).astype("float32")
    y = rng.integers(0, NUM_CLASSES, 16).astype("int32")
    return x, y


OPTIMIZERS = {
    "sgd_momentum": lambda lr: keras.optimizers.SGD(lr, momentum=0.9),
    "nesterov": lambda lr: keras.optimizers.SGD(
        lr, momentum=0.9, nesterov=True
    ),
    "adamw": lambda lr: keras.optimizers.AdamW(lr, weight_decay=0.1),
}


@pytest.mark.parametrize("optimizer", sorted(OPTIMIZERS))
def test_multiplier_is_a_learning_rate(optimizer, gradients):
    lr, multiplier, steps = 0.1, 0.25, 3
    x, y = data()
    trained = make_distiller(lambda epoch, auxiliary: {auxiliary: multiplier})
    trained.compile(optimizer=OPTIMIZERS[optimizer](lr))
    for _ in range(steps):
        trained.train_on_batch(x, y)

    reference = make_distiller()
    auxiliary = reference.method.auxiliary.trainable_variables
    others = [
        v for v in reference.trainable_variables if not _among(v, auxiliary)
    ]
    student_optimizer = OPTIMIZERS[optimizer](lr)
    auxiliary_optimizer = OPTIMIZERS[optimizer](lr * multiplier)

    def loss():
        outputs = reference(x, training=True)
        return reference.compute_loss(x, y, outputs, training=True)

    for _ in range(steps):
        grads = [
            ops.convert_to_tensor(g)
            for g in gradients(loss, others + auxiliary)
        ]
        student_optimizer.apply(grads[: len(others)], others)
        auxiliary_optimizer.apply(grads[len(others) :], auxiliary)

    moved = 0.0
    for got, want, start in zip(
        _values(trained.trainable_variables),
        _values(reference.trainable_variables),
        _values(make_distiller().trainable_variables),
        strict=True,
    ):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
        moved = max(moved, float(np.max(np.abs(want - start))))
    assert moved > 1e-2  # the comparison sees real training steps


def test_zero_freezes_the_layer_for_that_epoch():
    x, y = data()
    distiller = make_distiller(
        lambda epoch, auxiliary: {auxiliary: ops.where(epoch >= 1, 1.0, 0.0)}
    )
    distiller.compile(optimizer=keras.optimizers.SGD(0.1))
    distiller.steps_per_epoch = 1

    def auxiliary_weights():
        return [
            ops.convert_to_numpy(v.value)
            for v in distiller.method.auxiliary.trainable_variables
        ]

    start = auxiliary_weights()
    trunk = ops.convert_to_numpy(distiller.student.get_layer("trunk").kernel)
    distiller.train_on_batch(x, y)  # epoch 0: multiplier 0
    for before, after in zip(start, auxiliary_weights(), strict=True):
        np.testing.assert_array_equal(before, after)
    assert not np.allclose(
        trunk, ops.convert_to_numpy(distiller.student.get_layer("trunk").kernel)
    )
    distiller.train_on_batch(x, y)  # epoch 1: multiplier 1
    assert not np.allclose(start[0], auxiliary_weights()[0])


def test_fit_applies_the_multipliers():
    x, y = data()
    distiller = make_distiller(lambda epoch, auxiliary: {auxiliary: 0})
    distiller.compile(optimizer=keras.optimizers.SGD(0.1))
    start = distiller.method.auxiliary.get_weights()
    distiller.fit(x, y, batch_size=8, epochs=1, verbose=0)
    for before, after in zip(
        start, distiller.method.auxiliary.get_weights(), strict=True
    ):
        np.testing.assert_array_equal(before, after)


@pytest.mark.parametrize(
    "multipliers, message",
    [
        (lambda epoch, auxiliary: [auxiliary], "must return a dict"),
        (lambda epoch, auxiliary: {"auxiliary": 0.5}, "must map layers"),
        (lambda epoch, auxiliary: {auxiliary: -1.0}, "finite number >= 0"),
        (
            lambda epoch, auxiliary: {auxiliary: float("nan")},
            "finite number >= 0",
        ),
        (
            lambda epoch, auxiliary: {_stray_layer(): 0.5},
            "does not train",
        ),
    ],
)
def test_bad_multipliers_are_refused_when_the_distiller_is_built(
    multipliers, message
):
    with pytest.raises((TypeError, ValueError), match=message):
        make_distiller(multipliers)


def _stray_layer():
    layer = keras.layers.Dense(2, name="stray")
    layer.build((None, 3))
    return layer


def _values(variables):
    return [ops.convert_to_numpy(v.value) for v in variables]


def _among(variable, variables):
    return any(variable is v for v in variables)
