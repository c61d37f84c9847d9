"""The `keras-one pipeline` command: ensembles, self-distillation, BAN, SRM.

It runs `keras_one.pipelines` on the command's data and recipe, in a run
folder handled as `keras-one train` handles its own (`cli._Run`: a new or
empty folder, a lock, `run.json`, Ctrl-C and SIGTERM printing the resume
command): `keras-one pipeline --resume DIR` continues an interrupted run
with the arguments DIR recorded, keeping its finished stages and resuming
the interrupted one from its last epoch.
"""

import argparse
import functools
import os
import shlex
import sys

import keras_one_cli
from keras_one import cli

# The command's names of the pipelines, and their functions.
FUNCTIONS = {
    "ensemble": "ensemble_distillation",
    "self": "self_distillation",
    "ban": "born_again",
    "srm": "sparse_representation_matching",
    "blockwise": "blockwise_distillation",
}
# The pipelines with a teacher of another architecture, by their module.
TEACHER_PIPELINES = {"srm": "srm", "blockwise": "blockwise"}
# Flags that only some pipelines take.
ONLY = {
    "members": ("ensemble",),
    "generations": ("self", "ban"),
    "average": ("ensemble", "ban"),
    "teacher_model": tuple(TEACHER_PIPELINES),
    "teacher_layers": tuple(TEACHER_PIPELINES),
    "student_layers": tuple(TEACHER_PIPELINES),
    "codeword_multiplier": ("srm",),
    "sparsity_ratio": ("srm",),
}


def pipeline(args):
    """Runs `keras-one pipeline` (arguments checked first, one line each)."""
    from keras_one import _run_folder

    options = _options(args)
    args.overwrite = False  # (read by the run folder) a run replaces nothing
    if args.model is None:
        args.model = "resnet8" if args.dataset == "digits" else "resnet32"
    _check_model(args.model)
    if args.kind in TEACHER_PIPELINES:
        if args.teacher_model is None:
            digits = args.dataset == "digits"
            args.teacher_model = "resnet20" if digits else "resnet56"
        _check_model(args.teacher_model, "--teacher-model")
    run = _PipelineRun(args)  # refuses a taken folder before any loading
    if run.finished:
        print(
            f"keras-one: the run in {run.path} has finished; nothing to "
            f"resume (results: {run.file('results.json')})",
            file=sys.stderr,
        )
        return None
    with _run_folder.interrupts_raise():
        try:
            return _pipeline(args, run, options)
        except KeyboardInterrupt as interrupt:  # Ctrl-C, or SIGTERM
            _run_folder.ignore_interrupts()
            print(run.interrupted_message(), file=sys.stderr)
            raise SystemExit(
                128 + _run_folder.signal_number(interrupt)
            ) from None
        finally:
            run.close()


def _options(args):
    """The pipeline's keyword arguments: its defaults, then the flags."""
    from keras_one import pipelines

    if args.kind is None:
        raise cli._error(
            "pipeline needs PIPELINE, one of ensemble, self, ban, srm, "
            "blockwise (e.g. "
            "keras-one pipeline ban), or --resume DIR"
        )
    for dest, kinds in ONLY.items():
        if getattr(args, dest) is not None and args.kind not in kinds:
            flag = "--" + dest.replace("_", "-")
            raise cli._error(
                f"{flag} applies to {keras_one_cli.the_pipelines(kinds)}, "
                f"not to {args.kind}: leave out {flag}"
            )
    options = dict(pipelines.DEFAULTS[FUNCTIONS[args.kind]])
    for dest in options:
        if getattr(args, dest) is not None:
            options[dest] = getattr(args, dest)
    if args.kind in TEACHER_PIPELINES:
        options["teacher_layers"] = args.teacher_layers
        options["student_layers"] = args.student_layers
    return options


def _check_model(name, flag="--model"):
    """Refuses an unknown --model before anything is loaded."""
    from keras_one import models

    try:
        models.get(name)
    except (ValueError, ImportError) as error:
        raise cli._error(f"{flag} {name}: {cli._one_line(error)}") from None


def _pipeline(args, run, options):
    import keras

    from keras_one import experiment
    from keras_one import models
    from keras_one import pipelines
    from keras_one import report

    keras.utils.set_random_seed(args.seed)
    train_ds, test_ds, info = cli._load_dataset(args, args.batch_size)
    num_classes, input_shape = experiment.classes_and_shape(info)
    builders = {}
    for flag, name in (("--model", args.model), ("--teacher-model", None)):
        if flag == "--teacher-model":
            if args.kind not in TEACHER_PIPELINES:
                continue
            name = args.teacher_model
        try:
            builders[flag] = functools.partial(
                models.get(name),
                num_classes=num_classes,
                input_shape=input_shape,
                num_branches=1,
                weight_decay=args.weight_decay,
            )
            builders[flag]()
        except (ValueError, TypeError, ImportError) as error:
            raise cli._error(f"{flag} {name}: {cli._one_line(error)}") from None
    build_model = builders["--model"]
    teacher = {}
    if args.kind in TEACHER_PIPELINES:
        teacher["teacher"] = builders["--teacher-model"]
        _check_layers(args.kind, build_model, teacher["teacher"], options)
    run.open()
    print(f"Run folder: {run.path}")
    run.started = True  # from here on, the folder is a run to resume
    optimizer = experiment.make_sgd(
        args.learning_rate, args.epochs * len(train_ds), args.schedule
    )
    function = getattr(pipelines, FUNCTIONS[args.kind])
    try:
        _, accuracy = function(
            build_model,
            train_ds=train_ds,
            test_ds=test_ds,
            epochs=args.epochs,
            directory=run.path,
            optimizer=optimizer,
            seed=args.seed,
            verbose=args.verbose,
            **teacher,
            **options,
        )
    except OSError as error:  # e.g. a full disk while saving a stage
        raise cli._error(
            f"{cli._one_line(error)}; the finished stages and the last "
            f"backup are kept: {run.resume_command()}"
        ) from None
    except FloatingPointError as error:  # NaN or inf: see the Distiller
        summary = " ".join(getattr(error, "summary", str(error)).split())
        raise cli._error(
            f"a stage stopped: {summary.rstrip('.')}. The finished stages "
            "are kept; start a new run with a lower --learning-rate (this "
            f"one: {args.learning_rate:g})"
        ) from None
    results = {
        "arguments": vars(args),
        "pipeline": FUNCTIONS[args.kind],
        "options": options,
        "dataset": {
            "name": info.name,
            "num_classes": info.num_classes,
            "input_shape": list(info.input_shape),
            "class_names": list(info.class_names),
            "preprocessing": info.preprocessing,
        },
        "accuracy": accuracy,
        "versions": cli._versions(),
    }
    results_path = run.file("results.json")
    try:
        cli._write_json(results_path, results)
    except OSError as error:
        raise cli._error(
            f"cannot write {results_path} ({cli._one_line(error)}); the "
            f"stages are kept: {run.resume_command()}"
        ) from None
    rows = _rows(accuracy)
    print()
    print(f"Test accuracy on {args.dataset}")
    print(report.format_table(rows, ("model", "accuracy (%)")))
    print()
    print(f"results: {results_path}")
    print(f"models:  {os.path.join(run.path, '<stage>.keras')}")
    run.finish()
    return results


