"""Block-wise compact structure learning by KD (Ahmed et al., ICPR 2020).

"Compact CNN Structure Learning by Knowledge Distillation" (Waqar Ahmed,
Andrea Zunino, Pietro Morerio, Vittorio Murino; ICPR 2020,
arXiv:2104.09191). No code and no method text were available: this is a
reading of the abstract (see `blockwise_distillation`).
"""

import keras

from keras_one.pipelines import _features
from keras_one.pipelines._stages import StageObjective
from keras_one.pipelines._stages import Stages
from keras_one.pipelines._stages import Training
from keras_one.pipelines._stages import built
from keras_one.pipelines._stages import check_count
from keras_one.pipelines._stages import check_kd
from keras_one.pipelines._stages import teacher_settings

# The pipeline's defaults, as data (the `keras-one pipeline` command reads
# them): KD's, the paper's were not read.
DEFAULTS = {"alpha": 0.9, "temperature": 4.0}


def blockwise_distillation(
    build_model,
    teacher,
    train_ds,
    test_ds,
    epochs,
    directory,
    teacher_layers=None,
    student_layers=None,
    alpha=0.9,
    temperature=4.0,
    optimizer=None,
    seed=0,
    callbacks=(),
    verbose="auto",
):
    """Trains a cheaper student block by block, then fine-tunes it with KD.

    A reading of the abstract of Ahmed et al. (ICPR 2020,
    arXiv:2104.09191; no code and no method text were available): the
    teacher is split into blocks and each block is replaced by a cheaper
    one, trained to reproduce the teacher block's output; the whole
    student is then fine-tuned with knowledge distillation. The stages:

    1. `teacher`: trained on the labels, unless a trained one is given.
    2. `blocks`: block `i` of the student (its layers from the end of
       block `i - 1`, or its input, to `student_layers[i]`) gets the
       frozen teacher's input of block `i` (the output of
       `teacher_layers[i - 1]`, or the image) and learns the output of
       `teacher_layers[i]`: `block_loss`, the MSE of the feature maps,
       summed over the blocks. Where the channel counts differ, a 1x1
       convolution (no bias) adapts the teacher's input to the student
       block, and another adapts the student block's output to the
       teacher's channels; the adapters are trained with the blocks and
       dropped after the stage. The blocks are trained together in one
       stage: each block's weights get only its own term's gradient, so
       with Adam or SGD this is the same as training them one by one,
       for one pass of the teacher. The layers after the last block (the
       classifier) are left to stage 3.
    3. `student`: the whole student, from stage 2's weights, trained with
       `keras_one.methods.KD`: `(1 - alpha) CE + alpha T^2 KL_T`.

    What was chosen where the abstract says nothing: the blocks are given
    by layer names (default: the stage outputs of a keras_one
    `cifar_resnet`, so a shallower `cifar_resnet` is a cheaper student of
    the same blocks); the paper's search of block architectures under a
    FLOPs or parameter budget is not done (pass the student you want);
    the loss weights and `T` are KD's defaults (0.9, 4); every stage uses
    the library's optimizer recipe unless `optimizer` is given.

    Runs on the TensorFlow backend (as every pipeline; see
    `keras_one.pipelines`); JAX and PyTorch are untested. Every stage is
    saved and resumable.

    Args:
        build_model: a function of no arguments returning a new, untrained
            student `keras.Model` of logits, of the teacher's input shape.
        teacher: a trained `keras.Model` of logits (used as is: stage 1 is
            skipped), or a function returning a new one to train first.
        train_ds, test_ds, epochs, directory, optimizer, seed, callbacks,
            verbose: as in `keras_one.pipelines.ensemble_distillation`.
        teacher_layers: names of the teacher's layers ending its blocks,
            in order; default: the stage outputs of a keras_one
            `cifar_resnet`.
        student_layers: the student's layers ending the matching blocks,
            of the same spatial sizes; default: its stage outputs.
        alpha: weight of KD's distillation term.
        temperature: KD's temperature `T`.

    Returns:
        `(models, accuracy)`: `models["teacher"]`, `models["blocks"]`
        (the student after stage 2) and `models["student"]`; `accuracy`
        holds the teacher's and the student's test accuracy.

    Example:

    ```python
    build = lambda depth: lambda: keras_one.models.cifar_resnet(
        depth, num_classes=10, num_branches=1
    )
    models, accuracy = keras_one.pipelines.blockwise_distillation(
        build(8), build(32), train_ds, test_ds, epochs=30, directory="bw"
    )
    ```
    """
    check_count("epochs", epochs, minimum=1)
    check_kd(alpha, temperature)
    plan = check_arguments(
        build_model,
        teacher if isinstance(teacher, keras.Model) else built(teacher),
        teacher_layers,
        student_layers,
    )
    settings = teacher_settings(
        "blockwise_distillation",
        teacher,
        ["blocks", "student"],
        plan,
        alpha,
        temperature,
    )
    training = Training(
        build_model,
        train_ds,
        test_ds,
        epochs,
        optimizer,
        seed,
        callbacks,
        verbose,
    )
    with Stages(directory, settings, training) as stages:
        load_teacher, teacher_model, teacher_accuracy = stages.teacher(teacher)
        blocks, _ = stages.fit_objective(
            "blocks",
            build_model,
            lambda student: BlockMatching(
                student,
                plan["student_layers"],
                _features.outputs_model(
                    load_teacher(), plan["teacher_layers"], "teacher_blocks"
                ),
            ),
        )
        student, scores = stages.train(
            "student",
            load_teacher,
            alpha=alpha,
            temperature=temperature,
            build=lambda: stages.load("blocks"),
        )
    models = {
        "teacher": teacher_model,
        "blocks": blocks,
        "student": student,
    }
    accuracy = {"teacher": teacher_accuracy, "student": scores["accuracy"]}
    return models, accuracy


