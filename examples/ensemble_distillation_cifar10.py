"""Ensemble distillation, self-distillation and Born-Again Networks.

The multi-run protocols of Allen-Zhu and Li ("Towards Understanding
Ensemble, Knowledge Distillation and Self-Distillation in Deep Learning",
ICLR 2023) and Furlanello et al. ("Born Again Neural Networks", ICML
2018), each one call of `keras_one.pipelines`:

- ensemble distillation: 10 ResNets trained on the labels from different
  seeds; their logit average, frozen, is distilled (KD, alpha 0.9, T 4)
  into a fresh ResNet of the same depth;
- self-distillation: a ResNet distilled (the same KD) into a fresh copy;
- Born-Again Networks: 3 generations, each trained on the previous one's
  softmax (T 1, no labels), and the average of those generations.

    python examples/ensemble_distillation_cifar10.py              # all three
    python examples/ensemble_distillation_cifar10.py --pipeline ban
    python examples/ensemble_distillation_cifar10.py --small      # digits

Every stage is saved as `<folder>/<pipeline>/<stage>.keras` when it
finishes (a plain Keras model of logits) and backed up at every epoch:
run the same command again after an interruption and it keeps the
finished stages and resumes the interrupted one.

Full mode downloads CIFAR-10 (tensorflow-datasets) and trains every stage
with one recipe: ResNet-32, 200 epochs of SGD (momentum 0.9, lr 0.1, x0.1
at epochs 100 and 150), batch 128, weight decay 5e-4; 11 + 2 + 4 full
trainings, a GPU is needed in practice. `--small` trains ResNet-8s on the
bundled 8x8 digits for 2 epochs, with 2 members and 2 BAN generations.
"""

import argparse
import functools
import os

import keras

import keras_one

PIPELINES = ("ensemble", "self", "ban")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--small", action="store_true", help="digits, seconds")
    parser.add_argument("--epochs", type=int, default=200)
    parser.add_argument(
        "--pipeline", choices=("all", *PIPELINES), default="all"
    )
    parser.add_argument(
        "--folder",
        default="ensemble_distillation_runs",
        help="the pipelines' run folders (a rerun resumes them)",
    )
    args = parser.parse_args(argv)
    if args.small:
        epochs, milestones, depth = 2, [1], 8
        members, generations = 2, 2
    else:
        epochs, milestones, depth = args.epochs, [100, 150], 32
        members, generations = 10, 3
    # The data's shuffling seeds are fixed before it is built, so that a
    # resumed run sees the batches of an uninterrupted one.
    keras.utils.set_random_seed(0)
    train, test, info = keras_one.recipes.load_data(args.small, batch_size=128)
    build_model = functools.partial(
        keras_one.models.cifar_resnet,
        depth,
        num_classes=info.num_classes,
        input_shape=info.input_shape,
        num_branches=1,
        weight_decay=5e-4,
    )
    optimizer = keras.optimizers.SGD(
        keras_one.recipes.step_decay(0.1, milestones, len(train)),
        momentum=0.9,
    )
    common = dict(
        train_ds=train,
        test_ds=test,
        epochs=epochs,
        optimizer=optimizer,  # copied for every stage
        verbose=2,
    )
    chosen = PIPELINES if args.pipeline == "all" else (args.pipeline,)

    # === Ensemble distillation ===
    if "ensemble" in chosen:
        models, accuracy = keras_one.pipelines.ensemble_distillation(
            build_model,
            directory=os.path.join(args.folder, "ensemble"),
            members=members,
            **common,
        )
        for index, value in enumerate(accuracy["members"]):
            print(f"member {index} accuracy {value:.4f}")
        print(f"ensemble accuracy {accuracy['ensemble']:.4f}")
        print(f"distilled student accuracy {accuracy['student']:.4f}")

    # === Self-distillation ===
    if "self" in chosen:
        models, accuracy = keras_one.pipelines.self_distillation(
            build_model, directory=os.path.join(args.folder, "self"), **common
        )
        teacher, student = accuracy["generations"]
        print(f"self-distillation teacher accuracy {teacher:.4f}")
        print(f"self-distilled student accuracy {student:.4f}")

    # === Born-Again Networks ===
    if "ban" in chosen:
        models, accuracy = keras_one.pipelines.born_again(
            build_model,
            directory=os.path.join(args.folder, "ban"),
            generations=generations,
            **common,
        )
        for index, value in enumerate(accuracy["generations"]):
            print(f"generation {index} accuracy {value:.4f}")
        print(f"BAN ensemble accuracy {accuracy['ensemble']:.4f}")


if __name__ == "__main__":
    main()
