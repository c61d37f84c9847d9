"""The `keras-one` command: train, evaluate and export distilled networks."""

import argparse
import contextlib
import json
import os
import shlex
import sys
import warnings

import keras_one_cli

# The parser is defined in keras_one_cli, outside this package, so that
# `keras-one --help` needs no TensorFlow; here it takes the live registry's
# method names (methods registered at run time included).


def build_parser():
    from keras_one import methods

    return keras_one_cli.build_parser(methods.names())


def _add_train_arguments(train):
    from keras_one import methods

    keras_one_cli._add_train_arguments(train, methods.names())


def _load_dataset(args, batch_size, augment=True, views=1, with_index=False):
    """`keras_one.data.load` of `--dataset`; errors as `keras-one: error:`.

    `views` and `with_index` are what a method's data needs
    (`keras_one.methods.data_options`): pass them as `**options`.
    """
    from keras_one import data

    options = _data_options(args)
    if views > 1:
        options["views"] = views
    if with_index:
        options["with_index"] = True
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", UserWarning)
            loaded = data.load(
                args.dataset,
                batch_size=batch_size,
                augment=augment,
                seed=getattr(args, "seed", None),
                **options,
            )
    except ConnectionError as error:  # a tfds dataset, offline
        raise _offline(args, error) from None
    except (ValueError, FileNotFoundError, TypeError, OSError) as error:
        raise SystemExit(f"keras-one: error: {error}") from None
    _print_warnings(caught)
    return loaded


def _data_options(args):
    """The `keras_one.data.load` options of the data flags."""
    options = {}
    if args.data_dir:
        options["data_dir"] = args.data_dir
    if args.manual_dir:
        options["manual_dir"] = args.manual_dir
    if getattr(args, "image_size", None):
        if not os.path.isdir(args.dataset):
            raise _error(
                "--image-size applies to an image-folder --dataset only "
                f"({args.dataset} is not a folder): leave it out"
            )
        options["image_size"] = tuple(args.image_size)
    return options


_WARNED = set()


def _print_warnings(caught):
    """Prints the data's warnings (an empty class, mixed image sizes...) as
    one `keras-one: warning:` line each, once per process."""
    for warning in caught:
        if not issubclass(warning.category, UserWarning):
            warnings.warn_explicit(
                warning.message, warning.category, warning.filename,
                warning.lineno,
            )  # fmt: skip
            continue
        message = " ".join(str(warning.message).split())
        if message not in _WARNED:
            _WARNED.add(message)
            print(f"keras-one: warning: {message}", file=sys.stderr)


def _offline(args, error):
    """The error of a tfds `--dataset` that cannot be downloaded."""
    reason = str(error).split(" This machine looks offline")[0]
    reason = reason.split(" to download the tensorflow-datasets")[0]
    reason = " ".join(reason.split()).rstrip(".")
    reason = reason[:1].lower() + reason[1:]
    if len(reason) > 240:
        reason = reason[:237] + "..."
    where = (
        f"--data-dir {args.data_dir}"
        if args.data_dir
        else "the default --data-dir (~/tensorflow_datasets)"
    )
    return _error(
        f"--dataset {args.dataset} is not prepared in {where} and cannot be "
        f"downloaded, this machine looks offline ({reason}): pass --data-dir "
        "DIR holding a prepared copy (run tfds.builder(NAME)."
        "download_and_prepare() on a connected machine and copy "
        "~/tensorflow_datasets/NAME), or another --dataset: a "
        "class-per-folder image folder, an .npz file or digits"
    )


def _check_method_arguments(args):
    """Refuses a branch count or teachers the method cannot use.

    Runs before anything is loaded or trained; every message names the
    flag to change.
    """
    from keras_one import methods

    info = methods.get(args.method).info
    method = f"--method {args.method}"
    teachers = args.teacher or []
    if info.student == "single" and args.branches not in (None, 1):
        raise _error(
            f"{method} trains a single network: leave out --branches "
            f"(got --branches {args.branches})"
        )
    if args.branches is not None and args.branches < info.min_branches:
        raise _error(
            f"{method} needs at least {info.min_branches} branches: "
            f"--branches {args.branches} is too few (default: "
            f"{info.branches})"
        )
    rampup = args.rampup_epochs
    # (Not for a run being resumed: it continues as it was started.)
    resuming = getattr(args, "resume", None) is not None
    if rampup is not None and rampup > args.epochs and not resuming:
        raise _error(
            f"--rampup-epochs {rampup} is longer than the training "
            f"(--epochs {args.epochs}): the distillation weight would never "
            "reach its full value; give at most --epochs, or leave it out "
            "(default: the method's fraction of --epochs)"
        )
    if info.teachers == "one" and len(teachers) != 1:
        raise _error(
            f"{method} needs exactly one pre-trained --teacher PATH.keras "
            f"(got {len(teachers)})"
        )
    if info.teachers == "per_branch":
        if not teachers:
            raise _error(
                f"{method} needs pre-trained teachers: --teacher PATH.keras, "
                "once per branch"
            )
        if args.branches is not None and args.branches != len(teachers):
            raise _error(
                f"{method} trains one branch per teacher: {len(teachers)} "
                f"--teacher flags but --branches {args.branches}; leave out "
                "--branches"
            )
    if info.teachers == "several" and not teachers:
        raise _error(
            f"{method} needs pre-trained teachers: --teacher PATH.keras, "
            "once per teacher (one or more)"
        )
    if info.teachers == "none" and teachers:
        raise _error(f"{method} takes no --teacher")
    for path in teachers:
        if path.startswith(HUB_PREFIX):
            _check_hub_teacher(path)
            continue
        if not os.path.isfile(path):
            raise _error(
                f"--teacher {path}: no such file (a keras-hub classifier "
                f"preset is written {HUB_PREFIX}<preset or preset folder>)"
            )
        if not path.endswith(".keras"):
            raise _error(
                f"--teacher {path} is not a .keras file: save the teacher "
                "with model.save('teacher.keras'), or pass a keras-hub "
                f"classifier preset as {HUB_PREFIX}<preset or preset folder>"
            )


# `--teacher hub:<preset>`: a keras-hub classifier preset, or preset folder.
HUB_PREFIX = "hub:"


def _check_hub_teacher(path):
    """Refuses a malformed `--teacher hub:...` (or one without keras-hub)."""
    from keras_one import _hub

    preset = path[len(HUB_PREFIX) :]
    if not preset:
        raise _error(
            f"--teacher {path} names no preset: write "
            f"{HUB_PREFIX}<keras-hub classifier preset> (e.g. "
            f"{HUB_PREFIX}resnet_18_imagenet) or {HUB_PREFIX}<preset folder>"
        )
    try:
        _hub.check_preset_name(preset, f"--teacher {path}")
    except (ValueError, ImportError) as error:
        # Its messages are one line naming the flag and the fix: unabridged.
        raise _error(" ".join(str(error).split())) from None


def _load_teachers(args, info=None):
    """The `--teacher` models; a keras-hub preset reads the data's images
    through its own preprocessing, `info`'s normalization undone first."""
    return [
        _load_hub_teacher(path, info)
        if path.startswith(HUB_PREFIX)
        else _load_model(path, name=f"--teacher {path}")
        for path in args.teacher or []
    ]


