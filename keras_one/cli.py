"""The `keras-one` command: train, evaluate and export distilled networks."""

import argparse
import inspect
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
    train.add_argument(
        "--dataset",
        default="digits",
        help="dataset: 'digits' (bundled, default) (default: digits)",
    )
    train.add_argument(
        "--model",
        default="resnet8",
        help="network: resnet<depth>, depth 6n+2, e.g. resnet20, resnet32 "
        "(default: resnet8)",
    )
    train.add_argument(
        "--branches",
        type=_positive_int,
        default=3,
        help="number of branches (default: 3)",
    )
    train.add_argument(
        "--epochs", type=_positive_int, default=30, help="(default: 30)"
    )
    train.add_argument(
        "--batch-size", type=_positive_int, default=64, help="(default: 64)"
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
        help="epochs of the distillation weight ramp-up (default: 27%% of "
        "--epochs, as ONE's 80 of 300)",
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
    train.add_argument(
        "--verbose",
        type=int,
        default=1,
        choices=(0, 1, 2),
        help="Keras verbosity: 1 progress bar, 2 one line per epoch, 0 quiet",
    )
    return parser


def _load_dataset(name, batch_size, seed):
    import tensorflow as tf

    from keras_one import data

    if name != "digits":
        raise SystemExit(
            f"keras-one: error: unknown dataset {name!r}; available: digits"
        )
    (x_train, y_train), (x_test, y_test) = data.load_digits()
    train = (
        tf.data.Dataset.from_tensor_slices((x_train, y_train))
        .shuffle(len(x_train), seed=seed, reshuffle_each_iteration=True)
        .batch(batch_size)
        .prefetch(tf.data.AUTOTUNE)
    )
    test = (
        tf.data.Dataset.from_tensor_slices((x_test, y_test))
        .batch(256)
        .prefetch(tf.data.AUTOTUNE)
    )
    info = {
        "num_classes": 10,
        "input_shape": x_train.shape[1:],
        "num_test_examples": len(x_test),
    }
    return train, test, info


def _make_method(args):
    import keras

    from keras_one import methods

    method_class = methods.get(args.method)
    parameters = inspect.signature(method_class.__init__).parameters
    kwargs = {}
    if args.temperature is not None:
        kwargs["temperature"] = args.temperature
    if "rampup_epochs" in parameters:
        rampup = args.rampup_epochs
        if rampup is None:
            rampup = round(0.27 * args.epochs)
        kwargs["rampup_epochs"] = rampup
    teachers = [keras.saving.load_model(p) for p in args.teacher or []]
    if "teacher" in parameters:
        if len(teachers) != 1:
            raise SystemExit(
                f"keras-one: error: --method {args.method} needs exactly one "
                "pre-trained --teacher PATH.keras"
            )
        kwargs["teacher"] = teachers[0]
    elif "teachers" in parameters:
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
    from keras_one import report

    output_dir = args.output_dir or os.path.join(
        "keras-one-runs",
        f"{args.method}-{args.dataset}-{time.strftime('%Y%m%d-%H%M%S')}",
    )
    os.makedirs(output_dir, exist_ok=True)
    train_ds, test_ds, info = _load_dataset(
        args.dataset, args.batch_size, args.seed
    )
    recipe = dict(
        model=args.model,
        train_ds=train_ds,
        test_ds=test_ds,
        info=info,
        epochs=args.epochs,
        learning_rate=args.learning_rate,
        weight_decay=args.weight_decay,
        verbose=args.verbose,
    )
    results = {"arguments": vars(args)}
    results["dataset"] = {
        "name": args.dataset,
        "num_classes": info["num_classes"],
        "input_shape": list(info["input_shape"]),
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
    print(f"Training {name} ({args.model}, {args.branches} branches)...")
    keras.utils.set_random_seed(args.seed)
    method = _make_method(args)
    logs = os.path.join(output_dir, "logs", args.method)
    distiller, scores = experiment.train_distiller(
        method,
        num_branches=args.branches,
        callbacks=[keras.callbacks.TensorBoard(logs)],
        **recipe,
    )
    results[args.method] = scores
    curves[name] = scores["history"]
    for index, accuracy in enumerate(scores["branch_accuracy"]):
        rows.append((f"{name} branch {index}", f"{100 * accuracy:.2f}"))
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
    size = info.get("num_test_examples")
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


def main(argv=None):
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 2
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    if args.command == "train":
        train(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
