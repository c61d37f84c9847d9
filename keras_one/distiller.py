"""The `Distiller`: trains a multi-branch student with a distillation method.

It extends Keras through its public training API only: `compute_loss` and
`compute_metrics` (which each backend's own `train_step` calls), a
`train_step` that calls Keras' own and then the method's state update, and
callbacks. So it trains on the TensorFlow, JAX and PyTorch backends, with
each backend's own distribution engine (`tf.distribute`,
`keras.distribution`). The two Keras bugs it works around live in
`keras_one.keras_workarounds`.
"""

import math

import keras
from keras import ops

from keras_one import export
from keras_one.export import describe_weights
from keras_one.export import nonfinite_weights
from keras_one.keras_workarounds import KerasWorkarounds
from keras_one.keras_workarounds import ResumeWithinEpoch
from keras_one.keras_workarounds import clear_torch_gradients
from keras_one.keras_workarounds import multi_worker_logs
from keras_one.methods.method import Method
from keras_one.student_outputs import LOGIT_KEYS
from keras_one.student_outputs import check_logits
from keras_one.student_outputs import normalize_outputs
from keras_one.student_outputs import symbolic_io


class _EpochLength(keras.callbacks.Callback):
    """Tells the Distiller how many steps an epoch of `fit` has.

    The method's schedules (ramp-up) follow the optimizer's step count;
    this converts it into epochs. It runs before the first step.
    """

    def on_train_begin(self, logs=None):
        steps = self.params.get("steps")
        if steps:
            self.model.steps_per_epoch = steps
        self.model._check_schedule_inputs()


class _NonFiniteInputs(keras.metrics.Metric):
    """Counts the batches whose inputs hold NaN or inf (training, evaluation).

    Updated by the Distiller's `compute_loss`, which also makes the logged
    loss of such a batch NaN (NaN pixels can vanish in a ReLU and leave the
    loss finite). It logs nothing (`result` is empty) and Keras' per-epoch
    resets leave its counts alone: `_NonFiniteLossGuard` reads them when a
    loss is not finite and at the start and end of each evaluation, never
    per step.
    """

    def __init__(self, name="nonfinite_inputs"):
        super().__init__(name=name)
        self.training = self.add_variable(
            (), initializer="zeros", name="training"
        )
        self.evaluation = self.add_variable(
            (), initializer="zeros", name="evaluation"
        )

    def update_state(self, finite, training):
        count = self.training if training else self.evaluation
        count.assign_add(ops.cast(ops.logical_not(finite), count.dtype))

    def reset_state(self):
        pass  # cumulative: the guard compares counts

    def result(self):
        return {}

    def counts(self):
        """`(training, evaluation)` batch counts, as Python floats."""
        # (Not `v.value`: under tf.distribute, a sum over the replicas is
        # read through a tensor.)
        return tuple(
            float(ops.convert_to_numpy(ops.convert_to_tensor(v)))
            for v in (self.training, self.evaluation)
        )


def _inputs_finite(x):
    """A scalar boolean tensor: whether every float input of `x` is finite."""
    tensors = [
        t for t in keras.tree.flatten(x) if t is not None and _is_float(t.dtype)
    ]
    if not tensors:
        return None
    flags = [ops.all(ops.isfinite(t)) for t in tensors]
    return flags[0] if len(flags) == 1 else ops.all(ops.stack(flags))


def _is_float(dtype):
    return keras.backend.is_float_dtype(keras.backend.standardize_dtype(dtype))


_CAUSES = (
    "a learning rate too high for the start of training (lower it, add a "
    "warm-up, or clip gradients, e.g. SGD(..., clipnorm=1.0)); inputs far "
    "from unit scale (normalize them); labels outside [0, num_classes) (on "
    "the JAX backend they make the loss NaN); sample weights holding NaN or "
    "inf; float16 overflow (under the 'mixed_float16' policy keep the loss "
    "scaling that compile() adds, or use 'mixed_bfloat16')"
)