def _load_hub_teacher(path, info):
    """`--teacher hub:<preset>` as a `pretrained_teacher`, or one line."""
    from keras_one import _hub
    from keras_one.models import pretrained_teacher

    _check_hub_teacher(path)
    feature = f"--teacher {path}"
    try:
        keras_hub = _hub.keras_hub_module(feature)
        classifier = _hub.from_preset(
            keras_hub.models.ImageClassifier,
            path[len(HUB_PREFIX) :],
            feature,
            local_fix=(
                f"a preset folder saved with save_to_preset() "
                f"(--teacher {HUB_PREFIX}./folder) or a .keras file "
                "(--teacher teacher.keras)"
            ),
        )
        return pretrained_teacher(
            classifier, None if info is None else info.preprocessing
        )
    except (ValueError, TypeError, ImportError) as error:
        raise _error(" ".join(str(error).split())) from None


def _make_method(args, teachers=None, data_arguments=None):
    """The `--method` of `args`, constructed as its description asks.

    `data_arguments`: what the method reads from its training data
    (`keras_one.methods.data_arguments`, MCL-OKD's labels by example
    index), for the methods that read any.
    """
    from keras_one import methods

    method_class = methods.get(args.method)
    kwargs = {}
    if args.temperature is not None:
        kwargs["temperature"] = args.temperature
    kwargs["rampup_epochs"] = (
        methods.rampup_epochs(method_class, args.epochs)
        if args.rampup_epochs is None
        else args.rampup_epochs
    )
    _check_method_arguments(args)
    if teachers is None:
        teachers = _load_teachers(args)
    kwargs.update(data_arguments or {})
    return methods.create(method_class, teachers=teachers, **kwargs)


def _check_student(args, info, teachers, data_arguments=None):
    """Builds the method's student once, before any training.

    A teacher that does not fit the data (classes, image shape) or a
    student the method refuses is reported before the baseline trains.
    """
    import keras

    from keras_one import Distiller
    from keras_one import experiment
    from keras_one.methods.teacher_method import select_logits

    num_classes, input_shape = experiment.classes_and_shape(info)
    for path, teacher in zip(args.teacher or [], teachers, strict=True):
        try:
            spec = teacher.compute_output_spec(
                keras.KerasTensor((None, *input_shape))
            )
        except Exception:
            raise _error(
                f"--teacher {path} cannot take --dataset {args.dataset}'s "
                f"images of shape {input_shape}: pass teachers trained on "
                "this dataset"
            ) from None
        classes = select_logits(spec).shape[-1]
        if classes != num_classes:
            fix = "pass teachers trained on this dataset"
            if path.startswith(HUB_PREFIX):
                fix = (
                    "fine-tune the classifier on this dataset and pass the "
                    "folder it is saved to with save_to_preset() (see "
                    "examples/hub_teacher_kd.py)"
                )
            raise _error(
                f"--teacher {path} predicts {classes} classes but --dataset "
                f"{args.dataset} has {num_classes}: {fix}"
            )
    try:
        method = _make_method(args, teachers, data_arguments)
        student = method.build_student(
            args.model,
            num_classes=num_classes,
            input_shape=input_shape,
            num_branches=args.branches or method.info.branches,
        )
        Distiller(student, method)
    except (ValueError, TypeError, ImportError) as error:
        raise _error(
            f"--method {args.method} with --model {args.model}: "
            f"{_one_line(error)}"
        ) from None


def _check_model_name(name):
    """Refuses an unknown --model (or a hub: one without keras-hub) early."""
    from keras_one import models

    try:
        models.get(name)
    except (ValueError, ImportError) as error:
        raise _error(f"--model {name}: {_one_line(error)}") from None


def train(args):
    from keras_one import _run_folder

    if args.model is None:
        args.model = "resnet8" if args.dataset == "digits" else "resnet32"
    _check_model_name(args.model)
    _check_method_arguments(args)
    run = _Run(args)  # refuses a taken folder before anything is loaded
    if run.finished:
        print(
            f"keras-one: the run in {run.path} has finished; nothing to "
            f"resume (results: {run.file('results.json')})",
            file=sys.stderr,
        )
        return None
    with _run_folder.interrupts_raise():
        try:
            return _train(args, run)
        except KeyboardInterrupt as interrupt:  # Ctrl-C, or SIGTERM
            _run_folder.ignore_interrupts()
            print(run.interrupted_message(), file=sys.stderr)
            raise SystemExit(
                128 + _run_folder.signal_number(interrupt)
            ) from None
        finally:
            run.close()


def _train(args, run):
    import functools

    import keras

    from keras_one import _atomic
    from keras_one import experiment
    from keras_one import methods
    from keras_one import report

    # The data's seeds do not depend on what ran before in this process.
    keras.utils.set_random_seed(args.seed)
    train_ds, test_ds, info = _load_dataset(args, args.batch_size)
    baseline = None if args.no_baseline else run.finished_baseline()
    train_baseline = not args.no_baseline and baseline is None
    # Each stage trains on a pipeline of its own, never iterated before, so
    # its epochs get the same data whether the baseline trained before it or
    # not, in this process or before an interruption. A method whose data
    # is not plain images (`methods.data_options`: PCL's views of each
    # image, MCL-OKD's example indices) trains and is tested on data loaded
    # so; the baseline on plain images.
    method_class = methods.get(args.method)
    options = methods.data_options(method_class, args.branches)
    method_data = {}
    if options:
        method_data["train_ds"], method_data["test_ds"], _ = _load_dataset(
            args, args.batch_size, **options
        )
    elif train_baseline:
        method_data["train_ds"], _, _ = _load_dataset(args, args.batch_size)
    data_arguments = _method_data_arguments(args, method_class, options)
    # Teachers, branches and student checked before anything trains.
    teachers = _load_teachers(args, info)
    _check_student(args, info, teachers, data_arguments)
    run.open()
    print(f"Run folder: {run.path}")
    recipe = dict(
        model=args.model,
        train_ds=train_ds,
        test_ds=test_ds,
        info=info,
        epochs=args.epochs,
        learning_rate=args.learning_rate,
        weight_decay=args.weight_decay,
        schedule=args.schedule,
        protocol=args.protocol,
        verbose=args.verbose,
    )
    results = {"arguments": vars(args)}
    results["dataset"] = {
        "name": info.name,
        "num_classes": info.num_classes,
        "input_shape": list(info.input_shape),
        "num_train_examples": info.num_train_examples,
        "num_test_examples": info.num_test_examples,
        # What exports need to take raw images and name their classes.
        "class_names": list(info.class_names),
        "preprocessing": info.preprocessing,
    }
    rows, curves, failures = [], {}, []
    name = args.method.upper()
    if train_baseline:
        print(f"Training the single-branch baseline ({args.model})...")
        keras.utils.set_random_seed(args.seed)
        network, baseline, stage = _train_stage(
            run, "baseline", experiment.train_baseline, recipe
        )
        # baseline.json, written last, marks the baseline as finished.
        model_path = run.file("baseline.keras")
        scores_path = run.file("baseline.json")
        saved = _write(
            failures, model_path, _atomic.save_model, network, model_path
        )
        if saved and _write(
            failures, scores_path, _write_json, scores_path, baseline
        ):
            stage.finish()
    elif baseline is not None:
        print(f"The baseline had finished: {run.file('baseline.keras')}")
    if baseline is not None:
        results["baseline"] = baseline
        curves["baseline"] = baseline["history"]
        rows.append(
            ("baseline (1 branch)", f"{100 * baseline['accuracy']:.2f}")
        )
    branches = f", {args.branches} branches" if args.branches else ""
    print(f"Training {name} ({args.model}{branches})...")
    keras.utils.set_random_seed(args.seed)
    method = _make_method(args, teachers, data_arguments)
    distiller, scores, _ = _train_stage(
        run,
        args.method,
        functools.partial(experiment.train_distiller, method),
        {**recipe, **method_data},
        num_branches=args.branches,
    )
    results[args.method] = scores
    curves[name] = scores["history"]
    for index, accuracy in enumerate(scores["branch_accuracy"]):
        rows.append((f"{name} branch {index}", f"{100 * accuracy:.2f}"))
    # The temporal means of the branches, the models PCL deploys.
    for index, accuracy in enumerate(scores.get("mean_branch_accuracy", ())):
        rows.append((f"{name} mean branch {index}", f"{100 * accuracy:.2f}"))
    if len(scores["branch_accuracy"]) > 1:
        rows.append(
            (f"{name} ensemble", f"{100 * scores['ensemble_accuracy']:.2f}")
        )
    # Every value the run used, defaults resolved (ramp-up, versions, ...).
    _record_resolved(results, args, info, method, distiller, train_ds)
    # The results first: they are written even when a model file cannot be.
    results_path = run.file("results.json")
    try:
        _write_json(results_path, results)
    except OSError as error:
        raise _error(
            f"cannot write {results_path} ({_one_line(error)}); the backup "
            f"is kept: {run.resume_command()}"
        ) from None
    distiller_path = run.file("distiller.keras")
    _write(
        failures, distiller_path, _atomic.save_model, distiller, distiller_path
    )
    curves_path = run.file("learning_curves.png")
    _write(
        failures,
        curves_path,
        _plot_atomically,
        report,
        curves,
        curves_path,
        f"{name} on {args.dataset}",
    )
    print()
    size = info.num_test_examples
    size = f" ({size} images)" if size else ""
    print(f"Test accuracy on {args.dataset}{size}")
    print(report.format_table(rows, ("model", "accuracy (%)")))
    print()
    print(f"results:         {results_path}")
    print(f"learning curves: {curves_path}")
    print(f"distiller:       {distiller_path}")
    logs_dir = run.file("logs")
    print(f"TensorBoard:     tensorboard --logdir {logs_dir}")
    if failures:
        paths = ", ".join(path for path, _ in failures)
        raise _error(
            f"could not write {paths} ({failures[0][1]}); results.json is "
            f"complete and the backup kept: to write them, "
            f"{run.resume_command()}"
        )
    run.finish()
    return results


