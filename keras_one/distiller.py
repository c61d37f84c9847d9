"""The `Distiller`: trains a multi-branch student with a distillation method.

TensorFlow backend only (its `train_step` uses `tf.GradientTape`); the
layers and losses it uses are backend-independent `keras.ops` code.
"""

import keras
import tensorflow as tf
from keras import ops

from keras_one import export
from keras_one.methods.method import Method
from keras_one.student_outputs import LOGIT_KEYS
from keras_one.student_outputs import check_logits
from keras_one.student_outputs import normalize_outputs
from keras_one.student_outputs import symbolic_io

try:
    # Keras' callbacks (EarlyStopping, ModelCheckpoint, ...) look inside
    # metric groups of this type to tell whether a monitored metric is to be
    # maximized; being one lets `monitor="val_ensemble_accuracy"` work with
    # the default `mode="auto"`.
    from keras.src.trainers.compile_utils import MetricsList as _MetricGroup
except ImportError:  # pragma: no cover - a future Keras may move it
    _MetricGroup = keras.metrics.Metric


class _OutputMetrics(_MetricGroup):
    """The compiled metrics of one output: a branch or the ensemble."""

    def __init__(self, metrics, name):
        keras.metrics.Metric.__init__(self, name=name)
        self.metrics = metrics

    def update_state(self, y_true, y_pred, sample_weight=None):
        for metric in self.metrics:
            metric.update_state(y_true, y_pred, sample_weight=sample_weight)

    def reset_state(self):
        for metric in self.metrics:
            metric.reset_state()

    def result(self):
        return {metric.name: metric.result() for metric in self.metrics}


class _EpochCounter(keras.callbacks.Callback):
    """Tells the Distiller which epoch is running (for ramp-up schedules)."""

    def on_epoch_begin(self, epoch, logs=None):
        self.model.current_epoch.assign(float(epoch))


