"""ONE on CIFAR-10 with the official protocol (Lan et al., NeurIPS 2018).

A CIFAR ResNet-32 whose last stage is replicated into 3 branches with ONE's
gate; SGD (momentum 0.9, lr 0.1, x0.1 at epochs 150 and 225), 300 epochs,
batch 128, weight decay 1e-4, pad-4 crops and flips. The paper reports
6.93% -> 5.99% test error (baseline -> ONE branch). Needs a download of
CIFAR-10 by tensorflow-datasets and, realistically, a GPU.

    python examples/one_cifar10.py                    # the full protocol
    python examples/one_cifar10.py --epochs 30        # shorter
    python examples/one_cifar10.py --small            # digits, seconds
"""

import argparse

import keras

import keras_one


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--epochs", type=int, default=300)
    parser.add_argument("--depth", type=int, default=32)
    parser.add_argument(
        "--small",
        action="store_true",
        help="the bundled digits, ResNet-8, 1 epoch: offline, seconds",
    )
    args = parser.parse_args(argv)
    train_ds, test_ds, info = keras_one.recipes.load_data(
        args.small, batch_size=128
    )
    depth, epochs = (8, 1) if args.small else (args.depth, args.epochs)
    keras.utils.set_random_seed(0)
    method = keras_one.methods.ONE(
        temperature=3, rampup_epochs=round(80 / 300 * epochs)
    )
    distiller, results = keras_one.experiment.train_distiller(
        method,
        f"resnet{depth}",
        train_ds,
        test_ds,
        info,
        epochs=epochs,
        num_branches=3,
        learning_rate=0.1,
        weight_decay=1e-4,
        schedule="step",
        verbose=2,
    )
    for index, accuracy in enumerate(results["branch_accuracy"]):
        print(f"branch {index}: {100 * accuracy:.2f}% test accuracy")
    print(f"ensemble: {100 * results['ensemble_accuracy']:.2f}%")
    distiller.get_branch_model(0).save("one_cifar10_branch0.keras")
    print("saved the compact model: one_cifar10_branch0.keras")


if __name__ == "__main__":
    main()
