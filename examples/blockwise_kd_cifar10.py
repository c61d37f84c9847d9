"""Block-wise KD: a ResNet-8 learns a ResNet-32 stage by stage, then KD.

A reading of "Compact CNN Structure Learning by Knowledge Distillation"
(Ahmed, Zunino, Morerio and Murino, ICPR 2020, arXiv:2104.09191; no code
was available), in one call of `keras_one.pipelines.blockwise_distillation`:

1. the teacher, a ResNet-32 (5 residual blocks a stage), is trained;
2. each stage of the student, a ResNet-8 (1 block a stage, the same
   widths), learns to reproduce the teacher stage's output from the
   teacher stage's input (MSE on the feature maps);
3. the whole student is fine-tuned with KD (alpha 0.9, T 4).

    python examples/blockwise_kd_cifar10.py            # CIFAR-10, a GPU
    python examples/blockwise_kd_cifar10.py --small    # digits, seconds

Every stage is saved as `<folder>/<stage>.keras` when it finishes and
backed up at every epoch: run the same command again to resume. Each stage
trains with SGD (momentum 0.9, lr 0.1, x0.1 at 50% and 75%), batch 128,
weight decay 5e-4. `--small` uses a ResNet-14 teacher on the bundled 8x8
digits, 2 epochs a stage.
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
        "--folder",
        default="blockwise_run",
        help="the run folder (a rerun resumes)",
    )
    args = parser.parse_args(argv)
    epochs = 2 if args.small else args.epochs
    teacher_depth = 14 if args.small else 32
    keras.utils.set_random_seed(0)  # the data's shuffling, for resuming
    train, test, info = keras_one.recipes.load_data(args.small, batch_size=128)
    resnet = functools.partial(
        keras_one.models.cifar_resnet,
        num_classes=info.num_classes,
        input_shape=info.input_shape,
        num_branches=1,
        weight_decay=5e-4,
    )
    optimizer = keras.optimizers.SGD(
        keras_one.recipes.step_decay(
            0.1, [epochs // 2, 3 * epochs // 4], len(train)
        ),
        momentum=0.9,
    )
    models, accuracy = keras_one.pipelines.blockwise_distillation(
        functools.partial(resnet, 8, name="student"),
        functools.partial(resnet, teacher_depth, name="teacher"),
        train,
        test,
        epochs=epochs,
        directory=args.folder,
        optimizer=optimizer,  # copied for every stage
        verbose=2,
    )
    teacher, student = models["teacher"], models["student"]
    print(f"teacher: {teacher.count_params()} parameters")
    print(f"student: {student.count_params()} parameters")
    print(f"teacher accuracy {accuracy['teacher']:.4f}")
    print(f"block-wise KD student accuracy {accuracy['student']:.4f}")
    return accuracy


if __name__ == "__main__":
    main()
