"""The `keras-one` command: train, evaluate and export distilled networks."""

import argparse
import json
import os
import sys
import time

DESCRIPTION = """\
keras-one: online ensemble knowledge distillation (ONE and its family).

With no arguments, `keras-one train` trains ONE (3 branches) and a
single-branch baseline of the same network on scikit-learn's bundled
handwritten digits (real data, no download), then prints the test accuracy
of the baseline, of every branch and of the ensemble, and writes a results
JSON, TensorBoard logs and a PNG of the learning curves.
"""

EPILOG = """\
examples:
  keras-one train                                  # ONE vs baseline, digits
  keras-one train --dataset cifar10 --model resnet32 --epochs 300 \\
      --schedule step --batch-size 128             # the paper's protocol
  keras-one train --method okddip --branches 4     # another method
  keras-one evaluate keras-one-runs/RUN/distiller.keras
  keras-one export keras-one-runs/RUN/distiller.keras --branch 0 \\
      --format tflite --output branch0.tflite
"""

DATASET_HELP = (
    "'digits' (bundled, no download), a tensorflow-datasets name (cifar10, "
    "cifar100, svhn_cropped, imagenet2012), a class-per-folder image "
    "directory, or an .npz file with x_train, y_train, x_test, y_test "
    "(default: digits)"
)


def _positive_int(text):
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer: {text}")
    return value


