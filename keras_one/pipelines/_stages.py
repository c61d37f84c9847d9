"""The stages of a pipeline in its run folder: train, save, reload, resume.

Every pipeline of `keras_one.pipelines` trains its networks one stage after
the other through `Stages`: a stage is built after a seed of its own,
trained with Keras `fit`, backed up at every epoch end
(`keras.callbacks.BackupAndRestore`, as `keras-one train` backs up its
stages) and saved as `<stage>.keras` (written whole or not at all) with
`<stage>.json` as soon as it finishes. Calling the pipeline again with the
same folder loads the finished stages and resumes the interrupted one.
"""

import contextlib
import json
import os
import socket
from typing import NamedTuple

import keras

from keras_one import _atomic
from keras_one import _run_folder
from keras_one import experiment
from keras_one import recipes
from keras_one.distiller import Distiller
from keras_one.distiller import _NonFiniteLossGuard
from keras_one.methods.kd import KD

# The settings of the pipeline of a directory, written when it starts.
RECORD = "pipeline.json"


class Training(NamedTuple):
    """What every stage of a pipeline shares (the pipelines' own arguments).

    Attributes:
        build_model: a function of no arguments returning a new network.
        train_ds: the batched training dataset, of known length.
        test_ds: the batched test dataset, evaluated after each epoch.
        epochs: epochs of every stage.
        optimizer: a Keras optimizer copied for every stage, or `None` for
            the pipeline's default.
        seed: the seed of the first stage.
        callbacks: extra Keras callbacks of every stage's `fit`.
        verbose: Keras verbosity; 0 also silences the progress lines.
    """

    build_model: object
    train_ds: object
    test_ds: object
    epochs: int
    optimizer: object
    seed: int
    callbacks: tuple
    verbose: object


class StageObjective(keras.Model):
    """A stage's training model whose loss is computed from its outputs.

    The stages that are not classifiers (fitting a sparse coding, matching
    codes or feature maps) train a small `keras.Model` that runs the
    frozen teacher and the trained layers; `objective(outputs)` turns its
    outputs into the loss (the labels are not read). Subclasses implement
    `call` and `objective`. The model is only the stage's harness: the
    stage saves the network it trains, not this model.
    """

    def objective(self, outputs):
        raise NotImplementedError

    def compute_loss(
        self, x=None, y=None, y_pred=None, sample_weight=None, training=True
    ):
        return self.objective(y_pred)