@keras.saving.register_keras_serializable(package="keras_one")
class Distiller(keras.Model):
    """Trains a student network with an online or offline distillation method.

    The student is a Keras model that returns logits, one per branch: a dict
    `{"branch_logits": [z_1, ..., z_N], "ensemble_logits": z_e, ...}` as
    built by `keras_one.models`, a list of logits, or a single logits tensor.
    The `method` (`keras_one.methods.ONE()`, ...) turns those outputs into
    the loss. The Distiller trains both with the usual `compile`, `fit`,
    `evaluate` and `predict`; it honours `sample_weight`, the student's
    regularization losses, callbacks and `tf.distribute` strategies (the
    loss is averaged over the global batch, so a strategy gives the same
    updates as one device).

    It logs the total `loss`, every loss term of the method, and each
    compiled metric for every branch (`branch_0_accuracy`, ...) and for the
    ensemble (`ensemble_accuracy`: the student's `ensemble_logits`, or the
    mean of the branch logits); epoch-end values are exact aggregates over
    the epoch. With a single-branch student the metric is just `accuracy`.

    After training, `get_branch_model(i)` and `get_ensemble_model()` hand out
    plain Keras models (input to logits) that need nothing from keras_one.

    Labels are integer class indices, shape `(batch,)` or `(batch, 1)`.

    Args:
        student: a `keras.Model` returning branch logits (see above).
        method: a `keras_one.methods.Method`, e.g. `keras_one.methods.ONE()`.
        **kwargs: `keras.Model` keyword arguments, such as `name`.

    Example:

    ```python
    student = keras_one.models.cifar_resnet(depth=32, num_branches=3)
    distiller = keras_one.Distiller(student, keras_one.methods.ONE())
    distiller.compile(
        optimizer=keras.optimizers.SGD(0.1, momentum=0.9, nesterov=True),
    )
    distiller.fit(x_train, y_train, epochs=300, batch_size=128)
    branch = distiller.get_branch_model(0)  # a compact plain Keras model
    ```
    """

    def __init__(self, student, method, **kwargs):
        super().__init__(**kwargs)
        if not isinstance(student, keras.Model):
            raise TypeError(
                "`student` must be a keras.Model; got "
                f"{type(student).__name__}."
            )
        if not isinstance(method, Method):
            raise TypeError(
                "`method` must be a keras_one.methods.Method, such as "
                f"keras_one.methods.ONE(); got {type(method).__name__}."
            )
        self.student = student
        self.method = method
        self.current_epoch = keras.Variable(
            0.0,
            trainable=False,
            name="current_epoch",
            aggregation="only_first_replica",
        )
        self._compiled_metric_ids = None
        io = symbolic_io(student)
        if io is not None:
            self._wire(*io)

    def _wire(self, inputs, raw_outputs):
        """Checks the student's outputs and builds the method on them."""
        outputs = normalize_outputs(raw_outputs)
        check_logits(outputs)
        self.method.check_outputs(outputs)
        self.num_branches = len(outputs["branch_logits"])
        self.num_classes = outputs["branch_logits"][0].shape[-1]
        self.method(inputs, outputs)
        self.built = True

    def build(self, input_shape):
        inputs = keras.KerasTensor(input_shape)
        self._wire(inputs, self.student(inputs))

    # === Forward pass and loss ===

    def call(self, inputs, training=None):
        return normalize_outputs(self.student(inputs, training=training))

    def _labels(self, labels):
        labels = ops.convert_to_tensor(labels)
        shape = tuple(labels.shape)
        if len(shape) == 2 and shape[-1] == 1:
            labels = ops.squeeze(labels, axis=-1)
        elif len(shape) != 1:
            hint = (
                " They look one-hot encoded: pass np.argmax(y, axis=-1)."
                if len(shape) == 2
                else ""
            )
            raise ValueError(
                "Labels must be integer class indices of shape (batch,) or "
                f"(batch, 1); got shape {shape}.{hint}"
            )
        labels = ops.cast(labels, "int32")
        message = (
            f"Labels must lie in [0, {self.num_classes}) for a student with "
            f"{self.num_classes} classes: check the labels, or build the "
            "student with more classes."
        )
        tf.debugging.assert_non_negative(labels, message=message)
        tf.debugging.assert_less(labels, self.num_classes, message=message)
        return labels

    def _forward_and_loss(self, x, y, sample_weight, training):
        labels = self._labels(y)
        outputs = self(x, training=training)
        outputs.update(self.method(x, outputs, training=training))
        terms = self.method.compute_losses(labels, outputs, self.current_epoch)
        if set(terms) != set(self.method.loss_names):
            raise ValueError(
                f"{type(self.method).__name__}.compute_losses returned "
                f"{sorted(terms)}, but its loss_names are "
                f"{sorted(self.method.loss_names)}."
            )
        if sample_weight is not None:
            sample_weight = ops.reshape(
                ops.cast(sample_weight, "float32"), (-1,)
            )
        for name, value in terms.items():
            if len(value.shape) != 0:
                if sample_weight is not None:
                    value = value * sample_weight
                terms[name] = ops.mean(value)
        loss = sum(terms.values())
        if self.losses:
            loss = loss + ops.cast(ops.sum(self.losses), "float32")
        return labels, outputs, terms, loss

    # === Steps ===

    def train_step(self, data):
        x, y, sample_weight = keras.utils.unpack_x_y_sample_weight(data)
        with tf.GradientTape() as tape:
            labels, outputs, terms, loss = self._forward_and_loss(
                x, y, sample_weight, training=True
            )
            # Gradients are summed over replicas: average over the global
            # batch, not the per-replica one.
            replicas = self.distribute_strategy.num_replicas_in_sync
            scaled_loss = self.optimizer.scale_loss(loss / replicas)
        variables = self.trainable_variables
        gradients = tape.gradient(scaled_loss, variables)
        self.optimizer.apply(gradients, variables)
        return self._update_metrics(labels, outputs, terms, loss, sample_weight)

    def test_step(self, data):
        x, y, sample_weight = keras.utils.unpack_x_y_sample_weight(data)
        labels, outputs, terms, loss = self._forward_and_loss(
            x, y, sample_weight, training=False
        )
        return self._update_metrics(labels, outputs, terms, loss, sample_weight)

    def predict_step(self, data):
        x, _, _ = keras.utils.unpack_x_y_sample_weight(data)
        outputs = self(x, training=False)
        return {k: outputs[k] for k in LOGIT_KEYS if k in outputs}

    # === Metrics ===

    def compile(self, optimizer="rmsprop", metrics=None, loss=None, **kwargs):
        """Configures training; the method supplies the loss.

        Args:
            optimizer: a Keras optimizer or its name.
            metrics: metrics computed for every branch and for the ensemble,
                as names or `keras.metrics.Metric` objects. Defaults to
                `["accuracy"]` (sparse categorical accuracy).
            loss: not accepted: the method defines the loss.
            **kwargs: other `keras.Model.compile` arguments
                (`jit_compile`, `steps_per_execution`, `run_eagerly`, ...).
        """
        if loss is not None:
            raise ValueError(
                "Distiller.compile() takes no `loss`: the method defines it. "
                "Pass the method's options to its constructor instead."
            )
        super().compile(optimizer=optimizer, **kwargs)
        self._compiled_metric_ids = list(metrics or ["accuracy"])
        self._loss_tracker = keras.metrics.Mean(name="loss")
        self._term_trackers = [
            keras.metrics.Mean(name=name) for name in self.method.loss_names
        ]
        prefixes = [f"branch_{i}_" for i in range(self.num_branches)]
        if self.num_branches == 1:
            prefixes = [""]
        else:
            prefixes.append("ensemble_")
        self._output_metrics = [
            _OutputMetrics(
                [_make_metric(m, prefix) for m in self._compiled_metric_ids],
                name=f"{prefix or 'output_'}metrics",
            )
            for prefix in prefixes
        ]

    def get_compile_config(self):
        config = super().get_compile_config() or {}
        if self._compiled_metric_ids is not None:
            config["metrics"] = [
                m
                if isinstance(m, str)
                else keras.saving.serialize_keras_object(m)
                for m in self._compiled_metric_ids
            ]
        return config

    def compile_from_config(self, config):
        self.compile(**keras.saving.deserialize_keras_object(config))
        if self.built:
            self.optimizer.build(self.trainable_variables)

    @property
    def metrics(self):
        if self._compiled_metric_ids is None:
            return []
        return [self._loss_tracker, *self._term_trackers, *self._output_metrics]

    def _update_metrics(self, labels, outputs, terms, loss, sample_weight):
        batch_size = ops.shape(labels)[0]
        self._loss_tracker.update_state(loss, sample_weight=batch_size)
        for tracker in self._term_trackers:
            tracker.update_state(terms[tracker.name], sample_weight=batch_size)
        predictions = list(outputs["branch_logits"])
        if len(predictions) > 1:
            if "ensemble_logits" in outputs:
                predictions.append(outputs["ensemble_logits"])
            else:
                predictions.append(ops.mean(ops.stack(predictions), axis=0))
        for group, logits in zip(
            self._output_metrics, predictions, strict=True
        ):
            group.update_state(labels, logits, sample_weight=sample_weight)
        return self.get_metrics_result()

    # === Training loop ===

    def fit(self, *args, callbacks=None, **kwargs):
        callbacks = list(callbacks or []) + [_EpochCounter()]
        return super().fit(*args, callbacks=callbacks, **kwargs)

    # === Export ===

    def get_branch_model(self, index, name=None):
        """Returns branch `index` alone as a plain Keras model.

        The model maps the student's input to that branch's logits, shares
        the trained weights, is made of built-in Keras layers only (it saves
        as `.keras` and loads without keras_one), and computes nothing of
        the other branches.
        """
        if not 0 <= index < self.num_branches:
            raise ValueError(
                f"Branch index {index} is out of range: the student has "
                f"{self.num_branches} branches (0 to {self.num_branches - 1})."
            )
        return export.plain_keras_model(
            self.student,
            lambda outputs: normalize_outputs(outputs)["branch_logits"][index],
            name=name or f"{self.student.name}_branch_{index}",
        )

    def get_ensemble_model(self, name=None):
        """Returns the ensemble (all branches) as a plain Keras model.

        Its output is the student's `ensemble_logits` (for ONE, the gated
        sum) or, for students without an ensemble head, the mean of the
        branch logits.
        """

        def select(outputs):
            outputs = normalize_outputs(outputs)
            if "ensemble_logits" in outputs:
                return outputs["ensemble_logits"]
            return keras.layers.Average(name="ensemble_logits")(
                outputs["branch_logits"]
            )

        return export.plain_keras_model(
            self.student, select, name=name or f"{self.student.name}_ensemble"
        )

    # === Config ===

    def get_config(self):
        return {
            "name": self.name,
            "trainable": self.trainable,
            "student": keras.saving.serialize_keras_object(self.student),
            "method": keras.saving.serialize_keras_object(self.method),
        }

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        config["student"] = keras.saving.deserialize_keras_object(
            config["student"]
        )
        config["method"] = keras.saving.deserialize_keras_object(
            config["method"]
        )
        return cls(**config)


def _make_metric(identifier, prefix):
    """A fresh metric for one output, named `prefix + metric name`."""
    if isinstance(identifier, str) and identifier in ("accuracy", "acc"):
        return keras.metrics.SparseCategoricalAccuracy(name=prefix + "accuracy")
    if isinstance(identifier, dict):
        identifier = keras.saving.deserialize_keras_object(identifier)
    metric = keras.metrics.get(identifier)
    if isinstance(metric, keras.metrics.Metric):
        config = {**metric.get_config(), "name": prefix + metric.name}
        return metric.__class__.from_config(config)
    name = identifier if isinstance(identifier, str) else metric.__name__
    return keras.metrics.MeanMetricWrapper(metric, name=prefix + name)
