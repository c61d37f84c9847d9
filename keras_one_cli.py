"""The `keras-one` command's entry point: answers `--help` in milliseconds.

This module is outside the `keras_one` package on purpose: importing any
module of the package runs `keras_one/__init__.py`, which imports Keras and
TensorFlow (seconds, and log lines) so that `keras.saving.load_model` finds
the Distiller, layers and methods. Here the argument parser is built from
the standard library only (the method names are a static list, which
tests/test_cli_fast.py keeps equal to `keras_one.methods.names()`), and
`keras_one` is imported only once the arguments parsed and a command is to
run: `--help`, a bad flag and no command never load TensorFlow.

`keras_one.cli` builds the same parser (with the live method registry) and
runs the commands; `python -m keras_one.cli` works too, loading TensorFlow
first.
"""

import argparse
import math
import os
import sys


def known_methods():
    """The names of the methods in `keras_one/methods/`, without importing it.

    Read from the `MethodInfo(name=...)` of each module's source (the
    description that registers a method when its class is defined, see
    `keras_one.methods.registry`), so that adding a method stays one new
    file; tests/test_cli_fast.py checks they equal
    `keras_one.methods.names()`. Finding the package does not run its
    `__init__`.
    """
    import ast
    import importlib.util

    spec = importlib.util.find_spec("keras_one")
    folder = os.path.join(spec.submodule_search_locations[0], "methods")
    names = set()
    for file_name in sorted(os.listdir(folder)):
        if not file_name.endswith(".py"):
            continue
        with open(os.path.join(folder, file_name), encoding="utf-8") as file:
            tree = ast.parse(file.read())
        for node in ast.walk(tree):
            function = getattr(node, "func", None)
            called = getattr(function, "id", getattr(function, "attr", None))
            if isinstance(node, ast.Call) and called == "MethodInfo":
                names.update(
                    keyword.value.value
                    for keyword in node.keywords
                    if keyword.arg == "name"
                    and isinstance(keyword.value, ast.Constant)
                )
    return tuple(sorted(names))


# keras_one.protocols.names(), here without importing Keras (a test
# checks that the two agree).
PROTOCOLS = ("one", "pcl", "mcl_okd")

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
  keras-one predict branch0.tflite my_images/      # top classes by name
  keras-one pipeline ban --generations 3           # Born-Again Networks
  keras-one pipeline srm --teacher-model resnet20  # SRM, then KD
