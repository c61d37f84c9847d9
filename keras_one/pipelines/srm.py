"""Sparse Representation Matching (SRM; Tran, Gabbouj and Iosifidis).

"Knowledge Distillation By Sparse Representation Matching"
(arXiv:2103.17012), after its official code (github viebboy/SRM,
`cifar100/code`): the teacher's intermediate feature maps are coded over
learned codebooks (`keras_one.layers.SparseCoding`), the student is first
trained to predict those codes from its own feature maps, then distilled
from the teacher's logits.
"""

import keras
from keras import ops

from keras_one.layers.sparse_coding import SparseCoding
from keras_one.pipelines import _features
from keras_one.pipelines._stages import StageObjective
from keras_one.pipelines._stages import Stages
from keras_one.pipelines._stages import Training
from keras_one.pipelines._stages import built
from keras_one.pipelines._stages import check_count
from keras_one.pipelines._stages import check_kd
from keras_one.pipelines._stages import teacher_settings

# The pipeline's defaults, as data (the `keras-one pipeline` command reads
# them): the official code's best codebook (c = 2, r = 0.02); alpha and T
# are the middle of the official grid (alpha in .25/.5/.75, T in 2/4/8,
# chosen there on a validation split).
DEFAULTS = {
    "codeword_multiplier": 2.0,
    "sparsity_ratio": 0.02,
    "alpha": 0.5,
    "temperature": 4.0,
}
# The official optimizer: Adam at these learning rates, for these epochs
# each, per stage (`exp_configurations.py`: T_, CLUSTER_, INIT_, KD_).
LEARNING_RATES = (1e-3, 1e-4, 1e-5)
PHASE_EPOCHS = {
    "teacher": (30, 100, 70),
    "sparse_coding": (10, 60, 30),
    "srm_init": (30, 100, 30),
    "student": (30, 100, 70),
}


