"""MEAL: one student learns from several teachers, without labels.

Multi-Model Ensemble via Adversarial Learning (Shen et al., AAAI 2019) with
keras_one: three teachers of different depths (ResNet-56, ResNet-44 and
ResNet-32) are trained first (or loaded with --teacher, once per teacher),
frozen, and a ResNet-20 learns from one teacher drawn at random per batch:
its softmax is pulled towards the teacher's, and a discriminator learns to
tell its logits from the teacher's while the student, through a gradient
reversal, learns to fool it. No label is used. The student is then
exported as a plain Keras model.

    python examples/meal_cifar10.py                 # teachers, then MEAL
    python examples/meal_cifar10.py --teacher a.keras --teacher b.keras
    python examples/meal_cifar10.py --small         # digits, seconds

Full mode downloads CIFAR-10 (tensorflow-datasets). The teachers use the
common CIFAR protocol (this example's choice): 240 epochs of SGD (momentum
0.9, lr 0.05, x0.1 at epochs 150, 180 and 210), batch 64, weight decay
5e-4. The student follows the official MEAL code: SGD lr 0.1 (momentum
0.9, weight decay 5e-4), x0.1 at epochs 150 and 250, 350 epochs, the
discriminator at lr 1e-3 (MEAL's default multiplier 0.01); a GPU is needed
in practice. `--small` trains ResNet-8/14 teachers and a ResNet-8 student
on the bundled 8x8 digits.
"""

import argparse

import keras

import keras_one


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--small", action="store_true", help="digits, seconds")
    parser.add_argument("--epochs", type=int, default=350)
    parser.add_argument(
        "--teacher", action="append", help="a saved teacher (.keras), repeated"
    )
    args = parser.parse_args(argv)
    keras.utils.set_random_seed(0)
    train, test, info = keras_one.recipes.load_data(args.small, batch_size=64)
    if args.small:
        teacher_epochs, teacher_milestones = 3, [2]
        epochs, milestones = 3, [2]
        teacher_depths, student_depth = (8, 14), 8
    else:
        teacher_epochs, teacher_milestones = 240, [150, 180, 210]
        epochs, milestones = args.epochs, [150, 250]
        teacher_depths, student_depth = (56, 44, 32), 20

    # === The teachers: trained here, or loaded ===
    if args.teacher:
        teachers = [keras.saving.load_model(path) for path in args.teacher]
    else:
        schedule = keras_one.recipes.step_decay(
            0.05, teacher_milestones, len(train)
        )
        teachers = [
            keras_one.recipes.train_teacher(
                depth,
                train,
                test,
                info,
                teacher_epochs,
                optimizer=keras.optimizers.SGD(schedule, momentum=0.9),
                weight_decay=5e-4,
            )
            for depth in teacher_depths
        ]
    for index, teacher in enumerate(teachers):
        accuracy = keras_one.recipes.accuracy(teacher, test)
        print(f"teacher {index} accuracy {accuracy:.4f}")

    # === MEAL: a teacher drawn per batch, adversarial on the logits ===
    method = keras_one.methods.MEAL(teachers)
    student = method.build_student(
        f"resnet{student_depth}",
        num_classes=info.num_classes,
        input_shape=info.input_shape,
        weight_decay=5e-4,
    )
    distiller = keras_one.Distiller(student, method)
    schedule = keras_one.recipes.step_decay(0.1, milestones, len(train))
    distiller.compile(optimizer=keras.optimizers.SGD(schedule, momentum=0.9))
    distiller.fit(train, epochs=epochs, validation_data=test, verbose=2)

    # === Results and export ===
    network = distiller.get_branch_model(0)  # plain Keras
    network.save("meal_cifar10_student.keras")
    accuracy = keras_one.recipes.accuracy(network, test)
    print(f"exported student accuracy {accuracy:.4f}")


if __name__ == "__main__":
    main()
