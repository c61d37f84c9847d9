"""OEC: five compressed students trained at once on CIFAR-10.

Online Ensemble model Compression (Walawalkar et al., ECCV 2020) with
keras_one: five ResNet-32 students of widths x1, 0.8, 0.6, 0.4 and 0.2 share
a stem; their averaged logits teach every student (T = 2), and the narrower
students mimic the widest one's stage outputs through 1x1 adapters
(weights 0.7 / 0.15 / 0.15). No pre-trained teacher is needed. Each
student is then exported as a plain Keras model, from 100% down to about
5% of the parameters.

    python examples/oec_cifar10.py                  # the official recipe
    python examples/oec_cifar10.py --epochs 30
    python examples/oec_cifar10.py --small          # digits, seconds

Full mode downloads CIFAR-10 (tensorflow-datasets) and uses the official
code's recipe (its CIFAR-100 configuration): Adam with lr 1e-3 and weight
decay 1e-5, x0.1 at epochs 200 and 300, 350 epochs, batch 128; a GPU is
needed in practice. `--small` trains ResNet-8 students on the bundled 8x8
digits.
"""

import argparse

import keras

import keras_one


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--small", action="store_true", help="digits, seconds")
    parser.add_argument("--epochs", type=int, default=350)
    parser.add_argument("--depth", type=int, default=32)
    parser.add_argument("--num-students", type=int, default=5)
    args = parser.parse_args(argv)
    keras.utils.set_random_seed(0)
    train, test, info = keras_one.recipes.load_data(args.small, batch_size=128)
    if args.small:
        epochs, milestones, depth = 3, [2], 8
    else:
        epochs, milestones, depth = args.epochs, [200, 300], args.depth

    # === The method and its students ===
    method = keras_one.methods.OEC()
    student = method.build_student(
        f"resnet{depth}",
        num_classes=info.num_classes,
        input_shape=info.input_shape,
        num_branches=args.num_students,
        weight_decay=1e-5,
    )
    schedule = keras_one.recipes.step_decay(1e-3, milestones, len(train))
    distiller = keras_one.Distiller(student, method)
    distiller.compile(optimizer=keras.optimizers.Adam(schedule))
    distiller.fit(train, epochs=epochs, validation_data=test, verbose=2)

    # === Results and export: every student on its own ===
    scores = distiller.evaluate(test, verbose=0, return_dict=True)
    widest = distiller.get_branch_model(0).count_params()
    for index in range(args.num_students):
        network = distiller.get_branch_model(index)  # plain Keras
        share = network.count_params() / widest
        accuracy = keras_one.recipes.accuracy(network, test)
        print(
            f"exported student {index} ({share:.1%} of the parameters) "
            f"accuracy {accuracy:.4f}"
        )
    print(f"ensemble teacher accuracy {scores['ensemble_accuracy']:.4f}")


if __name__ == "__main__":
    main()