def _method_data_arguments(args, method_class, options):
    """What the method reads from its training data (`data_arguments`).

    MCL-OKD's labels by example index, read from an un-augmented pipeline
    of their own: the one the method trains on stays fresh (see `_train`).
    Nothing (and no pipeline) for the methods that read nothing.
    """
    from keras_one import methods

    if not method_class.info.example_index:
        return {}
    labels_ds, _, _ = _load_dataset(
        args, args.batch_size, augment=False, **options
    )
    try:
        return methods.data_arguments(method_class, labels_ds)
    except ValueError as error:
        raise _error(f"--method {args.method}: {_one_line(error)}") from None


def _record_resolved(results, args, info, method, distiller, train_ds):
    """Adds to a run's `results` every value it used, defaults resolved.

    `results["arguments"]` keeps the flags as given (`None` for a default);
    here are the values they became: the data's source and augmentation,
    the training recipe, the method's arguments (the ramp-up resolved from
    its fraction of the epochs) and the library versions. The dataset's
    normalization (mean, std, pixel scale) and class names are in
    `results["dataset"]`.
    """
    dataset = results["dataset"]
    dataset["source"] = _data_source(args)
    dataset["train_augmentation"] = info.train_augmentation
    try:
        steps = len(train_ds)
    except TypeError:  # unknown cardinality
        steps = None
    results["training"] = {
        "model": args.model,
        "num_branches": distiller.num_branches,
        "epochs": args.epochs,
        "batch_size": args.batch_size,
        "steps_per_epoch": steps,
        "seed": args.seed,
        "optimizer": _optimizer_description(args.protocol),
        "learning_rate": args.learning_rate,
        "schedule": _schedule_description(args),
        "weight_decay": args.weight_decay,
        "baseline": not args.no_baseline,
    }
    method_info = type(method).info
    config = method.get_config()
    for key in ("name", "trainable", "dtype"):  # the Keras layer's own
        config.pop(key, None)
    for key in ("teacher", "teachers"):  # the models: their files instead
        if key in config:
            teachers = list(args.teacher or [])
            config[key] = teachers[0] if key == "teacher" else teachers
    results["method"] = {
        "name": method_info.name,
        "class": f"{type(method).__module__}.{type(method).__qualname__}",
        "rampup_epochs": method.rampup_epochs,
        "rampup": (
            "--rampup-epochs"
            if args.rampup_epochs is not None
            else f"the method's fraction {method_info.rampup_fraction} of "
            f"--epochs {args.epochs}"
        ),
        "arguments": json.loads(json.dumps(config, default=str)),
    }
    results["versions"] = _versions(
        with_tfds=dataset["source"]["kind"] == "tensorflow-datasets"
    )


def _data_source(args):
    """Where `--dataset` was read from."""
    name = args.dataset
    if str(name).lower() == "digits":
        return {"kind": "digits (scikit-learn, bundled)"}
    if os.path.isdir(name):
        return {"kind": "image folder", "path": os.path.abspath(name)}
    if os.path.isfile(name):
        return {"kind": "npz file", "path": os.path.abspath(name)}
    data_dir = args.data_dir or os.environ.get("TFDS_DATA_DIR")
    data_dir = data_dir or os.path.join("~", "tensorflow_datasets")
    source = {
        "kind": "tensorflow-datasets",
        "data_dir": os.path.abspath(os.path.expanduser(data_dir)),
    }
    if args.manual_dir:
        source["manual_dir"] = os.path.abspath(args.manual_dir)
    return source


def _versions(with_tfds=False):
    """The versions of keras-one, Keras, its backend, NumPy and Python."""
    import platform

    import keras
    import numpy as np

    versions = {
        "keras_one": _version(),
        "keras": keras.__version__,
        "backend": keras.backend.backend(),
        "numpy": np.__version__,
        "python": platform.python_version(),
    }
    # TensorFlow runs the data pipelines; JAX or PyTorch the backend.
    modules = ["tensorflow", versions["backend"]]
    if with_tfds:
        modules.append("tensorflow_datasets")
    for module in modules:
        if module in sys.modules and module not in versions:
            versions[module] = getattr(sys.modules[module], "__version__", "")
    return versions


def _optimizer_description(protocol):
    if protocol is None:
        return "SGD, Nesterov momentum 0.9"
    from keras_one import protocols

    protocol = protocols.get(protocol)
    kind = "Nesterov momentum" if protocol.nesterov else "momentum"
    return f"SGD, {kind} {protocol.momentum:g} (protocol {protocol.name})"


