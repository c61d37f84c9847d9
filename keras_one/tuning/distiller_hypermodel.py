import keras
import keras_tuner as kt

from keras_one import methods
from keras_one.distiller import Distiller
from keras_one.tuning.best_branch_metric import BestBranchMetric

# Method config keys that are not method knobs: the base Layer's, and the
# two the hypermodel tunes under their own names.
_NOT_KNOBS = ("name", "trainable", "dtype", "temperature", "rampup_epochs")
_OBJECTIVES = {
    "ensemble": "val_ensemble_accuracy",
    "best_branch": "val_best_branch_accuracy",
}


class DistillerHyperModel(kt.HyperModel):
    """A keras-tuner search space over a distillation method and its student.

    Every trial builds a student with `method.build_student(...)`, wraps it
    in a `keras_one.Distiller` with a fresh method and compiles it with SGD
    (momentum 0.9, as the papers train). The searched hyperparameters:

    - `num_branches`: branches of the student (`hp` name `num_branches`).
    - `temperature`: the method's `T`.
    - `rampup_fraction`: the distillation ramp-up as a fraction of
      `epochs`, turned into the method's `rampup_epochs` by
      `keras_one.methods.rampup_epochs` (`round(fraction * epochs)`);
      ONE's official 80 of 300 epochs is 0.267.
    - `learning_rate` and `weight_decay` (the builder's coupled L2 decay).
    - any numeric argument of the method's `get_config()`, through
      `method_hyperparameters` (e.g. `{"diversity_weight": (0.1, 2.0)}` for
      MDE, `{"alpha": (0.5, 0.95)}` for KD). `method_knobs` lists them.

    Each of these accepts a search space: `(low, high)` for a uniform range
    (integers if both bounds are), `(low, high, "log")` for a log-uniform
    one, a list for a choice, a number for a fixed value, a function
    `hp -> value` for anything else, or `None` to leave the method's or the
    builder's default alone (no hyperparameter is created). The method's
    defaults are those of its `info` (`keras_one.methods.MethodInfo`): its
    number of branches, and its ramp-up fraction scaled to `epochs`.

    The objective is a metric the Distiller logs:
    `val_ensemble_accuracy` (`objective="ensemble"`, the default) or
    `val_best_branch_accuracy` (`objective="best_branch"`, logged by
    `keras_one.tuning.BestBranchMetric`, which `fit` always adds first to
    the callbacks). Pass `hypermodel.objective` to the tuner; the search
    needs validation data.

    Args:
        method: a method name (`"one"`, `"mde"`, ...; see
            `keras_one.methods.names()`) or a `keras_one.methods.Method`
            subclass.
        model: the network, a `keras_one.models.get` name such as
            `"resnet32"`.
        num_classes: number of classes.
        input_shape: shape of one input image.
        epochs: epochs of a full training run: the default of `fit` and the
            scale of `rampup_fraction` (tuners such as Hyperband that train
            fewer epochs keep the full-run ramp-up).
        num_branches: search space of the number of branches. `"auto"`:
            2 to 4 (3 to 5 for OKDDip, which needs 3), or the method's own
            choice (`None`) for methods whose student has one network or
            one branch per teacher (KD, SOKD, EKD: `info.student` is
            `"single"` or `info.teachers` is `"per_branch"`).
        temperature: search space of the temperature.
        rampup_fraction: search space of the ramp-up fraction.
        learning_rate: search space of the SGD learning rate.
        weight_decay: search space of the coupled weight decay.
        method_hyperparameters: dict of method argument -> search space.
        method_options: fixed method arguments (e.g. `{"teacher": net}` for
            KD).
        train_ds: the training data, for a method that reads arguments
            from it (`keras_one.methods.data_arguments`: MCL-OKD, whose
            `info.example_index` asks for the labels by example index); it
            is read once, here. Load it with
            `keras_one.methods.data_options(method)` (MCL-OKD:
            `keras_one.data.load(..., with_index=True)`), and search on it.
            `None` for the other methods, or to give those arguments in
            `method_options`.
        model_options: fixed builder arguments (e.g. `{"branch_stage": 2}`).
        optimizer: `"sgd"` (momentum `momentum`), `"adam"`, or a function
            `learning_rate -> keras.optimizers.Optimizer`.
        momentum: SGD momentum.
        objective: `"ensemble"`, `"best_branch"`, or a `kt.Objective`.
        metrics: metrics compiled for every branch and the ensemble;
            default `["accuracy"]`.
        name: name of the hypermodel.
        tunable: whether keras-tuner may tune it (see `kt.HyperModel`).

    Example:

    ```python
    hypermodel = DistillerHyperModel("one", model="resnet20", epochs=30)
    tuner = keras_tuner.RandomSearch(
        hypermodel, objective=hypermodel.objective, max_trials=10,
        directory="tuning", project_name="one")
    tuner.search(train_ds, validation_data=val_ds)
    best = tuner.get_best_models(1)[0]   # a compiled keras_one.Distiller
    ```
    """

    def __init__(
        self,
        method="one",
        model="resnet32",
        num_classes=10,
        input_shape=(32, 32, 3),
        epochs=300,
        num_branches="auto",
        temperature=(1.0, 6.0),
        rampup_fraction=(0.0, 0.5),
        learning_rate=(0.01, 0.3, "log"),
        weight_decay=(1e-5, 1e-3, "log"),
        method_hyperparameters=None,
        method_options=None,
        model_options=None,
        train_ds=None,
        optimizer="sgd",
        momentum=0.9,
        objective="ensemble",
        metrics=None,
        name=None,
        tunable=True,
    ):
        super().__init__(name=name, tunable=tunable)
        self.method_class = _method_class(method)
        self.model = model
        self.num_classes = num_classes
        self.input_shape = tuple(input_shape)
        if int(epochs) < 1:
            raise ValueError(f"epochs must be >= 1; got {epochs}.")
        self.epochs = int(epochs)
        method_options = dict(method_options or {})
        if train_ds is not None:
            method_options = {
                **methods.data_arguments(self.method_class, train_ds),
                **method_options,
            }
        elif self.method_class.info.example_index and (
            "example_labels" not in method_options
        ):
            raise ValueError(
                f"{self.method_class.__name__} keeps state per training "
                "example: pass the training data to search on, "
                "DistillerHyperModel(..., train_ds=train_ds), loaded with "
                "keras_one.data.load(..., with_index=True)."
            )
        self.method_options = method_options
        self.model_options = dict(model_options or {})
        self.method_knobs = _method_knobs(
            self.method_class, self.method_options
        )
        self.method_hyperparameters = dict(method_hyperparameters or {})
        unknown = sorted(
            set(self.method_hyperparameters) - set(self.method_knobs)
        )
        if unknown:
            raise ValueError(
                f"{self.method_class.__name__} has no tunable arguments "
                f"{unknown}. Its numeric arguments are {self.method_knobs} "
                "(temperature and ramp-up have their own arguments: "
                "temperature=, rampup_fraction=)."
            )
        if num_branches == "auto":
            num_branches = _default_branches(self.method_class)
        min_branches = self.method_class.min_branches
        if _lowest(num_branches) is not None and (
            _lowest(num_branches) < min_branches
        ):
            raise ValueError(
                f"{self.method_class.__name__} needs at least {min_branches} "
                f"branches, but num_branches={num_branches!r} goes lower."
            )
        self.space = {
            "num_branches": num_branches,
            "temperature": temperature,
            "rampup_fraction": rampup_fraction,
            "learning_rate": learning_rate,
            "weight_decay": weight_decay,
        }
        for key, spec in {**self.space, **self.method_hyperparameters}.items():
            _check_spec(key, spec)
        if not (optimizer in ("sgd", "adam") or callable(optimizer)):
            raise ValueError(
                "optimizer must be 'sgd', 'adam' or a function "
                f"learning_rate -> optimizer; got {optimizer!r}."
            )
        self.optimizer = optimizer
        self.momentum = momentum
        self.metrics = list(metrics or ["accuracy"])
        if isinstance(objective, str):
            if objective not in _OBJECTIVES:
                raise ValueError(
                    f"objective must be one of {sorted(_OBJECTIVES)} or a "
                    f"keras_tuner.Objective; got {objective!r}."
                )
            if not any(m in ("accuracy", "acc") for m in self.metrics):
                raise ValueError(
                    f"objective={objective!r} ranks trials by accuracy: "
                    "include 'accuracy' in metrics, or pass a "
                    "keras_tuner.Objective on one of your metrics."
                )
            objective = kt.Objective(_OBJECTIVES[objective], direction="max")
        self.objective = objective

    def build(self, hp):
        """Builds and compiles a `keras_one.Distiller` for one trial.

        Args:
            hp: the trial's `keras_tuner.HyperParameters`.

        Returns:
            A compiled `keras_one.Distiller`.
        """
        values = {
            key: _define(hp, key, spec) for key, spec in self.space.items()
        }
        method_kwargs = dict(self.method_options)
        for key, spec in self.method_hyperparameters.items():
            method_kwargs[key] = _define(hp, key, spec)
        if values["temperature"] is not None:
            method_kwargs["temperature"] = values["temperature"]
        rampup_epochs = methods.rampup_epochs(
            self.method_class, self.epochs, values["rampup_fraction"]
        )
        if values["rampup_fraction"] is None:
            method_kwargs.setdefault("rampup_epochs", rampup_epochs)
        else:
            method_kwargs["rampup_epochs"] = rampup_epochs
        method = methods.create(self.method_class, **method_kwargs)

        model_kwargs = dict(self.model_options)
        if values["num_branches"] is not None:
            model_kwargs["num_branches"] = values["num_branches"]
        if values["weight_decay"] is not None:
            model_kwargs["weight_decay"] = values["weight_decay"]
        student = method.build_student(
            model=self.model,
            num_classes=self.num_classes,
            input_shape=self.input_shape,
            **model_kwargs,
        )
        distiller = Distiller(student, method)
        distiller.compile(
            optimizer=self._optimizer(values["learning_rate"]),
            metrics=self.metrics,
        )
        # A built optimizer lets keras-tuner's checkpoints (saved after
        # training) restore its state too, not only the weights.
        distiller.optimizer.build(distiller.trainable_variables)
        return distiller

    def fit(self, hp, model, *args, **kwargs):
        """Trains one trial's Distiller, logging the best branch's metric.

        Defaults `epochs` to the hypermodel's `epochs`, and puts a
        `BestBranchMetric` first in the callbacks.

        Args:
            hp: the trial's hyperparameters.
            model: the Distiller returned by `build`.
            *args: `Distiller.fit` positional arguments.
            **kwargs: `Distiller.fit` keyword arguments.

        Returns:
            The `History` of the training.
        """
        name = self.objective.name
        if "ensemble" in name and model.num_branches == 1:
            raise ValueError(
                f"The objective {name!r} does not exist for a single-branch "
                "student: use DistillerHyperModel(..., "
                "objective='best_branch')."
            )
        kwargs.setdefault("epochs", self.epochs)
        callbacks = list(kwargs.pop("callbacks", None) or [])
        best_branch = BestBranchMetric("accuracy")
        return model.fit(*args, callbacks=[best_branch] + callbacks, **kwargs)

    def _optimizer(self, learning_rate):
        if learning_rate is None:
            learning_rate = 0.1 if self.optimizer == "sgd" else 0.001
        if callable(self.optimizer):
            return self.optimizer(learning_rate)
        if self.optimizer == "adam":
            return keras.optimizers.Adam(learning_rate)
        return keras.optimizers.SGD(learning_rate, momentum=self.momentum)