def _check_layers(kind, build_model, build_teacher, options):
    """Refuses layers the teacher and student lack, before the run starts."""
    from keras_one import pipelines

    module = getattr(pipelines, TEACHER_PIPELINES[kind])
    checked = ("teacher_layers", "student_layers")
    if kind == "srm":
        checked += ("codeword_multiplier", "sparsity_ratio")
    try:
        module.check_arguments(
            build_model,
            build_teacher(),
            **{name: options[name] for name in checked},
        )
    except pipelines.ArgumentError as error:
        flag = "--" + error.argument.replace("_", "-")
        message = " ".join(str(error).split())
        message = message.removeprefix(f"{error.argument}: ")
        raise cli._error(f"{flag}: {message}") from None


def _rows(accuracy):
    """`(model, accuracy %)` table rows of a pipeline's accuracies."""
    rows = []
    for key, value in accuracy.items():
        if isinstance(value, list):
            singular = key[:-1]  # members -> member
            rows += [
                (f"{singular} {index}", f"{100 * score:.2f}")
                for index, score in enumerate(value)
            ]
        elif value is not None:
            rows.append((key, f"{100 * value:.2f}"))
    return rows


class _PipelineRun(cli._Run):
    """`keras-one train`'s run folder, named and resumed as a pipeline's."""

    def open(self):
        from keras_one import _run_folder

        if self.path is None:
            try:
                self.path = _run_folder.make_unique(
                    _run_folder.default_path(self.args.kind, self.args.dataset)
                )
            except OSError as error:
                raise cli._not_writable(
                    "keras-one-runs", error.strerror or error
                ) from None
            self.created = True
        super().open()

    def resume_command(self):
        return (
            f"resume with: keras-one pipeline --resume {shlex.quote(self.path)}"
        )


def resume_arguments(args, argv):
    """The arguments of `pipeline --resume DIR`: those DIR recorded.

    As for `train --resume`: a flag given with `--resume` must agree with
    the recorded value (only `--verbose` may change); relative paths are
    found again from the run's first working folder.
    """
    folder = args.resume
    record = cli._read_record(folder)
    recorded = record["arguments"]
    if recorded.get("command") != "pipeline":
        raise cli._error(
            f"--resume {folder} is a keras-one train run: resume it with "
            f"keras-one train --resume {shlex.quote(folder)}"
        )
    defaults = vars(cli.build_parser().parse_args(["pipeline"]))
    conflicts = []
    for dest, flag in sorted(_given_flags(argv).items()):
        if dest in ("resume", "verbose"):
            continue
        value = getattr(args, dest)
        if dest == "output_dir":
            same = os.path.abspath(value) == os.path.abspath(folder)
        else:
            same = dest in recorded and value == recorded[dest]
        if not same:
            conflicts.append(flag)
    if conflicts:
        raise cli._error(
            f"--resume {folder} continues the run with the arguments it "
            f"recorded in run.json; drop {', '.join(conflicts)} (or start a "
            "new run with --output-dir)"
        )
    merged = {
        **defaults,
        **{k: v for k, v in recorded.items() if k in defaults},
    }
    cwd = record.get("cwd")
    for dest in ("dataset", "data_dir", "manual_dir"):
        merged[dest] = cli._found_again(merged[dest], cwd)
    merged.update(
        command="pipeline",
        resume=folder,
        output_dir=folder,
        overwrite=False,
        verbose=args.verbose,
    )
    return argparse.Namespace(**merged)


def _given_flags(argv):
    """`{dest: flag}` of the `pipeline` arguments given on the command line."""
    parser = cli._FlagsGiven(add_help=False)
    keras_one_cli._add_pipeline_arguments(parser, kind=False)
    # (Without choices: Python 3.11's argparse checks a suppressed default.)
    parser.add_argument("kind", nargs="?")
    words = list(argv)
    if "pipeline" in words:
        words = words[words.index("pipeline") + 1 :]
    given = vars(parser.parse_args(words))
    return {
        dest: "PIPELINE" if dest == "kind" else "--" + dest.replace("_", "-")
        for dest in given
    }