def _schedule_description(args):
    if args.protocol is None:
        return args.schedule
    from keras_one import protocols

    protocol = protocols.get(args.protocol)
    if protocol.schedule == "cosine":
        return "cosine decay to 0"
    epochs = " and ".join(str(m) for m in protocol.milestones)
    return f"step: x{protocol.factor:g} from epochs {epochs} (0-based)"


def _train_stage(run, name, train_function, recipe, **options):
    """Trains one stage (`train_baseline` or `train_distiller`) of `run`.

    The stage starts from its last backup if it has one, and backs up every
    epoch. Returns `(model, scores, stage)`; the scores' `history` and
    `train_seconds` cover every epoch, those before an interruption too.
    A stage whose loss, inputs or weights turn NaN or infinite ends the
    command with a one-line error: its model is not returned (so never
    saved), and its backup keeps the last epoch that was finite.
    """
    import keras

    from keras_one import _run_folder
    from keras_one import export

    run.started = True  # from here on, the folder is a run to resume
    stage = _run_folder.Stage(run.path, name)
    done = stage.restore()
    if done:
        print(f"Resuming from its backup: {done} of {recipe['epochs']} epochs")
    recipe = {**recipe, **options}
    recipe["train_ds"] = stage.dataset(recipe["train_ds"])
    logs = keras.callbacks.TensorBoard(os.path.join(run.path, "logs", name))
    try:
        model, scores = train_function(
            callbacks=[logs, *stage.callbacks()], **recipe
        )
    except OSError as error:  # e.g. a full disk while backing up
        raise _error(
            f"{_one_line(error)}; the last backup is kept: "
            f"{run.resume_command()}"
        ) from None
    except FloatingPointError as error:  # NaN or inf: see the Distiller
        raise _nonfinite_stage(error, name, stage, recipe) from None
    # Never saved as if good (the guard of `fit` should have stopped it).
    bad = export.nonfinite_weights(model) if hasattr(model, "weights") else []
    if bad:
        raise _nonfinite_stage(
            FloatingPointError(
                f"the weights hold NaN or inf in {export.describe_weights(bad)}"
            ),
            name,
            stage,
            recipe,
        )
    scores["history"] = stage.history()
    scores["train_seconds"] = stage.train_seconds()
    return model, scores, stage


def _nonfinite_stage(error, name, stage, recipe):
    """The one-line error of a stage stopped by NaN or inf (`error`)."""
    summary = " ".join(getattr(error, "summary", str(error)).split())
    if getattr(error, "inputs_at_fault", False):
        fix = (
            "repair or drop the images holding NaN or inf in --dataset "
            f"{recipe['info'].name}"
        )
    else:
        fix = (
            "start a new run with a lower --learning-rate (this one: "
            f"{recipe['learning_rate']:g})"
        )
        if recipe.get("protocol") is not None:
            fix = f"{fix}, without --protocol {recipe['protocol']}"
    epochs = len(stage.epochs)
    kept = (
        f"its backup keeps the last finite epoch ({epochs})"
        if epochs
        else "no epoch of it had finished"
    )
    label = "the baseline" if name == "baseline" else f"--method {name}"
    return _error(
        f"training {label} stopped: {summary.rstrip('.')}. Nothing of it "
        f"was saved ({kept}); {fix}"
    )


def _write_json(path, value):
    from keras_one import _atomic

    _atomic.write_json(path, value, indent=2, default=float)


def _plot_atomically(report, curves, path, title):
    from keras_one import _atomic

    with _atomic.replacing(path, suffix=".png") as temporary:
        report.plot_learning_curves(curves, temporary, title=title)


def _write(failures, path, write, *args):
    """Calls `write(*args)`; on failure, warns and adds `path` to failures."""
    try:
        write(*args)
    except Exception as error:
        reason = _one_line(error)
        print(
            f"keras-one: warning: could not write {path} ({reason})",
            file=sys.stderr,
        )
        failures.append((path, reason))
        return False
    return True


def _error(message):
    """The command's one-line error (exit status 1)."""
    return SystemExit(f"keras-one: error: {message}")


def _one_line(error):
    text = " ".join(str(error).split())
    if len(text) > 300:
        text = text[:297] + "..."
    return f"{type(error).__name__}: {text}" if text else type(error).__name__


# What `--overwrite` replaces in a run folder (other files are kept).
RUN_FILES = (
    "run.json",
    "run.lock",
    "results.json",
    "distiller.keras",
    "baseline.keras",
    "baseline.json",
    "learning_curves.png",
    "logs",
    "backup",
)
# Arguments naming files, found again from the run's first working folder
# when `--resume` is given elsewhere.
PATH_ARGUMENTS = ("dataset", "data_dir", "manual_dir", "teacher")


class _Run:
    """The folder of a `keras-one train` run: checks, lock, record, cleanup.

    Creating it checks, writing nothing: a non-empty `--output-dir` without
    `--resume` or `--overwrite`, a folder another live run holds, or one
    this process cannot write are refused. `open` creates the folder (a new
    unique one by default), takes its lock and records the arguments in
    `run.json`; `close` releases the lock, and removes what `open` made if
    training never started.
    """

    def __init__(self, args):
        from keras_one import _run_folder

        self.args = args
        self.path = args.output_dir
        self.resuming = args.resume is not None
        self.created = self.opened = self.started = self.finished = False
        if self.path is None:
            return
        if os.path.exists(self.path) and not os.path.isdir(self.path):
            raise _error(f"--output-dir {self.path} is a file, not a folder")
        owner = _run_folder.read_lock(self.path)
        if owner is not None and _run_folder.is_live(owner):
            raise _locked(self.path, owner)
        if self.resuming:
            record = _read_record(self.path)
            self.finished = record.get("status") == "finished"
            if self.finished:
                return
        elif _listing(self.path) and not args.overwrite:
            raise _not_empty(self.path)
        folder = self.path
        while not os.path.isdir(folder):
            folder = os.path.dirname(os.path.abspath(folder))
        if not os.access(folder, os.W_OK | os.X_OK):
            raise _not_writable(self.path, "Permission denied")

    def file(self, name):
        return os.path.join(self.path, name)

    def open(self):
        """Creates the folder, takes its lock and records the arguments."""
        from keras_one import _atomic
        from keras_one import _run_folder

        args = self.args
        try:
            if self.path is None:
                self.path = _run_folder.make_unique(
                    _run_folder.default_path(args.method, args.dataset)
                )
                self.created = True
            elif not os.path.isdir(self.path):
                os.makedirs(self.path)
                self.created = True
            owner = _run_folder.acquire_lock(self.path)
        except OSError as error:
            raise _not_writable(
                self.path or "keras-one-runs", error.strerror or error
            ) from None
        if owner is not None:
            raise _locked(self.path, owner)
        # Another run may have used the folder since the check.
        if not self.resuming and not args.overwrite:
            if set(_listing(self.path)) - {_run_folder.LOCK}:
                _run_folder.release_lock(self.path)
                raise _not_empty(self.path)
        self.opened = True
        if args.overwrite:
            for name in RUN_FILES:
                if name != _run_folder.LOCK:
                    _remove(self.file(name))
        _atomic.remove_leftovers(self.path)
        args.output_dir = self.path
        if not self.resuming:
            self._record(
                {
                    "arguments": vars(args),
                    "status": "running",
                    "cwd": os.getcwd(),
                    "keras_one": _version(),
                }
            )

    def finished_baseline(self):
        """The baseline's scores if it finished before an interruption."""
        if not self.resuming:
            return None
        try:
            with open(self.file("baseline.json")) as file:
                return json.load(file)
        except (OSError, ValueError):
            return None

    def finish(self):
        """Records that the run finished and deletes its backups."""
        import shutil

        from keras_one import _run_folder

        self._record({**_read_record(self.path), "status": "finished"})
        shutil.rmtree(self.file(_run_folder.BACKUP), ignore_errors=True)

    def close(self):
        from keras_one import _run_folder

        if self.opened:
            if not self.started and not self.resuming:
                _remove(self.file(_run_folder.RECORD))
            _run_folder.release_lock(self.path)
        if self.created and not self.started:
            with contextlib.suppress(OSError):
                os.rmdir(self.path)

    def resume_command(self):
        return f"resume with: keras-one train --resume {shlex.quote(self.path)}"

    def interrupted_message(self):
        if self.started or self.resuming:
            return f"keras-one: interrupted; {self.resume_command()}"
        return "keras-one: interrupted before training; nothing was written"

    def _record(self, record):
        from keras_one import _atomic
        from keras_one import _run_folder

        _atomic.write_json(
            self.file(_run_folder.RECORD), record, indent=2, default=str
        )


