import keras
from keras import ops

from keras_one import _hub
from keras_one.graph import find_producer
from keras_one.methods.method import Method
from keras_one.models.pretrained_teacher import pretrained_teacher
from keras_one.student_outputs import normalize_outputs


class TeacherMethod(Method):
    """Base class of the methods that learn from frozen, pre-trained teachers.

    Holds the mechanism that KD, EKD and SOKD share: the teachers are
    `keras.Model`s, frozen here (`trainable=False`, so their weights and
    BatchNormalization statistics never change and their BatchNormalization
    layers run in inference mode), tracked as sub-layers (they are saved and
    loaded with the `Distiller`), and checked against the student when the
    method is built: each must take the student's input and give logits for
    the student's number of classes.

    A teacher is any model whose output is logits, shape
    `(batch, num_classes)`. A teacher trained with keras_one (a dict output)
    teaches with its `ensemble_logits`, or the mean of its branch logits.

    A pretrained keras-hub `ImageClassifier`, or the name of its preset
    (`"resnet_18_imagenet"`, loaded with its weights; keras-hub needed:
    `pip install keras-one[hub]`), is a teacher too: it reads the student's
    images through its own preprocessing (see
    `keras_one.models.pretrained_teacher`), after `input_preprocessing`
    is undone.

    Subclasses call `teacher_logits(index, inputs)` in `call` and serialize
    their teachers in `get_config` with `serialize_teacher(index)`.

    Args:
        teachers: a list of `keras.Model`s, keras-hub classifiers or preset
            names.
        temperature: softening temperature of the distillation terms.
        input_preprocessing: for keras-hub teachers, what made the
            student's images from raw pixels: a `keras_one.data.DatasetInfo`
            or its `preprocessing` dict; `None` (the default) for raw
            0-255 pixels. Other teachers read the student's images as they
            are.
        **kwargs: `Method` keyword arguments (`rampup_epochs`, `name`, ...).
    """

    def __init__(
        self, teachers, temperature, input_preprocessing=None, **kwargs
    ):
        super().__init__(temperature=temperature, **kwargs)
        if input_preprocessing is not None:
            from keras_one import export

            input_preprocessing = export.preprocessing_of(input_preprocessing)
        self.input_preprocessing = input_preprocessing
        teachers = [
            pretrained_teacher(t, input_preprocessing)
            if isinstance(t, str) or _hub.is_image_classifier(t)
            else t
            for t in teachers
        ]
        name = type(self).__name__
        for index, teacher in enumerate(teachers):
            if not isinstance(teacher, keras.Model):
                raise TypeError(
                    f"{name} teachers must be keras.Model instances (or "
                    "keras-hub preset names); teacher "
                    f"{index} is a {type(teacher).__name__}."
                )
            # Frozen as keras.distillation.Distiller freezes its teacher: no
            # weight or BatchNormalization statistic changes during fit.
            teacher.trainable = False
        self.teachers = teachers

    def build(self, inputs_shape, outputs_shape):
        num_classes = outputs_shape["branch_logits"][0][-1]
        for teacher in self.teachers:
            _check_not_probabilities(teacher)
            try:
                spec = teacher.compute_output_spec(
                    keras.KerasTensor(inputs_shape)
                )
            except Exception as error:
                raise ValueError(
                    f"Teacher {teacher.name!r} cannot take the student's "
                    f"input of shape {tuple(inputs_shape)}. Teachers must "
                    f"read the same images as the student. ({error})"
                ) from None
            teacher_classes = select_logits(spec).shape[-1]
            if teacher_classes != num_classes:
                raise ValueError(
                    f"Teacher {teacher.name!r} predicts {teacher_classes} "
                    f"classes but the student predicts {num_classes}. A "
                    "teacher must be trained on the student's classes: "
                    "build the student with num_classes="
                    f"{teacher_classes}, or pass a teacher with "
                    f"{num_classes} outputs."
                )

    def get_config(self):
        return {
            **super().get_config(),
            "input_preprocessing": self.input_preprocessing,
        }

    def serialize_teacher(self, index):
        """Serializes teacher `index` for `get_config`, without compile state.

        A teacher's optimizer and compiled loss concern its own training,
        not the distillation: they are left out, so the saved Distiller
        reloads the teacher as a plain (uncompiled) frozen model.
        """
        config = keras.saving.serialize_keras_object(self.teachers[index])
        config.pop("compile_config", None)
        return config

    def teacher_logits(self, index, inputs):
        """Runs teacher `index` in inference mode; returns its logits."""
        outputs = self.teachers[index](inputs, training=False)
        return ops.stop_gradient(select_logits(outputs))


def select_logits(outputs):
    """A teacher's logits: its output, or its ensemble for a dict output."""
    if not isinstance(outputs, (dict, list, tuple)):
        return outputs
    outputs = normalize_outputs(outputs)
    if "ensemble_logits" in outputs:
        return outputs["ensemble_logits"]
    branch_logits = outputs["branch_logits"]
    if len(branch_logits) == 1:
        return branch_logits[0]
    return ops.mean(ops.stack(branch_logits), axis=0)


def _check_not_probabilities(teacher):
    """Raises if a functional teacher ends in a softmax (or sigmoid)."""
    try:
        output = teacher.output
    except (AttributeError, ValueError):
        return
    if isinstance(output, (dict, list, tuple)):
        return
    operation = find_producer(output, teacher)
    if operation is None:
        # The output comes from a layer that Keras' public API does not
        # reveal (a shared layer's second call, a nested functional model).
        # The check is a courtesy: such teachers are not checked.
        return
    activation = getattr(operation, "activation", None)
    activation = getattr(activation, "__name__", activation)
    if isinstance(operation, keras.layers.Softmax) or activation in (
        "softmax",
        "sigmoid",
    ):
        raise ValueError(
            f"Teacher {teacher.name!r} outputs probabilities (its layer "
            f"{operation.name!r} applies {activation or 'softmax'}), but "
            "distillation needs logits. Rebuild its last layer with "
            "activation=None and copy the weights (for keras.applications "
            "models, classifier_activation=None)."
        )
