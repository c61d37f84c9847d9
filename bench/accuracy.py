"""Accuracy benchmark: the single-branch baseline against ONE and its peers.

Trains the baseline network and each method's student with one recipe
(`keras_one.experiment`: SGD 0.1 with Nesterov momentum, cosine decay,
coupled L2 weight decay, batch 128, pad-crop-flip augmentation) for several
seeds, and reports the mean and spread of the test accuracy of every branch,
of the best branch (picked on the held-out images, see `summarize`) and of
the ensemble, and the training time. Results are
written to a JSON file after every run (partial results survive an
interruption; a rerun with the same `--output` skips the runs already done)
and drawn in a PNG chart.

The data is an `.npz` file, an image folder or a tensorflow-datasets name
(anything `keras_one.data.load` takes). With `--train-examples N` only the
first `N / num_classes` training images of each class are used (for `.npz`
files), and the unused training images form a second, larger held-out set
that is also evaluated.

Reduced protocol for a 2-core CPU (about 15 minutes per run):

    python bench/accuracy.py --data cifar10_dev.npz --model resnet20 \
        --train-examples 2500 --epochs 80 --seeds 0 1 2 \
        --methods baseline one --output results/accuracy.json

The paper's protocol on a GPU (ResNet-32, full CIFAR-10, 300 epochs; each
method ramps its distillation weight up over the fraction of the epochs of
its paper, `info.rampup_fraction`: ONE's 80 of 300 epochs):

    python bench/accuracy.py --data cifar10 --model resnet32 --epochs 300 \
        --weight-decay 1e-4 --seeds 0 1 2 --methods baseline one

That recipe keeps the cosine decay of `keras_one.experiment` in place of
the paper's steps. `--protocol one` (or `pcl`, `mcl_okd`) trains with a
paper's exact recipe instead (`keras_one.protocols`: ONE's official
scripts are SGD with plain momentum, lr 0.1 x0.1 from epochs 151 and 225,
weight decay 1e-4, batch 128, 300 epochs), and then sets --epochs,
--batch-size, --learning-rate and --weight-decay itself:

    python bench/accuracy.py --data cifar10 --model resnet32 \
        --protocol one --seeds 0 1 2 --methods baseline one

KD, SOKD and EKD learn from pre-trained teachers. The benchmark trains them
first, with the baseline's recipe on the same training images, as networks
of `--teacher-model`: one per seed for KD and SOKD (shared by the two), and
`--branches` for EKD (one per student branch, each from its own seed:
teacher `k` of seed `s` is trained with seed `1000 + 10 * s + k`). The
teachers are saved as `.keras` files in `--teacher-dir` (default: next to
`--output`) and reused by later runs and reruns; their test and held-out
accuracy and training time are recorded with every run that uses them:

    python bench/accuracy.py --data cifar10_dev.npz --model resnet20 \
        --train-examples 2500 --epochs 80 --seeds 0 --methods kd sokd \
        --teacher-model resnet32 --output results/accuracy.json

The multi-stage pipelines of `keras_one.pipelines` run here too, by their
function names in `--methods` (`ensemble_distillation`,
`self_distillation`, `born_again`, `sparse_representation_matching`,
`blockwise_distillation`), with the same data, networks and recipe: every
stage trains `--epochs` epochs with the baseline's optimizer (SRM: its
official Adam schedule, the pipeline's default, scaled to `--epochs`). The
network a pipeline deploys (the distilled student, the last generation) is
scored as its one branch; born-again's ensemble of generations and
ensemble distillation's teacher ensemble as its ensemble. SRM and
block-wise distillation learn from the teacher KD and SOKD use (teacher 0
of the seed). Their stages are saved in `<output without .json>_pipelines/`
and a rerun resumes them; `--members` and `--generations` set the
ensemble's size and the generations (recorded with each run):

    python bench/accuracy.py --data cifar10_dev.npz --model resnet20 \
        --train-examples 2500 --epochs 80 --seeds 0 --members 3 \
        --methods ensemble_distillation born_again \
        --output results/accuracy.json

Runs can be spread over processes or machines, each writing its own
`--output`, and gathered into one file with `--merge` (the protocol must be
the same; runs already in the file are kept):

    python bench/accuracy.py ... --seeds 1 --output part1.json &
    python bench/accuracy.py ... --seeds 2 --output part2.json &
    wait
    python bench/accuracy.py ... --seeds 1 2 \
        --merge part1.json part2.json --output results/accuracy.json
"""

import argparse
import json
import os
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402

from keras_one_cli import at_least_two  # noqa: E402
from keras_one_cli import non_negative_float  # noqa: E402
from keras_one_cli import positive_float  # noqa: E402
from keras_one_cli import positive_int  # noqa: E402
from keras_one_cli import seed_value  # noqa: E402
from keras_one_cli import the_pipelines  # noqa: E402
from keras_one_cli import unit_interval  # noqa: E402

BASELINE = "baseline"
# The pipelines of `keras_one.pipelines` that `--methods` takes, and those
# of them that learn from a pre-trained teacher of `--teacher-model`.
PIPELINES = (
    "ensemble_distillation",
    "self_distillation",
    "born_again",
    "sparse_representation_matching",
    "blockwise_distillation",
)
TEACHER_PIPELINES = ("sparse_representation_matching", "blockwise_distillation")
# The pipelines' flags, and the pipelines that take each.
PIPELINE_FLAGS = {
    "members": ("ensemble_distillation",),
    "generations": ("self_distillation", "born_again"),
}