def _listing(path):
    """The entries of the folder `path` ([] when it does not exist)."""
    try:
        return os.listdir(path)
    except FileNotFoundError:
        return []
    except OSError as error:
        raise _error(
            f"cannot read --output-dir {path} ({error.strerror}); choose "
            "another --output-dir"
        ) from None


def _locked(path, owner):
    pid, host = owner.get("pid"), owner.get("host")
    return _error(
        f"another run (PID {pid} on {host}) is using {path}; wait for it to "
        "end or choose another --output-dir (if no run is using it, delete "
        f"{os.path.join(path, 'run.lock')})"
    )


def _not_empty(path):
    resume = ""
    if os.path.exists(os.path.join(path, "run.json")):
        resume = f"continue the run there with --resume {shlex.quote(path)}, "
    return _error(
        f"--output-dir {path} is not empty: {resume}replace it with "
        "--overwrite, or choose another --output-dir"
    )


def _not_writable(path, reason):
    return _error(
        f"cannot write to {path} ({reason}); choose another --output-dir"
    )


def _remove(path):
    import shutil

    if os.path.isdir(path) and not os.path.islink(path):
        shutil.rmtree(path, ignore_errors=True)
    else:
        with contextlib.suppress(OSError):
            os.remove(path)


def _version():
    from keras_one.version import __version__

    return __version__


def _read_record(folder):
    """The `run.json` of the run folder `folder`, or a one-line error."""
    from keras_one import _run_folder

    path = os.path.join(folder, _run_folder.RECORD)
    if not os.path.isdir(folder):
        raise _error(f"--resume {folder}: no such run folder")
    try:
        with open(path) as file:
            record = json.load(file)
    except FileNotFoundError:
        raise _error(
            f"--resume {folder}: not a keras-one run folder (no run.json); "
            "start a new run with --output-dir"
        ) from None
    except (OSError, ValueError) as error:
        raise _error(
            f"--resume {folder}: cannot read {path} ({error})"
        ) from None
    if not isinstance(record, dict) or not isinstance(
        record.get("arguments"), dict
    ):
        raise _error(f"--resume {folder}: {path} records no arguments")
    return record


def _resume_arguments(args, argv):
    """The arguments of `train --resume DIR`: those DIR recorded.

    A flag given with `--resume` must agree with the recorded value (only
    `--verbose` may change); relative paths are found again from the run's
    first working folder if they are not in this one.
    """
    folder = args.resume
    record = _read_record(folder)
    recorded = record["arguments"]
    if recorded.get("command") == "pipeline":
        raise _error(
            f"--resume {folder} is a keras-one pipeline run: resume it with "
            f"keras-one pipeline --resume {shlex.quote(folder)}"
        )
    defaults = vars(build_parser().parse_args(["train"]))
    given = _given_train_flags(argv)
    conflicts = []
    for dest, flag in sorted(given.items()):
        if dest in ("resume", "verbose"):
            continue
        value = getattr(args, dest)
        if dest == "overwrite":
            same = False  # a resumed run replaces nothing
        elif dest == "output_dir":
            same = os.path.abspath(value) == os.path.abspath(folder)
        else:
            same = dest in recorded and value == recorded[dest]
        if not same:
            conflicts.append(flag)
    if conflicts:
        raise _error(
            f"--resume {folder} continues the run with the arguments it "
            f"recorded in run.json; drop {', '.join(conflicts)} (or start a "
            "new run with --output-dir)"
        )
    merged = {
        **defaults,
        **{k: v for k, v in recorded.items() if k in defaults},
    }
    cwd = record.get("cwd")
    for dest in PATH_ARGUMENTS:
        merged[dest] = _found_again(merged[dest], cwd)
    if str(merged.get("model")).startswith(HUB_PREFIX):  # hub:./folder
        merged["model"] = _found_again(merged["model"], cwd)
    merged.update(
        command="train",
        resume=folder,
        output_dir=folder,
        overwrite=False,
        verbose=args.verbose,
    )
    return argparse.Namespace(**merged)


def _found_again(value, cwd):
    """A relative path of another working folder `cwd`, if it is there."""
    if isinstance(value, list):
        return [_found_again(item, cwd) for item in value]
    if isinstance(value, str) and value.startswith(HUB_PREFIX):
        return HUB_PREFIX + _found_again(value[len(HUB_PREFIX) :], cwd)
    if not isinstance(value, str) or not cwd or os.path.isabs(value):
        return value
    if os.path.exists(value):
        return value
    elsewhere = os.path.join(cwd, value)
    return elsewhere if os.path.exists(elsewhere) else value


# The `train` flags a protocol sets (`keras_one.protocols`).
PROTOCOL_FLAGS = ("epochs", "batch_size", "learning_rate", "weight_decay")


def _apply_protocol(args, argv):
    """Sets the recipe flags of `--protocol`; refuses any given with it."""
    from keras_one import protocols

    protocol = protocols.get(args.protocol)
    given = _given_train_flags(argv)
    conflicts = [
        flag
        for dest, flag in sorted(given.items())
        if dest in (*PROTOCOL_FLAGS, "schedule")
    ]
    if conflicts:
        settings = ", ".join(
            f"--{dest.replace('_', '-')} {value:g}"
            for dest, value in protocol.settings().items()
        )
        raise _error(
            f"--protocol {protocol.name} sets {settings} and its schedule; "
            f"drop {', '.join(conflicts)} (or drop --protocol)"
        )
    for dest, value in protocol.settings().items():
        setattr(args, dest, value)
    args.schedule = protocol.schedule


def _given_train_flags(argv):
    """`{dest: flag}` of the `train` flags given on the command line."""
    parser = _FlagsGiven(add_help=False)
    _add_train_arguments(parser)
    words = list(argv)
    words = words[words.index("train") + 1 :] if "train" in words else words
    given = vars(parser.parse_args(words))
    return {dest: "--" + dest.replace("_", "-") for dest in given}


class _FlagsGiven(argparse.ArgumentParser):
    """A parser whose namespace holds only the flags given."""

    def add_argument(self, *args, **kwargs):
        return super().add_argument(
            *args, **{**kwargs, "default": argparse.SUPPRESS}
        )