class _NonFiniteLossGuard(keras.callbacks.Callback):
    """Stops `fit` and `evaluate` with a clear error on NaN or inf.

    In training it reads the logged running loss of the epoch, which stays
    finite until a step's loss is not, after every step (the last one
    included); at each epoch's end it also checks the weights, which the
    last update may have made NaN with a finite loss, before any later
    callback (a backup) saves them. At the end of an evaluation (the
    validation of `fit` too) it checks the loss and, for a Distiller, that
    the inputs were finite. A Distiller makes the logged loss NaN for a
    batch whose inputs are not finite and counts such batches
    (`_NonFiniteInputs`), so the error names the inputs, not the weights,
    when the data is at fault. Nothing here changes the compiled step (XLA
    drops in-graph checks) and it is safe for Keras' asynchronous callback
    dispatch: per step it reads only the logs Keras computes anyway; the
    weights and the input counts are read once per epoch, per evaluation,
    and when it raises.

    It must come first among the callbacks of `fit`, so that nothing saves
    NaN weights before it raises.

    Args:
        loss_names: the method's loss terms, also logged.
    """

    async_safe = True

    def __init__(self, loss_names=()):
        super().__init__()
        self.loss_names = ("loss", *loss_names)
        self.epoch = 0
        self.fitting = False
        self.training_inputs = self.evaluation_inputs = 0.0

    # === Training ===

    def on_train_begin(self, logs=None):
        self.fitting = True
        self.training_inputs = self._input_counts()[0]

    def on_train_end(self, logs=None):
        self.fitting = False

    def on_epoch_begin(self, epoch, logs=None):
        self.epoch = epoch

    def on_train_batch_end(self, batch, logs=None):
        self._check_training(logs, f"epoch {self.epoch}, batch {batch}")

    def on_epoch_end(self, epoch, logs=None):
        where = f"the end of epoch {epoch}"
        self._check_training(logs, where)
        bad = nonfinite_weights(self.model)
        if bad:
            self.model.stop_training = True
            checked = getattr(self.model, "_nonfinite_inputs", None)
            cause = "the last update diverged" + (
                ""
                if checked is not None
                else ", or inputs holding NaN or inf made it NaN (check "
                "them with np.isfinite)"
            )
            raise nonfinite_error(
                f"The weights hold NaN or infinite values at {where} "
                f"({describe_weights(bad)}) although the training loss was "
                f"finite: {cause}.",
                f"Usual causes and fixes: {_CAUSES}.",
            )

    def _check_training(self, logs, where):
        logs = logs or {}
        bad = [
            name
            for name in self.loss_names
            if name in logs and not math.isfinite(float(logs[name]))
        ]
        if not bad:
            return
        self.model.stop_training = True
        inputs, weights = self._diagnosis(training=True)
        head = (
            f"The training loss became {float(logs.get('loss', 'nan'))} at "
            f"{where} (non-finite: {', '.join(bad)}); training cannot "
            "recover from a NaN or infinite loss."
        )
        if inputs:
            then = (
                f" The weights, updated from them, now hold NaN or inf in "
                f"{describe_weights(weights)}."
                if weights
                else ""
            )
            raise nonfinite_error(
                f"{head} The inputs are at fault, not the training: "
                f"{_batches(inputs)} of training inputs held NaN or inf "
                f"values.{then}",
                "Check the data and drop or repair those examples "
                "(np.isfinite(x).all(), or dataset.filter with "
                "tf.reduce_all(tf.math.is_finite(images))), then train "
                "again.",
                inputs_at_fault=True,
            )
        if inputs is None:
            found = (
                "The inputs of that batch, or of an earlier one, may hold "
                "NaN or inf (check them with np.isfinite), or the training "
                "diverged."
            )
        else:
            found = "The inputs were finite."
        if weights:
            found += (
                " The weights now hold NaN or inf in "
                f"{describe_weights(weights)}."
            )
        else:
            found += " The weights are still finite."
        raise nonfinite_error(
            f"{head} {found}", f"Usual causes and fixes: {_CAUSES}."
        )

    # === Evaluation (the validation of `fit` included) ===

    def on_test_begin(self, logs=None):
        self.evaluation_inputs = self._input_counts()[1]

    def on_test_end(self, logs=None):
        logs = logs or {}
        name = "validation" if self.fitting else "evaluation"
        where = f" at the end of epoch {self.epoch}" if self.fitting else ""
        inputs = self._input_batches(training=False)
        loss = float(logs.get("loss", 0.0))
        if not inputs and math.isfinite(loss):
            return
        self.model.stop_training = True
        weights = nonfinite_weights(self.model)
        if inputs:
            also = (
                f"; the weights hold NaN or inf too, in "
                f"{describe_weights(weights)}"
                if weights
                else ""
            )
            data = "validation_data" if self.fitting else "the data evaluated"
            raise nonfinite_error(
                f"The {name} inputs hold NaN or infinite values{where} "
                f"({_batches(inputs)}), so the {name} loss and metrics "
                f"mean nothing{also}.",
                f"Check {data} and drop or repair those examples "
                "(np.isfinite(x).all()).",
                inputs_at_fault=True,
            )
        if weights:
            raise nonfinite_error(
                f"The {name} loss is {loss}{where}: the weights hold NaN or "
                f"infinite values in {describe_weights(weights)}, so the "
                "model predicts nothing.",
                f"Train it again. Usual causes and fixes: {_CAUSES}.",
            )
        inputs = (
            "its inputs were finite"
            if inputs is not None
            else "check its inputs with np.isfinite"
        )
        raise nonfinite_error(
            f"The {name} loss is {loss}{where} although the weights are "
            f"finite ({inputs}): the logits overflowed, or the labels or "
            "sample weights are at fault.",
            "Labels must lie in [0, num_classes) (outside, they make the "
            "loss NaN on the JAX backend) and sample weights be finite.",
        )

    # === State, read when needed ===

    def _input_counts(self):
        check = getattr(self.model, "_nonfinite_inputs", None)
        if check is None:
            return (0.0, 0.0)
        _sync_jax_state(self.model)
        return check.counts()

    def _diagnosis(self, training):
        """`(input batches, weight paths)` that are not finite."""
        return self._input_batches(training), nonfinite_weights(self.model)

    def _input_batches(self, training):
        """Batches with non-finite inputs since training (or evaluation) began.

        `None` for a model that does not check its inputs (not a
        Distiller).
        """
        if getattr(self.model, "_nonfinite_inputs", None) is None:
            return None
        counts = self._input_counts()
        if training:
            return counts[0] - self.training_inputs
        return counts[1] - self.evaluation_inputs


def nonfinite_error(summary, fix, inputs_at_fault=False):
    """The `FloatingPointError` of `_NonFiniteLossGuard`.

    Its message is `summary` then `fix`; both are also attributes, with
    `inputs_at_fault` (the data holds NaN or inf), for callers that name
    fixes of their own (the command line names its flags).
    """
    error = FloatingPointError(f"{summary} {fix}")
    error.summary = summary
    error.fix = fix
    error.inputs_at_fault = inputs_at_fault
    return error


def _batches(count):
    count = int(count)
    return f"{count} batch" + ("" if count == 1 else "es")


