"""ONE on several GPUs or several machines with TensorFlow's own strategies.

One GPU or CPU:    python examples/distributed_training.py
Several GPUs:      python examples/distributed_training.py --strategy mirrored
Several machines:  one process per machine, each with its TF_CONFIG, e.g.
    TF_CONFIG='{"cluster": {"worker": ["host1:12345", "host2:12345"]},
                "task": {"type": "worker", "index": 0}}' \\
        python examples/distributed_training.py --strategy multi_worker
    (index 1 on host2). Every worker runs the same command.
Smoke test:        python examples/distributed_training.py --small
    (MirroredStrategy over 2 logical CPUs, the digits, 1 epoch)

The Distiller averages the loss over the global batch, so N replicas give
the updates of one device with the same global batch; pass
`synchronized_batch_norm=True` to also compute BatchNormalization statistics
over the global batch (then the weights match one device exactly).
`jit_compile=True` (XLA) pays off on GPUs, not on CPUs.
"""

import argparse
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def make_strategy(name, small):
    import tensorflow as tf

    if small:
        cpu = tf.config.list_physical_devices("CPU")[0]
        tf.config.set_logical_device_configuration(
            cpu, [tf.config.LogicalDeviceConfiguration()] * 2
        )
        return tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
    if name == "mirrored":
        return tf.distribute.MirroredStrategy()  # all local GPUs
    if name == "multi_worker":
        return tf.distribute.MultiWorkerMirroredStrategy()  # reads TF_CONFIG
    return tf.distribute.get_strategy()


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--strategy",
        default="default",
        choices=("default", "mirrored", "multi_worker"),
    )
    parser.add_argument("--dataset", default="cifar10")
    parser.add_argument("--epochs", type=int, default=300)
    parser.add_argument("--batch-size", type=int, default=128, help="global")
    parser.add_argument("--jit-compile", action="store_true")
    parser.add_argument("--small", action="store_true")
    args = parser.parse_args(argv)

    strategy = make_strategy(args.strategy, args.small)

    import keras

    import keras_one

    dataset, model, epochs = args.dataset, "resnet32", args.epochs
    if args.small:
        dataset, model, epochs = "digits", "resnet8", 1
    train_ds, test_ds, info = keras_one.data.load(
        dataset, batch_size=args.batch_size, seed=0
    )
    print(f"{strategy.num_replicas_in_sync} replica(s)")
    with strategy.scope():
        method = keras_one.methods.ONE(rampup_epochs=round(0.27 * epochs))
        student = method.build_student(
            model, info.num_classes, info.input_shape, num_branches=3
        )
        distiller = keras_one.Distiller(
            student, method, synchronized_batch_norm=True
        )
        distiller.compile(
            optimizer=keras_one.experiment.make_sgd(
                0.1, epochs * len(train_ds)
            ),
            jit_compile=args.jit_compile,
        )
    backup = keras.callbacks.BackupAndRestore("backup", save_freq=50)
    distiller.fit(
        train_ds,
        validation_data=test_ds,
        epochs=epochs,
        callbacks=[backup],
        shuffle=False,  # the pipeline shuffles
        verbose=2,
    )
    scores = distiller.evaluate(test_ds, verbose=0, return_dict=True)
    print(f"ensemble accuracy {scores['ensemble_accuracy']:.4f}")


if __name__ == "__main__":
    main()