def build_parser():
    from keras_one import protocols

    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--data",
        required=True,
        help="an .npz file (x_train, y_train, x_test, y_test), a folder of "
        "class-per-folder images, or a tensorflow-datasets name",
    )
    parser.add_argument("--model", default="resnet20")
    parser.add_argument(
        "--methods",
        nargs="+",
        default=[BASELINE, "one"],
        help=f"'{BASELINE}', method names of keras_one.methods and "
        f"pipelines of keras_one.pipelines ({', '.join(PIPELINES)}) "
        "(default: baseline one)",
    )
    parser.add_argument(
        "--seeds", nargs="+", type=seed_value, default=[0, 1, 2]
    )
    parser.add_argument(
        "--protocol",
        choices=protocols.names(),
        default=None,
        help="a paper's exact recipe (keras_one.protocols), which sets "
        "--epochs, --batch-size, --learning-rate and --weight-decay, and "
        "the optimizer's momentum and schedule (default: none, the "
        "reduced recipe with a cosine decay)",
    )
    parser.add_argument(
        "--epochs", type=positive_int, default=None, help="(default: 80)"
    )
    parser.add_argument(
        "--train-examples",
        type=positive_int,
        default=None,
        help="use only this many training images, the same number per "
        "class (.npz data only); the rest are a held-out evaluation set",
    )
    parser.add_argument(
        "--resample",
        action="store_true",
        help="with --train-examples: the run of seed s trains on the "
        "(s mod K)-th of the K disjoint slices of that size of the training "
        "images (slice 0 is the first images of each class), and is "
        "evaluated on the test images and on the training images outside "
        "its slice; results then average over data as well as seeds",
    )
    parser.add_argument("--branches", type=positive_int, default=3)
    parser.add_argument(
        "--batch-size",
        type=positive_int,
        default=None,
        help="(default: 128)",
    )
    parser.add_argument(
        "--learning-rate",
        type=positive_float,
        default=None,
        help="(default: 0.1)",
    )
    parser.add_argument(
        "--weight-decay",
        type=non_negative_float,
        default=None,
        help="(default: 5e-4)",
    )
    parser.add_argument(
        "--rampup-fraction",
        type=unit_interval,
        default=None,
        help="ramp-up of the distillation weight as a fraction of the "
        "epochs, for the methods that ramp up (default: each method's "
        "own, from its paper: ONE's 80 of 300 epochs)",
    )
    parser.add_argument(
        "--teacher-model",
        default="resnet56",
        help="network of the pre-trained teachers of KD, SOKD and EKD "
        "(default resnet56, the usual teacher of a ResNet-20 student)",
    )
    parser.add_argument(
        "--teacher-dir",
        default=None,
        help="where the teachers are saved and found again (default: "
        "<output without .json>_teachers)",
    )
    parser.add_argument(
        "--members",
        type=at_least_two,
        default=None,
        help="networks of ensemble_distillation's ensemble (default: the "
        "pipeline's, 10)",
    )
    parser.add_argument(
        "--generations",
        type=positive_int,
        default=None,
        help="distilled generations of self_distillation and born_again "
        "(default: each pipeline's, 1 and 3)",
    )
    parser.add_argument("--output", default="accuracy.json")
    parser.add_argument(
        "--merge",
        nargs="+",
        default=[],
        metavar="RESULTS",
        help="first add the runs of these result files of the same protocol "
        "(written by parallel processes or other machines) that --output "
        "lacks; a run of a (method, seed) that --output holds is kept as is",
    )
    parser.add_argument(
        "--chart", default=None, help="PNG path (default: next to --output)"
    )
    parser.add_argument("--verbose", type=int, default=2)
    return parser


# === Data ===


def _stratified_subset(y, examples, slice_index=0):
    """Indices of slice `slice_index` of `examples / C` images per class.

    Slice `k` holds images `k * n` to `(k + 1) * n - 1` of each of the C
    classes (in the file's order), `n = examples / C`: slices are disjoint,
    and slice 0 is the first `n` images of each class.
    """
    classes = np.unique(y)
    per_class, remainder = divmod(examples, len(classes))
    if remainder or per_class < 1:
        raise SystemExit(
            f"--train-examples {examples} must be a positive multiple of the "
            f"number of classes ({len(classes)})."
        )
    chosen = []
    for label in classes:
        where = np.flatnonzero(y == label)
        if len(where) < per_class:
            raise SystemExit(
                f"--train-examples {examples} needs {per_class} images of "
                f"class {label}; the data has {len(where)}."
            )
        start = slice_index * per_class
        if len(where) < start + per_class:
            raise SystemExit(
                f"slice {slice_index} of --train-examples {examples} needs "
                f"{start + per_class} images of class {label}; the data has "
                f"{len(where)}."
            )
        chosen.append(where[start : start + per_class])
    return np.sort(np.concatenate(chosen))


