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


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--small", action="store_true", help="digits, seconds")
    parser.add_argument("--epochs", type=int, default=200)
    parser.add_argument("--teacher", help="a saved teacher (.keras)")
    args = parser.parse_args(argv)
    keras.utils.set_random_seed(0)
    train, test, info = keras_one.recipes.load_data(args.small, batch_size=128)
    if args.small:
        epochs, milestones = 3, [2]
        teacher_depth, student_depth = 14, 8
    else:
        epochs, milestones = args.epochs, [100, 150]
        teacher_depth, student_depth = 56, 20
    schedule = keras_one.recipes.step_decay(0.1, milestones, len(train))

    # === The teacher: trained here, or loaded ===
    if args.teacher:
        teacher = keras.saving.load_model(args.teacher)
    else:
        teacher = keras_one.recipes.train_teacher(
            teacher_depth,
            train,
            test,
            info,
            epochs,
            optimizer=keras.optimizers.SGD(schedule, momentum=0.9),
            weight_decay=5e-4,
        )
    accuracy = keras_one.recipes.accuracy(teacher, test)
    print(f"teacher accuracy {accuracy:.4f}")

    # === SOKD: the bridge grows on the teacher's stage-2 output ===
    method = keras_one.methods.SOKD(teacher)  # bridge_from: end of stage 2
    student = method.build_student(
        f"resnet{student_depth}",
        num_classes=info.num_classes,
        input_shape=info.input_shape,
        weight_decay=5e-4,
    )
    distiller = keras_one.Distiller(student, method)
    distiller.compile(optimizer=keras.optimizers.SGD(schedule, momentum=0.9))
    distiller.fit(train, epochs=epochs, validation_data=test, verbose=2)

    # === Results and export ===
    features = method.teacher_features
    bridge = keras.Model(
        features.inputs, method.bridge(features.output["features"])
    )
    accuracy = keras_one.recipes.accuracy(bridge, test)
    print(f"bridge ({method.bridge_from}) accuracy {accuracy:.4f}")
    network = distiller.get_branch_model(0, name="sokd_student")
    network.save("sokd_student.keras")
    accuracy = keras_one.recipes.accuracy(network, test)
    print(f"exported student accuracy {accuracy:.4f}")


if __name__ == "__main__":
    main()