class Stages:
    """The stages of one pipeline in its directory: train, save, reload.

    A context manager: entering takes the directory's lock (unless this
    process holds it: the `keras-one pipeline` command) and checks or
    writes its record; leaving releases the lock.

    Stage `i` (in the order of `settings["stages"]`) is built and trained
    after `keras.utils.set_random_seed(seed + i)`. Every trained epoch
    opens the training dataset once (`Stage.dataset`); a finished stage
    that is loaded instead opens it as many times, unread, so that every
    stage gets the data order of an uninterrupted run.

    Args:
        directory: the run folder.
        settings: the pipeline's settings (JSON), with `"stages"`, the
            names of its stages in order; recorded in `RECORD`.
        training: a `Training`.
        default_optimizer: `f(stage, total_steps)` giving a stage's
            optimizer when `training.optimizer` is `None`; default: the
            library's recipe, SGD with Nesterov momentum 0.9 from 0.1,
            cosine decay over the stage (`keras_one.experiment.make_sgd`).
    """

    def __init__(self, directory, settings, training, default_optimizer=None):
        if not callable(training.build_model):
            raise TypeError(
                "build_model must be a function returning a new "
                f"keras.Model; got {type(training.build_model).__name__}."
            )
        check_count("epochs", training.epochs, minimum=1)
        try:
            self.steps_per_epoch = len(training.train_ds)
        except TypeError:
            raise ValueError(
                "train_ds must be a batched tf.data.Dataset of known length "
                "(len(train_ds) failed): the backups count its batches."
            ) from None
        optimizer = training.optimizer
        if optimizer is not None and not isinstance(
            optimizer, keras.optimizers.Optimizer
        ):
            raise TypeError(
                "optimizer must be a keras.optimizers.Optimizer (copied for "
                f"every stage) or None; got {type(optimizer).__name__}."
            )
        self.directory = os.fspath(directory)
        self.names = list(settings["stages"])
        self.training = training._replace(
            epochs=int(training.epochs),
            seed=int(training.seed),
            callbacks=tuple(training.callbacks),
        )
        self.default_optimizer = default_optimizer or _default_sgd
        self.settings = to_json(
            {
                **settings,
                "epochs": self.training.epochs,
                "seed": self.training.seed,
                "steps_per_epoch": self.steps_per_epoch,
                "optimizer": None
                if optimizer is None
                else keras.optimizers.serialize(optimizer),
            }
        )
        self.locked = False

    # === The directory ===

    def __enter__(self):
        os.makedirs(self.directory, exist_ok=True)
        owner = _run_folder.acquire_lock(self.directory)
        mine = {"pid": os.getpid(), "host": socket.gethostname()}
        if owner is not None and owner != mine:
            raise RuntimeError(
                f"Another run (PID {owner.get('pid')} on "
                f"{owner.get('host')}) is using {self.directory}; wait for "
                "it to end or pass another directory (if no run is using "
                "it, delete "
                f"{os.path.join(self.directory, _run_folder.LOCK)})."
            )
        self.locked = owner is None
        try:
            _atomic.remove_leftovers(self.directory)
            self._check_record()
        except BaseException:
            self.__exit__()
            raise
        return self

    def __exit__(self, *exc_info):
        if self.locked:
            _run_folder.release_lock(self.directory)
            self.locked = False

    def _check_record(self):
        path = os.path.join(self.directory, RECORD)
        try:
            with open(path) as file:
                recorded = json.load(file)
        except FileNotFoundError:
            recorded = None
        except (OSError, ValueError) as error:
            raise ValueError(f"Cannot read {path} ({error}).") from None
        if recorded is None:
            found = [
                name
                for name in self.names
                if any(
                    os.path.exists(self._path(name, extension))
                    for extension in (".keras", ".json")
                )
            ]
            if found:
                raise ValueError(
                    f"{self.directory} holds {found[0]}.keras or .json but "
                    f"no {RECORD}: it is not this pipeline's folder. Pass "
                    "another directory."
                )
            _atomic.write_json(path, self.settings, indent=2)
            return
        if not isinstance(recorded, dict):
            recorded = {}
        differ = [
            key
            for key in sorted(set(recorded) | set(self.settings))
            if recorded.get(key) != self.settings.get(key)
        ]
        if differ:
            details = "; ".join(
                f"{key}: {_short(self.settings.get(key))} here, "
                f"{_short(recorded.get(key))} there"
                for key in differ
            )
            raise ValueError(
                f"{self.directory} holds a pipeline with other settings "
                f"({details}). Pass the settings it recorded in {RECORD} "
                "to resume it, or another directory for a new run."
            )

    def _path(self, name, extension):
        return os.path.join(self.directory, name + extension)

    # === Stages ===

    def load(self, name):
        """A new copy of the finished stage `name`, read from its file."""
        return keras.saving.load_model(self._path(name, ".keras"))

    def train(
        self, name, teacher=None, alpha=None, temperature=None, build=None
    ):
        """Trains the classifier of stage `name` (or loads it if finished).

        Args:
            name: the stage.
            teacher: `None` to train on the labels, or a function returning
                the teacher for KD (called only if the stage trains).
            alpha, temperature: KD's.
            build: a function returning the network to train (default:
                `training.build_model`), e.g. one loading an earlier stage
                to start from it.

        Returns:
            `(model, scores)`: the stage's network and its
            `{"accuracy", "history", "train_seconds"}`.
        """

        def compiled(network):
            if teacher is None:
                network.compile(
                    optimizer=self._optimizer(name),
                    loss=keras.losses.SparseCategoricalCrossentropy(
                        from_logits=True
                    ),
                    metrics=[
                        keras.metrics.SparseCategoricalAccuracy("accuracy")
                    ],
                )
                # The Distiller's `fit` puts the same guard first itself.
                return network, [_NonFiniteLossGuard()]
            method = KD(teacher(), alpha=alpha, temperature=temperature)
            model = Distiller(network, method, name=f"{name}_distiller")
            model.compile(optimizer=self._optimizer(name))
            return model, []

        return self.fit(name, build or self.training.build_model, compiled)

    def fit_objective(self, name, build, objective):
        """Trains a stage whose loss is a `StageObjective` (or loads it).

        Args:
            name: the stage.
            build: a function returning the network the stage trains and
                saves.
            objective: a function of that network returning the
                `StageObjective` model to fit (it holds the network).

        Returns:
            `(network, scores)`, the scores with `"loss"`, the loss on
            `test_ds` after the last epoch.
        """

        def compiled(network):
            model = objective(network)
            model.compile(optimizer=self._optimizer(name))
            # Built now: BackupAndRestore restores into built models only.
            shape = self.training.train_ds.element_spec[0].shape[1:]
            model(keras.ops.zeros((1, *shape)))
            return model, [_NonFiniteLossGuard()]

        return self.fit(name, build, compiled)

    def fit(self, name, build, compiled):
        """Trains stage `name` with Keras `fit` (or loads it if finished).

        Args:
            name: the stage.
            build: a function returning the network the stage saves.
            compiled: a function of that network returning the compiled
                model to fit and the callbacks to put first.

        Returns:
            `(network, scores)`: `scores` holds the stage's `"history"`,
            `"train_seconds"`, and `"accuracy"` (a classifier's test
            accuracy after the last epoch) or `"loss"` (the test loss).
        """
        model_path = self._path(name, ".keras")
        scores_path = self._path(name, ".json")
        index = self.names.index(name)
        label = f"stage {index + 1} of {len(self.names)}, {name}"
        training = self.training
        if os.path.exists(scores_path) and os.path.exists(model_path):
            with open(scores_path) as file:
                scores = json.load(file)
            for _ in range(training.epochs):
                iter(training.train_ds)  # the data order of a trained stage
            self._print(f"{label}: finished before, loaded {model_path}")
            return self.load(name), scores
        keras.utils.set_random_seed(training.seed + index)
        network = build()
        if not isinstance(network, keras.Model):
            raise TypeError(
                "build_model must return a keras.Model; got "
                f"{type(network).__name__}."
            )
        network.name = name
        stage = _run_folder.Stage(self.directory, name)
        done = stage.restore()
        resumed = f", resumed after epoch {done}" if done else ""
        self._print(f"Training {label}{resumed}...")
        train_ds = stage.dataset(training.train_ds)
        model, first = compiled(network)
        model.fit(
            train_ds,
            epochs=training.epochs,
            validation_data=training.test_ds,
            shuffle=False,  # the datasets shuffle themselves
            verbose=training.verbose,
            callbacks=[*first, *stage.callbacks(), *training.callbacks],
        )
        # The model first; the scores, written last, mark it finished.
        _atomic.save_model(network, model_path)
        history = stage.history()
        # The evaluation on test_ds after the last epoch, of the final
        # weights (every epoch's is in the history, resumed ones too).
        key = "accuracy" if "val_accuracy" in history else "loss"
        scores = {
            key: history[f"val_{key}"][-1],
            "history": history,
            "train_seconds": stage.train_seconds(),
        }
        _atomic.write_json(scores_path, scores, indent=2, default=float)
        stage.finish()
        with contextlib.suppress(OSError):  # other stages' backups
            os.rmdir(os.path.join(self.directory, _run_folder.BACKUP))
        self._print(f"{name}: test {key} {scores[key]:.4f}")
        return network, scores

    def teacher(self, teacher):
        """The teacher: a given trained model, or stage `teacher` trained.

        Args:
            teacher: a trained `keras.Model` (used as is), or a function
                returning a new one, trained on the labels as the stage
                `"teacher"` (or loaded if finished).

        Returns:
            `(load, model, accuracy)`: a function returning the teacher (a
            new copy from its file, for a trained one), the teacher, and
            its test accuracy.
        """
        if isinstance(teacher, keras.Model):
            accuracy = recipes.accuracy(teacher, self.training.test_ds)
            return lambda: teacher, teacher, accuracy
        model, scores = self.train("teacher", build=teacher)
        return lambda: self.load("teacher"), model, scores["accuracy"]

    def _optimizer(self, name):
        if self.training.optimizer is None:
            steps = self.training.epochs * self.steps_per_epoch
            return self.default_optimizer(name, steps)
        return keras.optimizers.deserialize(
            keras.optimizers.serialize(self.training.optimizer)
        )

    def _print(self, line):
        if self.training.verbose != 0:
            print(line)


