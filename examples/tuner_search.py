"""Hyperparameter search for an online distillation method with keras-tuner.

`keras_one.tuning.DistillerHyperModel` searches the number of branches,
the temperature, the ramp-up, the learning rate and the weight decay (and
any numeric argument of the method) and ranks trials by the validation
accuracy of the ensemble or of the best branch. The validation images are
held out of the training split: the test split is used once, at the end,
to report the chosen model.

    python examples/tuner_search.py                    # CIFAR-10, ONE
    python examples/tuner_search.py --method mde --objective best_branch
    python examples/tuner_search.py --tuner hyperband --epochs 60
    python examples/tuner_search.py --small            # digits, 2 trials

Full mode downloads CIFAR-10 with tensorflow-datasets (or reads it from
`--data-dir`), keeps the last 10% of its training images for validation
and runs 10 trials of a CIFAR ResNet-20 for 30 epochs each: hours on a GPU,
days on a CPU. `--small` runs 2 one-epoch trials of a ResNet-8 on the
bundled 8x8 digits, in about a minute on a CPU.
"""

import argparse
import tempfile
import time

import keras_tuner as kt

import keras_one
from keras_one.tuning import DistillerHyperModel


def digits_splits(batch_size):
    """Digits: training images split 80/20 into train and validation."""
    (x, y), (x_test, y_test) = keras_one.data.load_digits()
    num_val = len(x) // 5
    train_ds, val_ds, info = keras_one.data.load_arrays(
        x[num_val:],
        y[num_val:],
        x[:num_val],
        y[:num_val],
        batch_size=batch_size,
        augment="pad_crop",
        seed=0,
        name="digits",
    )
    # The test images, normalized with the same statistics.
    _, test_ds, _ = keras_one.data.load_arrays(
        x,
        y,
        x_test,
        y_test,
        batch_size=batch_size,
        mean=info.mean,
        std=info.std,
    )
    return train_ds, val_ds, test_ds, info


def tfds_splits(name, batch_size, data_dir):
    """A tfds dataset: 90% of `train` to train, 10% to validate, `test`."""
    train_ds, val_ds, info = keras_one.data.load(
        name,
        split=("train[:90%]", "train[90%:]"),
        batch_size=batch_size,
        seed=0,
        data_dir=data_dir,
    )
    _, test_ds, _ = keras_one.data.load(
        name, batch_size=batch_size, data_dir=data_dir
    )
    return train_ds, val_ds, test_ds, info


def make_tuner(name, hypermodel, trials, epochs, directory):
    options = dict(
        objective=hypermodel.objective,
        directory=directory,
        project_name="keras_one_search",
        overwrite=True,
        seed=0,
    )
    if name == "hyperband":
        return kt.Hyperband(hypermodel, max_epochs=epochs, **options)
    if name == "bayesian":
        return kt.BayesianOptimization(hypermodel, max_trials=trials, **options)
    return kt.RandomSearch(hypermodel, max_trials=trials, **options)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--small", action="store_true")
    parser.add_argument("--dataset", default="cifar10")
    parser.add_argument("--data-dir", default=None)
    parser.add_argument("--method", default="one")
    parser.add_argument("--model", default="resnet20")
    parser.add_argument("--objective", default="ensemble")
    parser.add_argument("--tuner", default="random")
    parser.add_argument("--trials", type=int, default=10)
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--directory", default=None)
    args = parser.parse_args(argv)
    if args.small:
        args.model, args.trials, args.epochs = "resnet8", 2, 1
        train_ds, val_ds, test_ds, info = digits_splits(args.batch_size)
    else:
        train_ds, val_ds, test_ds, info = tfds_splits(
            args.dataset, args.batch_size, args.data_dir
        )

    hypermodel = DistillerHyperModel(
        args.method,
        model=args.model,
        num_classes=info.num_classes,
        input_shape=info.input_shape,
        epochs=args.epochs,
        objective=args.objective,
    )
    directory = args.directory or tempfile.mkdtemp(prefix="keras_one_tuner_")
    tuner = make_tuner(
        args.tuner, hypermodel, args.trials, args.epochs, directory
    )
    tuner.search_space_summary()
    start = time.time()
    tuner.search(train_ds, validation_data=val_ds, verbose=2)
    seconds = time.time() - start

    best_hp = tuner.get_best_hyperparameters(1)[0]
    best = tuner.get_best_models(1)[0]
    logs = best.evaluate(test_ds, return_dict=True, verbose=0)
    branches = [logs[f"branch_{i}_accuracy"] for i in range(best.num_branches)]
    print(f"Search: {len(tuner.oracle.trials)} trials in {seconds:.0f} s")
    print("Best hyperparameters:", best_hp.values)
    score = tuner.oracle.get_best_trials(1)[0].score
    print(f"Objective ({hypermodel.objective.name}): {score:.4f}")
    print(
        "Test accuracy of the chosen model: ensemble "
        f"{logs['ensemble_accuracy']:.4f}, branches "
        + ", ".join(f"{a:.4f}" for a in branches)
    )
    return logs


if __name__ == "__main__":
    main()