def sparse_representation_matching(
    build_model,
    teacher,
    train_ds,
    test_ds,
    epochs,
    directory,
    teacher_layers=None,
    student_layers=None,
    codeword_multiplier=2.0,
    sparsity_ratio=0.02,
    alpha=0.5,
    temperature=4.0,
    optimizer=None,
    seed=0,
    callbacks=(),
    verbose="auto",
):
    """Distils a teacher by Sparse Representation Matching (SRM).

    The four stages of the official code (Tran, Gabbouj and Iosifidis,
    arXiv:2103.17012; github viebboy/SRM, `cifar100/code`):

    1. `teacher`: trained on the labels, unless a trained one is given.
    2. `sparse_coding`: on each tapped teacher feature map (`teacher_layers`,
       `D` channels), a `keras_one.layers.SparseCoding` layer with
       `K = int(c * D)` codewords keeps the `k = int(D * c * r)` largest
       sigmoid codes of each pixel; its codebook and scalar bias are fitted
       on the frozen teacher by `sum_taps MSE(x, codes . W^T)` (the
       reconstruction from the kept codes, as in the official code).
    3. `srm_init`: the student is initialized by predicting those codes:
       each tapped student feature map (`student_layers`, the same spatial
       size as its teacher tap) gets a head `sigmoid(x . W_s + b_s)` with
       `K` outputs (a `SparseCoding` without top-k), trained with
       `code_matching_loss`: the BCE between the pixel means of the
       student's and the teacher's kept codes (the image-level label),
       plus the cross-entropy of the student's codes taken as logits of
       each pixel against the teacher's strongest codeword (the
       pixel-level label); the teacher's codes are held fixed.
    4. `student`: the heads are dropped and `keras_one.methods.KD` trains
       the initialized student: `(1 - alpha) CE + alpha T^2 KL_T`.

    Readings and choices:

    - `k` follows the official code: `int(D * c * r)`, raised to 1 when it
      rounds to 0 (a 16-channel tap at `c = 2`, `r = 0.02`).
    - Optimizer: with `optimizer=None` each stage runs the official Adam
      schedule, learning rate 1e-3, 1e-4, then 1e-5, for the same
      fractions of the stage as the official epochs (`PHASE_EPOCHS`: 30,
      100 and 70 of 200 epochs for the teacher and KD, 10/60/30 for the
      coding, 30/100/30 for the initialization), scaled to `epochs` at the
      step (boundaries at `round(fraction * epochs * steps_per_epoch)`).
      Adam's epsilon is torch's (1e-8). The official weight decay (1e-4,
      torch Adam's coupled L2; 0 for the coding) is the networks' own:
      build them with it (e.g. `cifar_resnet(..., weight_decay=1e-4)`);
      the heads and codebooks have none.
    - The official code keeps the initialized student with the best loss
      on a validation split; here every stage keeps its last weights
      (`test_ds` is the only held-out data and is not used for choices).
    - The teacher runs in inference mode in every stage (the official
      code leaves its batch normalization in training mode while fitting
      the codebooks).
    - `alpha` and `T` default to the middle of the official grid (0.5, 4);
      the official code picks them on validation data.

    Runs on the TensorFlow backend (as every pipeline; see
    `keras_one.pipelines`); JAX and PyTorch are untested. Every stage is
    saved and resumable.

    Args:
        build_model: a function of no arguments returning a new, untrained
            student `keras.Model` of logits.
        teacher: a trained `keras.Model` of logits (used as is: stage 1 is
            skipped), or a function returning a new one to train first.
        train_ds, test_ds, epochs, directory, optimizer, seed, callbacks,
            verbose: as in `keras_one.pipelines.ensemble_distillation`.
        teacher_layers: names of the teacher's layers whose outputs are
            coded; default: the stage outputs of a keras_one
            `cifar_resnet`.
        student_layers: the student's layers matched to them, one each,
            of the same spatial sizes; default: its stage outputs.
        codeword_multiplier: `c`, codewords per channel of a tap (> 0).
        sparsity_ratio: `r`, in (0, 1]; `k <= K` needs `r <= 1`.
        alpha: weight of KD's distillation term.
        temperature: KD's temperature `T`.

    Returns:
        `(models, accuracy)`: `models["teacher"]`,
        `models["sparse_coding"]` (a model of the tapped teacher feature
        maps returning their kept codes), `models["initialized"]` (the
        student after stage 3) and `models["student"]`; `accuracy`
        holds the teacher's and the student's test accuracy.

    Example:

    ```python
    build = lambda depth: lambda: keras_one.models.cifar_resnet(
        depth, num_classes=100, num_branches=1
    )
    models, accuracy = keras_one.pipelines.sparse_representation_matching(
        build(20), build(56), train_ds, test_ds, epochs=200, directory="srm"
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
        codeword_multiplier,
        sparsity_ratio,
    )
    settings = teacher_settings(
        "sparse_representation_matching",
        teacher,
        ["sparse_coding", "srm_init", "student"],
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
    with Stages(directory, settings, training, _official_adam) as stages:
        load_teacher, teacher_model, teacher_accuracy = stages.teacher(teacher)

        def teacher_features():
            return _features.outputs_model(
                load_teacher(), plan["teacher_layers"], "teacher_features"
            )

        coder, _ = stages.fit_objective(
            "sparse_coding",
            lambda: coding_model(
                plan["teacher_shapes"], plan["codewords"], plan["sparsity"]
            ),
            lambda coder: _Reconstruction(teacher_features(), coder),
        )
        initialized, _ = stages.fit_objective(
            "srm_init",
            build_model,
            lambda student: _CodeMatching(
                _features.outputs_model(
                    student, plan["student_layers"], "student_features"
                ),
                teacher_features(),
                coder,
            ),
        )
        student, scores = stages.train(
            "student",
            load_teacher,
            alpha=alpha,
            temperature=temperature,
            build=lambda: stages.load("srm_init"),
        )
    models = {
        "teacher": teacher_model,
        "sparse_coding": coder,
        "initialized": initialized,
        "student": student,
    }
    accuracy = {"teacher": teacher_accuracy, "student": scores["accuracy"]}
    return models, accuracy


def check_arguments(
    build_model,
    teacher,
    teacher_layers,
    student_layers,
    codeword_multiplier,
    sparsity_ratio,
):
    """Checks SRM's layers and codebook sizes before any training.

    Builds one student with `build_model` to read its layers.

    Args:
        build_model: the student's builder.
        teacher: a teacher `keras.Model` (trained or not).
        teacher_layers, student_layers, codeword_multiplier,
            sparsity_ratio: as in `sparse_representation_matching`.

    Returns:
        The resolved plan (JSON): `teacher_layers`, `student_layers`,
        `teacher_shapes`, `codeword_multiplier`, `sparsity_ratio`,
        `codewords` (`K` per tap) and `sparsity` (`k` per tap).

    Raises:
        ArgumentError: a `ValueError` naming the argument at fault.
    """
    if not float(codeword_multiplier) > 0:
        raise _features.ArgumentError(
            "codeword_multiplier",
            f"must be > 0 (the official code uses 1.5, 2 or 3); got "
            f"{codeword_multiplier}.",
        )
    if not 0 < float(sparsity_ratio) <= 1:
        raise _features.ArgumentError(
            "sparsity_ratio",
            f"must lie in (0, 1] (k = int(D * c * r) codes kept of "
            f"K = int(c * D); the official code uses 0.01 to 0.03); got "
            f"{sparsity_ratio}.",
        )
    student = built(build_model)
    teacher_layers = _features.layer_names(
        teacher, teacher_layers, "teacher_layers", "teacher"
    )
    student_layers = _features.layer_names(
        student, student_layers, "student_layers", "student"
    )
    teacher_shapes = _features.feature_shapes(teacher, teacher_layers)
    _features.check_sizes(
        teacher_shapes,
        _features.feature_shapes(student, student_layers),
        teacher_layers,
        student_layers,
    )
    codewords, sparsity = [], []
    for name, (_, _, channels) in zip(
        teacher_layers, teacher_shapes, strict=True
    ):
        count = int(channels * codeword_multiplier)
        if count < 1:
            raise _features.ArgumentError(
                "codeword_multiplier",
                f"gives K = int({channels} * {codeword_multiplier}) = 0 "
                f"codewords for teacher layer {name!r}; raise it to at "
                f"least {1 / channels:g}.",
            )
        kept = int(channels * codeword_multiplier * sparsity_ratio)
        codewords.append(count)
        sparsity.append(min(max(kept, 1), count))
    return {
        "teacher_layers": teacher_layers,
        "student_layers": student_layers,
        "teacher_shapes": [list(shape) for shape in teacher_shapes],
        "codeword_multiplier": float(codeword_multiplier),
        "sparsity_ratio": float(sparsity_ratio),
        "codewords": codewords,
        "sparsity": sparsity,
    }


def coding_model(feature_shapes, codewords, sparsity):
    """The teacher's sparse coding: feature maps in, their kept codes out.

    Args:
        feature_shapes: `(height, width, channels)` of each tap.
        codewords: `K` of each tap.
        sparsity: `k` of each tap.

    Returns:
        A functional `keras.Model` of one input per tap, returning a list
        of codes (`SparseCoding` layers `sparse_coding_<i>`).
    """
    inputs = [
        keras.Input(tuple(shape), name=f"teacher_features_{index}")
        for index, shape in enumerate(feature_shapes)
    ]
    outputs = [
        SparseCoding(count, kept, name=f"sparse_coding_{index}")(x)
        for index, (x, count, kept) in enumerate(
            zip(inputs, codewords, sparsity, strict=True)
        )
    ]
    return keras.Model(inputs, outputs, name="sparse_coding")


def code_matching_loss(student_codes, teacher_codes):
    """SRM's initialization loss, summed over the taps.

    For each tap, with codes of shape `(batch, height, width, K)`:
    `BCE(mean_pixels(student), mean_pixels(teacher))` averaged over the
    batch and codewords (torch's `BCELoss`), plus the cross-entropy of the
    student's codes, taken as the logits of each pixel, against the
    teacher's strongest codeword, averaged over the batch and pixels
    (torch's `CrossEntropyLoss`). The teacher's codes are held fixed.

    Args:
        student_codes: the student heads' codes (sigmoids, every code).
        teacher_codes: the teacher's kept codes.

    Returns:
        The scalar loss.
    """
    total = 0.0
    for student, teacher in zip(student_codes, teacher_codes, strict=True):
        teacher = ops.stop_gradient(teacher)
        pixels = tuple(range(1, len(student.shape) - 1))
        image_level = ops.binary_crossentropy(
            ops.mean(teacher, axis=pixels), ops.mean(student, axis=pixels)
        )
        # The log-softmax written out: Keras' cross-entropy on TensorFlow
        # would read a sigmoid's output as its input's logits
        # (`_keras_logits`), not as the logits SRM takes it for.
        labels = ops.expand_dims(ops.argmax(teacher, axis=-1), -1)
        pixel_level = -ops.take_along_axis(
            ops.log_softmax(student, axis=-1), labels, axis=-1
        )
        total = total + ops.mean(image_level) + ops.mean(pixel_level)
    return total


class _Reconstruction(StageObjective):
    """Stage 2: the coder's reconstructions of the frozen teacher's maps."""

    def __init__(self, teacher_features, coder, **kwargs):
        super().__init__(name="sparse_coding_fit", **kwargs)
        teacher_features.trainable = False
        self.teacher_features = teacher_features
        self.coder = coder
        self.coding_layers = [
            layer for layer in coder.layers if isinstance(layer, SparseCoding)
        ]

    def call(self, images, training=None):
        features = self.teacher_features(images, training=False)
        codes = self.coder(features, training=training)
        return {
            "features": features,
            "reconstructions": [
                layer.reconstruct(code)
                for layer, code in zip(self.coding_layers, codes, strict=True)
            ],
        }

    def objective(self, outputs):
        return _features.summed_mse(
            outputs["reconstructions"], outputs["features"]
        )


class _CodeMatching(StageObjective):
    """Stage 3: student heads predicting the frozen teacher's codes."""

    def __init__(self, student_features, teacher_features, coder, **kwargs):
        super().__init__(name="srm_init_fit", **kwargs)
        teacher_features.trainable = False
        coder.trainable = False
        self.student_features = student_features
        self.teacher_features = teacher_features
        self.coder = coder
        self.heads = [
            SparseCoding(layer.num_codewords, name=f"head_{index}")
            for index, layer in enumerate(
                layer
                for layer in coder.layers
                if isinstance(layer, SparseCoding)
            )
        ]

    def call(self, images, training=None):
        features = self.student_features(images, training=training)
        teacher_codes = self.coder(
            self.teacher_features(images, training=False), training=False
        )
        return {
            "student_codes": [
                head(x) for head, x in zip(self.heads, features, strict=True)
            ],
            "teacher_codes": teacher_codes,
        }

    def objective(self, outputs):
        return code_matching_loss(
            outputs["student_codes"], outputs["teacher_codes"]
        )


def official_schedule(stage, total_steps):
    """The official learning rates of `stage`, scaled to `total_steps`.

    1e-3, 1e-4 then 1e-5, switching after the same fractions of the steps
    as the official epochs (`PHASE_EPOCHS[stage]`) of the stage's.

    Returns:
        A `keras.optimizers.schedules.PiecewiseConstantDecay`.
    """
    phases = PHASE_EPOCHS[stage]
    boundaries, done = [], 0
    for epochs in phases[:-1]:
        done += epochs
        boundaries.append(round(done / sum(phases) * total_steps))
    return keras.optimizers.schedules.PiecewiseConstantDecay(
        boundaries, list(LEARNING_RATES)
    )


def _official_adam(stage, total_steps):
    rate = official_schedule(stage, total_steps)
    return keras.optimizers.Adam(rate, epsilon=1e-8)
