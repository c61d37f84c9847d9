"""SOKD: semi-online distillation through a knowledge bridge on CIFAR-10.

Semi-Online Knowledge Distillation (Liu et al., BMVC 2021) with keras_one:
a ResNet-56 teacher is trained first (or loaded with --teacher) and frozen;
a knowledge bridge, a fresh copy of the teacher's last stage and classifier
fed with its (detached) stage-2 features, learns from the labels, the
teacher and the student, while a ResNet-20 student learns from the labels
and the bridge (T = 4). The student is then exported as a plain Keras model.

    python examples/sokd_cifar10.py                      # teacher, then SOKD
    python examples/sokd_cifar10.py --teacher t.keras    # reuse a teacher
    python examples/sokd_cifar10.py --small              # digits, seconds

Full mode downloads CIFAR-10 (tensorflow-datasets). The official setup is
CIFAR-100 with a WRN-40-2 teacher and a WRN-40-1 student, SGD lr 0.1,
weight decay 5e-4, 200 epochs; this example keeps SGD (momentum 0.9, lr
0.1, x0.1 at epochs 100 and 150), 200 epochs, batch 128, weight decay 5e-4
with CIFAR ResNets; a GPU is needed in practice. `--small` trains a
ResNet-14 teacher and a ResNet-8 student on the bundled 8x8 digits.
"""

import argparse

import keras

import keras_one


def sgd(learning_rate, steps_per_epoch, milestones):
    boundaries = [m * steps_per_epoch for m in milestones]
    values = [learning_rate * 0.1**i for i in range(len(milestones) + 1)]
    schedule = keras.optimizers.schedules.PiecewiseConstantDecay(
        boundaries, values
    )
    return keras.optimizers.SGD(schedule, momentum=0.9)


def accuracy(model, test):
    model.compile(
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=["accuracy"],
    )
    return model.evaluate(test, verbose=0, return_dict=True)["accuracy"]


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--small", action="store_true", help="digits, seconds")
    parser.add_argument("--epochs", type=int, default=200)
    parser.add_argument("--teacher", help="a saved teacher (.keras)")
    args = parser.parse_args(argv)
    keras.utils.set_random_seed(0)
    if args.small:
        train, test, info = keras_one.data.load("digits", batch_size=64, seed=0)
        epochs, milestones = 3, [2]
        teacher_depth, student_depth = 14, 8
    else:
        train, test, info = keras_one.data.load(
            "cifar10", batch_size=128, seed=0
        )
        epochs, milestones = args.epochs, [100, 150]
        teacher_depth, student_depth = 56, 20
    steps = int(train.cardinality())

    # === The teacher: trained here, or loaded ===
    if args.teacher:
        teacher = keras.saving.load_model(args.teacher)
    else:
        teacher = keras_one.models.cifar_resnet(
            teacher_depth,
            num_classes=info.num_classes,
            num_branches=1,
            input_shape=info.input_shape,
            weight_decay=5e-4,
            name=f"teacher_resnet{teacher_depth}",
        )
        teacher.compile(
            optimizer=sgd(0.1, steps, milestones),
            loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
            metrics=["accuracy"],
        )
        teacher.fit(train, epochs=epochs, validation_data=test, verbose=2)
    print(f"teacher accuracy {accuracy(teacher, test):.4f}")

    # === SOKD: the bridge grows on the teacher's stage-2 output ===
    method = keras_one.methods.SOKD(teacher)  # bridge_from: end of stage 2
    student = method.build_student(
        f"resnet{student_depth}",
        num_classes=info.num_classes,
        input_shape=info.input_shape,
        weight_decay=5e-4,
    )
    distiller = keras_one.Distiller(student, method)
    distiller.compile(optimizer=sgd(0.1, steps, milestones))
    distiller.fit(train, epochs=epochs, validation_data=test, verbose=2)

    # === Results and export ===
    features = method.teacher_features
    bridge = keras.Model(
        features.inputs, method.bridge(features.output["features"])
    )
    print(
        f"bridge ({method.bridge_from}) accuracy {accuracy(bridge, test):.4f}"
    )
    network = distiller.get_branch_model(0, name="sokd_student")
    network.save("sokd_student.keras")
    print(f"exported student accuracy {accuracy(network, test):.4f}")


if __name__ == "__main__":
    main()