def _default_sgd(name, total_steps):
    return experiment.make_sgd(0.1, total_steps)


def built(build):
    """The network of `build`, a function returning a new `keras.Model`."""
    if isinstance(build, keras.Model) or not callable(build):
        raise TypeError(
            "build_model (and a teacher to train) must be a function "
            "returning a new keras.Model; got "
            f"{type(build).__name__}."
        )
    return build()


def teacher_settings(pipeline, teacher, names, plan, alpha, temperature):
    """The settings of a pipeline that distils a teacher through features.

    The stages are `names`, after `"teacher"` if the teacher trains (stage
    1); a given trained teacher is recorded by name and size. `plan` holds
    the checked layer choices, `alpha` and `temperature` the KD stage's.
    """
    if isinstance(teacher, keras.Model):
        stages = list(names)
        record = {"name": teacher.name, "parameters": teacher.count_params()}
    else:
        stages, record = ["teacher", *names], "stage 1"
    return {
        "pipeline": pipeline,
        "stages": stages,
        "teacher": record,
        **plan,
        "alpha": alpha,
        "temperature": temperature,
    }


def check_count(name, value, minimum):
    valid = isinstance(value, int) and not isinstance(value, bool)
    if not valid or value < minimum:
        raise ValueError(
            f"{name} must be an integer >= {minimum}; got {value!r}."
        )


def check_kd(alpha, temperature):
    if not 0.0 <= float(alpha) <= 1.0:
        raise ValueError(f"alpha must lie in [0, 1]; got {alpha}.")
    if not float(temperature) > 0:
        raise ValueError(f"temperature must be > 0; got {temperature}.")


def to_json(value):
    """`value` as JSON reads it back (tuples as lists, objects as text)."""
    return json.loads(json.dumps(value, default=str))


def _short(value):
    text = json.dumps(value, default=str)
    return text if len(text) <= 60 else text[:57] + "..."