def _load_model(path, name=None):
    """The Keras model saved at `path`, or a one-line error.

    A damaged file (truncated, overwritten, not written by Keras) is named
    as damaged, and a model whose weights hold NaN or inf (saved from a
    diverged training) is refused: nothing evaluates, exports or predicts
    with it. `name` is how messages call the file (default: its path).
    """
    import json
    import zipfile
    import zlib

    import keras

    import keras_one  # noqa: F401  (registers the Distiller for loading)
    from keras_one import export as export_module

    name = name or path
    if not os.path.exists(path):
        raise SystemExit(f"keras-one: error: no such file: {path}")
    if not path.endswith((".keras", ".h5", ".hdf5")):
        raise SystemExit(
            f"keras-one: error: {path} is not a .keras file: this command "
            "reads saved Distillers and models exported with --format keras "
            "(SavedModel and TFLite exports run outside Keras)"
        )
    again = "save (or export) the model again"
    if path.endswith(".keras"):
        damage = _keras_file_damage(path)
        if damage:
            raise _error(f"{name} is damaged: {damage}; {again}")
    try:
        model = keras.saving.load_model(path)
    except (
        zipfile.BadZipFile,
        zlib.error,
        EOFError,
        KeyError,
        json.JSONDecodeError,
        UnicodeDecodeError,
        OSError,  # h5py: a truncated or corrupt weights file
    ) as error:
        raise _error(
            f"{name} is damaged: Keras cannot read it ({_one_line(error)}); "
            f"{again}"
        ) from None
    except Exception as error:
        raise _error(f"{name} cannot be loaded ({_one_line(error)})") from None
    bad = export_module.nonfinite_weights(model)
    if bad:
        raise _error(
            f"{name} holds NaN or infinite values in "
            f"{export_module.describe_weights(bad)}: it was saved from a "
            "diverged training and predicts nothing; train it again (e.g. "
            "keras-one train with a lower --learning-rate)"
        )
    return model


def _keras_file_damage(path):
    """What is wrong with the .keras zip archive at `path`, or `None`."""
    import zipfile

    if not zipfile.is_zipfile(path):
        size = os.path.getsize(path)
        return (
            f"it is not a zip archive, as a .keras file is ({size} bytes: "
            "truncated, or not written by Keras)"
        )
    try:
        with zipfile.ZipFile(path) as archive:
            broken = archive.testzip()
            names = set(archive.namelist())
    except Exception as error:  # zipfile raises many types
        return f"its zip archive cannot be read ({_one_line(error)})"
    if broken is not None:
        return f"its member {broken} is corrupt (bad checksum)"
    if "config.json" not in names:
        return "it has no config.json"
    if not names & {"model.weights.h5", "model.weights.npz"}:
        return "it has no weights (model.weights.h5)"
    return None


def evaluate(args):
    from keras_one import report

    if args.output:
        _check_new_output(args.output, args.overwrite, args.model_path)
    path = args.model_path
    if os.path.isdir(path) or path.endswith(".tflite"):
        scores, info = _evaluate_export(args)
    else:
        scores, info = _evaluate_keras(args)
    rows = [
        (name, f"{100 * value:.2f}")
        for name, value in scores.items()
        if name.endswith("accuracy")
    ]
    print(f"Test accuracy on {info.name}")
    print(report.format_table(rows, ("output", "accuracy (%)")))
    if args.output:
        from keras_one import _atomic

        _atomic.write_json(args.output, scores, indent=2)
    return scores


def _evaluate_keras(args):
    """`(scores, info)` of a saved Distiller or a .keras export."""
    from keras_one import Distiller
    from keras_one import export as export_module
    from keras_one import methods

    model = _load_model(args.model_path)
    if isinstance(model, Distiller):
        # The data its method trains on (`methods.data_options`): PCL's
        # student takes the test images once per view, MCL-OKD's with
        # their indices (which evaluation does not read).
        options = methods.data_options(model.method, model.num_branches)
    else:
        # An ensemble export with one input per view (PCL) is given the
        # test images once per input.
        options = {"views": len(getattr(model, "inputs", None) or [None])}
    if not isinstance(model, Distiller) and export_module.has_preprocessing(
        model
    ):
        # An export taking raw images: the test split, not normalized.
        _, test_ds, info = _load_raw_test(args, args.batch_size)
    else:
        _, test_ds, info = _load_dataset(
            args, args.batch_size, augment=False, **options
        )
    if isinstance(model, Distiller):
        if not model.compiled:
            model.compile()
        scores = model.evaluate(test_ds, verbose=args.verbose, return_dict=True)
    else:
        import keras

        model.compile(
            loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
            metrics=[keras.metrics.SparseCategoricalAccuracy("accuracy")],
        )
        scores = model.evaluate(test_ds, verbose=args.verbose, return_dict=True)
    return {name: float(value) for name, value in scores.items()}, info


def _evaluate_export(args):
    """`(scores, info)` of a SavedModel folder or .tflite export.

    Its sidecar says whether it takes the raw test images (it normalizes
    them itself) or normalized ones. The accuracy is the one Keras reports
    for the same model as .keras; `cross_entropy` is the test loss without
    the weight-decay penalty that Keras' `loss` of a .keras model adds.
    """
    import numpy as np

    from keras_one import export as export_module

    path = args.model_path
    try:
        sidecar = export_module.read_sidecar(path)
    except ValueError as error:
        raise _error(str(error)) from None
    if sidecar is None:
        raise _error(
            f"{path} has no sidecar ({export_module.sidecar_path(path)}) "
            "saying whether it takes raw or normalized images: export it "
            "again with keras-one export"
        )
    run_model, input_shape, _ = _load_export(path)
    if sidecar.get("input") == "raw":
        _, test_ds, info = _load_raw_test(args, args.batch_size)
    else:
        _, test_ds, info = _load_dataset(args, args.batch_size, augment=False)
    shape = [None if d is None or int(d) < 0 else int(d) for d in input_shape]
    if None not in shape and shape != list(info.input_shape):
        raise _error(
            f"{path} takes images of shape {shape}, but --dataset "
            f"{args.dataset} has {list(info.input_shape)}: pass the dataset "
            "the model was trained on with --dataset"
        )
    correct, total, loss = 0, 0, 0.0
    for images, labels in test_ds.as_numpy_iterator():
        logits = np.asarray(run_model(images.astype("float32")), "float64")
        if logits.shape[-1] != info.num_classes:
            raise _error(
                f"{path} predicts {logits.shape[-1]} classes, but --dataset "
                f"{args.dataset} has {info.num_classes}: pass the dataset "
                "the model was trained on with --dataset"
            )
        shifted = logits - logits.max(axis=-1, keepdims=True)
        log_probabilities = shifted - np.log(
            np.exp(shifted).sum(axis=-1, keepdims=True)
        )
        labels = labels.astype("int64")
        rows = np.arange(len(labels))
        loss -= float(log_probabilities[rows, labels].sum())
        correct += int((np.argmax(logits, axis=-1) == labels).sum())
        total += len(labels)
    if total == 0:
        raise _error(f"--dataset {args.dataset} has no test images")
    return {"accuracy": correct / total, "cross_entropy": loss / total}, info