def slice_count(y, examples):
    """How many disjoint slices of `examples` images per class `y` holds."""
    classes, counts = np.unique(y, return_counts=True)
    return int(counts.min() // (examples // len(classes)))


def train_slice(args, seed):
    """The slice of the training images that the run of `seed` trains on.

    `seed mod K` with `--resample` (K disjoint slices), else slice 0.
    """
    if not args.resample:
        return 0
    with np.load(args.data) as arrays:
        y_train = arrays["y_train"].reshape(-1)
    return seed % slice_count(y_train, args.train_examples)


def load_data(args, seed, views=1, slice_index=None, with_index=False):
    """`(train_ds, test_ds, heldout_ds or None, info dict)`.

    `seed` shuffles the training images; with `--train-examples`, they are
    slice `slice_index` (default: the slice of the run of `seed`, see
    `train_slice`). `views` and `with_index` are the options a method's
    data needs (`keras_one.methods.data_options`): `views > 1` gives every
    image that many views (PCL's peers), `with_index` each example's index
    in its split (MCL-OKD).
    """
    from keras_one import data

    options = dict(views=views, with_index=with_index)
    if args.train_examples is None:
        try:
            train_ds, test_ds, info = data.load(
                args.data, batch_size=args.batch_size, seed=seed, **options
            )
        except (ValueError, OSError) as error:
            raise SystemExit(f"--data {args.data}: {error}") from None
        return train_ds, test_ds, None, _info_dict(info)
    if not str(args.data).lower().endswith(".npz"):
        raise SystemExit(
            "--train-examples works with .npz data only; for other data, "
            "leave it out."
        )
    with np.load(args.data) as arrays:
        x_train, y_train = arrays["x_train"], arrays["y_train"].reshape(-1)
        x_test, y_test = arrays["x_test"], arrays["y_test"].reshape(-1)
    subset = _stratified_subset(
        y_train,
        args.train_examples,
        train_slice(args, seed) if slice_index is None else slice_index,
    )
    rest = np.setdiff1d(np.arange(len(y_train)), subset)
    x_sub, y_sub = x_train[subset], y_train[subset]
    # Normalize every split with the statistics of the images trained on.
    pixels = x_sub.reshape(-1, x_sub.shape[-1]).astype("float64") / 255.0
    stats = dict(mean=pixels.mean(axis=0), std=pixels.std(axis=0))
    train_ds, test_ds, info = data.load_arrays(
        x_sub,
        y_sub,
        x_test,
        y_test,
        batch_size=args.batch_size,
        seed=seed,
        **options,
        **stats,
    )
    heldout_ds = None
    if len(rest):
        # (Its training pipeline, over the subset, is not used.)
        _, heldout_ds, _ = data.load_arrays(
            x_sub, y_sub, x_train[rest], y_train[rest],
            batch_size=args.batch_size, **options, **stats,
        )  # fmt: skip
    return train_ds, test_ds, heldout_ds, _info_dict(info)


def _info_dict(info):
    return {
        "num_classes": info.num_classes,
        "input_shape": tuple(info.input_shape),
        "num_train_examples": info.num_train_examples,
        "num_test_examples": info.num_test_examples,
    }


# === Training ===


def teacher_count(name, args):
    """How many pre-trained teachers method or pipeline `name` takes."""
    from keras_one import methods
    from keras_one.methods.method_info import num_teachers

    if name in PIPELINES:
        return int(name in TEACHER_PIPELINES)
    return num_teachers(methods.get(name), args.branches)


# Ramped up (as ONE) although their papers have none: without a ramp-up,
# SOKD diverges in its first steps on this recipe (SGD 0.1, no warm-up).
# Its bridge, a fresh ResNet stage, learns from three terms at full weight;
# the loss of the labels alone trains it stably, and with the teacher's and
# the student's terms added its logits blow up within 3 steps, at T = 4 and
# at T = 1 (the official configuration trains the bridge at the student's
# learning rate, 0.1, as here).
RAMP_UP_TOO = ("sokd",)


def rampup_fraction(name, args):
    """The ramp-up of method `name` here, as a fraction of the epochs.

    The method's own (`info.rampup_fraction`; ONE's for `RAMP_UP_TOO`),
    replaced by `--rampup-fraction` if given; 0 for the methods that do
    not ramp up.
    """
    from keras_one import methods

    fraction = methods.get(name).info.rampup_fraction
    if name in RAMP_UP_TOO:
        fraction = fraction or methods.ONE.info.rampup_fraction
    if fraction and args.rampup_fraction is not None:
        fraction = args.rampup_fraction
    return fraction


def _make_method(name, args, teachers=(), train_ds=None):
    """Method `name` for a run on `train_ds` (`keras_one.methods.create`).

    A method that reads its training data (MCL-OKD's labels by example
    index) iterates `train_ds` once here, before training: the same for
    every run of a seed, so runs stay reproducible.
    """
    from keras_one import methods

    method_class = methods.get(name)
    return methods.create(
        method_class,
        train_ds=train_ds,
        teachers=teachers,
        rampup_epochs=methods.rampup_epochs(
            method_class, args.epochs, rampup_fraction(name, args)
        ),
    )


def _teacher_dir(args):
    return args.teacher_dir or os.path.splitext(args.output)[0] + "_teachers"


def _recipe(args, model, train_ds, test_ds, info):
    """The `keras_one.experiment` arguments shared by every network here."""
    return dict(
        model=model,
        train_ds=train_ds,
        test_ds=test_ds,
        info=info,
        epochs=args.epochs,
        learning_rate=args.learning_rate,
        weight_decay=args.weight_decay,
        protocol=args.protocol,
        verbose=args.verbose,
    )


def teacher_seed(seed, index):
    """The seed of teacher `index` of the runs with seed `seed`."""
    return 1000 + 10 * seed + index


def get_teacher(args, seed, index):
    """Teacher `index` of seed `seed`: loaded if saved, else trained and saved.

    Returns `(model, record)`, the record holding the teacher's test and
    held-out accuracy, training time and seed.
    """
    import keras

    from keras_one import experiment

    folder = _teacher_dir(args)
    stem = os.path.join(
        folder, f"{args.teacher_model}_seed{seed}_teacher{index}"
    )
    # What a teacher's training depends on; a saved teacher is reused only
    # for the same.
    recipe = {
        key: value
        for key, value in protocol_of(args).items()
        if key not in ("model", "branches", "rampup_fraction")
    }
    if os.path.exists(f"{stem}.keras") and os.path.exists(f"{stem}.json"):
        with open(f"{stem}.json") as file:
            record = json.load(file)
        if record.get("recipe") != recipe:
            raise SystemExit(
                f"{stem}.keras was trained with another recipe "
                f"({record.get('recipe')}, not {recipe}); choose another "
                "--teacher-dir or delete it."
            )
        model = keras.saving.load_model(
            f"{stem}.keras", compile=False, safe_mode=True
        )
        return model, record
    seed_k = teacher_seed(seed, index)
    print(
        f"=== teacher {index} of seed {seed}: {args.teacher_model}, "
        f"seed {seed_k} ===",
        flush=True,
    )
    # On the images of the student it teaches (the slice of `seed`).
    train_ds, test_ds, heldout_ds, info = load_data(
        args, seed_k, slice_index=train_slice(args, seed)
    )
    keras.utils.set_random_seed(seed_k)
    model, scores = experiment.train_baseline(
        **_recipe(args, args.teacher_model, train_ds, test_ds, info)
    )
    record = {
        "model": args.teacher_model,
        "seed": seed_k,
        "recipe": recipe,
        "test_accuracy": scores["accuracy"],
        "train_seconds": scores["train_seconds"],
    }
    if heldout_ds is not None:
        record["heldout_accuracy"] = _accuracy(model, heldout_ds, "accuracy")
    os.makedirs(folder, exist_ok=True)
    # Written under temporary names, then renamed: an interrupted run
    # leaves no half-written teacher behind.
    model.save(f"{stem}.tmp.keras")
    os.replace(f"{stem}.tmp.keras", f"{stem}.keras")
    _write(f"{stem}.json", record)
    return model, record


def _accuracy(model, dataset, key):
    scores = model.evaluate(dataset, verbose=0, return_dict=True)
    return float(scores[key])


def pipeline_options(name, args):
    """The keyword arguments of pipeline `name`: its defaults and flags."""
    from keras_one import pipelines

    options = dict(pipelines.DEFAULTS[name])
    for flag, names in PIPELINE_FLAGS.items():
        if name in names and getattr(args, flag) is not None:
            options[flag] = getattr(args, flag)
    return options


def _pipeline_dir(args):
    return os.path.splitext(args.output)[0] + "_pipelines"


def _deployed(name, models):
    """`(network, ensemble or None)` of a pipeline's returned models."""
    if name in ("self_distillation", "born_again"):
        return models["generations"][-1], models.get("ensemble")
    return models["student"], models.get("ensemble")


def run_pipeline(name, seed, args):
    """Runs pipeline `name` (every stage, resumed if begun); its record.

    The record has a method's keys (the deployed network as the one
    branch, see `_deployed`), plus `options`, every stage's test accuracy
    (`stage_accuracy`) and training time (`stage_seconds`, summed into
    `train_seconds`), and the history of the deployed network's stage.
    """
    import functools

    from keras_one import experiment
    from keras_one import models
    from keras_one import pipelines

    train_ds, test_ds, heldout_ds, info = load_data(args, seed)
    record = {"method": name, "seed": seed}
    if args.train_examples is not None:
        record["train_slice"] = train_slice(args, seed)
    options = pipeline_options(name, args)
    record["options"] = options
    extra = {}
    if name in TEACHER_PIPELINES:
        teacher, teacher_record = get_teacher(args, seed, 0)
        record["teachers"] = [teacher_record]
        extra["teacher"] = teacher
    if name == "sparse_representation_matching":
        # SRM keeps its own default: the official Adam schedule.
        record["optimizer"] = "the pipeline's default (official Adam)"
    else:
        extra["optimizer"] = experiment.optimizer_for(
            args.protocol, args.learning_rate, args.epochs, len(train_ds)
        )
    num_classes, input_shape = experiment.classes_and_shape(info)
    build = functools.partial(
        models.get(args.model),
        num_classes=num_classes,
        input_shape=input_shape,
        num_branches=1,
        weight_decay=args.weight_decay,
    )
    directory = os.path.join(_pipeline_dir(args), f"{name}_seed{seed}")
    networks, _ = getattr(pipelines, name)(
        build,
        train_ds=train_ds,
        test_ds=test_ds,
        epochs=args.epochs,
        directory=directory,
        seed=seed,
        verbose=args.verbose,
        **extra,
        **options,
    )
    network, ensemble = _deployed(name, networks)
    record["branch_accuracy"] = [_score(network, test_ds)]
    record["ensemble_accuracy"] = _score(ensemble, test_ds)
    if heldout_ds is not None:
        record["heldout_branch_accuracy"] = [_score(network, heldout_ds)]
        record["heldout_ensemble_accuracy"] = _score(ensemble, heldout_ds)
    with open(os.path.join(directory, pipelines.RECORD)) as file:
        stages = json.load(file)["stages"]
    record["stage_accuracy"], record["stage_seconds"] = {}, {}
    for stage in stages:
        with open(os.path.join(directory, f"{stage}.json")) as file:
            scores = json.load(file)
        # (The non-classifier stages, SRM's coding, record a test loss.)
        record["stage_accuracy"][stage] = scores.get("accuracy")
        record["stage_seconds"][stage] = scores["train_seconds"]
    record["train_seconds"] = sum(record["stage_seconds"].values())
    _record_machine(record, scores["history"])
    return record


def _score(model, dataset):
    """The accuracy of `model` on `dataset`, or `None` without a model."""
    from keras_one import recipes

    return None if model is None else recipes.accuracy(model, dataset)


def _record_machine(record, history):
    """Adds the threads, the CPU and the epoch history to `record`."""
    record["intra_op_threads"] = _intra_op_threads()
    # Runs of one file may come from other processes or machines.
    info = _machine_info()
    record["inter_op_threads"] = info.tensorflow_threads("inter")
    record["cpu"] = info.cpu_name()
    record["history"] = {
        key: [float(v) for v in values] for key, values in history.items()
    }


def run_one(name, seed, args):
    """Trains one configuration; returns its result record."""
    import keras

    from keras_one import experiment
    from keras_one import methods

    if name in PIPELINES:
        return run_pipeline(name, seed, args)

    # A method whose data is not plain images (PCL's views, MCL-OKD's
    # example indices) is trained and tested on data loaded so.
    options = {}
    if name != BASELINE:
        options = methods.data_options(methods.get(name), args.branches)
    train_ds, test_ds, heldout_ds, info = load_data(args, seed, **options)
    recipe = _recipe(args, args.model, train_ds, test_ds, info)
    keras.utils.set_random_seed(seed)
    record = {"method": name, "seed": seed}
    if args.train_examples is not None:
        record["train_slice"] = train_slice(args, seed)
    if name == BASELINE:
        network, scores = experiment.train_baseline(**recipe)
        record["branch_accuracy"] = [scores["accuracy"]]
        record["ensemble_accuracy"] = None
        if heldout_ds is not None:
            record["heldout_branch_accuracy"] = [
                _accuracy(network, heldout_ds, "accuracy")
            ]
    else:
        teachers = [
            get_teacher(args, seed, index)
            for index in range(teacher_count(name, args))
        ]
        if teachers:
            record["teachers"] = [teacher for _, teacher in teachers]
        keras.utils.set_random_seed(seed)
        method = _make_method(
            name, args, [model for model, _ in teachers], train_ds
        )
        record["rampup_epochs"] = method.rampup_epochs
        distiller, scores = experiment.train_distiller(
            method, num_branches=args.branches, **recipe
        )
        single = distiller.num_branches == 1
        record["branch_accuracy"] = scores["branch_accuracy"]
        # A single network (KD, SOKD) has no ensemble.
        record["ensemble_accuracy"] = (
            None if single else scores["ensemble_accuracy"]
        )
        if heldout_ds is not None:
            evaluated = distiller.evaluate(
                heldout_ds, verbose=0, return_dict=True
            )
            keys = (
                ["accuracy"]
                if single
                else [
                    f"branch_{i}_accuracy"
                    for i in range(distiller.num_branches)
                ]
            )
            record["heldout_branch_accuracy"] = [
                float(evaluated[key]) for key in keys
            ]
            record["heldout_ensemble_accuracy"] = (
                None if single else float(evaluated["ensemble_accuracy"])
            )
        if "mean_branch_accuracy" in scores:
            # PCL deploys its peers' temporal means: their accuracy too.
            record["mean_branch_accuracy"] = scores["mean_branch_accuracy"]
            if heldout_ds is not None:
                record["heldout_mean_branch_accuracy"] = [
                    experiment.mean_branch_accuracy(method, i, heldout_ds)
                    for i in range(distiller.num_branches)
                ]
    record["train_seconds"] = scores["train_seconds"]
    _record_machine(record, scores["history"])
    return record


def _intra_op_threads():
    """TensorFlow's intra-op thread count, which sets a run's speed.

    Recorded per run, as one results file gathers runs of several
    processes. Set by `tf.config.threading`, else by the environment
    variable `TF_NUM_INTRAOP_THREADS` (which that API does not report),
    else TensorFlow's default: every core.
    """
    return _machine_info().tensorflow_threads("intra")


# === Summary ===


def _stats(values):
    values = np.asarray(values, "float64") * 100
    return {
        "mean": float(values.mean()),
        "std": float(values.std(ddof=1)) if len(values) > 1 else 0.0,
        "min": float(values.min()),
        "max": float(values.max()),
        "n": int(len(values)),
    }


def picked_branch(scores, picker):
    """The score of the branch with the best `picker` accuracy.

    `scores` and `picker` are one run's per-branch accuracies on two sets.
    Branches tied on `picker` count alike: the mean of their scores (the
    expected score of a pick among them).
    """
    scores, picker = np.asarray(scores), np.asarray(picker)
    return float(scores[picker == picker.max()].mean())


def summarize(runs):
    """Mean, sample standard deviation and range per method, in percent.

    The best branch of a run is picked on the other set and scored on this
    one (picked on the held-out images for the test set, on the test set
    for the held-out images), so that the pick does not favour the set it
    is scored on; `best_branch_picked_on` says which set picked it. Without
    a held-out set it is picked on the set it is scored on (an optimistic
    figure): `best_branch_picked_on` is then "itself".
    """
    summary = {}
    for name in dict.fromkeys(run["method"] for run in runs):
        group = [run for run in runs if run["method"] == name]
        entry = {"seeds": [run["seed"] for run in group]}
        for prefix, other, other_name in (
            ("", "heldout_", "heldout"),
            ("heldout_", "", "test"),
        ):
            key = f"{prefix}branch_accuracy"
            if not all(key in run for run in group):
                continue
            branches = np.asarray([run[key] for run in group])
            entry[f"{prefix}branches"] = [
                _stats(branches[:, i]) for i in range(branches.shape[1])
            ]
            entry[f"{prefix}mean_branch"] = _stats(branches.mean(axis=1))
            picker = f"{other}branch_accuracy"
            if all(picker in run for run in group):
                entry[f"{prefix}best_branch"] = _stats(
                    [picked_branch(run[key], run[picker]) for run in group]
                )
                entry[f"{prefix}best_branch_picked_on"] = other_name
            else:
                entry[f"{prefix}best_branch"] = _stats(branches.max(axis=1))
                entry[f"{prefix}best_branch_picked_on"] = "itself"
            ensemble = [run.get(f"{prefix}ensemble_accuracy") for run in group]
            if all(value is not None for value in ensemble):
                entry[f"{prefix}ensemble"] = _stats(ensemble)
        teachers = [t for run in group for t in run.get("teachers", [])]
        if teachers:
            entry["teacher_model"] = teachers[0]["model"]
            for key in ("test_accuracy", "heldout_accuracy"):
                if all(key in t for t in teachers):
                    entry[f"teacher_{key}"] = _stats([t[key] for t in teachers])
        seconds = [run["train_seconds"] for run in group]
        entry["train_seconds"] = {
            "mean": float(np.mean(seconds)),
            "std": float(np.std(seconds, ddof=1)) if len(seconds) > 1 else 0,
        }
        summary[name] = entry
    return summary


def t_interval(values, confidence=0.95):
    """`(low, high)`: Student's t interval of the mean of `values`.

    Two-sided; assumes the values are independent draws of one normal
    distribution (here: paired differences of runs on resampled data and
    seeds). `None` for fewer than two values.
    """
    from scipy import stats

    values = np.asarray(values, "float64")
    if len(values) < 2:
        return None
    half = stats.t.ppf(0.5 + confidence / 2, len(values) - 1) * (
        values.std(ddof=1) / np.sqrt(len(values))
    )
    return float(values.mean() - half), float(values.mean() + half)


def _run_scores(run, prefix):
    """`{score: accuracy in %}` of one run on the test set (`prefix` "") or
    the held-out images (`prefix` "heldout_")."""
    branches = run.get(f"{prefix}branch_accuracy")
    if branches is None:
        return {}
    scores = {"mean_branch": 100 * float(np.mean(branches))}
    other = "heldout_" if prefix == "" else ""
    if f"{other}branch_accuracy" in run:
        scores["best_branch"] = 100 * picked_branch(
            branches, run[f"{other}branch_accuracy"]
        )
    if run.get(f"{prefix}ensemble_accuracy") is not None:
        scores["ensemble"] = 100 * run[f"{prefix}ensemble_accuracy"]
    return scores


def paired_differences(runs, reference=BASELINE, prefix=""):
    """Each method against `reference`, paired by seed (and so by slice).

    For every method, score (mean branch, best branch, ensemble) and run
    paired with a run of `reference` of the same seed: the differences in
    points (method minus reference's single network), their mean, sample
    standard deviation and 95% Student's t interval of the mean, and the
    seeds. `prefix` "heldout_" scores on the held-out images.
    """
    base = {
        run["seed"]: _run_scores(run, prefix)["mean_branch"]
        for run in runs
        if run["method"] == reference and f"{prefix}branch_accuracy" in run
    }
    result = {}
    for name in dict.fromkeys(run["method"] for run in runs):
        if name == reference:
            continue
        group = [
            run
            for run in runs
            if run["method"] == name
            and run["seed"] in base
            and f"{prefix}branch_accuracy" in run
        ]
        entry = {}
        for key in ("mean_branch", "best_branch", "ensemble"):
            pairs = [
                (run["seed"], _run_scores(run, prefix).get(key))
                for run in group
            ]
            pairs = [(s, score) for s, score in pairs if score is not None]
            if not pairs:
                continue
            differences = np.asarray([score - base[s] for s, score in pairs])
            entry[key] = {
                "seeds": [seed for seed, _ in pairs],
                "differences": [float(d) for d in differences],
                "mean": float(differences.mean()),
                "std": float(differences.std(ddof=1))
                if len(differences) > 1
                else 0.0,
                "t_interval_95": t_interval(differences),
                "n": len(differences),
            }
        if entry:
            result[name] = entry
    return result


def format_paired(paired, reference=BASELINE):
    rows = []
    for name, entry in paired.items():
        for key in ("mean_branch", "best_branch", "ensemble"):
            if key not in entry:
                continue
            stats = entry[key]
            interval = stats["t_interval_95"]
            rows.append(
                (
                    name,
                    key.replace("_", " "),
                    str(stats["n"]),
                    f"{stats['mean']:+.2f}",
                    f"[{interval[0]:+.2f}, {interval[1]:+.2f}]"
                    if interval
                    else "-",
                    f"{stats['std']:.2f}",
                )
            )
    from keras_one import report

    headers = (
        "method",
        "score",
        "pairs",
        f"minus {reference}",
        "95% t interval",
        "std of diff.",
    )
    return report.format_table(rows, headers)


def format_summary(summary, prefix=""):
    rows = []
    for name, entry in summary.items():
        if f"{prefix}mean_branch" not in entry:
            continue
        cells = [name, str(len(entry["seeds"]))]
        for key in ("mean_branch", "best_branch", "ensemble"):
            stats = entry.get(prefix + key)
            cells.append(
                f"{stats['mean']:.2f} +- {stats['std']:.2f}" if stats else "-"
            )
        cells.append(f"{entry['train_seconds']['mean']:.0f}")
        teacher = entry.get(f"teacher_{prefix or 'test_'}accuracy")
        model = entry.get("teacher_model")
        cells.append(f"{model} {teacher['mean']:.2f}" if teacher else "-")
        rows.append(cells)
    from keras_one import report

    headers = ("method", "seeds", "mean branch", "best branch", "ensemble")
    return report.format_table(rows, headers + ("train s", "teacher"))


def _seeds(count):
    return f"{count} seed{'s' * (count != 1)}"


def plot(summary, path, title):
    """Bar chart: mean branch, best branch and ensemble, +- one std."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    keys = ("mean_branch", "best_branch", "ensemble")
    labels = ("mean of branches", "best branch", "ensemble")
    names = list(summary)
    # One bar for the baseline and the single networks (KD, SOKD).
    single = {name for name in names if "ensemble" not in summary[name]}
    figure, axis = plt.subplots(figsize=(1.8 + 1.6 * len(names), 4))
    width = 0.8 / len(keys)
    for k, (key, label) in enumerate(zip(keys, labels, strict=True)):
        xs, means, stds = [], [], []
        for i, name in enumerate(names):
            stats = summary[name].get(key)
            if stats is None or (key != "mean_branch" and name in single):
                continue
            xs.append(i if name in single else i + (k - 1) * width)
            means.append(stats["mean"])
            stds.append(stats["std"])
        axis.bar(xs, means, width, yerr=stds, capsize=3, label=label)
    low = min(
        summary[n][k]["min"] for n in names for k in keys if k in summary[n]
    )
    high = max(
        summary[n][k]["max"] for n in names for k in keys if k in summary[n]
    )
    axis.set_ylim(max(0.0, low - 3), min(100.0, high + 2))
    axis.set_xticks(range(len(names)))
    axis.set_xticklabels(
        [f"{n}\n({_seeds(len(summary[n]['seeds']))})" for n in names]
    )
    axis.set_ylabel("test accuracy (%)")
    axis.set_title(title, fontsize=9)
    axis.grid(axis="y", alpha=0.3)
    axis.legend(fontsize=8)
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)


# === Main ===


# The recipe without --protocol; a protocol sets these itself.
RECIPE_DEFAULTS = {
    "epochs": 80,
    "batch_size": 128,
    "learning_rate": 0.1,
    "weight_decay": 5e-4,
}


def resolve_recipe(args):
    """Fills the recipe flags from `--protocol` or from `RECIPE_DEFAULTS`.

    A recipe flag given with `--protocol` is refused (SystemExit), before
    anything trains.
    """
    given = [key for key in RECIPE_DEFAULTS if getattr(args, key) is not None]
    if args.protocol is None:
        for key, value in RECIPE_DEFAULTS.items():
            if getattr(args, key) is None:
                setattr(args, key, value)
        return args
    if given:
        flags = ", ".join("--" + key.replace("_", "-") for key in given)
        raise SystemExit(
            f"--protocol {args.protocol} sets --epochs, --batch-size, "
            f"--learning-rate and --weight-decay; drop {flags} (or drop "
            "--protocol)."
        )
    from keras_one import protocols

    for key, value in protocols.get(args.protocol).settings().items():
        setattr(args, key, value)
    return args


def parse_args(argv=None):
    """The command line's arguments, the recipe resolved (`resolve_recipe`)."""
    return resolve_recipe(build_parser().parse_args(argv))


def protocol_of(args):
    """The settings that make results comparable (those of one file).

    `protocol` is left out when it is `None` and `resample` when it is
    false, so files written before those flags existed compare equal to
    runs without them.
    """
    return _normalized({
        key: value
        for key, value in vars(args).items()
        if key
        not in (
            "output", "chart", "verbose", "methods", "seeds", "merge",
            # Recorded with each run that uses teachers instead.
            "teacher_model", "teacher_dir",
            # Recorded with each pipeline's run (its `options`) instead.
            *PIPELINE_FLAGS,
        )
    })  # fmt: skip


def _normalized(protocol):
    """`protocol` without `protocol: None` and `resample: False`.

    The form `protocol_of` returns; a file written between the two flags'
    additions may hold `resample: false`.
    """
    if not isinstance(protocol, dict):
        return protocol
    return {
        key: value
        for key, value in protocol.items()
        if not (key == "protocol" and value is None)
        and not (key == "resample" and not value)
    }


def _write(path, results):
    temporary = f"{path}.tmp"
    with open(temporary, "w") as file:
        json.dump(results, file, indent=1)
    os.replace(temporary, path)


def _merge(results, paths, protocol, done):
    """Adds the runs of the files `paths` that `results` lacks.

    Returns how many were added; `done` is updated.
    """
    total = 0
    for path in paths:
        added = 0
        with open(path) as file:
            other = json.load(file)
        if _normalized(other.get("protocol")) != protocol:
            raise SystemExit(
                f"--merge {path} holds results of another protocol "
                f"({other.get('protocol')}, not {protocol})."
            )
        for run in other["runs"]:
            key = (run["method"], run["seed"])
            if key not in done:
                done.add(key)
                results["runs"].append(run)
                added += 1
        print(f"merged {added} runs from {path}", flush=True)
        total += added
    return total


def main(argv=None):
    args = parse_args(argv)
    from keras_one import methods

    for flag, values in (("--seeds", args.seeds), ("--methods", args.methods)):
        repeated = sorted({v for v in values if values.count(v) > 1})
        if repeated:
            raise SystemExit(
                f"{flag} lists {', '.join(map(str, repeated))} more than "
                "once; give each once."
            )
    for name in args.methods:
        if name != BASELINE and name not in PIPELINES:
            try:
                info = methods.get(name).info
            except ValueError as error:
                raise SystemExit(
                    f"--methods {name}: {error} Pipelines: "
                    f"{', '.join(PIPELINES)}."
                ) from None
            if args.branches < info.min_branches:
                raise SystemExit(
                    f"--methods {name} needs at least {info.min_branches} "
                    f"branches: raise --branches (got {args.branches})."
                )
    from keras_one import models

    networks = [("--model", args.model)]
    if any(
        name != BASELINE and teacher_count(name, args) for name in args.methods
    ):
        networks.append(("--teacher-model", args.teacher_model))
    for flag, network in networks:
        try:
            models.get(network)
        except (ValueError, ImportError) as error:
            raise SystemExit(f"{flag} {network}: {error}") from None
    for flag, names in PIPELINE_FLAGS.items():
        if getattr(args, flag) is not None and not set(names) & set(
            args.methods
        ):
            raise SystemExit(
                f"--{flag} applies to {the_pipelines(names)} only: add "
                f"{'one' if len(names) > 1 else 'it'} to --methods or leave "
                f"out --{flag}."
            )
    if args.resample and args.train_examples is None:
        raise SystemExit("--resample needs --train-examples (the slice size).")
    chart = args.chart or os.path.splitext(args.output)[0] + ".png"
    os.makedirs(os.path.dirname(os.path.abspath(args.output)), exist_ok=True)
    protocol = protocol_of(args)
    results = {"protocol": protocol, "machine": _machine(), "runs": []}
    if os.path.exists(args.output):
        with open(args.output) as file:
            previous = json.load(file)
        if _normalized(previous.get("protocol")) != protocol:
            raise SystemExit(
                f"{args.output} holds results of another protocol; choose "
                "another --output or delete it."
            )
        results["runs"] = previous["runs"]
    done = {(run["method"], run["seed"]) for run in results["runs"]}
    merged = _merge(results, args.merge, protocol, done)
    _check_pipeline_options(results["runs"], args)
    title = (
        f"{args.model}, {args.data and os.path.basename(args.data)}, "
        f"{args.train_examples or 'all'} train images, {args.epochs} epochs"
    )
    to_train = [
        (name, seed)
        for seed in args.seeds
        for name in args.methods
        if (name, seed) not in done
    ]
    # (Only results to merge: the data need not be here.)
    if to_train and str(args.data).lower().endswith(".npz"):
        if not os.path.isfile(args.data):
            raise SystemExit(f"--data {args.data}: no such file.")
    # Seed-major order: an interrupted benchmark leaves complete seeds.
    for seed in args.seeds:
        for name in args.methods:
            if (name, seed) in done:
                continue
            print(f"=== {name}, seed {seed} ===", flush=True)
            start = time.perf_counter()
            record = run_one(name, seed, args)
            record["wall_seconds"] = time.perf_counter() - start
            results["runs"].append(record)
            _summarize_into(results)
            _write(args.output, results)
            plot(results["summary"], chart, title)
            print(
                f"{name} seed {seed}: branches "
                f"{[round(100 * a, 2) for a in record['branch_accuracy']]}, "
                f"ensemble {record['ensemble_accuracy']}, "
                f"{record['train_seconds']:.0f} s",
                flush=True,
            )
    if merged:
        _summarize_into(results)
        _write(args.output, results)
    summary = summarize(results["runs"]) if results["runs"] else {}
    if summary:  # Redrawn also when every run was done before.
        plot(summary, chart, title)
    print(f"\nTest accuracy (%), mean +- std over seeds ({title})")
    print(format_summary(summary))
    if any("heldout_mean_branch" in entry for entry in summary.values()):
        print("\nHeld-out (unused training images) accuracy (%)")
        print(format_summary(summary, prefix="heldout_"))
    for prefix, where in (("", "test"), ("heldout_", "held-out")):
        paired = paired_differences(results["runs"], prefix=prefix)
        if paired:
            print(
                f"\n{where.capitalize()} accuracy minus the {BASELINE}'s, "
                "paired by seed (points; 95% Student's t interval)"
            )
            print(format_paired(paired))
    print(f"\nresults: {args.output}\nchart:   {chart}")
    return results


def _check_pipeline_options(runs, args):
    """Refuses to add pipeline runs of other options to recorded ones.

    A pipeline's runs in one file share its options (`--members`,
    `--generations`), as every run there shares the protocol.
    """
    for run in runs:
        name = run["method"]
        if name in PIPELINES and name in args.methods:
            wanted = pipeline_options(name, args)
            if run.get("options") != wanted:
                raise SystemExit(
                    f"{args.output} holds {name} runs with options "
                    f"{run.get('options')}, not {wanted}: give the same "
                    "--members/--generations, or another --output."
                )


def _summarize_into(results):
    """Puts the summary and the paired differences into `results`."""
    results["summary"] = summarize(results["runs"])
    results["paired"] = {
        where: paired_differences(results["runs"], prefix=prefix)
        for prefix, where in (("", "test"), ("heldout_", "heldout"))
    }


def _machine_info():
    """`bench/machine_info.py`, imported from this script's directory."""
    directory = os.path.dirname(os.path.abspath(__file__))
    if directory not in sys.path:
        sys.path.insert(0, directory)
    import machine_info

    return machine_info


def _machine():
    """The CPU model, thread counts and libraries of this process."""
    return _machine_info().describe()


if __name__ == "__main__":
    main()
    sys.exit(0)
