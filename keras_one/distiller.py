"""The `Distiller`: trains a multi-branch student with a distillation method.

TensorFlow backend only (its `train_step` uses `tf.GradientTape`); the
layers and losses it uses are backend-independent `keras.ops` code.
"""

import json
import math
import os

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


class _NonFiniteLossGuard(keras.callbacks.Callback):
    """Stops `fit` with a clear error as soon as the loss is NaN or infinite.

    Reads the logged running loss of the epoch, which stays finite until a
    step's loss is not. It needs no change to the compiled step (in-graph
    checks are dropped by XLA) and is safe for Keras' asynchronous callback
    dispatch, so the training loop does not wait for it.
    """

    async_safe = True

    def __init__(self, loss_names):
        super().__init__()
        self.loss_names = ("loss", *loss_names)
        self.epoch = 0

    def on_epoch_begin(self, epoch, logs=None):
        self.epoch = epoch

    def on_train_batch_end(self, batch, logs=None):
        self._check(logs, f"epoch {self.epoch}, batch {batch}")

    def on_epoch_end(self, epoch, logs=None):
        self._check(logs, f"the end of epoch {epoch}")

    def _check(self, logs, where):
        logs = logs or {}
        bad = [
            name
            for name in self.loss_names
            if name in logs and not math.isfinite(float(logs[name]))
        ]
        if not bad:
            return
        which = ", ".join(bad)
        if bad == ["loss"]:
            which += (
                "; the method's terms are finite, so the regularization "
                "losses are not: the weights already hold NaN or inf"
            )
        self.model.stop_training = True
        raise FloatingPointError(
            f"The training loss became {float(logs.get('loss', 'nan'))} at "
            f"{where} (non-finite: {which}); training cannot "
            "recover from a NaN or infinite loss. Usual causes and fixes: a "
            "learning rate too high for the start of training (lower it, add "
            "a warm-up, or clip gradients, e.g. SGD(..., clipnorm=1.0)); "
            "inputs holding NaN or inf, or far from unit scale (check and "
            "normalize them); float16 overflow (under the 'mixed_float16' "
            "policy keep the loss scaling that compile() adds, or use "
            "'mixed_bfloat16')."
        )