def _sync_jax_state(model):
    """JAX: puts the values of the running `fit`/`evaluate` in the variables.

    Keras' JAX trainer keeps them apart during an epoch and lets callbacks
    ask for them (`jax_state_sync`).
    """
    sync = getattr(model, "jax_state_sync", None)
    if sync is not None:
        sync()


@keras.saving.register_keras_serializable(package="keras_one")
class Distiller(KerasWorkarounds, keras.Model):
    """Trains a student network with an online or offline distillation method.

    The student is a Keras model that returns logits, one per branch: a dict
    `{"branch_logits": [z_1, ..., z_N], "ensemble_logits": z_e, ...}` as
    built by `keras_one.models`, a list of logits, or a single logits tensor.
    A subclassed student, or a `Sequential` without an `Input`, is built by
    the first `fit` (or `evaluate`, ...) from the shapes of its data.
    The `method` (`keras_one.methods.ONE()`, ...) turns those outputs into
    the loss. The Distiller trains both with the usual `compile`, `fit`,
    `train_on_batch`, `evaluate` and `predict`, on the TensorFlow, JAX and
    PyTorch backends (it overrides only Keras' public `compute_loss`,
    `compute_metrics` and `train_step`); it honours `sample_weight`, the
    student's regularization losses, callbacks, `tf.distribute` strategies
    and `keras.distribution` on JAX (the loss is averaged over the global
    batch, so a strategy gives the same updates as one device).

    The method's schedules (its ramp-up, in epochs) follow the number of
    training steps taken, `current_epoch = floor(steps / steps_per_epoch)`:
    `fit` sets `steps_per_epoch` from its data; before `train_on_batch` or
    a custom loop set `distiller.steps_per_epoch` yourself (a method with a
    ramp-up refuses to train without it). The step count is a variable of
    the Distiller, saved and restored with it, so a resumed run continues
    the schedule where it stopped.

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
    - `fit` and `evaluate` stop with a `FloatingPointError` as soon as the
      loss, the inputs or (at an epoch's end) the weights hold NaN or inf;
      it says which (inputs are named as inputs) and the usual fixes, and
      comes before any callback (a backup) saves NaN weights.
    - With `keras.callbacks.BackupAndRestore(backup_dir, save_freq=steps)`
      a run killed mid-epoch and started again resumes after the last
      trained batch (Keras' callback alone restarts the epoch: see
      `keras_one.keras_workarounds`; TensorFlow backend).
    - Methods with state tied to the student (EMA copies of its weights)
      create it in `Method.build_state` and update it in
      `Method.after_train_step`, which the Distiller calls after every
      optimizer step on every backend.
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
            over the global batch under a multi-replica `tf.distribute`
            strategy (an all-reduce per layer and step), not over each
            replica's share. Their saved configuration is unchanged, except
            in checkpoints written during `fit`. No effect on one device,
            nor on JAX, whose `keras.distribution` always computes the
            statistics of the global batch.
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
        self._steps_per_epoch = keras.Variable(
            0.0,
            trainable=False,
            name="steps_per_epoch",
            aggregation="only_first_replica",
        )
        self._train_steps = keras.Variable(
            0,
            dtype="int32",
            trainable=False,
            name="train_steps",
            aggregation="only_first_replica",
        )
        self._updates_after_step = (
            type(method).after_train_step is not Method.after_train_step
        )
        self._scales_updates = (
            type(method).learning_rate_multipliers
            is not Method.learning_rate_multipliers
        )
        self._compiled_metric_ids = None
        self._pending_compile = None
        io = symbolic_io(student)
        if io is not None:
            self._wire(*io)

    def _wire(self, inputs, raw_outputs):
        """Checks the student's outputs and builds the method on them."""
        outputs = normalize_outputs(raw_outputs)
        check_logits(outputs, self.student)
        self.method.check_outputs(outputs, self.student)
        self.method.build_state(self.student)
        self.num_branches = len(outputs["branch_logits"])
        self.num_classes = outputs["branch_logits"][0].shape[-1]
        self.method(inputs, outputs)
        self.built = True
        if self._scales_updates:
            self._update_scales(ops.zeros((), "float32"))
        if self._pending_compile is not None:
            # `compile` came before the student was built.
            pending, self._pending_compile = self._pending_compile, None
            self.compile(**pending)

    def build(self, input_shape):
        """Builds a Distiller whose student is not built yet.

        For a subclassed student, or a `Sequential` without an `Input`:
        `input_shape` is that of a batch of images, `(None, height, width,
        channels)`, or a list of them (one input per view). `fit`,
        `evaluate`, `train_on_batch`, `test_on_batch` and `predict` do it
        themselves from the shapes of their data, except for data of
        unknown shapes (a Python generator).
        """
        views = isinstance(input_shape, (list, tuple)) and all(
            isinstance(shape, (list, tuple)) for shape in input_shape
        )
        if views and input_shape:
            inputs = [keras.KerasTensor(tuple(shape)) for shape in input_shape]
        else:
            inputs = keras.KerasTensor(tuple(input_shape))
        self._wire(inputs, self.student(inputs))

    def _lock_state(self):
        # Like Keras' functional models, a Distiller built by Keras (from
        # the data, for a subclassed student) still takes `compile`'s
        # metrics.
        pass

    def _build_from_data(self, x, required=True):
        """Builds the Distiller of a student not built yet from `x`'s shapes.

        A subclassed student, or a `Sequential` without an `Input`, is
        built on the first call of `fit` (or `evaluate`, ...) from the
        shapes of its data: arrays, tensors, a `tf.data.Dataset` or a
        `keras.utils.PyDataset`, of one image or of one per view.

        Data with fewer inputs than a built student takes (one image for
        PCL's views, or without MCL-OKD's example index) is refused here,
        before Keras runs the step, with a one-line error naming the data
        option that gives them (`_check_views`).
        """
        if self.built:
            # (Not a PyDataset: reading its first batch again may cost.)
            if not isinstance(x, keras.utils.PyDataset):
                inputs = _symbolic_inputs(x)
                if inputs is not None:
                    _check_views(self.student, inputs, self.method)
            return
        inputs = _symbolic_inputs(x)
        if inputs is None:
            if not required:
                return
            raise ValueError(
                f"The student {self.student.name!r} is not built yet (a "
                "subclassed model, or a Sequential without a keras.Input), "
                "and the shape of its images cannot be read from data of "
                f"type {type(x).__name__}. Build it first: pass the data as "
                "NumPy arrays, tensors or a batched tf.data.Dataset, call "
                "distiller.build((None, *image_shape)), or start the "
                "student with keras.Input(image_shape)."
            )
        self._wire(inputs, self.student(inputs))

    # === Schedules ===

    @property
    def steps_per_epoch(self):
        """Steps in an epoch: converts the step count into epochs.

        The method's schedules (its ramp-up, in epochs) follow the
        Distiller's count of training steps, `epoch = floor(steps /
        steps_per_epoch)`, so `fit`, `train_on_batch` and a custom loop
        train identically. `fit` sets it from its data; for
        `train_on_batch` or a custom loop, set it before training
        (`distiller.steps_per_epoch = 390`). It is saved with the weights.
        """
        return int(ops.convert_to_numpy(self._steps_per_epoch.value))

    @steps_per_epoch.setter
    def steps_per_epoch(self, steps):
        valid = isinstance(steps, (int, float)) and not isinstance(steps, bool)
        if not valid or steps != int(steps) or steps < 1:
            raise ValueError(
                f"steps_per_epoch must be a positive integer; got {steps!r}."
            )
        self._steps_per_epoch.assign(float(steps))

    @property
    def current_epoch(self):
        """The epoch the method's schedules are at (a float tensor).

        `floor(training steps taken / steps_per_epoch)`: the Distiller
        counts its training steps in a variable of its own (the optimizer's
        `iterations` is not visible inside a JAX step), saved with it.
        """
        return self._epoch_of(self._train_steps)

    def _epoch_of(self, steps):
        steps = ops.cast(steps, "float32")
        return ops.floor(steps / ops.maximum(self._steps_per_epoch, 1.0))

    def _check_schedule_inputs(self):
        if float(getattr(self.method, "rampup_epochs", 0) or 0) <= 0:
            return
        if self.steps_per_epoch < 1:
            raise ValueError(
                f"{type(self.method).__name__} ramps its distillation weight "
                f"up over {self.method.rampup_epochs} epochs, so the "
                "Distiller must know how many steps an epoch has: set "
                "`distiller.steps_per_epoch = N` before train_on_batch or a "
                "custom loop, or pass `steps_per_epoch` to fit when the "
                "data's length is unknown."
            )

    # === Forward pass and loss ===

    def call(self, inputs, training=None):
        _check_views(self.student, inputs, self.method)
        return normalize_outputs(self.student(inputs, training=training))

    def _labels(self, labels, check=True):
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
        if not check:
            return labels, None
        valid = ops.logical_and(
            ops.greater_equal(labels, 0), ops.less(labels, self.num_classes)
        )
        message = (
            f"Labels must lie in [0, {self.num_classes}) for a student with "
            f"{self.num_classes} classes: check the labels, or build the "
            "student with more classes."
        )
        if keras.backend.backend() == "tensorflow":
            import tensorflow as tf

            # The labels pass through the check, so that no op reading
            # them (the cross-entropy, whose own error names no fix) can
            # run before it.
            with tf.control_dependencies(
                [tf.debugging.Assert(tf.reduce_all(valid), [message])]
            ):
                labels = tf.identity(labels)
        elif keras.backend.backend() == "torch":
            # Eager: the values are known here. (JAX's compiled step cannot
            # raise; `compute_loss` makes its loss NaN instead.)
            if not bool(ops.convert_to_numpy(ops.all(valid))):
                raise ValueError(message)
        return labels, valid

    def compute_loss(
        self, x=None, y=None, y_pred=None, sample_weight=None, training=True
    ):
        """The method's loss of the student's outputs `y_pred`.

        Runs the method (its teachers, bridges, ...) on `x` and the
        student's outputs, sums its per-example terms (weighted by
        `sample_weight`) and averages them over the batch (the global batch
        under `tf.distribute`: see the class docstring), adds its
        batch-independent terms and the regularization losses, and logs
        every term. Labels outside `[0, num_classes)` stop training: an
        error on TensorFlow and PyTorch, a NaN loss (caught by `fit`'s
        guard, which names them) on JAX. A batch whose inputs hold NaN or
        inf logs a NaN loss, and the guard of `fit` and `evaluate` says
        the inputs are at fault.
        """
        labels, valid = self._labels(y)
        outputs = dict(y_pred)
        outputs.update(self.method(x, outputs, training=training))
        epoch = self.current_epoch
        if training:
            self._train_steps.assign_add(1)
        terms = self.method.compute_losses(labels, outputs, epoch)
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
        # by the (global) batch size; the terms that do not depend on the
        # batch and the regularization are added once.
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
        # Read once: `self.losses` walks every layer and builds each
        # regularizer's ops again (tens of milliseconds of tracing).
        for value in self.losses:
            penalty = penalty + ops.cast(value, "float32")
        if keras.backend.backend() == "jax":
            poison = ops.where(ops.all(valid), 0.0, float("nan"))
            penalty = penalty + ops.cast(poison, "float32")
        if self._compiled_metric_ids is not None:
            logged = example_sum / ops.maximum(batch_size, 1.0) + penalty
            finite = _inputs_finite(x)
            if finite is not None:
                # Inputs holding NaN or inf are counted, and make the
                # logged loss NaN (not the objective): `fit`'s guard then
                # stops at this batch and names the inputs, also when the
                # network hid them (a ReLU can turn NaN into 0).
                self._nonfinite_inputs.update_state(finite, training)
                poison = ops.where(finite, 0.0, float("nan"))
                logged = logged + ops.cast(poison, "float32")
            # This replica's mean loss, weighted by its example count: the
            # exact global mean also when the replicas' shares differ (Keras'
            # own tracker would log the scaled objective below).
            self._loss_mean.update_state(logged, sample_weight=batch_size)
            for tracker in self._term_trackers:
                tracker.update_state(
                    terms[tracker.name], sample_weight=batch_size
                )
        return self._global_batch_objective(example_sum, batch_size, penalty)

    def _global_batch_objective(self, example_sum, batch_size, penalty):
        """This replica's share of the loss averaged over the global batch.

        Under a `tf.distribute` strategy the replicas' gradients are summed,
        so each replica differentiates its examples' summed loss divided by
        the global batch size (all-reduced: the last batch may split
        unevenly), plus its share of the batch-independent terms. On one
        device, and on JAX (whose `keras.distribution` computes on the global
        batch), this is the mean loss plus the penalties.
        """
        replicas = 1
        if keras.backend.backend() == "tensorflow":
            import tensorflow as tf

            replicas = tf.distribute.get_strategy().num_replicas_in_sync
            if replicas > 1:
                context = tf.distribute.get_replica_context()
                batch_size = context.all_reduce("sum", batch_size)
        return example_sum / ops.maximum(batch_size, 1.0) + penalty / replicas

    # === Steps ===

    def train_step(self, *args):
        """Keras' own step, then the method's updates.

        After the optimizer's step come the learning rates of the method's
        own modules (`Method.learning_rate_multipliers`), then its state
        (`Method.after_train_step`).
        """
        if keras.backend.backend() == "jax":
            state, data = args
            scales = self._stateless_scales(state)
            logs, new_state = super().train_step(state, data)
            if scales:
                new_state = _scale_jax_steps(scales, state, new_state)
            if self._updates_after_step:
                new_state = self._stateless_after_step(new_state)
            return logs, new_state
        if keras.backend.backend() == "torch":
            clear_torch_gradients(self.trainable_variables)
        scales = ()
        if self._scales_updates:
            scales = self._update_scales(self.current_epoch)
            # The values before the step (a copy: PyTorch updates in place).
            scales = [
                (v, m, ops.copy(ops.stop_gradient(v.value))) for v, m in scales
            ]
        logs = super().train_step(*args)
        for variable, multiplier, old in scales:
            new = ops.stop_gradient(variable.value)
            variable.assign(old + ops.cast(multiplier, old.dtype) * (new - old))
        if self._updates_after_step:
            self.method.after_train_step(self.student)
        return logs

    def _update_scales(self, epoch):
        """The `(variable, multiplier)` pairs the method asks for."""
        multipliers = self.method.learning_rate_multipliers(epoch)
        name = type(self.method).__name__
        if not isinstance(multipliers, dict):
            raise TypeError(
                f"{name}.learning_rate_multipliers must return a dict "
                f"{{layer: multiplier}}; got {type(multipliers).__name__}."
            )
        trained = {id(v) for v in self.trainable_variables}
        scales = []
        for layer, multiplier in multipliers.items():
            if not isinstance(layer, keras.Layer):
                raise TypeError(
                    f"{name}.learning_rate_multipliers must map layers to "
                    f"multipliers; got a key of type {type(layer).__name__}."
                )
            if isinstance(multiplier, (int, float)) and not (
                multiplier >= 0 and math.isfinite(multiplier)
            ):
                raise ValueError(
                    f"{name}.learning_rate_multipliers gives layer "
                    f"{layer.name!r} the multiplier {multiplier}; it must "
                    "be a finite number >= 0."
                )
            for variable in layer.trainable_variables:
                if id(variable) not in trained:
                    raise ValueError(
                        f"{name}.learning_rate_multipliers lists layer "
                        f"{layer.name!r}, whose weight {variable.path!r} "
                        "this Distiller does not train: list the method's "
                        "own trainable modules or the student's layers."
                    )
                scales.append((variable, multiplier))
        return scales

    def _stateless_scales(self, state):
        """JAX: `[(index in trainable_variables, multiplier)]` at `state`."""
        if not self._scales_updates:
            return []
        trainable, non_trainable = state[0], state[1]
        mapping = list(zip(self.trainable_variables, trainable, strict=True))
        mapping += zip(self.non_trainable_variables, non_trainable, strict=True)
        with keras.StatelessScope(state_mapping=mapping):
            scales = self._update_scales(self.current_epoch)
        index = {id(v): i for i, v in enumerate(self.trainable_variables)}
        return [(index[id(v)], m) for v, m in scales]

    def _stateless_after_step(self, state):
        trainable, non_trainable, optimizer_state, metrics = state
        mapping = list(zip(self.trainable_variables, trainable, strict=True))
        mapping += zip(self.non_trainable_variables, non_trainable, strict=True)
        with keras.StatelessScope(state_mapping=mapping) as scope:
            self.method.after_train_step(self.student)
        updated = [
            scope.get_current_value(v) for v in self.non_trainable_variables
        ]
        non_trainable = [
            value if new is None else new
            for new, value in zip(updated, non_trainable, strict=True)
        ]
        return trainable, non_trainable, optimizer_state, metrics

    def predict(self, x, batch_size=None, verbose="auto", steps=None, **kwargs):
        """Keras' `predict`: the logits of every branch and of the ensemble.

        Returns:
            A dict (a `Predictions`): `"branch_logits"`, a list of
            `(examples, classes)` NumPy arrays, one per branch, and
            `"ensemble_logits"` when the student has an ensemble. Pick one
            before NumPy reductions: `np.argmax(outputs["ensemble_logits"],
            -1)`; `np.argmax(outputs, -1)` raises a `TypeError` that says
            so (on a plain dict NumPy would silently answer 0).
        """
        self._build_from_data(x, required=False)
        outputs = super().predict(
            x, batch_size=batch_size, verbose=verbose, steps=steps, **kwargs
        )
        return Predictions(outputs)

    def predict_step(self, *args):
        """Keras' own step, keeping the logits (branches and ensemble)."""
        if keras.backend.backend() == "jax":
            outputs, state = super().predict_step(*args)
            return _logits_only(outputs), state
        return _logits_only(super().predict_step(*args))

    # === Metrics ===

    def compile(
        self,
        optimizer="rmsprop",
        metrics=None,
        loss=None,
        weighted_metrics=None,
        **kwargs,
    ):
        """Configures training; the method supplies the loss.

        Args:
            optimizer: a Keras optimizer or its name.
            metrics: metrics computed for every branch and for the ensemble,
                as names or `keras.metrics.Metric` objects. Defaults to
                `["accuracy"]` (sparse categorical accuracy).
            loss: not accepted: the method defines the loss.
            weighted_metrics: not accepted: every metric of `metrics` is
                weighted by `sample_weight` when one is given.
            **kwargs: other `keras.Model.compile` arguments
                (`jit_compile`, `steps_per_execution`, `run_eagerly`, ...).

        For a student not built yet (a subclassed model, or a `Sequential`
        without an `Input`), the per-branch metrics need its outputs: the
        compilation completes when the first `fit` (or `evaluate`, ...)
        builds the Distiller from its data.
        """
        if loss is not None:
            raise ValueError(
                "Distiller.compile() takes no `loss`: the method defines it. "
                "Pass the method's options to its constructor instead."
            )
        if weighted_metrics is not None:
            raise ValueError(
                "Distiller.compile() takes no `weighted_metrics`: the "
                "`metrics` are weighted by `sample_weight` when fit or "
                "evaluate gets one. Pass them as `metrics`."
            )
        if not self.built:
            self._pending_compile = dict(
                optimizer=optimizer, metrics=metrics, **kwargs
            )
            return
        ids = list(metrics or ["accuracy"])
        prefixes = [f"branch_{i}_" for i in range(self.num_branches)]
        prefixes = [""] if self.num_branches == 1 else [*prefixes, "ensemble_"]
        # Keras' own compiled metrics (weighted by `sample_weight`), one
        # list per output, named `branch_0_accuracy`, ...,
        # `ensemble_accuracy`: callbacks find them by these names, so
        # `EarlyStopping("val_ensemble_accuracy")` knows to maximize it.
        per_output = [[_make_metric(m, p) for m in ids] for p in prefixes]
        if len(prefixes) == 1:
            # One output: a flat list (Keras < 3.14 refuses a nested one).
            per_output = per_output[0]
        super().compile(
            optimizer=optimizer, weighted_metrics=per_output, **kwargs
        )
        self._compiled_metric_ids = ids
        self._nested_metric_ids = {
            id(metric)
            for layer in _all_layers(self)
            if layer is not self and isinstance(layer, keras.Model)
            for metric in layer.metrics
        }
        self._loss_mean = keras.metrics.Mean(name="loss")
        self._term_trackers = [
            keras.metrics.Mean(name=name) for name in self.method.loss_names
        ]
        self._nonfinite_inputs = _NonFiniteInputs()
        if keras.backend.backend() == "tensorflow" and not self.optimizer.built:
            # Without a strategy, Keras' TensorFlow `fit` builds the
            # optimizer inside the first traced step; built here instead, a
            # small model's first epoch took about a third less time (a
            # ResNet-8 ONE: 7.5 s instead of 11.6), with the same weights.
            # (Change which weights are trainable before `compile`, as Keras
            # asks.)
            self.optimizer.build(self.trainable_variables)

    def get_compile_config(self):
        config = dict(super().get_compile_config() or {})
        for key in ("loss", "loss_weights", "weighted_metrics", "metrics"):
            config.pop(key, None)
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
        """`loss`, Keras' compiled metrics, then each method term.

        The metrics of compiled models inside the Distiller (a teacher
        trained with `fit` before) are not the Distiller's: left out.
        """
        if self._compiled_metric_ids is None:
            return super().metrics
        # Keras' own `loss` tracker is replaced by the Distiller's, which
        # is exact under `tf.distribute` (see `compute_loss`).
        metrics = [
            m
            for m in super().metrics
            if id(m) not in self._nested_metric_ids
            and m.name != "loss"
            and m not in self._term_trackers
            and not isinstance(m, _NonFiniteInputs)
        ]
        # The input check logs nothing; Keras keeps its state in step with
        # the other metrics' (JAX threads it through the compiled step).
        return [
            self._loss_mean,
            *metrics,
            *self._term_trackers,
            self._nonfinite_inputs,
        ]

    def compute_metrics(self, x, y, y_pred, sample_weight=None):
        """Updates each output's metrics; returns every metric's value."""
        labels, _ = self._labels(y, check=False)  # checked in compute_loss
        predictions = list(y_pred["branch_logits"])
        if len(predictions) == 1:
            y, y_pred = labels, predictions[0]
        else:
            if "ensemble_logits" in y_pred:
                predictions.append(y_pred["ensemble_logits"])
            else:
                predictions.append(ops.mean(ops.stack(predictions), axis=0))
            y, y_pred = [labels] * len(predictions), predictions
        logs = super().compute_metrics(x, y, y_pred, sample_weight)
        return multi_worker_logs(self._distribute_strategy_or_none(), logs)

    def _distribute_strategy_or_none(self):
        if keras.backend.backend() != "tensorflow":
            return None
        return self.distribute_strategy

    # === Training loop ===

    def fit(self, *args, callbacks=None, **kwargs):
        self._build_from_data(_first_argument(args, kwargs))
        callbacks = list(callbacks or [])
        callbacks += [
            ResumeWithinEpoch(callback)
            for callback in callbacks
            if isinstance(callback, keras.callbacks.BackupAndRestore)
        ]
        # The guard first: it raises before any callback (a backup) saves
        # NaN weights.
        callbacks = [
            _NonFiniteLossGuard(self.method.loss_names),
            *callbacks,
            _EpochLength(),
        ]
        with self._synchronized_batch_norm():
            return super().fit(*args, callbacks=callbacks, **kwargs)

    def evaluate(self, *args, callbacks=None, **kwargs):
        """Keras' `evaluate`; a NaN or infinite loss raises.

        A `FloatingPointError` says whether the inputs or the weights hold
        NaN or inf (the loss and metrics of such an evaluation mean
        nothing).
        """
        self._build_from_data(_first_argument(args, kwargs))
        if not isinstance(callbacks, keras.callbacks.CallbackList):
            # (The validation of `fit` passes fit's callbacks, guard in.)
            callbacks = [
                _NonFiniteLossGuard(self.method.loss_names),
                *(callbacks or []),
            ]
        with self._synchronized_batch_norm():
            return super().evaluate(*args, callbacks=callbacks, **kwargs)

    def train_on_batch(self, *args, **kwargs):
        self._build_from_data(_first_argument(args, kwargs))
        self._check_schedule_inputs()
        return super().train_on_batch(*args, **kwargs)

    def test_on_batch(self, *args, **kwargs):
        self._build_from_data(_first_argument(args, kwargs))
        return super().test_on_batch(*args, **kwargs)

    def _synchronized_batch_norm(self):
        """Has the BatchNormalization layers use global-batch statistics.

        Sets Keras' own `synchronized=True` on them for the duration of the
        call (TensorFlow backend, more than one replica), and restores it
        after, so saved configurations keep the user's setting (a
        checkpoint written during `fit` carries `synchronized=True`).
        """
        return _TemporaryAttribute(self._batch_norm_layers_to_synchronize())

    def _batch_norm_layers_to_synchronize(self):
        if (
            not self.synchronized_batch_norm
            or keras.backend.backend() != "tensorflow"
            or self.distribute_strategy.num_replicas_in_sync == 1
        ):
            return []
        return [
            layer
            for layer in _all_layers(self)
            if isinstance(layer, keras.layers.BatchNormalization)
            and not layer.synchronized
        ]

    # === Export ===

    def get_branch_model(self, index, name=None, preprocessing=None):
        """Returns branch `index` alone as a plain Keras model.

        The model maps the student's input to that branch's logits, shares
        the trained weights, is made of built-in Keras layers only (it saves
        as `.keras` and loads without keras_one), and computes nothing of
        the other branches.

        Args:
            index: the branch, 0 to `num_branches - 1`.
            name: the model's name.
            preprocessing: `None` (the default): the model takes images
                normalized as the training pipelines gave them. A
                `keras_one.data.DatasetInfo` (or its `preprocessing`
                dict): the model takes the dataset's raw images (e.g.
                uint8 0-255 pixels, the digits' 0-16 values) and applies
                the pipelines' scaling and per-channel normalization
                itself, with built-in layers (see
                `keras_one.export.with_preprocessing`).

        Example:

        ```python
        train_ds, test_ds, info = keras_one.data.load("digits")
        ...  # build, compile and fit the distiller
        branch = distiller.get_branch_model(0, preprocessing=info)
        branch.predict(raw_images)  # logits
        ```
        """
        if not 0 <= index < self.num_branches:
            raise ValueError(
                f"Branch index {index} is out of range: the student has "
                f"{self.num_branches} branches (0 to {self.num_branches - 1})."
            )
        name = name or f"{self.student.name}_branch_{index}"
        model = export.plain_keras_model(
            self.student,
            lambda outputs: normalize_outputs(outputs)["branch_logits"][index],
            name=name,
        )
        if preprocessing is None:
            return model
        return export.with_preprocessing(model, preprocessing, name=name)

    def get_ensemble_model(self, name=None, preprocessing=None):
        """Returns the ensemble (all branches) as a plain Keras model.

        Its output is the student's `ensemble_logits` (for ONE, the gated
        sum) or, for students without an ensemble head, the mean of the
        branch logits. With `preprocessing`, a model with several inputs
        (one view per branch) takes one raw image, given to every input.

        Args:
            name: the model's name.
            preprocessing: `None` (the default): the model takes images
                normalized as the training pipelines gave them. A
                `keras_one.data.DatasetInfo` (or its `preprocessing`
                dict): the model takes the dataset's raw images (e.g.
                uint8 0-255 pixels, the digits' 0-16 values) and applies
                the pipelines' scaling and per-channel normalization
                itself, with built-in layers (see
                `keras_one.export.with_preprocessing`).

        Example:

        ```python
        train_ds, test_ds, info = keras_one.data.load("digits")
        ...  # build, compile and fit the distiller
        ensemble = distiller.get_ensemble_model(preprocessing=info)
        ensemble.predict(raw_images)  # logits
        ```
        """

        def select(outputs):
            outputs = normalize_outputs(outputs)
            if "ensemble_logits" in outputs:
                return outputs["ensemble_logits"]
            return keras.layers.Average(name="ensemble_logits")(
                outputs["branch_logits"]
            )

        name = name or f"{self.student.name}_ensemble"
        model = export.plain_keras_model(self.student, select, name=name)
        if preprocessing is None:
            return model
        return export.with_preprocessing(model, preprocessing, name=name)

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