def _load_raw_test(args, batch_size):
    """`_load_dataset` of raw images: the input of exports that normalize."""
    from keras_one import data

    options = {"raw": True, **_data_options(args)}
    try:
        return data.load(
            args.dataset, batch_size=batch_size, augment=False, **options
        )
    except ConnectionError as error:  # a tfds dataset, offline
        raise _offline(args, error) from None
    except (ValueError, FileNotFoundError, TypeError, OSError) as error:
        raise _error(_one_line(error)) from None


def _check_new_output(output, overwrite, source):
    """Refuses to write over `source` (what the command reads), or over an
    existing `output` without --overwrite, before anything is loaded."""
    if os.path.exists(source) and os.path.exists(output):
        if os.path.samefile(output, source):
            raise _error(
                f"--output {output} is {source}, the file this command "
                "reads: choose another --output"
            )
    if os.path.exists(output) and not overwrite:
        raise _error(
            f"--output {output} exists: choose another --output, or pass "
            "--overwrite to replace it"
        )


def _export_output(args):
    """The export's path: --output, or one next to the distiller."""
    if args.output:
        return args.output
    if args.branch == "ensemble":
        suffix = "ensemble"
    else:
        suffix = f"branch{int(args.branch)}"
    extension = {"keras": ".keras", "savedmodel": "", "tflite": ".tflite"}
    return (
        os.path.splitext(args.distiller_path)[0]
        + f"_{suffix}"
        + extension[args.format]
    )


def export(args):
    from keras_one import Distiller
    from keras_one import export as export_module

    if args.branch != "ensemble":
        try:
            int(args.branch)
        except ValueError:
            raise SystemExit(
                "keras-one: error: --branch must be an integer or 'ensemble'"
            ) from None
    output = _export_output(args)
    _check_new_output(output, args.overwrite, args.distiller_path)
    distiller = _load_model(args.distiller_path)
    if not isinstance(distiller, Distiller):
        raise SystemExit(
            f"keras-one: error: {args.distiller_path} is not a saved "
            "Distiller (keras-one train writes one as distiller.keras)"
        )
    preprocessing, class_names = _export_metadata(args, distiller)
    included = None if args.no_preprocessing else preprocessing
    if args.branch == "ensemble":
        model = distiller.get_ensemble_model(preprocessing=included)
    else:
        index = int(args.branch)
        # A method that deploys a temporal mean of the branch (PCL) says so.
        deploys_mean = hasattr(distiller.method, "get_mean_branch_model")
        try:
            if deploys_mean:
                model = distiller.method.get_mean_branch_model(index)
                if included is not None:
                    model = export_module.with_preprocessing(model, included)
            else:
                model = distiller.get_branch_model(
                    index, preprocessing=included
                )
        except ValueError as error:
            raise SystemExit(f"keras-one: error: {error}") from None
        if deploys_mean:
            print(
                f"exporting the temporal mean (EMA) of branch {index}, the "
                f"model {type(distiller.method).__name__} deploys"
            )
    from keras_one import _atomic

    sidecar = export_module.metadata(
        preprocessing, class_names, included=included is not None
    )
    # Written whole or not at all: a temporary file (or folder), then renamed.
    # The sidecar of a file is written first: a model is never without it.
    if args.format == "savedmodel":
        with _atomic.replacing_folder(output) as folder:
            model.export(folder, format="tf_saved_model", verbose=False)
            _write_json(
                os.path.join(folder, export_module.SAVEDMODEL_SIDECAR), sidecar
            )
    else:
        _write_json(output + ".json", sidecar)
        if args.format == "keras":
            _atomic.save_model(model, output)
        else:
            _export_tflite(model, output)
    takes = "raw" if included is not None else "normalized"
    print(
        f"wrote {output} ({model.count_params()} parameters; takes {takes} "
        f"images) and {export_module.sidecar_path(output)}"
    )
    return output


def _export_metadata(args, distiller):
    """`(preprocessing, class_names)` for an export of `distiller`.

    From `--dataset` if given, else from the run's results.json beside the
    distiller; `(None, None)` with --no-preprocessing and neither.
    """
    if args.dataset is not None:
        _, _, info = _load_dataset(args, 256, augment=False)
        found = info.preprocessing, list(info.class_names)
        source = f"--dataset {args.dataset}"
    else:
        found, source = _run_metadata(args.distiller_path)
    if found is None or found[0] is None:
        if args.no_preprocessing:
            return None, None
        raise _error(
            f"no dataset preprocessing found for {args.distiller_path} (it "
            "is read from the results.json keras-one train writes beside "
            "distiller.keras): pass --dataset NAME (the training dataset), "
            "or --no-preprocessing to export a model taking normalized images"
        )
    preprocessing, class_names = found
    shape = list(preprocessing["input_shape"])
    # The image inputs: not the example index of a method that reads one
    # (MCL-OKD), which its exports do not take.
    from keras_one.data.example_index import INDEX_KEY

    skip = INDEX_KEY if distiller.method.info.example_index else None
    student_shape = [
        list(t.shape[1:]) for t in distiller.student.inputs if t.name != skip
    ]
    if any(s != shape for s in student_shape):
        raise _error(
            f"the preprocessing of {source} is for images of shape {shape}, "
            f"but the distiller takes {student_shape[0]}: pass the training "
            "dataset with --dataset"
        )
    return preprocessing, class_names


def _run_metadata(distiller_path):
    """`((preprocessing, class_names), source)` from a run's results.json."""
    path = os.path.join(
        os.path.dirname(os.path.abspath(distiller_path)), "results.json"
    )
    try:
        with open(path) as file:
            dataset = json.load(file).get("dataset") or {}
    except FileNotFoundError:
        return None, path
    except (OSError, ValueError, AttributeError) as error:
        raise _error(
            f"cannot read {path} ({_one_line(error)}): pass --dataset NAME"
        ) from None
    found = dataset.get("preprocessing"), dataset.get("class_names")
    return found, path


def _export_tflite(model, output):
    import tempfile

    import tensorflow as tf

    with tempfile.TemporaryDirectory() as saved_model:
        model.export(saved_model, format="tf_saved_model", verbose=False)
        try:
            converter = tf.lite.TFLiteConverter.from_saved_model(saved_model)
            flatbuffer = converter.convert()
        except Exception as error:  # the converter raises many types
            raise SystemExit(
                "keras-one: error: the TFLite converter does not support this "
                f"model ({type(error).__name__}: {str(error)[:300]}); export "
                "it with --format keras or --format savedmodel instead"
            ) from None
    from keras_one import _atomic

    _atomic.write_bytes(output, flatbuffer)


IMAGE_EXTENSIONS = (".bmp", ".gif", ".jpeg", ".jpg", ".png")


