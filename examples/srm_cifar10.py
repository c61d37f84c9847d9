"""Sparse Representation Matching (SRM): a ResNet-56 teaches a ResNet-20.

"Knowledge Distillation By Sparse Representation Matching" (Tran, Gabbouj
and Iosifidis, arXiv:2103.17012), as its official code runs it, in one call
of `keras_one.pipelines.sparse_representation_matching`:

1. the teacher is trained on the labels;
2. a sparse coding of the teacher's three stage outputs is fitted
   (2 codewords per channel, 2% of them kept per pixel);
3. the student's stage outputs learn to predict those codes (image-level
   and pixel-level labels);
4. the student is distilled from the teacher (KD, alpha 0.5, T 4).

    python examples/srm_cifar10.py            # CIFAR-10, a GPU in practice
    python examples/srm_cifar10.py --small    # digits, seconds

Every stage is saved as `<folder>/<stage>.keras` when it finishes and
backed up at every epoch: run the same command again after an interruption
to resume. Every stage uses the official Adam schedule (1e-3, 1e-4, 1e-5)
scaled to `--epochs`; the networks carry the official weight decay 1e-4.
`--small` trains ResNet-8s on the bundled 8x8 digits for 2 epochs a stage.
"""

import argparse
import functools

import keras

import keras_one


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--small", action="store_true", help="digits, seconds")
    parser.add_argument("--epochs", type=int, default=200)
    parser.add_argument(
        "--folder", default="srm_run", help="the run folder (a rerun resumes)"
    )
    args = parser.parse_args(argv)
    epochs = 2 if args.small else args.epochs
    teacher_depth, student_depth = (8, 8) if args.small else (56, 20)
    # The data's shuffling seeds are fixed before it is built, so that a
    # resumed run sees the batches of an uninterrupted one.
    keras.utils.set_random_seed(0)
    train, test, info = keras_one.recipes.load_data(args.small, batch_size=128)
    resnet = functools.partial(
        keras_one.models.cifar_resnet,
        num_classes=info.num_classes,
        input_shape=info.input_shape,
        num_branches=1,
        weight_decay=1e-4,
    )
    models, accuracy = keras_one.pipelines.sparse_representation_matching(
        functools.partial(resnet, student_depth, name="student"),
        functools.partial(resnet, teacher_depth, name="teacher"),
        train,
        test,
        epochs=epochs,
        directory=args.folder,
        verbose=2,
    )
    print(f"teacher accuracy {accuracy['teacher']:.4f}")
    print(f"SRM student accuracy {accuracy['student']:.4f}")
    return accuracy


if __name__ == "__main__":
    main()