class _ResumeWithinEpoch(keras.callbacks.Callback):
    """Makes `keras.callbacks.BackupAndRestore` resume where it stopped.

    Keras' callback restores the weights, the optimizer state and the epoch
    of its last backup, but starts that epoch from its first batch again,
    and records epoch 0 in the backups it takes before the first epoch end
    after a restart. This companion (added by `Distiller.fit`, after the
    backup callback) reads the backup's record and has the Distiller skip
    the batches that were already trained, and keeps the recorded epoch
    right, so a run killed mid-epoch and started again ends as an
    uninterrupted one (given an input order that depends only on the epoch).
    """

    def __init__(self, backup):
        super().__init__()
        self.backup = backup

    def on_train_begin(self, logs=None):
        self.model._batches_to_skip = 0
        path = os.path.join(self.backup.backup_dir, "training_metadata.json")
        if not isinstance(self.backup.save_freq, int):
            return
        if not tf.io.gfile.exists(path):
            return
        with tf.io.gfile.GFile(path) as file:
            record = json.load(file)
        # A step backup records the index of the last batch it had trained.
        self.model._batches_to_skip = int(record.get("batch", -1)) + 1

    def on_epoch_begin(self, epoch, logs=None):
        # Keras' callback only learns the epoch at an epoch end.
        self.backup._current_epoch = epoch

    def on_epoch_end(self, epoch, logs=None):
        self.model._batches_to_skip = 0


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

    Scaling and recovery:

    - Under a `tf.distribute` strategy (`MirroredStrategy`,
      `MultiWorkerMirroredStrategy`, `TPUStrategy`) the gradient is that of
      the loss averaged over the global batch, also when the last batch
      splits unevenly over the replicas. BatchNormalization normalizes each
      replica's share of the batch, as PyTorch's DataParallel and
      DistributedDataParallel do; with `synchronized_batch_norm=True` it
      uses the statistics of the global batch, and training on N replicas
      gives the same weights as on one device with the same global batch.
    - `fit` stops with a `FloatingPointError` that names the problem and the
      usual fixes as soon as the loss is NaN or infinite.
    - With `keras.callbacks.BackupAndRestore(backup_dir, save_freq=steps)`
      a run killed mid-epoch and started again resumes after the last
      trained batch (Keras' callback alone restarts the epoch), with the
      right `current_epoch`.
    - Mixed precision (`keras.mixed_precision.set_dtype_policy(
      "mixed_float16")` or `"mixed_bfloat16"` before building the student)
      computes the losses, their softmax and KL in float32; under
      `mixed_float16` `compile` wraps the optimizer in a
      `keras.optimizers.LossScaleOptimizer`.

    Args:
        student: a `keras.Model` returning branch logits (see above).
        method: a `keras_one.methods.Method`, e.g. `keras_one.methods.ONE()`.
        synchronized_batch_norm: if `True`, the BatchNormalization layers of
            the student and of the method compute their training statistics
            over the global batch under a multi-replica strategy (an
            all-reduce per layer and step), not over each replica's share.
            Their saved configuration is unchanged. No effect on one device.
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

    def __init__(
        self, student, method, synchronized_batch_norm=False, **kwargs
    ):
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
        self.synchronized_batch_norm = bool(synchronized_batch_norm)
        self._batches_to_skip = 0
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
        batch_size = ops.cast(ops.shape(labels)[0], "float32")
        # Per-example terms are summed over the examples here, and divided
        # by the batch size (the global one in `train_step`); the terms that
        # do not depend on the batch and the regularization are added once.
        example_sum = ops.zeros((), "float32")
        penalty = ops.zeros((), "float32")
        for name, value in terms.items():
            value = ops.cast(value, "float32")
            if len(value.shape) != 0:
                if sample_weight is not None:
                    value = value * sample_weight
                value = ops.sum(value)
                example_sum = example_sum + value
                value = value / ops.maximum(batch_size, 1.0)
            else:
                penalty = penalty + value
            terms[name] = value
        if self.losses:
            penalty = penalty + ops.cast(ops.sum(self.losses), "float32")
        loss = example_sum / ops.maximum(batch_size, 1.0) + penalty
        return labels, outputs, terms, loss, (example_sum, batch_size, penalty)

    # === Steps ===

    def train_step(self, data):
        x, y, sample_weight = keras.utils.unpack_x_y_sample_weight(data)
        with tf.GradientTape() as tape:
            labels, outputs, terms, loss, parts = self._forward_and_loss(
                x, y, sample_weight, training=True
            )
            objective = self._global_batch_objective(loss, *parts)
            scaled_loss = self.optimizer.scale_loss(objective)
        variables = self.trainable_variables
        gradients = tape.gradient(scaled_loss, variables)
        self.optimizer.apply(gradients, variables)
        return self._update_metrics(labels, outputs, terms, loss, sample_weight)

    def _global_batch_objective(self, loss, example_sum, batch_size, penalty):
        """This replica's share of the loss averaged over the global batch.

        The gradients of the replicas are summed, so each replica
        differentiates its examples' summed loss divided by the global batch
        size (all-reduced: the last batch may split unevenly), plus its
        share of the batch-independent terms.
        """
        replicas = self.distribute_strategy.num_replicas_in_sync
        if replicas == 1:
            return loss
        context = tf.distribute.get_replica_context()
        global_batch_size = context.all_reduce("sum", batch_size)
        return (
            example_sum / ops.maximum(global_batch_size, 1.0)
            + penalty / replicas
        )

    def test_step(self, data):
        x, y, sample_weight = keras.utils.unpack_x_y_sample_weight(data)
        labels, outputs, terms, loss, _ = self._forward_and_loss(
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
        results = self.get_metrics_result()
        if _is_multi_worker(self.distribute_strategy):
            # Keras reduces the step's logs across workers with
            # `strategy.reduce("MEAN", value, axis=0)`, which needs a batch
            # axis: scalar logs fail (keras-team/keras#20585). A (1,) value
            # per replica reduces to the scalar mean over the replicas.
            results = {
                name: ops.reshape(value, (1,))
                for name, value in results.items()
            }
        return results

    # === Training loop ===

    def fit(self, *args, callbacks=None, **kwargs):
        callbacks = list(callbacks or [])
        callbacks += [
            _ResumeWithinEpoch(callback)
            for callback in callbacks
            if isinstance(callback, keras.callbacks.BackupAndRestore)
        ]
        callbacks += [
            _EpochCounter(),
            _NonFiniteLossGuard(self.method.loss_names),
        ]
        return super().fit(*args, callbacks=callbacks, **kwargs)

    def make_train_function(self, force=False):
        """Wraps Keras' train function: batch skipping and synchronized BN.

        The wrapper runs in Python around each compiled call. It lets a run
        restored by `BackupAndRestore` skip the batches its backup had
        already trained, and, with `synchronized_batch_norm`, has the
        BatchNormalization layers read `synchronized=True` while the step
        is traced (the flag is set around the call, not per replica, and
        restored after it, so saved configurations never carry it).
        """
        if self.train_function is not None and not force:
            return self.train_function
        super().make_train_function(force=force)
        run_steps = self.train_function

        def train_function(iterator):
            if self._batches_to_skip > 0:
                return self._skip_batches(iterator)
            layers = self._batch_norm_layers_to_synchronize()
            for layer in layers:
                layer.synchronized = True
            try:
                return run_steps(iterator)
            finally:
                for layer in layers:
                    layer.synchronized = False

        self.train_function = train_function
        return train_function

    def _batch_norm_layers_to_synchronize(self):
        if (
            not self.synchronized_batch_norm
            or self.distribute_strategy.num_replicas_in_sync == 1
        ):
            return []
        return [
            layer
            for layer in self._flatten_layers()
            if isinstance(layer, keras.layers.BatchNormalization)
            and not layer.synchronized
        ]

    def _skip_batches(self, iterator):
        """Consumes one call's batches without training on them."""
        for _ in range(min(self.steps_per_execution, self._batches_to_skip)):
            self._batches_to_skip -= 1
            next(iterator)
        return self.get_metrics_result()

    def _maybe_symbolic_build(self, iterator=None, data_batch=None):
        """Builds the Distiller before `fit`/`evaluate` under a strategy.

        Overrides a hook of Keras' TensorFlow trainer. Under a strategy Keras
        peeks at one batch and reduces it across replicas just to learn its
        shapes; with `MultiWorkerMirroredStrategy` on two or more workers
        that reduction fails before the first step (keras-team/keras#20585).
        A Distiller built from a functional student needs no data to build;
        otherwise the first local replica's share of the batch gives the
        shapes without any communication.
        """
        strategy = self._distribute_strategy
        if strategy is None or iterator is None:
            return super()._maybe_symbolic_build(
                iterator=iterator, data_batch=data_batch
            )
        if not all(layer.built for layer in self._flatten_layers()):
            for _, _, batches in iterator:
                data_batch = keras.tree.map_structure(
                    lambda value: _first_local_value(strategy, value),
                    next(batches),
                )
                break
        with strategy.scope():
            self._symbolic_build(data_batch=data_batch)

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
            "synchronized_batch_norm": self.synchronized_batch_norm,
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


def _is_multi_worker(strategy):
    """Whether `strategy` is a MultiWorkerMirroredStrategy over 2+ workers."""
    if not isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy):
        return False
    cluster = strategy.cluster_resolver.cluster_spec().as_dict()
    return len(cluster.get("chief", [])) + len(cluster.get("worker", [])) > 1


def _first_local_value(strategy, value):
    """The first local replica's part of a distributed value (else value)."""
    if isinstance(value, tf.distribute.DistributedValues):
        return strategy.experimental_local_results(value)[0]
    return value


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
