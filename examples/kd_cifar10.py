"""KD: distil a pre-trained ResNet-56 into a ResNet-20 on CIFAR-10.

Hinton et al.'s knowledge distillation (2015) with keras_one: the teacher is
trained first (or loaded with --teacher), frozen, and a single-branch
student learns `0.1 * CE + 0.9 * KL_4(teacher || student)`. The example also
checks that the loss equals keras.distillation.Distiller's with
`LogitsDistillation(temperature=4, loss=KLDivergence())` on a batch, and
exports the student as a plain Keras model.

    python examples/kd_cifar10.py                       # teacher, then KD
    python examples/kd_cifar10.py --teacher t.keras     # reuse a teacher
    python examples/kd_cifar10.py --small               # digits, seconds

Full mode downloads CIFAR-10 (tensorflow-datasets) and follows the common
CIFAR KD protocol (Tian et al., ICLR 2020): 240 epochs of SGD (momentum 0.9,
lr 0.05, x0.1 at epochs 150, 180 and 210), batch 64, weight decay 5e-4, for
the teacher and for the student; a GPU is needed in practice. `--small`
trains a ResNet-14 teacher and a ResNet-8 student on the bundled 8x8
digits for a few epochs.
"""

import argparse

import keras

import keras_one


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--small", action="store_true", help="digits, seconds")
    parser.add_argument("--epochs", type=int, default=240)
    parser.add_argument("--teacher", help="a saved teacher (.keras)")
    args = parser.parse_args(argv)
    keras.utils.set_random_seed(0)
    train, test, info = keras_one.recipes.load_data(args.small, batch_size=64)
    if args.small:
        epochs, milestones, lr = 3, [2], 0.05
        teacher_depth, student_depth = 14, 8
    else:
        epochs, milestones, lr = args.epochs, [150, 180, 210], 0.05
        teacher_depth, student_depth = 56, 20
    schedule = keras_one.recipes.step_decay(lr, milestones, len(train))

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

    # === KD ===
    method = keras_one.methods.KD(teacher, alpha=0.9, temperature=4.0)
    student = method.build_student(
        f"resnet{student_depth}",
        num_classes=info.num_classes,
        input_shape=info.input_shape,
        weight_decay=5e-4,
    )
    distiller = keras_one.Distiller(student, method)
    distiller.compile(optimizer=keras.optimizers.SGD(schedule, momentum=0.9))

    # The same loss as keras.distillation on a batch (before training).
    x, y = next(iter(test))
    keras_distiller = keras.distillation.Distiller(
        teacher,
        student,
        keras.distillation.LogitsDistillation(
            temperature=4.0, loss=keras.losses.KLDivergence()
        ),
        student_loss_weight=0.1,
    )
    keras_distiller.compile(
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    )
    keras_loss = keras_distiller.compute_loss(
        x, y, y_pred=student(x, training=False), training=False
    )
    ours = distiller.test_on_batch(x, y, return_dict=True)
    print(
        f"batch loss: keras_one KD {ours['ce'] + ours['kl']:.6f}, "
        f"keras.distillation {float(keras_loss):.6f}"
    )

    distiller.fit(train, epochs=epochs, validation_data=test, verbose=2)

    # === Export: a plain Keras classifier ===
    network = distiller.get_branch_model(0, name="kd_student")
    network.save("kd_student.keras")
    accuracy = keras_one.recipes.accuracy(network, test)
    print(f"exported student accuracy {accuracy:.4f}")


if __name__ == "__main__":
    main()
