"""OKDDip: online distillation with diverse peers on CIFAR-10.

Three peer branches learn from attention-weighted ensembles of the
peers; a fourth branch, the leader, learns from the peers' mean and
is the model to deploy (Chen et al., AAAI 2020).

    python examples/okddip_cifar10.py               # CIFAR-10, 300 epochs
    python examples/okddip_cifar10.py --epochs 30
    python examples/okddip_cifar10.py --small       # digits, 1 epoch

Full mode downloads CIFAR-10 (tensorflow-datasets) and trains a CIFAR
ResNet-32 for 300 epochs with SGD (lr 0.1, Nesterov momentum 0.9, x0.1 at
50% and 75% of the epochs), batch 128, pad-4 random crop and horizontal
flip; T = 3, ramp-up over the first 80/300 of the epochs, weight decay 5e-4
(the official settings). That takes days on a CPU: use a GPU, or fewer
epochs for a first look. `--small` trains a ResNet-8 on the bundled 8x8
digits for one epoch, in seconds.
"""

import argparse

import keras

import keras_one


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--small", action="store_true", help="digits, ResNet-8, 1 epoch"
    )
    parser.add_argument("--epochs", type=int, default=300)
    parser.add_argument("--num-branches", type=int, default=4)
    args = parser.parse_args(argv)
    keras.utils.set_random_seed(0)
    train, test, info = keras_one.recipes.load_data(args.small, batch_size=128)
    epochs, depth = (1, 8) if args.small else (args.epochs, 32)

    # === The method and the student it trains ===
    method = keras_one.methods.OKDDip(
        rampup_epochs=max(1, round(80 / 300 * epochs))
    )
    student = method.build_student(
        f"resnet{depth}",
        num_classes=info.num_classes,
        input_shape=info.input_shape,
        num_branches=args.num_branches,
        weight_decay=5e-4,
    )

    # === Training ===
    distiller = keras_one.Distiller(student, method)
    distiller.compile(
        optimizer=keras_one.experiment.make_sgd(
            0.1, epochs * len(train), schedule="step"
        )
    )
    distiller.fit(train, epochs=epochs, validation_data=test, verbose=2)

    # === Results and export ===
    scores = distiller.evaluate(test, verbose=0, return_dict=True)
    leader_index = args.num_branches - 1
    for index in range(leader_index):
        print(f"peer {index} accuracy {scores[f'branch_{index}_accuracy']:.4f}")
    leader = distiller.get_branch_model(leader_index)  # plain Keras
    accuracy = keras_one.recipes.accuracy(leader, test)
    print(f"exported leader accuracy {accuracy:.4f}")


if __name__ == "__main__":
    main()