def predict(args):
    import numpy as np

    from keras_one import export as export_module

    if not os.path.exists(args.model_path):
        raise _error(f"no such model: {args.model_path} (the MODEL argument)")
    try:
        sidecar = export_module.read_sidecar(args.model_path)
    except ValueError as error:
        raise _error(str(error)) from None
    files = _image_files(args.paths)
    run_model, input_shape, keras_model = _load_export(args.model_path)
    preprocessing = (sidecar or {}).get("preprocessing")
    if sidecar is None:
        if keras_model is None or not export_module.has_preprocessing(
            keras_model
        ):
            raise _error(
                f"{args.model_path} has no sidecar "
                f"({export_module.sidecar_path(args.model_path)}) saying how "
                "to preprocess images: export it again with keras-one export"
            )
        scale = keras_model.get_layer(export_module.SCALE_LAYER).scale
        preprocessing = {"raw_pixel_max": 1.0 / float(scale), "resize": None}
        sidecar = {"input": "raw"}
        print(
            f"keras-one: warning: {args.model_path} has no sidecar "
            f"({export_module.sidecar_path(args.model_path)}): printing "
            "class indices, not names",
            file=sys.stderr,
        )
    elif preprocessing is None:
        raise _error(
            f"the sidecar of {args.model_path} records no preprocessing: "
            "export the model again with keras-one export --dataset NAME"
        )
    images = np.stack(
        [_read_image(path, input_shape, preprocessing) for path in files]
    )
    if sidecar.get("input") == "raw":
        images = images * (float(preprocessing["raw_pixel_max"]) / 255.0)
    else:  # the bare network: the pipelines' [0, 1] scale, then normalized
        images = images / 255.0
        if preprocessing.get("mean") is not None:
            images = (images - np.asarray(preprocessing["mean"])) / np.asarray(
                preprocessing["std"]
            )
    logits = run_model(images.astype("float32"))
    logits = logits - logits.max(axis=-1, keepdims=True)
    probabilities = np.exp(logits)
    probabilities /= probabilities.sum(axis=-1, keepdims=True)
    names = sidecar.get("class_names")
    if names is None:
        names = [str(i) for i in range(probabilities.shape[-1])]
    top = min(args.top, probabilities.shape[-1])
    results = []
    for path, row in zip(files, probabilities, strict=True):
        best = np.argsort(-row, kind="stable")[:top]
        results.append([(names[i], float(row[i])) for i in best])
        shown = ", ".join(f"{names[i]} ({row[i]:.1%})" for i in best)
        print(f"{path}: {shown}")
    return results


def _image_files(paths):
    """The image files of `paths` (files, or folders searched recursively)."""
    files = []
    for path in paths:
        if os.path.isdir(path):
            found = sorted(
                os.path.join(root, name)
                for root, _, names in os.walk(path)
                for name in names
                if name.lower().endswith(IMAGE_EXTENSIONS)
            )
            if not found:
                raise _error(
                    f"no images ({', '.join(IMAGE_EXTENSIONS)}) in the "
                    f"folder {path}"
                )
            files.extend(found)
        elif os.path.isfile(path):
            files.append(path)
        else:
            raise _error(f"no such image file or folder: {path}")
    return files


def _read_image(path, input_shape, preprocessing):
    """An image file as float32 0-255 pixels of the model's input shape."""
    import tensorflow as tf

    from keras_one.data import _augment

    height, width, channels = (int(d) for d in input_shape)
    try:
        image = tf.io.decode_image(
            tf.io.read_file(path), expand_animations=False
        )
    except (tf.errors.OpError, ValueError) as error:
        raise _error(
            f"cannot read the image {path}: it is damaged or not an image "
            f"({type(error).__name__})"
        ) from None
    if image.dtype != tf.uint8:  # 16-bit PNGs
        image = tf.image.convert_image_dtype(image, "uint8")
    image = tf.cast(image, "float32")
    have = int(image.shape[-1])
    if have in (2, 4) and channels != have:  # drop the alpha channel
        image, have = image[..., : have - 1], have - 1
    if have == 1 and channels in (3, 4):
        image = tf.image.grayscale_to_rgb(image)
    elif have == 3 and channels == 1:
        image = tf.image.rgb_to_grayscale(image)
    if channels == 4 and int(image.shape[-1]) == 3:
        image = tf.concat([image, tf.fill(tf.shape(image[..., :1]), 255.0)], -1)
    if int(image.shape[-1]) != channels:
        raise _error(
            f"the image {path} has {int(image.shape[-1])} channels; the "
            f"model takes {channels}"
        )
    if tuple(image.shape[:2]) != (height, width):
        if preprocessing.get("resize") == "center_crop":
            image = _augment.resize_center_crop(image, (height, width))
        else:
            image = tf.image.resize(image, (height, width), antialias=True)
    return image.numpy()


def _load_export(path):
    """`(run, input_shape, keras_model)` of an exported model at `path`.

    `run(images)` returns logits; `keras_model` is `None` for SavedModel
    and TFLite exports.
    """
    import numpy as np
    import tensorflow as tf

    try:
        if os.path.isdir(path):
            loaded = tf.saved_model.load(path)
            signature = loaded.signatures["serving_default"]
            serve = getattr(loaded, "serve", signature)
            spec = tf.nest.flatten(signature.structured_input_signature)[0]

            def run(images, loaded=loaded):  # keeps its variables alive
                outputs = serve(tf.constant(images))
                if isinstance(outputs, dict):
                    outputs = next(iter(outputs.values()))
                return np.asarray(outputs)

            return run, tuple(spec.shape[1:]), None
        if path.endswith(".tflite"):
            import warnings

            with warnings.catch_warnings():  # "deprecated in favour of LiteRT"
                warnings.simplefilter("ignore")
                interpreter = tf.lite.Interpreter(model_path=path)
            (details,) = interpreter.get_input_details()
            output = interpreter.get_output_details()[0]["index"]

            def run(images):
                rows = []
                for image in images:
                    interpreter.resize_tensor_input(
                        details["index"], (1,) + image.shape
                    )
                    interpreter.allocate_tensors()
                    interpreter.set_tensor(details["index"], image[None])
                    interpreter.invoke()
                    rows.append(interpreter.get_tensor(output)[0])
                return np.stack(rows)

            return run, tuple(details["shape"][1:]), None
        model = _load_model(path)
    except SystemExit:
        raise
    except Exception as error:
        raise _error(
            f"cannot load the model {path}: it is damaged or not a "
            f".keras, SavedModel or .tflite export ({_one_line(error)})"
        ) from None
    views = len(model.inputs)

    def run(images):
        inputs = images if views == 1 else [images] * views
        return np.asarray(model.predict(inputs, verbose=0))

    return run, tuple(model.inputs[0].shape[1:]), model


def main(argv=None):
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 2
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    # tensorflow-datasets logs through absl at WARNING level (e.g. "Variant
    # folder ... has no dataset_info.json" for a data_dir it has not
    # prepared); the command reports what matters itself, in one line.
    import logging

    logging.getLogger("absl").setLevel(logging.ERROR)
    from keras_one import _cli_pipeline

    if args.command == "train" and args.resume is not None:
        args = _resume_arguments(args, sys.argv[1:] if argv is None else argv)
    elif args.command == "train" and args.protocol is not None:
        _apply_protocol(args, sys.argv[1:] if argv is None else argv)
    if args.command == "pipeline" and args.resume is not None:
        args = _cli_pipeline.resume_arguments(
            args, sys.argv[1:] if argv is None else argv
        )
    command = {
        "train": train,
        "evaluate": evaluate,
        "export": export,
        "predict": predict,
        "pipeline": _cli_pipeline.pipeline,
    }
    try:
        command[args.command](args)
    except KeyboardInterrupt:  # `train` and `pipeline` handle their own
        print("keras-one: interrupted", file=sys.stderr)
        raise SystemExit(130) from None
    return 0


if __name__ == "__main__":
    sys.exit(main())
