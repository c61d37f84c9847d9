"""EKD: one student branch per pre-trained teacher on CIFAR-10.

Ensemble Knowledge Distillation (Asif et al., ECAI 2020) with keras_one: two
teachers of different architectures (ResNet-56 and a bottleneck ResNet-44)
are trained first (or loaded with --teacher, twice), frozen, and a ResNet-20
with two branches learns: branch i from the labels and from teacher i, the
averaged ensemble of the branches from the labels. With --features each
branch's last feature map also mimics its teacher's through a trainable
1x1 adapter. Each branch is then exported as a plain Keras model.

    python examples/ekd_cifar10.py                        # teachers, then EKD
    python examples/ekd_cifar10.py --teacher a.keras --teacher b.keras
    python examples/ekd_cifar10.py --features             # + feature transfer
    python examples/ekd_cifar10.py --small                # digits, seconds

Full mode downloads CIFAR-10 (tensorflow-datasets) and uses the common
CIFAR KD protocol (this example's choice; the paper's schedule is not
public): 240 epochs of SGD (momentum 0.9, lr 0.05, x0.1 at epochs 150, 180
and 210), batch 64, weight decay 5e-4; a GPU is needed in practice. The
paper reports its largest gains with little training data. `--small`
trains ResNet-8/14 teachers and a ResNet-8 student on the bundled 8x8
digits, with feature transfer.
"""

import argparse

import keras

import keras_one


def last_stage_output(teacher):
    """The name of the layer that feeds the teacher's global pooling."""
    pooled = teacher.get_layer("avg_pool").input
    return pooled._keras_history.operation.name


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--small", action="store_true", help="digits, seconds")
    parser.add_argument("--epochs", type=int, default=240)
    parser.add_argument("--features", action="store_true")
    parser.add_argument(
        "--teacher", action="append", help="a saved teacher (.keras), twice"
    )
    args = parser.parse_args(argv)
    keras.utils.set_random_seed(0)
    train, test, info = keras_one.recipes.load_data(args.small, batch_size=64)
    if args.small:
        epochs, milestones, lr = 3, [2], 0.05
        teacher_depths, student_depth = (8, 14), 8
        args.features = True
    else:
        epochs, milestones, lr = args.epochs, [150, 180, 210], 0.05
        teacher_depths, student_depth = (56, 44), 20
    schedule = keras_one.recipes.step_decay(lr, milestones, len(train))

    # === The teachers: trained here, or loaded ===
    if args.teacher:
        teachers = [keras.saving.load_model(path) for path in args.teacher]
    else:
        teachers = [
            keras_one.recipes.train_teacher(
                depth,
                train,
                test,
                info,
                epochs,
                optimizer=keras.optimizers.SGD(schedule, momentum=0.9),
                weight_decay=5e-4,
            )
            for depth in teacher_depths
        ]
    for index, teacher in enumerate(teachers):
        accuracy = keras_one.recipes.accuracy(teacher, test)
        print(f"teacher {index} accuracy {accuracy:.4f}")

    # === EKD: a branch per teacher, averaged ensemble ===
    method = keras_one.methods.EKD(
        teachers,
        feature_layers=(
            [last_stage_output(t) for t in teachers] if args.features else None
        ),
    )
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
    scores = distiller.evaluate(test, verbose=0, return_dict=True)
    for index in range(len(teachers)):
        network = distiller.get_branch_model(index)  # plain Keras
        accuracy = keras_one.recipes.accuracy(network, test)
        print(f"exported branch {index} accuracy {accuracy:.4f}")
    print(f"ensemble accuracy {scores['ensemble_accuracy']:.4f}")


if __name__ == "__main__":
    main()
