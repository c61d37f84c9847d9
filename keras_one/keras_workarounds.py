"""Workarounds for Keras bugs: the one place that touches Keras internals.

Everything else in keras-one extends Keras through its public API
(`compute_loss`, `compute_metrics`, `train_step`, callbacks). The four
defects below cannot be worked around that way; each is isolated here, names
what it fixes, and has a test that fails without it: 1 in
tests/distribute/test_multi_worker.py, 2 in
tests/distribute/test_crash_and_resume.py, 3 in
tests/backends/test_every_backend.py, 4 in
tests/test_distiller_on_every_backend.py.

1. keras-team/keras#20585 (and tensorflow/tensorflow#72388): with a
   `MultiWorkerMirroredStrategy` of two or more workers, Keras' TensorFlow
   `fit` fails before the first step. Its `_maybe_symbolic_build` reduces a
   data batch across the workers just to learn the shapes, and it reduces
   the step's scalar logs with `strategy.reduce("MEAN", value, axis=0)`,
   which needs a batch axis. `MultiWorkerFix._maybe_symbolic_build` builds
   from the first local replica's share of a batch (no communication), and
   `multi_worker_logs` gives each log a `(1,)` shape, which reduces to the
   scalar mean over the replicas.
2. `keras.callbacks.BackupAndRestore(save_freq=<steps>)` restores the
   weights, the optimizer and the epoch of a backup taken mid-epoch, but
   starts that epoch again from its first batch (so the batches trained
   before the interruption are trained twice), and the step backups it takes
   after a restart, before the next epoch ends, record epoch 0. No upstream
   issue tracks this (Keras 3.15.1). `ResumeWithinEpoch` reads the backup's
   record, has the train function skip the batches already trained, and
   keeps the recorded epoch right, so a run killed mid-epoch and started
   again ends as an uninterrupted one (given an input order that depends
   only on the epoch).

3. PyTorch backend (Keras 3.15.1): a layer registers its variables with
   torch in a dict keyed by `variable.path` (keras/src/backend/torch/
   layer.py, `torch_params`), so of several variables with one path (the
   branches of a multi-branch student, copies with the same layer names)
   only one is registered. `Model.zero_grad()`, which Keras' torch
   `train_step` calls, then misses the others: their gradients add up
   across steps and every step after the first trains them wrongly, with
   no error. Related upstream: keras-team/keras#19908 (torch parameter
   registration). `clear_torch_gradients` clears every trainable
   variable's gradient before each step.

4. TensorFlow backend (Keras 3.15.1, keras/src/backend/tensorflow/
   trackable.py, `KerasAutoTrackable.__setattr__`): an assignment whose
   value `is` the attribute's current value returns early, so a property's
   setter never runs: `distiller.steps_per_epoch = 0` on a fresh Distiller
   (whose count reads 0) was silently accepted instead of refused. No
   upstream issue tracks this. `KerasWorkarounds.__setattr__` calls a
   property's setter directly. Its test: `test_bad_epoch_length_is_refused`
   in tests/test_distiller_on_every_backend.py (the value 0).

1, 2 and 4 apply to the TensorFlow backend only, 3 to PyTorch only; on JAX
`fit` is Keras' own.
"""

import json
import os

import keras


def _tensorflow():
    import tensorflow as tf

    return tf


def is_multi_worker(strategy):
    """Whether `strategy` is a MultiWorkerMirroredStrategy over 2+ workers."""
    if keras.backend.backend() != "tensorflow" or strategy is None:
        return False
    tf = _tensorflow()
    if not isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy):
        return False
    cluster = strategy.cluster_resolver.cluster_spec().as_dict()
    return len(cluster.get("chief", [])) + len(cluster.get("worker", [])) > 1


def multi_worker_logs(strategy, logs):
    """Shapes the step's logs so Keras can reduce them across workers.

    keras-team/keras#20585: Keras reduces each log with
    `strategy.reduce("MEAN", value, axis=0)`; a `(1,)` value per replica
    reduces to the scalar mean over the replicas.
    """
    if not is_multi_worker(strategy):
        return logs
    return {
        name: keras.ops.reshape(value, (1,)) for name, value in logs.items()
    }


class ResumeWithinEpoch(keras.callbacks.Callback):
    """Makes `keras.callbacks.BackupAndRestore` resume where it stopped.

    `Distiller.fit` adds one after each `BackupAndRestore` callback it is
    given (see the module docstring, defect 2).
    """

    def __init__(self, backup):
        super().__init__()
        self.backup = backup

    def on_train_begin(self, logs=None):
        self.model._keras_one_batches_to_skip = 0
        path = os.path.join(self.backup.backup_dir, "training_metadata.json")
        if not isinstance(self.backup.save_freq, int):
            return
        if not os.path.exists(path):
            return
        with open(path) as file:
            record = json.load(file)
        # A step backup records the index of the last batch it had trained.
        self.model._keras_one_batches_to_skip = int(record.get("batch", -1)) + 1

    def on_epoch_begin(self, epoch, logs=None):
        # Keras' callback only learns the epoch at an epoch end.
        self.backup._current_epoch = epoch

    def on_epoch_end(self, epoch, logs=None):
        self.model._keras_one_batches_to_skip = 0


def clear_torch_gradients(variables):
    """Defect 3: drops the gradient of every variable (PyTorch backend)."""
    for variable in variables:
        variable.value.grad = None


def _ours(function):
    """Whether `function` is defined in keras-one (not in Keras)."""
    module = getattr(function, "__module__", None) or ""
    return module.split(".")[0] == "keras_one"


def _first_local_value(strategy, value):
    """The first local replica's part of a distributed value (else value)."""
    tf = _tensorflow()
    if isinstance(value, tf.distribute.DistributedValues):
        return strategy.experimental_local_results(value)[0]
    return value


if keras.backend.backend() == "tensorflow":

    class KerasWorkarounds:
        """Mixin of `Distiller` holding the TensorFlow-trainer workarounds."""

        def __setattr__(self, name, value):
            # Defect 4: TensorFlow's tracking skips `self.x = self.x`,
            # property setters included; run keras-one's own setters (which
            # validate) directly. Keras' own properties go through Keras.
            attribute = getattr(type(self), name, None)
            if isinstance(attribute, property) and _ours(attribute.fset):
                attribute.fset(self, value)
                return
            super().__setattr__(name, value)

        def make_train_function(self, force=False):
            # Defect 2: skip the batches a step backup had already trained.
            if self.train_function is not None and not force:
                return self.train_function
            super().make_train_function(force=force)
            run_steps = self.train_function

            def train_function(iterator):
                skip = getattr(self, "_keras_one_batches_to_skip", 0)
                if skip > 0:
                    for _ in range(min(self.steps_per_execution, skip)):
                        self._keras_one_batches_to_skip -= 1
                        next(iterator)
                    return {}
                return run_steps(iterator)

            self.train_function = train_function
            return train_function

        def _maybe_symbolic_build(self, iterator=None, data_batch=None):
            # Defect 1 (keras-team/keras#20585).
            strategy = self._distribute_strategy
            if strategy is None or iterator is None:
                return super()._maybe_symbolic_build(
                    iterator=iterator, data_batch=data_batch
                )
            # Keras' compiled metrics are built from a batch's shapes.
            for _, _, batches in iterator:
                data_batch = keras.tree.map_structure(
                    lambda value: _first_local_value(strategy, value),
                    next(batches),
                )
                break
            with strategy.scope():
                self._symbolic_build(data_batch=data_batch)

else:

    class KerasWorkarounds:
        """Nothing to work around on this backend."""
