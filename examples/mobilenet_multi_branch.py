"""A `keras.applications` model made multi-branch and trained with ONE.

MobileNetV2's layers after `block_13_expand_relu` (the last two stages and
the classifier) are replicated into 3 branches by
`keras_one.models.make_multi_branch`, ONE's gate is added on the shared
features, and the Distiller trains it on CIFAR-10. Any functional Keras
model works the same way: pick a layer whose output alone feeds the rest.

    python examples/mobilenet_multi_branch.py --epochs 30
    python examples/mobilenet_multi_branch.py --small   # offline smoke test
"""

import argparse
import contextlib

import keras

import keras_one


def build_student(num_classes, input_shape, alpha):
    base = keras.applications.MobileNetV2(
        input_shape=input_shape,
        alpha=alpha,
        weights=None,
        classes=num_classes,
        classifier_activation=None,  # ONE needs logits
    )
    return keras_one.models.make_multi_branch(
        base, split_at="block_13_expand_relu", num_branches=3
    )


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--alpha", type=float, default=1.0)
    parser.add_argument("--small", action="store_true")
    args = parser.parse_args(argv)

    context = contextlib.nullcontext()
    epochs, alpha = args.epochs, args.alpha
    if args.small:
        import tensorflow_datasets as tfds

        context = tfds.testing.mock_data(num_examples=32)
        epochs, alpha = 1, 0.35
    with context:
        train_ds, test_ds, info = keras_one.recipes.load_data(batch_size=64)
    student = build_student(info.num_classes, info.input_shape, alpha)
    distiller = keras_one.Distiller(
        student, keras_one.methods.ONE(rampup_epochs=round(0.27 * epochs))
    )
    distiller.compile(
        optimizer=keras_one.experiment.make_sgd(0.05, epochs * len(train_ds))
    )
    distiller.fit(train_ds, validation_data=test_ds, epochs=epochs, verbose=2)
    branch = distiller.get_branch_model(0)
    print(
        f"one branch: {branch.count_params()} parameters; the full network "
        f"had {student.count_params()}"
    )


if __name__ == "__main__":
    main()
