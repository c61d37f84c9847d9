"""DML: deep mutual learning of independent networks on CIFAR-10.

Two (or more) ResNets that share nothing learn from the labels and
from each other's predictions (Zhang et al., CVPR 2018); each is
then exported as a plain Keras model.

    python examples/dml_cifar10.py               # CIFAR-10, 300 epochs
    python examples/dml_cifar10.py --epochs 30
    python examples/dml_cifar10.py --small       # digits, 1 epoch

Full mode downloads CIFAR-10 with `keras.datasets.cifar10.load_data()` and
trains a CIFAR ResNet-32 for 300 epochs with SGD (lr 0.1, Nesterov momentum
0.9, x0.1 at 50% and 75% of the epochs), batch 128, pad-4 random crop and
horizontal flip; T = 1, weight decay 1e-4. That takes days on a CPU: use a
GPU, or fewer epochs for a first look. `--small` trains a ResNet-8 on the
bundled 8x8 digits for one epoch, in seconds.
"""

import argparse

import keras
import numpy as np
import tensorflow as tf

import keras_one

CIFAR10_MEAN = np.array([0.4914, 0.4822, 0.4465], "float32")
CIFAR10_STD = np.array([0.2470, 0.2435, 0.2616], "float32")


def cifar10(batch_size):
    """CIFAR-10 as tf.data pipelines: normalized; pad-crop-flip in training."""
    (x_train, y_train), (x_test, y_test) = keras.datasets.cifar10.load_data()
    x_train = ((x_train / 255.0 - CIFAR10_MEAN) / CIFAR10_STD).astype("float32")
    x_test = ((x_test / 255.0 - CIFAR10_MEAN) / CIFAR10_STD).astype("float32")

    def augment(image, label):
        image = tf.image.pad_to_bounding_box(image, 4, 4, 40, 40)
        image = tf.image.random_crop(image, (32, 32, 3))
        return tf.image.random_flip_left_right(image), label

    train = (
        tf.data.Dataset.from_tensor_slices((x_train, y_train[:, 0]))
        .shuffle(len(x_train))
        .map(augment, num_parallel_calls=tf.data.AUTOTUNE)
        .batch(batch_size)
        .prefetch(tf.data.AUTOTUNE)
    )
    test = tf.data.Dataset.from_tensor_slices((x_test, y_test[:, 0])).batch(256)
    return train, test, (x_test, y_test[:, 0])


def digits(batch_size):
    """The bundled 8x8 digits (no download), as tf.data pipelines."""
    (x_train, y_train), (x_test, y_test) = keras_one.data.load_digits()
    train = (
        tf.data.Dataset.from_tensor_slices((x_train, y_train))
        .shuffle(len(x_train), seed=0)
        .batch(batch_size)
    )
    test = tf.data.Dataset.from_tensor_slices((x_test, y_test)).batch(256)
    return train, test, (x_test, y_test)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--small", action="store_true", help="digits, ResNet-8, 1 epoch"
    )
    parser.add_argument("--epochs", type=int, default=300)
    parser.add_argument("--num-branches", type=int, default=2)
    args = parser.parse_args(argv)
    keras.utils.set_random_seed(0)
    if args.small:
        train, test, (x_test, y_test) = digits(batch_size=64)
        epochs, depth, input_shape = 1, 8, (8, 8, 1)
    else:
        train, test, (x_test, y_test) = cifar10(batch_size=128)
        epochs, depth, input_shape = args.epochs, 32, (32, 32, 3)

    # === The method and the student it trains ===
    method = keras_one.methods.DML()
    student = method.build_student(
        f"resnet{depth}",
        num_classes=10,
        input_shape=input_shape,
        num_branches=args.num_branches,
    )

    # === Training ===
    steps = epochs * int(train.cardinality())
    learning_rate = keras.optimizers.schedules.PiecewiseConstantDecay(
        [int(0.5 * steps), int(0.75 * steps)], [0.1, 0.01, 0.001]
    )
    distiller = keras_one.Distiller(student, method)
    distiller.compile(
        optimizer=keras.optimizers.SGD(
            learning_rate, momentum=0.9, nesterov=True
        )
    )
    distiller.fit(train, epochs=epochs, validation_data=test, verbose=2)

    # === Results and export ===
    scores = distiller.evaluate(test, verbose=0, return_dict=True)
    for index in range(args.num_branches):
        network = distiller.get_branch_model(index)  # plain Keras
        predictions = network.predict(x_test, verbose=0).argmax(-1)
        accuracy = (predictions == y_test).mean()
        print(f"network {index} accuracy {accuracy:.4f}")
    print(f"ensemble (mean logits) accuracy {scores['ensemble_accuracy']:.4f}")


if __name__ == "__main__":
    main()
