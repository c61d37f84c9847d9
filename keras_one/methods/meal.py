import difflib
import functools
import numbers

import keras
import numpy as np
from keras import ops

from keras_one.layers import _pytorch_init
from keras_one.losses import rampup_weight
from keras_one.methods._integer_hash import hash31
from keras_one.methods.method_info import MethodInfo
from keras_one.methods.teacher_method import TeacherMethod
from keras_one.methods.teacher_method import select_logits
from keras_one.student_outputs import normalize_outputs
from keras_one.student_outputs import symbolic_io


@keras.saving.register_keras_serializable(package="keras_one")
class MEAL(TeacherMethod):
    """MEAL: Multi-Model Ensemble via Adversarial Learning (AAAI 2019).

    Shen, He and Xue, "MEAL: Multi-Model Ensemble via Adversarial
    Learning" (arXiv:1812.02425; official code github.com/AaronHeee/MEAL):
    a single student learns, without labels, from several pre-trained,
    frozen teachers. At every mini-batch one teacher is drawn uniformly at
    random; at each block `b` (named layers of the student and the
    teachers, then the logits) the student's output `s_b` is pulled
    towards the drawn teacher's `t_b`, and a discriminator `D_b` per block
    tells the student's outputs from the teacher's:

    `L = sum_b gamma_b * mean_batch(-sum softmax(t_b) . log softmax(s_b))
         + sum_b eta_b * BCEWithLogits(D_b([s_b; t_b]), [1,0]^N; [0,1]^N)`

    - Block outputs: a feature map `(N, H, W, C)` (channels last) is read as
      `(N, C, H*W)`, adaptively average-pooled along `H*W` to `d_b` values
      (PyTorch's `AdaptiveAvgPool1d`: bin `i` averages positions
      `floor(i HW / d_b)` to `ceil((i + 1) HW / d_b) - 1`, so for
      `d_b > H*W` positions repeat) and averaged over the channels, as the
      official `fc_out` outputs; the last block is the logits. Student and
      teacher maps may differ in size and channels: both become `d_b`
      values.
    - `D_b`: 1x1 convolutions on the vector, i.e. `Dense` layers
      `d_b -> d_b // 2 -> d_b // 4 -> 2` with a ReLU after every layer,
      the last included (as the official `Discriminator`), PyTorch's
      default weight initialization. Its input is the student's rows
      followed by the teacher's, concatenated along the batch, with the
      official targets `[1, 0]` for student rows and `[0, 1]` for teacher
      rows; the binary cross-entropy on logits is averaged over the `2N`
      rows and 2 outputs.
    - The temperature is 1 and there is no label loss, as in the paper.
    - The discriminators train at their own learning rate, the official
      `--d_lr 1e-3` against the student's `--lr 0.1`: a multiplier 0.01 of
      the optimizer's rate (`Method.learning_rate_multipliers`).

    Readings where the paper and the official code differ:

    - Adversarial or cooperative. The paper trains the student against the
      discriminators; the official code's default `--grl False` lets the
      student minimise `L_D` too, which helps the discriminators rather
      than fooling them. The default here, `adversarial=True`, follows the
      paper through the official code's own gradient reversal layer (its
      `--grl True`): the student's rows enter `D_b` through a gradient
      reversal (identity forward, negated gradient), so the student
      maximises `L_D` while the discriminators minimise it in the same
      step. `adversarial=False` is the official code's default behaviour.
    - Teachers' BatchNormalization. The official code freezes the
      teachers' weights but leaves them in train mode (`--teacher_eval 0`):
      they normalize with the statistics of each batch. The default here
      runs them in inference mode (moving statistics), as every teacher of
      keras_one (KD, EKD, SOKD) and `keras.distillation` does: a teacher
      then gives each image the same targets whatever the batch, and a
      distillation that starts from a trained model normally evaluates
      it. `teacher_batch_statistics=True` gives the official behaviour:
      each BatchNormalization layer of the teachers (nested functional
      models included) normalizes with the batch's mean and (biased)
      variance and its own `epsilon`, `gamma`, `beta`; its moving
      statistics are never changed (the official ones drift, unused).

    Defaults: the official ensemble configuration (several teachers,
    logits only, `gamma = eta = 1`). The official single-teacher VGG-19
    configuration takes the outputs of the five pools: with the four
    feature layers, `block_dims=[10000, 5000, 1000, 500]` and
    `gamma=[0.001, 0.01, 0.05, 0.1, 1]` (`eta` all 1). The official step is
    SGD at lr 0.1 (momentum 0.9, weight decay 5e-4), x0.1 at epochs 150
    and 250; the teacher drawn per mini-batch.

    The teacher of a step is an integer hash of `seed` and the method's
    count of optimizer steps (a saved variable, advanced by
    `after_train_step`), modulo the number of teachers: a uniform draw
    that is the same on every backend, on any number of replicas (one
    draw per global batch, as on one device) and after a resume from a
    backup. `evaluate` does not advance the count: it scores every batch
    against the teacher of the next training step. The drawn teacher runs
    through `keras.ops.switch` (`tf.switch_case`, `jax.lax.switch`, plain
    indexing on PyTorch), so only it runs; this works under
    `tf.function`, XLA and JAX's `jit`.

    Args:
        teachers: one or more pre-trained `keras.Model`s (or keras-hub
            classifiers or preset names, see `TeacherMethod`) returning
            logits for the student's classes.
        feature_layers: `None` (the default: logits only) or a list of
            layer names, each present in the student and in every teacher
            (the student must return their outputs: build it with
            `MEAL.build_student`, or wrap it with
            `method.with_block_outputs(student)`). Each names a feature
            map `(batch, ..., channels)`.
        block_dims: `d_b` of each feature layer, positive integers; `None`
            for the spatial size (`H*W`) of the student's map at that
            layer.
        gamma: the similarity weights `gamma_b`, one per feature layer and
            one for the logits; `None` for all 1.
        eta: the discriminator weights `eta_b`, same length; `None` for
            all 1.
        adversarial: if `True` (the default, the paper), the student's
            rows reach the discriminators through a gradient reversal;
            if `False`, the student minimises `L_D` too (the official
            code's default `--grl False`).
        discriminator_learning_rate_multiplier: the discriminators'
            learning rate as a multiple of the optimizer's; default 0.01
            (official: 1e-3 against 0.1).
        teacher_batch_statistics: if `True`, the teachers'
            BatchNormalization layers use the statistics of each batch (the
            official code); default `False` (inference mode).
        temperature: softening temperature of the similarity term; 1 in
            the paper and the official code.
        seed: seed of the teacher draws; `None` draws one from NumPy's
            global generator (seeded by `keras.utils.set_random_seed`).
        **kwargs: `TeacherMethod` keyword arguments (`input_preprocessing`,
            `rampup_epochs`, `name`). A ramp-up weighs the similarity term.

    Example:

    >>> teachers = [keras_one.models.cifar_resnet(56, num_branches=1),
    ...             keras_one.models.cifar_resnet(44, num_branches=1)]
    >>> method = MEAL(teachers)
    >>> student = method.build_student("resnet20")
    >>> distiller = keras_one.Distiller(student, method)
    """

    info = MethodInfo(
        name="meal",
        branches=1,
        min_branches=1,
        student="single",
        teachers="several",
    )
    loss_names = ("similarity", "discriminator")

    def __init__(
        self,
        teachers,
        feature_layers=None,
        block_dims=None,
        gamma=None,
        eta=None,
        adversarial=True,
        discriminator_learning_rate_multiplier=0.01,
        teacher_batch_statistics=False,
        temperature=1.0,
        seed=None,
        **kwargs,
    ):
        if isinstance(teachers, (keras.Model, str)):
            teachers = [teachers]
        if not isinstance(teachers, (list, tuple)) or not teachers:
            raise ValueError(
                "MEAL needs one or more pre-trained teachers: pass "
                "MEAL(teachers=[teacher_a, teacher_b, ...])."
            )
        if len({id(teacher) for teacher in teachers}) != len(teachers):
            raise ValueError(
                "MEAL got the same teacher model more than once: pass each "
                "teacher once (they are drawn uniformly)."
            )
        multiplier = discriminator_learning_rate_multiplier
        if (
            isinstance(multiplier, bool)
            or not isinstance(multiplier, numbers.Real)
            or not np.isfinite(multiplier)
            or multiplier < 0
        ):
            raise ValueError(
                "discriminator_learning_rate_multiplier must be a finite "
                f"number >= 0 (official: 0.01); got {multiplier!r}."
            )
        if isinstance(feature_layers, str):
            feature_layers = [feature_layers]
        feature_layers = list(feature_layers or [])
        for layer_name in feature_layers:
            if not isinstance(layer_name, str):
                raise TypeError(
                    "MEAL feature_layers are layer names (strings such as "
                    f"'stage1_block1_out'); got {type(layer_name).__name__}."
                )
        num_blocks = len(feature_layers) + 1
        if block_dims is not None:
            block_dims = list(block_dims)
            if len(block_dims) != len(feature_layers) or not all(
                isinstance(d, numbers.Integral) and d >= 1 for d in block_dims
            ):
                raise ValueError(
                    "MEAL block_dims must give one positive integer per "
                    f"feature layer ({len(feature_layers)}); got "
                    f"{block_dims}. Or leave it None (each map's H*W)."
                )
            block_dims = [int(d) for d in block_dims]
        gamma = _block_weights("gamma", gamma, num_blocks)
        eta = _block_weights("eta", eta, num_blocks)
        super().__init__(teachers=teachers, temperature=temperature, **kwargs)
        self.feature_layers = feature_layers
        self.block_dims = block_dims
        self.gamma = gamma
        self.eta = eta
        self.adversarial = bool(adversarial)
        self.discriminator_learning_rate_multiplier = float(multiplier)
        self.teacher_batch_statistics = bool(teacher_batch_statistics)
        if seed is None:
            seed = int(np.random.randint(0, 2**31 - 1))
        self.seed = int(seed)
        self.teacher_draws = None

    # === Student ===

    def build_student(
        self,
        model="resnet32",
        num_classes=10,
        input_shape=(32, 32, 3),
        num_branches=None,
        **model_kwargs,
    ):
        """Builds the single student network, with its block outputs.

        See `Method.build_student` for the arguments; with
        `feature_layers`, the network also returns their outputs (see
        `with_block_outputs`).
        """
        student = super().build_student(
            model,
            num_classes=num_classes,
            input_shape=input_shape,
            num_branches=num_branches,
            **model_kwargs,
        )
        if self.feature_layers:
            student = self.with_block_outputs(student)
        return student

    def with_block_outputs(self, student):
        """The student, also returning the outputs of `feature_layers`.

        A functional model sharing the student's layers and weights, whose
        output is the student's dict (see `keras_one.student_outputs`)
        with one more key, `"block_outputs"`: the outputs of
        `feature_layers`, in order, computed in the same forward pass.

        Args:
            student: a functional or Sequential `keras.Model`.

        Returns:
            A `keras.Model`.
        """
        io = symbolic_io(student)
        if io is None:
            raise ValueError(
                f"MEAL reads layers inside the student {student.name!r}, "
                "which needs a functional or Sequential model; this one is "
                "subclassed. Return a dict with 'block_outputs' from it, or "
                "use feature_layers=None."
            )
        inputs, raw_outputs = io
        outputs = normalize_outputs(raw_outputs)
        outputs["block_outputs"] = [
            _layer_output(student, name, "student")
            for name in self.feature_layers
        ]
        return keras.Model(inputs, outputs, name=student.name)

    def check_outputs(self, outputs, student=None):
        super().check_outputs(outputs, student)
        num_branches = len(outputs["branch_logits"])
        if num_branches != 1:
            raise ValueError(
                f"MEAL trains a single network; this student has "
                f"{num_branches} branches. Build it with num_branches=1 "
                "(MEAL.build_student does)."
            )
        if not self.feature_layers:
            return
        blocks = outputs.get("block_outputs")
        if blocks is None or len(blocks) != len(self.feature_layers):
            raise ValueError(
                f"MEAL with feature_layers={self.feature_layers} needs the "
                "student's outputs at those layers: wrap it with "
                "student = method.with_block_outputs(student) (or build it "
                "with method.build_student)."
            )

    # === Layers ===

    def build(self, inputs_shape, outputs_shape):
        super().build(inputs_shape, outputs_shape)
        student_maps = outputs_shape.get("block_outputs") or []
        for name, shape in zip(self.feature_layers, student_maps, strict=True):
            if len(shape) < 3:
                raise ValueError(
                    f"MEAL pools feature maps (batch, ..., channels); the "
                    f"student's layer {name!r} outputs shape {tuple(shape)}. "
                    "Choose a convolutional layer."
                )
        self.dims = list(
            self.block_dims
            or [int(np.prod(shape[1:-1])) for shape in student_maps]
        ) + [int(outputs_shape["branch_logits"][0][-1])]
        for block, dim in enumerate(self.dims):
            if dim < 4:
                raise ValueError(
                    f"MEAL's discriminator of block {block} halves its "
                    f"width twice, so it needs d_b >= 4; got {dim}. Give "
                    "larger block_dims (or more classes for the logits)."
                )
        self.teacher_extractors = [
            _block_extractor(
                teacher,
                self.feature_layers,
                self.teacher_batch_statistics,
                index,
            )
            for index, teacher in enumerate(self.teachers)
        ]
        self.discriminators = []
        for block, dim in enumerate(self.dims):
            discriminator = keras.Sequential(
                [
                    _discriminator_dense(dim // 2, dim, f"{block}_1"),
                    _discriminator_dense(dim // 4, dim // 2, f"{block}_2"),
                    _discriminator_dense(2, dim // 4, f"{block}_3"),
                ],
                name=f"discriminator_{block}",
            )
            discriminator.build((None, dim))
            self.discriminators.append(discriminator)

    def learning_rate_multipliers(self, epoch):
        """The discriminators' learning rate, as a multiple of the step.

        Args:
            epoch: the current epoch (unused: the multiplier is constant).

        Returns:
            `{discriminator: discriminator_learning_rate_multiplier}` for
            every block's discriminator; `{}` when it is 1.
        """
        multiplier = self.discriminator_learning_rate_multiplier
        if multiplier == 1.0:
            return {}
        return dict.fromkeys(self.discriminators, multiplier)

    # === State: the count of teacher draws ===

    def build_state(self, student):
        """Creates the count of optimizer steps that seeds each draw."""
        self.teacher_draws = keras.Variable(
            0,
            dtype="int32",
            trainable=False,
            name="teacher_draws",
            aggregation="only_first_replica",
        )

    def after_train_step(self, student):
        self.teacher_draws.assign_add(1)

    # === Forward pass and loss ===

    def call(self, inputs, outputs, training=None):
        if len(self.teachers) == 1:
            teacher_index = ops.zeros((), "int32")
            teacher_blocks = self._teacher_blocks(0, inputs)
        else:
            # One teacher per mini-batch. `ops.switch` runs the drawn
            # teacher only (`tf.switch_case`, `jax.lax.switch`, indexing on
            # PyTorch), where a one-hot selection would run them all: it
            # costs one teacher's forward pass, and compiles under
            # `tf.function`, XLA and JAX's `jit` (the branches close over
            # the teachers' weights and return tensors of one shape: the
            # pooled blocks and the logits).
            step = ops.cast(self.teacher_draws.value, "int32")
            key = hash31(hash31(step + hash31(self.seed)))
            teacher_index = ops.mod(key, len(self.teachers))
            teacher_blocks = ops.switch(
                teacher_index,
                [
                    functools.partial(self._teacher_blocks, index)
                    for index in range(len(self.teachers))
                ],
                inputs,
            )
        student_blocks = [
            _pool_block(feature, dim)
            for feature, dim in zip(
                outputs.get("block_outputs") or [], self.dims, strict=False
            )
        ] + [_at_least_float32(outputs["branch_logits"][0])]
        discriminator_logits = []
        for discriminator, s, t in zip(
            self.discriminators, student_blocks, teacher_blocks, strict=True
        ):
            if self.adversarial:
                s = _reverse_gradient(s)
            rows = ops.concatenate([s, t], axis=0)
            discriminator_logits.append(_at_least_float32(discriminator(rows)))
        return {
            "teacher_index": teacher_index,
            "student_blocks": student_blocks,
            "teacher_blocks": teacher_blocks,
            "discriminator_logits": discriminator_logits,
        }

    def _teacher_blocks(self, index, inputs):
        """Teacher `index`'s pooled blocks and logits, float32, frozen."""
        extractor = self.teacher_extractors[index]
        if extractor is None:
            return [_at_least_float32(self.teacher_logits(index, inputs))]
        teacher_outputs = extractor(inputs, training=False)
        blocks = [
            _pool_block(feature, dim)
            for feature, dim in zip(
                teacher_outputs["features"], self.dims, strict=False
            )
        ]
        blocks.append(select_logits(teacher_outputs["logits"]))
        return [ops.stop_gradient(_at_least_float32(b)) for b in blocks]

    def compute_losses(self, labels, outputs, epoch):
        similarity = 0.0
        for gamma, s, t in zip(
            self.gamma,
            outputs["student_blocks"],
            outputs["teacher_blocks"],
            strict=True,
        ):
            t = ops.stop_gradient(_at_least_float32(t))
            s = _at_least_float32(s)
            similarity = similarity + gamma * -ops.sum(
                ops.softmax(t / self.temperature, axis=-1)
                * ops.log_softmax(s / self.temperature, axis=-1),
                axis=-1,
            )
        discriminator = 0.0
        for eta, logits in zip(
            self.eta, outputs["discriminator_logits"], strict=True
        ):
            logits = _at_least_float32(logits)
            student_rows, teacher_rows = ops.split(logits, 2, axis=0)
            # Mean over the 2N rows and 2 outputs, as one term per
            # student example (the Distiller averages them over the batch).
            discriminator = discriminator + eta * 0.25 * (
                ops.sum(_bce_with_logits(student_rows, (1.0, 0.0)), axis=-1)
                + ops.sum(_bce_with_logits(teacher_rows, (0.0, 1.0)), axis=-1)
            )
        weight = rampup_weight(epoch, self.rampup_epochs)
        return {
            "similarity": ops.cast(weight, similarity.dtype) * similarity,
            "discriminator": discriminator,
        }

    # === Config ===

    def get_config(self):
        return {
            **super().get_config(),
            "teachers": [
                self.serialize_teacher(i) for i in range(len(self.teachers))
            ],
            "feature_layers": self.feature_layers,
            "block_dims": self.block_dims,
            "gamma": self.gamma,
            "eta": self.eta,
            "adversarial": self.adversarial,
            "discriminator_learning_rate_multiplier": (
                self.discriminator_learning_rate_multiplier
            ),
            "teacher_batch_statistics": self.teacher_batch_statistics,
            "seed": self.seed,
        }

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        config["teachers"] = [
            keras.saving.deserialize_keras_object(t) for t in config["teachers"]
        ]
        return cls(**config)


class _BatchStatisticsNormalization(keras.layers.Layer):
    """A frozen BatchNormalization layer run on the batch's statistics.

    PyTorch's `BatchNorm2d` in train mode with frozen weights (the official
    MEAL teachers): the batch's mean and biased variance over every axis
    but `axis`, the layer's own `gamma`, `beta` and `epsilon`. Never saved:
    `MEAL` builds it over its teachers' layers.
    """

    def __init__(self, batch_norm, **kwargs):
        super().__init__(name=batch_norm.name, **kwargs)
        self.batch_norm = batch_norm

    def call(self, inputs, training=None, mask=None):
        # Batch statistics whatever `training` (PyTorch's train mode);
        # `mask` is accepted as BatchNormalization's and not supported.
        layer = self.batch_norm
        x = _at_least_float32(inputs)
        axis = layer.axis if layer.axis >= 0 else len(x.shape) + layer.axis
        axes = [i for i in range(len(x.shape)) if i != axis]
        mean, variance = ops.moments(x, axes=axes)
        outputs = ops.batch_normalization(
            x,
            mean,
            variance,
            axis=axis,
            offset=None if layer.beta is None else layer.beta,
            scale=None if layer.gamma is None else layer.gamma,
            epsilon=layer.epsilon,
        )
        return ops.cast(outputs, inputs.dtype)

    def compute_output_shape(self, input_shape):
        return input_shape


def _block_weights(name, weights, num_blocks):
    if weights is None:
        return [1.0] * num_blocks
    if isinstance(weights, numbers.Real):
        weights = [weights]
    weights = list(weights)
    if len(weights) != num_blocks:
        raise ValueError(
            f"MEAL got {len(weights)} {name} weights for {num_blocks} blocks "
            f"(one per feature layer, then the logits): give {num_blocks}."
        )
    return [float(w) for w in weights]


def _discriminator_dense(units, fan_in, name):
    # The official 1x1 Conv2d at PyTorch's default initialization.
    return keras.layers.Dense(
        units,
        activation="relu",
        kernel_initializer=_pytorch_init.kernel_initializer(),
        bias_initializer=_pytorch_init.bias_initializer(fan_in),
        name=f"dense_{name}",
    )


def _reverse_gradient(x):
    """Gradient reversal: forward `x`, backward the negated gradient.

    `stop_gradient(2 x) - x` is exactly `x` in floating point (`2 x` is
    exact and `2 x - x` is exact by Sterbenz' lemma); its derivative is -1.
    """
    return ops.stop_gradient(2.0 * x) - x


def _at_least_float32(x):
    """`x` in float32, or float64 if it is: losses never in float16."""
    return ops.cast(x, keras.backend.result_type(x.dtype, "float32"))


def _bce_with_logits(logits, target):
    """Elementwise `BCEWithLogits(logits, target)`, as PyTorch's."""
    target = ops.convert_to_tensor(target, logits.dtype)
    return (
        ops.relu(logits)
        - logits * target
        + ops.log1p(ops.exp(-ops.abs(logits)))
    )


@functools.lru_cache(maxsize=64)
def _pooling_table(length, dim):
    """Indices and weights of `AdaptiveAvgPool1d(dim)` over `length` values.

    Bin `i` averages positions `floor(i L / d)` to `ceil((i+1) L / d) - 1`;
    bins are padded to the longest with weight 0.
    """
    starts = [(i * length) // dim for i in range(dim)]
    ends = [-((-(i + 1) * length) // dim) for i in range(dim)]
    width = max(e - s for s, e in zip(starts, ends, strict=True))
    indices = np.zeros((dim, width), "int32")
    weights = np.zeros((dim, width), "float32")
    for i, (start, end) in enumerate(zip(starts, ends, strict=True)):
        indices[i, : end - start] = np.arange(start, end)
        weights[i, : end - start] = 1.0 / (end - start)
    return indices, weights


def _pool_block(feature, dim):
    """A feature map `(N, ..., C)` as the official `d_b` values `(N, d)`.

    The official code average-pools each channel's `H*W` values to `d`
    and then averages over the channels; both are averages, so the channel
    mean comes first here (the same values, fewer operations).
    """
    x = ops.mean(_at_least_float32(feature), axis=-1)
    length = int(np.prod(x.shape[1:]))
    x = ops.reshape(x, (-1, length))
    if length == dim:
        return x
    indices, weights = _pooling_table(length, dim)
    gathered = ops.take(x, ops.convert_to_tensor(indices.reshape(-1)), axis=1)
    gathered = ops.reshape(gathered, (-1, dim, indices.shape[1]))
    return ops.sum(gathered * ops.convert_to_tensor(weights, x.dtype), axis=-1)


def _layer_output(model, layer_name, role):
    names = [layer.name for layer in model.layers]
    if layer_name not in names:
        close = difflib.get_close_matches(layer_name, names, n=3, cutoff=0.5)
        hint = f" Did you mean one of {close}?" if close else ""
        raise ValueError(
            f"MEAL feature_layers: no layer named {layer_name!r} in the "
            f"{role} {model.name!r}.{hint} Name layers present in the "
            "student and in every teacher."
        )
    try:
        return model.get_layer(layer_name).output
    except (AttributeError, ValueError):
        raise ValueError(
            f"MEAL cannot read one output of layer {layer_name!r} of the "
            f"{role} {model.name!r}: it is called more than once. Choose a "
            "layer called once."
        ) from None


def _block_extractor(teacher, feature_layers, batch_statistics, index):
    """A model giving the teacher's feature maps and logits, or `None`.

    `None` when the teacher itself suffices (logits only, moving
    statistics). Otherwise a functional model sharing the teacher's
    weights, whose BatchNormalization layers use the batch's statistics if
    `batch_statistics`.
    """
    if not feature_layers and not batch_statistics:
        return None
    if symbolic_io(teacher) is None:
        raise ValueError(
            f"MEAL reads layers inside teacher {teacher.name!r} "
            "(feature_layers or teacher_batch_statistics), which needs a "
            "functional or Sequential teacher; this one is subclassed."
        )
    inputs, logits = symbolic_io(teacher)
    features = [
        _layer_output(teacher, name, "teacher") for name in feature_layers
    ]
    extractor = keras.Model(
        inputs,
        {"features": features, "logits": logits},
        name=f"teacher_{index}_blocks",
    )
    if batch_statistics:
        # A clone whose layers are the teacher's (shared weights), but for
        # its BatchNormalization layers, run on each batch's statistics.
        extractor = _with_batch_statistics(extractor)
    return extractor


def _with_batch_statistics(model):
    """`model` with its BatchNormalization layers on batch statistics."""

    def replace(layer):
        if isinstance(layer, keras.layers.InputLayer):
            return keras.layers.InputLayer.from_config(layer.get_config())
        if isinstance(layer, keras.layers.BatchNormalization):
            return _BatchStatisticsNormalization(layer)
        if isinstance(layer, keras.Model) and symbolic_io(layer) is not None:
            return _with_batch_statistics(layer)
        return layer

    return keras.models.clone_model(model, clone_function=replace)