def check_arguments(build_model, teacher, teacher_layers, student_layers):
    """Checks the blocks of the teacher and the student before training.

    Builds one student with `build_model` to read its layers.

    Returns:
        The plan (JSON): `teacher_layers` and `student_layers`.

    Raises:
        ArgumentError: a `ValueError` naming the argument at fault.
    """
    student = built(build_model)
    teacher_layers = _features.layer_names(
        teacher, teacher_layers, "teacher_layers", "teacher"
    )
    student_layers = _features.layer_names(
        student, student_layers, "student_layers", "student"
    )
    teacher_input = tuple(teacher.inputs[0].shape[1:])
    student_input = tuple(student.inputs[0].shape[1:])
    if teacher_input != student_input:
        raise _features.ArgumentError(
            "build_model",
            f"the student takes images of shape {student_input}, the "
            f"teacher {teacher_input}; build the student for the "
            "teacher's input.",
        )
    _features.check_sizes(
        _features.feature_shapes(teacher, teacher_layers),
        _features.feature_shapes(student, student_layers),
        teacher_layers,
        student_layers,
    )
    _features.outputs_model(teacher, teacher_layers, "teacher_blocks")
    student_blocks(student, student_layers)
    return {"teacher_layers": teacher_layers, "student_layers": student_layers}


def student_blocks(student, layers):
    """The student cut into blocks ending at `layers`, sharing its weights.

    Returns:
        One functional `keras.Model` per block: block 0 from the student's
        input, block `i` from the output of `layers[i - 1]`.
    """
    starts = [student.inputs[0]] + [
        student.get_layer(name).output for name in layers[:-1]
    ]
    blocks = []
    for index, (start, end) in enumerate(zip(starts, layers, strict=True)):
        try:
            blocks.append(
                keras.Model(
                    start,
                    student.get_layer(end).output,
                    name=f"student_block_{index}",
                )
            )
        except ValueError as error:
            raise _features.ArgumentError(
                "student_layers",
                f"the student's layers up to {end!r} do not form a block "
                f"fed by its previous block's output alone ({error}); end "
                "the blocks at layers that cut the network in two.",
            ) from None
    return blocks


def block_loss(student_outputs, teacher_outputs):
    """The blocks' loss: MSE of each block's feature map, summed."""
    return _features.summed_mse(student_outputs, teacher_outputs)


class BlockMatching(StageObjective):
    """Stage 2: the student's blocks on the frozen teacher blocks' inputs.

    Block `i` of `student` reads the output of the teacher's block `i - 1`
    (the image for block 0) and its output is compared with the teacher's
    block `i` by `block_loss`. A 1x1 convolution adapts the channels where
    the teacher's and the student's differ (`keras.layers.Identity`
    elsewhere).

    Args:
        student: the student network (its layers are trained).
        student_layers: the student's layers ending its blocks.
        teacher_features: a frozen model returning the output of each of
            the teacher's blocks (a list).
    """

    def __init__(self, student, student_layers, teacher_features, **kwargs):
        super().__init__(name="blocks_fit", **kwargs)
        teacher_features.trainable = False
        self.teacher_features = teacher_features
        self.blocks = student_blocks(student, student_layers)
        teacher_channels = [x.shape[-1] for x in teacher_features.outputs]
        teacher_inputs = [student.inputs[0].shape[-1], *teacher_channels]
        self.input_adapters = [
            _adapter(have, block.inputs[0].shape[-1], f"input_adapter_{i}")
            for i, (have, block) in enumerate(
                zip(teacher_inputs, self.blocks, strict=False)
            )
        ]
        self.output_adapters = [
            _adapter(block.outputs[0].shape[-1], want, f"output_adapter_{i}")
            for i, (block, want) in enumerate(
                zip(self.blocks, teacher_channels, strict=True)
            )
        ]

    def call(self, images, training=None):
        targets = self.teacher_features(images, training=False)
        outputs = []
        for x, block, adapt_input, adapt_output in zip(
            [images, *targets[:-1]],
            self.blocks,
            self.input_adapters,
            self.output_adapters,
            strict=True,
        ):
            y = block(adapt_input(x), training=training)
            outputs.append(adapt_output(y))
        return {"student": outputs, "teacher": targets}

    def objective(self, outputs):
        return block_loss(outputs["student"], outputs["teacher"])


def _adapter(have, want, name):
    if have == want:
        return keras.layers.Identity(name=name)
    return keras.layers.Conv2D(want, 1, use_bias=False, name=name)
