"""A test method with state updated after each optimizer step.

`EMAProbe` is ONE's loss plus a temporal mean of the student's trainable
weights, `ema <- decay * ema + (1 - decay) * weights`, updated by
`after_train_step`: the mechanism PCL's mean teachers need. Tests compare
it with a NumPy recomputation from the weights after each step.

It also owns an auxiliary network with its own learning rate (as OEC's
adapters and MEAL's discriminators): a Dense layer on branch 0's logits,
trained by its own cross-entropy at `learning_rate_multipliers`, 0 in the
first epoch and 0.5 after.

Its teacher is ONE's plain average of the branches (`gate="average"`):
the learned gate's BatchNormalization and ReLU on two units put half the
pre-activations near zero, where float32 round-off between backends can
switch a ReLU in the first step (3.4e-5 on the first kernel after two
steps, once the classifiers started from PyTorch's initialization). The
EMA and the auxiliary learning rate do not depend on the gate; ONE's
learned gate is compared across backends with the other methods.
"""

import keras
from keras import ops

from keras_one.losses import cross_entropy
from keras_one.methods import ONE


class EMAProbe(ONE):
    """ONE plus an EMA of the student's weights, kept in `self.averages`."""

    loss_names = (*ONE.loss_names, "auxiliary_ce")
    AUXILIARY_MULTIPLIER = 0.5

    def __init__(self, decay=0.5, **kwargs):
        super().__init__(rampup_epochs=1, gate="average", **kwargs)
        self.decay = decay
        self.averages = None
        self.auxiliary = None

    def build_state(self, student):
        """Creates one average per trainable weight, equal to it."""
        self.averages = [
            keras.Variable(
                keras.ops.convert_to_numpy(w.value),
                trainable=False,
                name=f"ema_{i}",
                aggregation="only_first_replica",
            )
            for i, w in enumerate(student.trainable_weights)
        ]
        num_classes = student.outputs[0].shape[-1]
        self.auxiliary = keras.layers.Dense(num_classes, name="auxiliary")

    def call(self, inputs, outputs, training=None):
        return {"auxiliary_logits": self.auxiliary(outputs["branch_logits"][0])}

    def compute_losses(self, labels, outputs, epoch):
        return {
            **super().compute_losses(labels, outputs, epoch),
            "auxiliary_ce": cross_entropy(labels, outputs["auxiliary_logits"]),
        }

    def learning_rate_multipliers(self, epoch):
        multiplier = ops.where(epoch >= 1, self.AUXILIARY_MULTIPLIER, 0.0)
        return {self.auxiliary: multiplier}

    def after_train_step(self, student):
        for average, weight in zip(
            self.averages, student.trainable_weights, strict=True
        ):
            average.assign(self.decay * average + (1.0 - self.decay) * weight)


def probe_distiller(strategy=None):
    """An `EMAProbe` Distiller on the method zoo's tiny 2-branch student.

    Built inside `strategy.scope()` when a `tf.distribute` strategy is given.
    """
    import contextlib

    import method_zoo

    from keras_one import Distiller

    scope = (
        strategy.scope() if strategy is not None else contextlib.nullcontext()
    )
    with scope:
        keras.utils.set_random_seed(0)
        method = EMAProbe()
        student = method.build_student(
            "resnet8",
            num_classes=method_zoo.NUM_CLASSES,
            input_shape=method_zoo.INPUT_SHAPE,
            num_branches=2,
        )
        return Distiller(student, method, synchronized_batch_norm=True)
