"""MCL-OKD: Multi-view Contrastive Learning for OKD on CIFAR-10.

Yang, An and Xu, ICASSP 2021 (official code github.com/winycg/MCL-OKD).
Four branches share the stem and the first stage; each branch's embedding
is contrasted with the other branches' memory banks (one 128-d row per
training example, 256 negatives from other classes), and the last branch,
the deployed student, also distils the branches' mean logits.

    python examples/mcl_okd_cifar10.py                  # CIFAR-10, 300 epochs
    python examples/mcl_okd_cifar10.py --epochs 30
    python examples/mcl_okd_cifar10.py --small          # digits, 2 epochs

Full mode downloads CIFAR-10 (tensorflow-datasets) and trains a CIFAR
ResNet-32 for 300 epochs as the official code does: SGD with Nesterov
momentum 0.9, lr 0.05 on one cosine to 0, batch 64, weight decay 5e-4,
pad-4 random crop and horizontal flip. That takes days on a CPU: use a
GPU, or fewer epochs for a first look. `--small` trains a ResNet-8 on the
bundled 8x8 digits, shifted by up to one pixel, for two epochs, with 64
negatives, in seconds.
"""

import argparse

import keras

import keras_one


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--small", action="store_true", help="digits, ResNet-8, 2 epochs"
    )
    parser.add_argument("--epochs", type=int, default=300)
    parser.add_argument("--branches", type=int, default=4)
    args = parser.parse_args(argv)
    keras.utils.set_random_seed(0)
    epochs, depth = (2, 8) if args.small else (args.epochs, 32)

    # === Data: every example carries its index (for the memory banks) ===
    train, test, info = keras_one.data.load(
        "digits" if args.small else "cifar10",
        batch_size=keras_one.recipes.SMALL_BATCH_SIZE if args.small else 64,
        seed=0,
        with_index=True,
    )

    # === The method and the student it trains ===
    method = keras_one.methods.MCLOKD(
        keras_one.data.example_labels(train),  # each example's class
        num_negatives=64 if args.small else 256,
    )
    student = method.build_student(
        f"resnet{depth}",
        num_classes=info.num_classes,
        input_shape=info.input_shape,
        num_branches=args.branches,
        weight_decay=5e-4,
    )

    # === Training ===
    distiller = keras_one.Distiller(student, method)
    distiller.compile(
        optimizer=keras_one.experiment.make_sgd(0.05, epochs * len(train))
    )
    distiller.fit(train, epochs=epochs, validation_data=test, verbose=2)

    # === Results and export ===
    scores = distiller.evaluate(test, verbose=0, return_dict=True)
    for index in range(args.branches):
        print(
            f"branch {index} accuracy {scores[f'branch_{index}_accuracy']:.4f}"
        )
    print(f"ensemble accuracy {scores['ensemble_accuracy']:.4f}")
    deployed = method.get_deployed_model()  # last branch: image -> logits
    images = test.map(lambda inputs, labels: (inputs["image"], labels))
    accuracy = keras_one.recipes.accuracy(deployed, images)
    print(f"exported student (last branch) accuracy {accuracy:.4f}")
    deployed.save("mcl_okd_cifar10_student.keras")
    print("saved the deployed model: mcl_okd_cifar10_student.keras")


if __name__ == "__main__":
    main()
