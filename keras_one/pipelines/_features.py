"""The layers of a network whose outputs a pipeline reads, and their loss.

SRM taps intermediate feature maps of the teacher and the student, and the
block-wise pipeline cuts both into blocks at named layers: the layers are
named by the user, or default to the stage outputs of a keras_one
`cifar_resnet` (`stage<i>_block<n>_out`, the last block of each stage).
Names and shapes are checked here, before any training.
"""

import re

import keras
from keras import ops

_STAGE_OUTPUT = re.compile(r"stage(\d+)_block(\d+)_out")


class ArgumentError(ValueError):
    """A pipeline argument refused; `argument` is its name."""

    def __init__(self, argument, message):
        super().__init__(f"{argument}: {message}")
        self.argument = argument


def stage_outputs(model):
    """The last block output of each stage of a keras_one `cifar_resnet`.

    Returns:
        The layer names, in stage order (empty if `model` has none).
    """
    last = {}
    for layer in model.layers:
        match = _STAGE_OUTPUT.fullmatch(layer.name)
        if match:
            stage, block = int(match[1]), int(match[2])
            if block >= last.get(stage, (0, None))[0]:
                last[stage] = (block, layer.name)
    return [last[stage][1] for stage in sorted(last)]


def layer_names(model, names, argument, role):
    """`names` (or the stage outputs), checked against `model`'s layers."""
    if not isinstance(model, keras.Model) or len(model.inputs or []) != 1:
        raise ArgumentError(
            argument,
            f"the {role} must be a keras.Model of one known input "
            "(functional, or Sequential starting with a keras.Input).",
        )
    if names is None:
        names = stage_outputs(model)
        if not names:
            raise ArgumentError(
                argument,
                f"the {role} {model.name!r} has no cifar_resnet stage "
                "outputs (stage<i>_block<n>_out) to default to; pass the "
                "names of its layers to use.",
            )
    names = [names] if isinstance(names, str) else list(names)
    if not names:
        raise ArgumentError(argument, "name at least one layer.")
    known = [layer.name for layer in model.layers]
    for name in names:
        if name not in known:
            raise ArgumentError(
                argument,
                f"the {role} {model.name!r} has no layer {name!r}; pass "
                f"names of its layers (e.g. {', '.join(known[-3:])}).",
            )
    for name in names:
        if len(model.get_layer(name).output.shape) != 4:
            raise ArgumentError(
                argument,
                f"layer {name!r} of the {role} does not output a feature "
                "map (batch, height, width, channels); pass convolutional "
                "layers.",
            )
    return names


def feature_shapes(model, names):
    """The `(height, width, channels)` of each named layer's output."""
    return [tuple(model.get_layer(name).output.shape[1:]) for name in names]


def check_sizes(teacher_shapes, student_shapes, teacher_names, student_names):
    """Refuses teacher and student layers that cannot be paired."""
    if len(teacher_shapes) != len(student_shapes):
        raise ArgumentError(
            "student_layers",
            f"{len(student_shapes)} student layers for "
            f"{len(teacher_shapes)} teacher layers; pass one student layer "
            "per teacher layer, in the same order.",
        )
    pairs = zip(
        teacher_names,
        student_names,
        teacher_shapes,
        student_shapes,
        strict=True,
    )
    for teacher_name, student_name, teacher_shape, student_shape in pairs:
        if teacher_shape[:2] != student_shape[:2]:
            raise ArgumentError(
                "student_layers",
                f"student layer {student_name!r} is "
                f"{student_shape[0]}x{student_shape[1]} but teacher layer "
                f"{teacher_name!r} is {teacher_shape[0]}x{teacher_shape[1]}"
                "; pair layers of the same spatial size, in the same order.",
            )


def outputs_model(model, names, name):
    """A model of `model`'s input returning the named layers' outputs.

    It shares `model`'s layers (and weights); its output is always a list.
    """
    return keras.Model(
        model.inputs, [model.get_layer(n).output for n in names], name=name
    )


def summed_mse(predictions, targets):
    """`sum_i mean((predictions[i] - targets[i])^2)`, targets held fixed.

    The mean squared error of each pair of tensors (over all their
    entries, as `torch.nn.MSELoss`), summed over the pairs.
    """
    return sum(
        ops.mean(ops.square(prediction - ops.stop_gradient(target)))
        for prediction, target in zip(predictions, targets, strict=True)
    )