class _TemporaryAttribute:
    """Sets `synchronized = True` on `layers` inside a `with` block."""

    def __init__(self, layers):
        self.layers = layers

    def __enter__(self):
        for layer in self.layers:
            layer.synchronized = True

    def __exit__(self, *exc_info):
        for layer in self.layers:
            layer.synchronized = False


def _scale_jax_steps(scales, old_state, new_state):
    """JAX: scales the optimizer's step of the variables in `scales`."""
    old, new = old_state[0], list(new_state[0])
    for index, multiplier in scales:
        step = new[index] - old[index]
        new[index] = old[index] + ops.cast(multiplier, step.dtype) * step
    return (type(new_state[0])(new), *new_state[1:])


def _first_argument(args, kwargs):
    """The data (`x`) given to `fit`, `evaluate`, ...: first, or `x=`."""
    return args[0] if args else kwargs.get("x")


def _symbolic_inputs(x):
    """`KerasTensor`s of the images of the data `x`, or `None` if unknown.

    From arrays and tensors, a tuple, list or dict of them (one image per
    view), a `tf.data.Dataset` of `(images, labels, ...)` batches, or a
    `keras.utils.PyDataset`; not from Python generators.
    """
    if isinstance(x, keras.utils.PyDataset):
        try:
            x = x[0]
        except Exception:
            return None
        if isinstance(x, tuple):
            x = x[0]
    spec = getattr(x, "element_spec", None)  # a tf.data.Dataset
    if spec is not None:
        x = spec[0] if isinstance(spec, tuple) else spec

    def symbolic(value):
        shape = getattr(value, "shape", None)
        dtype = getattr(value, "dtype", None)
        if shape is None or dtype is None or len(shape) < 1:
            raise TypeError
        dtype = keras.backend.standardize_dtype(dtype)
        return keras.KerasTensor((None, *tuple(shape)[1:]), dtype=dtype)

    if isinstance(x, (list, tuple, dict)) and x:
        structure = list(x) if isinstance(x, tuple) else x
    else:
        structure = x
    try:
        return keras.tree.map_structure(symbolic, structure)
    except (TypeError, ValueError):
        return None