def _method_class(method):
    if isinstance(method, str):
        return methods.get(method)
    if isinstance(method, type) and issubclass(method, methods.Method):
        return method
    raise TypeError(
        "method must be a method name such as 'one' or a "
        "keras_one.methods.Method subclass; got "
        f"{method!r}. Pass fixed constructor arguments as method_options."
    )


def _method_knobs(method_class, method_options):
    """The numeric arguments of the method's config, with their defaults."""
    try:
        config = method_class(**method_options).get_config()
    except TypeError as error:
        raise TypeError(
            f"Could not build {method_class.__name__}(**method_options) "
            f"({error}). Pass its required arguments, e.g. "
            "method_options={'teacher': teacher_model} for KD."
        ) from error
    return {
        key: value
        for key, value in config.items()
        if key not in _NOT_KNOBS
        and isinstance(value, (int, float))
        and not isinstance(value, bool)
    }


def _default_branches(method_class):
    """The `"auto"` branch range of a method."""
    info = method_class.info
    if info.student == "single" or info.teachers == "per_branch":
        return None
    low = max(2, info.min_branches)
    return (low, low + 2)


def _check_spec(name, spec):
    if spec is None or callable(spec):
        return
    if isinstance(spec, bool):
        raise ValueError(f"{name}: a search space cannot be a bool ({spec}).")
    if isinstance(spec, (int, float, list)):
        if isinstance(spec, list) and not spec:
            raise ValueError(f"{name}: an empty list of choices.")
        return
    if isinstance(spec, tuple) and len(spec) in (2, 3):
        low, high = spec[:2]
        sampling = spec[2] if len(spec) == 3 else "linear"
        if sampling not in ("linear", "log"):
            raise ValueError(
                f"{name}: sampling must be 'linear' or 'log'; got {sampling!r}."
            )
        if not low <= high:
            raise ValueError(f"{name}: low {low} is above high {high}.")
        if sampling == "log" and low <= 0:
            raise ValueError(f"{name}: log sampling needs low > 0.")
        return
    raise ValueError(
        f"{name}: a search space is (low, high), (low, high, 'log'), a list "
        f"of choices, a number, a function of hp, or None; got {spec!r}."
    )


def _define(hp, name, spec):
    """Registers `spec` under `name` in `hp` and returns its value."""
    if spec is None:
        return None
    if callable(spec):
        return spec(hp)
    if isinstance(spec, list):
        return hp.Choice(name, spec)
    if isinstance(spec, tuple):
        low, high = spec[:2]
        sampling = spec[2] if len(spec) == 3 else "linear"
        if low == high:
            return hp.Fixed(name, low)
        if isinstance(low, int) and isinstance(high, int):
            return hp.Int(name, low, high, sampling=sampling)
        return hp.Float(name, float(low), float(high), sampling=sampling)
    return hp.Fixed(name, spec)


def _lowest(spec):
    if spec is None or callable(spec):
        return None
    if isinstance(spec, list):
        return min(spec)
    if isinstance(spec, tuple):
        return spec[0]
    return spec