"""

DATASET_HELP = (
    "'digits' (bundled, no download), a tensorflow-datasets name (cifar10, "
    "cifar100, svhn_cropped, imagenet2012), a class-per-folder image "
    "directory, or an .npz file with x_train, y_train, x_test, y_test "
    "(default: digits)"
)


def number_type(kind, test, requirement):
    """An argparse type: `kind(text)`, refused unless `test(value)`.

    The refusal is argparse's one line, `argument --flag: must
    <requirement>: <text>` (also for text that is not a number). Also
    used by the benchmark scripts' parsers.
    """

    def parse(text):
        try:
            value = kind(text)
        except ValueError:
            value = None
        if value is None or not test(value):
            raise argparse.ArgumentTypeError(f"must {requirement}: {text}")
        return value

    return parse


positive_int = number_type(int, lambda v: v >= 1, "be a positive integer")
_non_negative_int = number_type(int, lambda v: v >= 0, "be an integer >= 0")
at_least_two = number_type(int, lambda v: v >= 2, "be at least 2")
seed_value = number_type(
    int, lambda v: 0 <= v < 2**32, "be an integer from 0 to 2**32 - 1"
)
positive_float = number_type(
    float, lambda v: v > 0 and math.isfinite(v), "be a positive number"
)
non_negative_float = number_type(
    float, lambda v: v >= 0 and math.isfinite(v), "be a number >= 0"
)
unit_interval = number_type(float, lambda v: 0 <= v <= 1, "lie in [0, 1]")
_ratio = number_type(float, lambda v: 0 < v <= 1, "lie in (0, 1]")


def the_pipelines(names):
    """`"the a and b pipelines"`, or `"the a pipeline"` for one name.

    For the refusals of a pipeline flag given to another pipeline (the
    command line's and `bench/accuracy.py`'s).
    """
    return f"the {' and '.join(names)} pipeline{'s' * (len(names) > 1)}"


def build_parser(method_names=None):
    """The `keras-one` argument parser; `--method` takes `method_names`
    (default: `known_methods()`)."""
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
        "accuracies. The run folder keeps a backup of the last epoch: "
        "continue an interrupted run with --resume DIR.",
    )
    _add_train_arguments(train, method_names)

    evaluate = commands.add_parser(
        "evaluate",
        help="test accuracy of a saved distiller or exported model",
        description="Evaluate a saved Distiller (every branch and the "
        "ensemble) or a model written by `keras-one export` (.keras, "
        "SavedModel folder or .tflite, with its sidecar) on a dataset's "
        "test split: an export that normalizes itself is given the raw "
        "test images. Use the dataset the model was trained on: its "
        "normalization is recomputed the same way.",
    )
    evaluate.add_argument("model_path", metavar="MODEL")
    _add_data_arguments(evaluate)
    evaluate.add_argument(
        "--batch-size", type=positive_int, default=256, help="(default: 256)"
    )
    evaluate.add_argument(
        "--output",
        metavar="RESULTS.json",
        help="also write the scores here (a new file unless --overwrite)",
    )
    evaluate.add_argument(
        "--overwrite",
        action="store_true",
        help="replace an existing --output file",
    )
    _add_verbose_argument(evaluate)

    export = commands.add_parser(
        "export",
        help="export one branch or the ensemble as a standalone model",
        description="Export one branch (a compact model) or the ensemble of "
        "a saved Distiller as a plain Keras model (.keras), a TensorFlow "
        "SavedModel or a TFLite flatbuffer. The exported model maps the "
        "dataset's raw images (e.g. 0-255 pixels; float32 input) to logits, "
        "normalizing them itself (unless --no-preprocessing), and needs "
        "nothing from keras-one. Its class names and preprocessing are "
        "written beside it, in OUTPUT.json (keras_one.json inside a "
        "SavedModel folder).",
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
        "e.g. distiller_branch0.keras); a new one unless --overwrite",
    )
    export.add_argument(
        "--overwrite",
        action="store_true",
        help="replace an existing --output (never the distiller itself)",
    )
    export.add_argument(
        "--no-preprocessing",
        action="store_true",
        help="export the bare network, which takes normalized images (by "
        "default the export takes raw images and normalizes them itself)",
    )
    export.add_argument(
        "--dataset",
        default=None,
        help="the dataset the distiller was trained on, to read its "
        "preprocessing and class names (default: from the results.json "
        "beside the distiller)",
    )
    export.add_argument(
        "--data-dir", help="tensorflow-datasets data directory (--dataset)"
    )
    export.add_argument(
        "--manual-dir", help="manually downloaded archives (--dataset)"
    )

    predict = commands.add_parser(
        "predict",
        help="classify image files with an exported model",
        description="Print the top classes, by name, of image files (.png, "
        ".jpg, .jpeg, .bmp, .gif) or folders of them, with a model written "
        "by `keras-one export` (.keras, SavedModel folder or .tflite) and "
        "its sidecar (MODEL.json, or keras_one.json in a SavedModel "
        "folder). Images are read as 8-bit files (0-255), converted to the "
        "model's channels, resized to its input size and mapped to the "
        "dataset's pixel range (0-255 → 0-raw_pixel_max of the sidecar's "
        "preprocessing: 0-16 for the digits).",
    )
    predict.add_argument("model_path", metavar="MODEL")
    predict.add_argument("paths", metavar="IMAGE_OR_FOLDER", nargs="+")
    predict.add_argument(
        "--top",
        type=positive_int,
        default=3,
        help="classes printed per image (default: 3)",
    )

    pipeline = commands.add_parser(
        "pipeline",
        help="multi-stage distillation: ensemble KD, self-distillation, "
        "BAN, SRM, block-wise KD",
        description="Train several networks of one architecture, one after "
        "the other, with the frozen earlier ones as teachers (KD): "
        "'ensemble' trains --members networks on the labels and distils "
        "their averaged prediction into a fresh one (Allen-Zhu and Li, ICLR "
        "2023); 'self' distils a network into a fresh copy of itself, "
        "--generations times (Allen-Zhu and Li); 'ban' chains Born-Again "
        "Networks (Furlanello et al., ICML 2018) and averages the "
        "generations; 'srm' trains a --teacher-model, codes its feature maps "
        "sparsely, initializes the --model student on those codes and "
        "distils it (Sparse Representation Matching, Tran et al.); "
        "'blockwise' trains each block of the student on the teacher "
        "block's output, then distils it (Ahmed et al., ICPR 2020). Every "
        "stage is saved in the run folder as "
        "<stage>.keras when it finishes; continue an interrupted run with "
        "--resume DIR.",
    )
    _add_pipeline_arguments(pipeline)
    return parser


PIPELINES = ("ensemble", "self", "ban", "srm", "blockwise")


def _layer_names(text):
    names = [name.strip() for name in text.split(",")]
    if not all(names):
        raise argparse.ArgumentTypeError(
            f"must be layer names separated by commas: {text!r}"
        )
    return names


def _add_pipeline_arguments(parser, kind=True):
    """The `pipeline` command's arguments; `kind=False` leaves out its
    positional PIPELINE (for the parser that lists the flags given)."""
    if kind:
        parser.add_argument(
            "kind",
            nargs="?",
            choices=PIPELINES,
            metavar="PIPELINE",
            help="ensemble, self, ban, srm or blockwise (read from "
            "DIR/run.json with --resume)",
        )
    _add_data_arguments(parser)
    parser.add_argument(
        "--model",
        default=None,
        help="network of every stage (the student for srm and blockwise): "
        "resnet<depth>, depth 6n+2 (default: resnet8 on digits, resnet32 "
        "otherwise)",
    )
    parser.add_argument(
        "--teacher-model",
        default=None,
        help="srm, blockwise: the teacher, trained first: resnet<depth> "
        "(default: resnet20 on digits, resnet56 otherwise)",
    )
    parser.add_argument(
        "--teacher-layers",
        type=_layer_names,
        default=None,
        help="srm, blockwise: the teacher's layers tapped (srm) or ending "
        "its blocks (blockwise), separated by commas (default: its stage "
        "outputs, stage<i>_block<n>_out)",
    )
    parser.add_argument(
        "--student-layers",
        type=_layer_names,
        default=None,
        help="srm, blockwise: the student's layers matched to them, of the "
        "same spatial sizes (default: its stage outputs)",
    )
    parser.add_argument(
        "--codeword-multiplier",
        type=positive_float,
        default=None,
        help="srm: codewords per channel of a tapped feature map (default: 2)",
    )
    parser.add_argument(
        "--sparsity-ratio",
        type=_ratio,
        default=None,
        help="srm: r, keeping int(channels * multiplier * r) codes per "
        "pixel, at least 1 (default: 0.02)",
    )
    parser.add_argument(
        "--members",
        type=at_least_two,
        default=None,
        help="ensemble: networks in the ensemble (default: 10)",
    )
    parser.add_argument(
        "--generations",
        type=positive_int,
        default=None,
        help="self, ban: distilled generations after the first (default: 1 "
        "for self, 3 for ban)",
    )
    parser.add_argument(
        "--average",
        default=None,
        choices=("logits", "probabilities"),
        help="ensemble, ban: what the ensemble averages (default: logits)",
    )
    parser.add_argument(
        "--alpha",
        type=unit_interval,
        default=None,
        help="weight of the distillation term, 1 - alpha weighing the "
        "labels (default: 0.9; 1 for ban, no labels; 0.5 for srm)",
    )
    parser.add_argument(
        "--temperature",
        type=positive_float,
        default=None,
        help="distillation temperature (default: 4; 1 for ban)",
    )
    parser.add_argument(
        "--epochs",
        type=positive_int,
        default=30,
        help="epochs of every stage (default: 30)",
    )
    parser.add_argument(
        "--batch-size", type=positive_int, default=64, help="(default: 64)"
    )
    parser.add_argument(
        "--schedule",
        default="cosine",
        choices=("cosine", "step"),
        help="learning-rate schedule of every stage, as for train "
        "(default: cosine)",
    )
    parser.add_argument(
        "--learning-rate",
        type=positive_float,
        default=0.1,
        help="initial learning rate of every stage (default: 0.1)",
    )
    parser.add_argument(
        "--weight-decay",
        type=non_negative_float,
        default=5e-4,
        help="coupled L2 weight decay (default: 5e-4)",
    )
    parser.add_argument(
        "--seed",
        type=seed_value,
        default=0,
        help="seed of the first stage; stage i uses seed + i (default: 0)",
    )
    parser.add_argument(
        "--output-dir",
        default=None,
        help="the run folder, for results.json, the stages' .keras files "
        "and backups; new or empty (default: a new folder "
        "keras-one-runs/<pipeline>-<dataset>-<time>)",
    )
    parser.add_argument(
        "--resume",
        metavar="DIR",
        help="continue the interrupted run in DIR: finished stages are "
        "kept, the interrupted one resumes from its last epoch (other "
        "flags must agree with DIR/run.json; --verbose may change)",
    )
    _add_verbose_argument(parser)


def _add_train_arguments(train, method_names=None):
    train.add_argument(
        "--method",
        default="one",
        choices=method_names or known_methods(),
        help="distillation method (default: one)",
    )
    _add_data_arguments(train)
    train.add_argument(
        "--model",
        default=None,
        help="network: resnet<depth>, depth 6n+2, e.g. resnet20, resnet32; "
        "hub:<keras-hub preset or preset folder>, e.g. "
        "hub:resnet_18_imagenet (needs pip install keras-one[hub]); "
        "applications:<keras.applications name>, e.g. "
        "applications:MobileNetV2 "
        "(default: resnet8 on digits, resnet32 otherwise)",
    )
    train.add_argument(
        "--branches",
        type=positive_int,
        default=None,
        help="number of branches (default: the method's, 3 for ONE)",
    )
    train.add_argument(
        "--epochs", type=positive_int, default=30, help="(default: 30)"
    )
    train.add_argument(
        "--batch-size", type=positive_int, default=64, help="(default: 64)"
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
        type=positive_float,
        default=0.1,
        help="initial learning rate, decayed to 0 by a cosine (default: 0.1)",
    )
    train.add_argument(
        "--weight-decay",
        type=non_negative_float,
        default=5e-4,
        help="coupled L2 weight decay (default: 5e-4)",
    )
    train.add_argument(
        "--protocol",
        choices=PROTOCOLS,
        help="a paper's exact recipe: one (ONE's official scripts), pcl or "
        "mcl_okd; it sets the epochs, batch size, learning rate and its "
        "schedule, momentum and weight decay, so give none of those flags "
        "(what each sets: README, keras_one.protocols)",
    )
    train.add_argument(
        "--temperature",
        type=positive_float,
        help="distillation temperature (default: the method's, 3 for ONE)",
    )
    train.add_argument(
        "--rampup-epochs",
        type=_non_negative_int,
        help="epochs of the distillation weight ramp-up (default: the "
        "method's fraction of --epochs from its paper, e.g. ONE's 80 of 300; "
        "0 for methods without a ramp-up)",
    )
    train.add_argument(
        "--teacher",
        action="append",
        metavar="PATH",
        help="a pre-trained teacher: a .keras file, or hub:<keras-hub "
        "classifier preset or preset folder> predicting the data's classes, "
        "which reads the images through its own preprocessing (needs pip "
        "install keras-one[hub]); for methods with teachers (repeat for "
        "several)",
    )
    train.add_argument(
        "--seed", type=seed_value, default=0, help="(default: 0)"
    )
    train.add_argument(
        "--output-dir",
        default=None,
        help="the run folder, for results.json, the models, curves, logs "
        "and backups; new or empty unless --overwrite (default: a new "
        "folder keras-one-runs/<method>-<dataset>-<time>)",
    )
    train.add_argument(
        "--overwrite",
        action="store_true",
        help="train in a non-empty --output-dir, replacing the files of the "
        "keras-one run there (other files are kept)",
    )
    train.add_argument(
        "--resume",
        metavar="DIR",
        help="continue the interrupted run in DIR from its last backup, "
        "with the arguments it recorded in DIR/run.json (other flags must "
        "agree with them; --verbose may change)",
    )
    train.add_argument(
        "--no-baseline",
        action="store_true",
        help="skip the single-branch baseline",
    )
    _add_verbose_argument(train)


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
    parser.add_argument(
        "--image-size",
        nargs=2,
        type=positive_int,
        metavar=("HEIGHT", "WIDTH"),
        help="size the images of an image-folder --dataset are resized to "
        "(default: their most common size)",
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


def main(argv=None):
    """Runs `keras-one` with `argv` (default: the command line's arguments).

    Parses here, without keras_one; then `keras_one.cli.main` runs the
    command (parsing again, against the live method registry).
    """
    argv = sys.argv[1:] if argv is None else list(argv)
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 2
    # Before TensorFlow is imported, so that it takes effect.
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    from keras_one import cli

    return cli.main(argv)


if __name__ == "__main__":
    sys.exit(main())