def _positive_float(text):
    value = float(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be a positive number: {text}")
    return value


def build_parser():
    from keras_one import methods

    parser = argparse.ArgumentParser(
        prog="keras-one",
        description=DESCRIPTION,
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    train = commands.add_parser(
        "train",
        help="train a method and a single-branch baseline",
        description="Train a distillation method and, unless --no-baseline, "
        "a single-branch baseline of the same network with the same recipe "
        "(SGD, Nesterov momentum 0.9, cosine decay), then report test "
        "accuracies.",
    )
    train.add_argument(
        "--method",
        default="one",
        choices=methods.names(),
        help="distillation method (default: one)",
    )
    _add_data_arguments(train)
    train.add_argument(
        "--model",
        default=None,
        help="network: resnet<depth>, depth 6n+2, e.g. resnet20, resnet32 "
        "(default: resnet8 on digits, resnet32 otherwise)",
    )
    train.add_argument(
        "--branches",
        type=_positive_int,
        default=None,
        help="number of branches (default: the method's, 3 for ONE)",
    )
    train.add_argument(
        "--epochs", type=_positive_int, default=30, help="(default: 30)"
    )
    train.add_argument(
        "--batch-size", type=_positive_int, default=64, help="(default: 64)"
    )
    train.add_argument(
        "--schedule",
        default="cosine",
        choices=("cosine", "step"),
        help="learning-rate schedule: cosine decay to 0, or x0.1 at 50%% and "
        "75%% of the epochs as in ONE's official code (default: cosine)",
    )
    train.add_argument(
        "--learning-rate",
        type=_positive_float,
        default=0.1,
        help="initial learning rate, decayed to 0 by a cosine (default: 0.1)",
    )
    train.add_argument(
        "--weight-decay",
        type=float,
        default=5e-4,
        help="coupled L2 weight decay (default: 5e-4)",
    )
    train.add_argument(
        "--temperature",
        type=_positive_float,
        help="distillation temperature (default: the method's, 3 for ONE)",
    )
    train.add_argument(
        "--rampup-epochs",
        type=int,
        help="epochs of the distillation weight ramp-up (default: the "
        "method's fraction of --epochs from its paper, e.g. ONE's 80 of 300; "
        "0 for methods without a ramp-up)",
    )
    train.add_argument(
        "--teacher",
        action="append",
        metavar="PATH",
        help="a pre-trained teacher .keras file, for methods with teachers "
        "(repeat for several)",
    )
    train.add_argument("--seed", type=int, default=0, help="(default: 0)")
    train.add_argument(
        "--output-dir",
        default=None,
        help="where to write results.json, curves and logs "
        "(default: keras-one-runs/<method>-<dataset>-<time>)",
    )
    train.add_argument(
        "--no-baseline",
        action="store_true",
        help="skip the single-branch baseline",
    )
    _add_verbose_argument(train)

    evaluate = commands.add_parser(
        "evaluate",
        help="test accuracy of a saved distiller or exported model",
        description="Evaluate a saved Distiller (every branch and the "
        "ensemble) or an exported plain Keras model on a dataset's test "
        "split. Use the dataset the model was trained on: its "
        "normalization is recomputed the same way.",
    )
    evaluate.add_argument("model_path", metavar="MODEL.keras")
    _add_data_arguments(evaluate)
    evaluate.add_argument(
        "--batch-size", type=_positive_int, default=256, help="(default: 256)"
    )
    evaluate.add_argument(
        "--output", metavar="RESULTS.json", help="also write the scores here"
    )
    _add_verbose_argument(evaluate)

    export = commands.add_parser(
        "export",
        help="export one branch or the ensemble as a standalone model",
        description="Export one branch (a compact model) or the ensemble of "
        "a saved Distiller as a plain Keras model (.keras), a TensorFlow "
        "SavedModel or a TFLite flatbuffer. The exported model maps "
        "normalized images to logits and needs nothing from keras-one.",
    )
    export.add_argument("distiller_path", metavar="DISTILLER.keras")
    export.add_argument(
        "--branch",
        default="0",
        help="branch index, or 'ensemble' (default: 0); for PCL, the "
        "temporal mean of that branch, the model it deploys",
    )
    export.add_argument(
        "--format",
        default="keras",
        choices=("keras", "savedmodel", "tflite"),
        help="(default: keras)",
    )
    export.add_argument(
        "--output",
        metavar="PATH",
        help="output file or directory (default: next to the distiller, "
        "e.g. distiller_branch0.keras)",
    )
    return parser


def _add_data_arguments(parser):
    parser.add_argument("--dataset", default="digits", help=DATASET_HELP)
    parser.add_argument(
        "--data-dir",
        help="tensorflow-datasets data directory (prepared or downloaded "
        "data; default: ~/tensorflow_datasets)",
    )
    parser.add_argument(
        "--manual-dir",
        help="directory holding manually downloaded archives (imagenet2012)",
    )


def _add_verbose_argument(parser):
    parser.add_argument(
        "--verbose",
        type=int,
        default=1,
        choices=(0, 1, 2),
        help="Keras verbosity: 1 progress bar, 2 one line per epoch, 0 quiet "
        "(default: 1)",
    )


def _load_dataset(args, batch_size, augment=True, views=1):
    from keras_one import data

    options = {"views": views} if views > 1 else {}
    if args.data_dir:
        options["data_dir"] = args.data_dir
    if args.manual_dir:
        options["manual_dir"] = args.manual_dir
    try:
        return data.load(
            args.dataset,
            batch_size=batch_size,
            augment=augment,
            seed=getattr(args, "seed", None),
            **options,
        )
    except (ValueError, FileNotFoundError, TypeError, OSError) as error:
        raise SystemExit(f"keras-one: error: {error}") from None


def _make_method(args):
    import keras

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
    teachers = [keras.saving.load_model(p) for p in args.teacher or []]
    if method_class.info.teachers == "one":
        if len(teachers) != 1:
            raise SystemExit(
                f"keras-one: error: --method {args.method} needs exactly one "
                "pre-trained --teacher PATH.keras"
            )
        kwargs["teacher"] = teachers[0]
    elif method_class.info.teachers == "per_branch":
        if not teachers:
            raise SystemExit(
                f"keras-one: error: --method {args.method} needs pre-trained "
                "teachers: --teacher PATH.keras, once per branch"
            )
        kwargs["teachers"] = teachers
    elif teachers:
        raise SystemExit(
            f"keras-one: error: --method {args.method} takes no --teacher"
        )
    return method_class(**kwargs)


def train(args):
    import keras

    from keras_one import experiment
    from keras_one import methods
    from keras_one import report

    output_dir = args.output_dir or os.path.join(
        "keras-one-runs",
        f"{args.method}-{args.dataset}-{time.strftime('%Y%m%d-%H%M%S')}",
    )
    os.makedirs(output_dir, exist_ok=True)
    train_ds, test_ds, info = _load_dataset(args, args.batch_size)
    # A method whose branches each take their own view of the image (PCL)
    # trains on data with that many views; the baseline on plain images.
    views = methods.data_views(methods.get(args.method), args.branches)
    method_data = {}
    if views > 1:
        method_data["train_ds"], method_data["test_ds"], _ = _load_dataset(
            args, args.batch_size, views=views
        )
    if args.model is None:
        args.model = "resnet8" if args.dataset == "digits" else "resnet32"
    recipe = dict(
        model=args.model,
        train_ds=train_ds,
        test_ds=test_ds,
        info=info,
        epochs=args.epochs,
        learning_rate=args.learning_rate,
        weight_decay=args.weight_decay,
        schedule=args.schedule,
        verbose=args.verbose,
    )
    results = {"arguments": vars(args)}
    results["dataset"] = {
        "name": info.name,
        "num_classes": info.num_classes,
        "input_shape": list(info.input_shape),
        "num_train_examples": info.num_train_examples,
        "num_test_examples": info.num_test_examples,
    }
    rows, curves = [], {}
    name = args.method.upper()
    if not args.no_baseline:
        print(f"Training the single-branch baseline ({args.model})...")
        keras.utils.set_random_seed(args.seed)
        logs = os.path.join(output_dir, "logs", "baseline")
        _, baseline = experiment.train_baseline(
            callbacks=[keras.callbacks.TensorBoard(logs)], **recipe
        )
        results["baseline"] = baseline
        curves["baseline"] = baseline["history"]
        rows.append(
            ("baseline (1 branch)", f"{100 * baseline['accuracy']:.2f}")
        )
    branches = f", {args.branches} branches" if args.branches else ""
    print(f"Training {name} ({args.model}{branches})...")
    keras.utils.set_random_seed(args.seed)
    method = _make_method(args)
    logs = os.path.join(output_dir, "logs", args.method)
    distiller, scores = experiment.train_distiller(
        method,
        num_branches=args.branches,
        callbacks=[keras.callbacks.TensorBoard(logs)],
        **{**recipe, **method_data},
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
    distiller_path = os.path.join(output_dir, "distiller.keras")
    distiller.save(distiller_path)
    curves_path = os.path.join(output_dir, "learning_curves.png")
    report.plot_learning_curves(
        curves, curves_path, title=f"{name} on {args.dataset}"
    )
    results_path = os.path.join(output_dir, "results.json")
    with open(results_path, "w") as file:
        json.dump(results, file, indent=2, default=float)
    print()
    size = info.num_test_examples
    size = f" ({size} images)" if size else ""
    print(f"Test accuracy on {args.dataset}{size}")
    print(report.format_table(rows, ("model", "accuracy (%)")))
    print()
    print(f"results:         {results_path}")
    print(f"learning curves: {curves_path}")
    print(f"distiller:       {distiller_path}")
    logs_dir = os.path.join(output_dir, "logs")
    print(f"TensorBoard:     tensorboard --logdir {logs_dir}")
    return results


def _load_model(path):
    import keras

    import keras_one  # noqa: F401  (registers the Distiller for loading)

    if not os.path.exists(path):
        raise SystemExit(f"keras-one: error: no such file: {path}")
    if not path.endswith((".keras", ".h5", ".hdf5")):
        raise SystemExit(
            f"keras-one: error: {path} is not a .keras file: this command "
            "reads saved Distillers and models exported with --format keras "
            "(SavedModel and TFLite exports run outside Keras)"
        )
    return keras.saving.load_model(path)


def evaluate(args):
    from keras_one import Distiller
    from keras_one import report

    model = _load_model(args.model_path)
    # A student (or an ensemble export) with one input per view (PCL) is
    # given the test images once per input.
    network = model.student if isinstance(model, Distiller) else model
    views = len(getattr(network, "inputs", None) or [None])
    _, test_ds, info = _load_dataset(
        args, args.batch_size, augment=False, views=views
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
    scores = {name: float(value) for name, value in scores.items()}
    rows = [
        (name, f"{100 * value:.2f}")
        for name, value in scores.items()
        if name.endswith("accuracy")
    ]
    print(f"Test accuracy on {info.name}")
    print(report.format_table(rows, ("output", "accuracy (%)")))
    if args.output:
        with open(args.output, "w") as file:
            json.dump(scores, file, indent=2)
    return scores


def export(args):
    from keras_one import Distiller

    distiller = _load_model(args.distiller_path)
    if not isinstance(distiller, Distiller):
        raise SystemExit(
            f"keras-one: error: {args.distiller_path} is not a saved "
            "Distiller (keras-one train writes one as distiller.keras)"
        )
    if args.branch == "ensemble":
        model = distiller.get_ensemble_model()
        suffix = "ensemble"
    else:
        try:
            index = int(args.branch)
        except ValueError:
            raise SystemExit(
                "keras-one: error: --branch must be an integer or 'ensemble'"
            ) from None
        # A method that deploys a temporal mean of the branch (PCL) says so.
        deploys_mean = hasattr(distiller.method, "get_mean_branch_model")
        try:
            if deploys_mean:
                model = distiller.method.get_mean_branch_model(index)
            else:
                model = distiller.get_branch_model(index)
        except ValueError as error:
            raise SystemExit(f"keras-one: error: {error}") from None
        suffix = f"branch{index}"
        if deploys_mean:
            print(
                f"exporting the temporal mean (EMA) of branch {index}, the "
                f"model {type(distiller.method).__name__} deploys"
            )
    extension = {"keras": ".keras", "savedmodel": "", "tflite": ".tflite"}
    output = args.output or (
        os.path.splitext(args.distiller_path)[0]
        + f"_{suffix}"
        + extension[args.format]
    )
    if args.format == "keras":
        model.save(output)
    elif args.format == "savedmodel":
        model.export(output, format="tf_saved_model", verbose=False)
    else:
        _export_tflite(model, output)
    print(f"wrote {output} ({model.count_params()} parameters)")
    return output


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
    with open(output, "wb") as file:
        file.write(flatbuffer)


def main(argv=None):
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 2
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    command = {"train": train, "evaluate": evaluate, "export": export}
    command[args.command](args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