def _check_views(student, inputs, method=None):
    """Refuses one image per example for a student with several inputs.

    A student with one input per view (PCL), or with the example index as
    a second input (a method with `info.example_index`, MCL-OKD): the
    error names the data option that gives what it takes.
    """
    views = len(getattr(student, "inputs", None) or ())
    given = len(inputs) if isinstance(inputs, (list, tuple, dict)) else 1
    if views <= 1 or given == views:
        return
    info = getattr(method, "info", None)
    if info is not None and info.example_index:
        raise ValueError(
            f"The student takes {views} inputs, the images and each "
            f"example's index, but was given {given}: "
            f"{type(method).__name__} keeps state per training example, so "
            "load the data with keras_one.data.load(..., with_index=True), "
            "whose batches are ({'image': images, 'example_index': "
            "indices}, labels)."
        )
    raise ValueError(
        f"The student takes {views} inputs but was given {given}. For a "
        "student with one view per branch (PCL), load the data with "
        f"keras_one.data.load(..., views={views}) or pass a tuple of "
        f"{views} image arrays."
    )


class Predictions(dict):
    """What `Distiller.predict` returns: a dict of logits, not an array.

    `"branch_logits"` (a list, one array per branch) and, when the student
    has one, `"ensemble_logits"`. It is a plain `dict` in every way but one:
    NumPy refuses to turn it into an array (`np.argmax(predictions, -1)`
    would otherwise answer 0 for every image, silently) and says which
    entry to take instead.
    """

    def __array__(self, *args, **kwargs):
        keys = ", ".join(repr(key) for key in self)
        raise TypeError(
            "Distiller.predict returns a dict of logits (keys "
            f"{keys}), not an array: take one entry, e.g. "
            "np.argmax(outputs['ensemble_logits'], -1) or "
            "outputs['branch_logits'][0], or predict with a single model "
            "from distiller.get_branch_model(0)."
        )


def _logits_only(outputs):
    return {k: outputs[k] for k in LOGIT_KEYS if k in outputs}


def _all_layers(layer):
    """`layer` and every layer nested in it, through public attributes."""
    seen = set()
    stack = [layer]
    while stack:
        layer = stack.pop()
        if id(layer) in seen:
            continue
        seen.add(id(layer))
        yield layer
        children = list(layer.layers) if isinstance(layer, keras.Model) else []
        for value in vars(layer).values():
            values = value if isinstance(value, (list, tuple)) else [value]
            children += [v for v in values if isinstance(v, keras.Layer)]
        stack.extend(children)


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
