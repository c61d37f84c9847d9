"""KD from a pretrained keras-hub classifier into a small ResNet.

A keras-hub preset (a ResNet-50 pretrained on ImageNet by default) is
fine-tuned on the student's data, then distilled into a CIFAR ResNet-20
with Hinton's KD (`keras_one.methods.KD`). The teacher reads the student's
images through its own preprocessing (resized to its image size, scaled as
in its pre-training); `input_preprocessing=info` tells it how the
student's images were normalized, so that it sees the raw pixels first.
The student keeps its own preprocessing.

    pip install keras-one[hub]
    python examples/hub_teacher_kd.py                    # resnet_50_imagenet
    python examples/hub_teacher_kd.py --preset resnet_18_imagenet
    python examples/hub_teacher_kd.py --preset ./my_preset_folder
    python examples/hub_teacher_kd.py --small            # offline, seconds

Full mode downloads the preset (Kaggle) and CIFAR-10 (tensorflow-datasets):
without network access it stops with one line saying so. `--small` needs
no network: the teacher is a tiny keras-hub ResNet built from a
configuration, with random weights, on the bundled 8x8 digits.
"""

import argparse
import sys

import keras
import keras_hub

import keras_one


def tiny_teacher(num_classes, input_shape):
    """A keras-hub ResNet classifier from a configuration: no download."""
    backbone = keras_hub.models.ResNetBackbone(
        input_conv_filters=[64],
        input_conv_kernel_sizes=[3],
        stackwise_num_filters=[64],
        stackwise_num_blocks=[1],
        stackwise_num_strides=[1],
        block_type="basic_block",
        image_shape=(None, None, input_shape[-1]),
    )
    converter = keras_hub.layers.ResNetImageConverter(
        image_size=input_shape[:2], scale=1 / 255.0
    )
    return keras_hub.models.ResNetImageClassifier(
        backbone,
        num_classes=num_classes,
        preprocessor=keras_hub.models.ResNetImageClassifierPreprocessor(
            converter
        ),
    )


def load_teacher(preset, num_classes):
    """The preset's classifier with a new head, or one line and exit."""
    try:
        return keras_hub.models.ImageClassifier.from_preset(
            preset, num_classes=num_classes
        )
    except Exception as error:
        reason = (str(error).splitlines() or [""])[0][:160]
        sys.exit(
            f"hub_teacher_kd: the keras-hub preset {preset!r} could not be "
            f"loaded ({type(error).__name__}: {reason}). Without network "
            "access, pass a preset folder saved with save_to_preset() "
            "(--preset ./folder), or run with --small."
        )


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--small", action="store_true", help="offline")
    parser.add_argument("--preset", default="resnet_50_imagenet")
    parser.add_argument("--epochs", type=int, default=30)
    args = parser.parse_args(argv)
    keras.utils.set_random_seed(0)
    if not args.small:  # the preset first: offline, it stops here
        classifier = load_teacher(args.preset, num_classes=10)
    train, test, info = keras_one.recipes.load_data(args.small, batch_size=64)
    if args.small:
        classifier = tiny_teacher(info.num_classes, info.input_shape)
        epochs, student_depth = 2, 8
    else:
        epochs, student_depth = args.epochs, 20

    # === Fine-tune the pretrained teacher on the student's images ===
    # The teacher model takes the student's (normalized) images; training
    # it trains the classifier's weights.
    teacher = keras_one.models.pretrained_teacher(classifier, info)
    teacher.compile(
        optimizer=keras.optimizers.Adam(1e-4 if not args.small else 1e-3),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=["accuracy"],
    )
    teacher.fit(train, epochs=max(epochs // 3, 1), verbose=2)
    teacher_accuracy = teacher.evaluate(test, verbose=0)[1]

    # === Distil it into a small student ===
    method = keras_one.methods.KD(classifier, input_preprocessing=info)
    student = method.build_student(
        f"resnet{student_depth}",
        num_classes=info.num_classes,
        input_shape=info.input_shape,
    )
    distiller = keras_one.Distiller(student, method)
    distiller.compile(optimizer=keras.optimizers.SGD(0.05, momentum=0.9))
    distiller.fit(train, epochs=epochs, verbose=2)
    scores = distiller.evaluate(test, verbose=0, return_dict=True)
    print(f"teacher accuracy: {100 * teacher_accuracy:.2f}%")
    print(f"student accuracy: {100 * scores['accuracy']:.2f}%")
    return teacher_accuracy, scores["accuracy"]


if __name__ == "__main__":
    main()
