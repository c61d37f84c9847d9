import difflib

import keras
from keras import ops

from keras_one.graph import trace_calls
from keras_one.losses import cross_entropy
from keras_one.losses import distillation_kl
from keras_one.losses import rampup_weight
from keras_one.methods.method_info import MethodInfo
from keras_one.methods.teacher_method import TeacherMethod
from keras_one.methods.teacher_method import select_logits
from keras_one.student_outputs import symbolic_io


@keras.saving.register_keras_serializable(package="keras_one")
class EKD(TeacherMethod):
    """Ensemble Knowledge Distillation (Asif, Tang and Harrer, ECAI 2020).

    "Ensemble Knowledge Distillation for Learning Improved and Efficient
    Networks" (arXiv:1909.08097): a compact student with parallel branches
    on a shared trunk; branch `i` learns from the labels and from its own
    frozen, pre-trained teacher `i` (the teachers may have different
    architectures), so the branches learn different solutions; the branches
    are coupled through their ensemble, which is trained on the labels too.

    No official code exists and the paper leaves the exact terms open; this
    implementation reads it as

    `L = sum_i [(1 - alpha) CE(z_i, y)
                + alpha KL_T(stop_gradient(t_i) || z_i)]
         + CE(z_e, y)
         + feature_weight * sum_i MSE(A_i(F_i), stop_gradient(G_i))`

    - Per branch, Hinton's KD from its teacher's logits `t_i` (the same
      weighting as `keras_one.methods.KD`; `KL_T` is summed over classes,
      averaged over the batch and scaled by `T^2`).
    - `z_e` is the student's `ensemble_logits`: with `head="mean"` (the
      default of `build_student`) the average of the branch logits; build
      the student with `head="gate"` for learned per-example weights
      instead (the paper's two options).
    - Optional feature transfer (off unless `feature_layers` is given):
      `G_i` is the output of layer `feature_layers[i]` of teacher `i` and
      `F_i` the last feature map of branch `i` (`branch_feature_maps`, or
      the pooled `branch_features` when `G_i` is a vector); `A_i` is a
      trainable 1x1 convolution (a Dense layer for vectors) owned by the
      method, mapping the branch's channels to the teacher's. `F_i` and
      `G_i` must have the same spatial size. `MSE` averages over positions
      and channels.

    Teachers are frozen (`trainable=False`; BatchNormalization in inference
    mode), saved with the `Distiller`, and must predict the student's
    classes; there must be one teacher per branch.

    Args:
        teachers: a list of pre-trained `keras.Model`s, one per branch.
        alpha: weight of each branch's distillation term; `1 - alpha`
            weighs its cross-entropy. Default 0.9.
        temperature: `T`, default 4.
        feature_layers: `None` (logit distillation only), the name of a
            layer present in every teacher, or a list of layer names, one
            per teacher. A layer of a model nested in a teacher (the
            backbone of a keras-hub classifier) is named by its path, as
            `keras_one.models.make_multi_branch` names it:
            `"res_net_image_classifier/res_net_backbone/stack1_block0_out"`.
        feature_weight: weight of the feature term. Default 1.
        **kwargs: `Method` keyword arguments (`name`; `rampup_epochs`,
            default 0: none).

    Example:

    >>> teachers = [keras_one.models.cifar_resnet(56, num_branches=1),
    ...             keras_one.models.cifar_resnet(44, num_branches=1)]
    >>> method = EKD(teachers)
    >>> student = method.build_student("resnet20")  # 2 branches, mean head
    >>> distiller = keras_one.Distiller(student, method)
    """

    info = MethodInfo(
        name="ekd", branches=2, head="mean", teachers="per_branch"
    )
    required_outputs = ("branch_logits", "ensemble_logits")

    def __init__(
        self,
        teachers,
        alpha=0.9,
        temperature=4.0,
        feature_layers=None,
        feature_weight=1.0,
        **kwargs,
    ):
        if isinstance(teachers, keras.Model) or not isinstance(
            teachers, (list, tuple)
        ):
            raise TypeError(
                "EKD takes a list of teachers, one per student branch, e.g. "
                "EKD(teachers=[teacher_a, teacher_b]); got "
                f"{type(teachers).__name__}. For a single teacher use "
                "keras_one.methods.KD."
            )
        if not 0.0 <= alpha <= 1.0:
            raise ValueError(f"alpha must lie in [0, 1]; got {alpha}.")
        if len({id(teacher) for teacher in teachers}) != len(teachers):
            raise ValueError(
                "EKD got the same teacher model more than once; each branch "
                "learns from its own teacher. For one teacher use "
                "keras_one.methods.KD, or pass distinct (e.g. separately "
                "trained) teachers."
            )
        super().__init__(teachers=teachers, temperature=temperature, **kwargs)
        if isinstance(feature_layers, str):
            feature_layers = [feature_layers] * len(self.teachers)
        if feature_layers is not None:
            feature_layers = list(feature_layers)
            if len(feature_layers) != len(self.teachers):
                raise ValueError(
                    f"EKD got {len(feature_layers)} feature_layers for "
                    f"{len(self.teachers)} teachers: give one layer name per "
                    "teacher, or a single name present in every teacher."
                )
        self.alpha = float(alpha)
        self.feature_layers = feature_layers
        self.feature_weight = float(feature_weight)

    @property
    def loss_names(self):
        names = ("ce", "kl", "ensemble_ce")
        return names + ("feature",) if self.feature_layers else names

    def check_outputs(self, outputs, student=None):
        super().check_outputs(outputs, student)
        num_branches = len(outputs["branch_logits"])
        if num_branches != len(self.teachers):
            raise ValueError(
                f"EKD needs one teacher per student branch: got "
                f"{len(self.teachers)} teachers for a student with "
                f"{num_branches} branches. Pass {num_branches} teachers, or "
                f"build the student with num_branches={len(self.teachers)} "
                "(EKD.build_student does)."
            )

    def build_student(
        self,
        model="resnet32",
        num_classes=10,
        input_shape=(32, 32, 3),
        num_branches=None,
        **model_kwargs,
    ):
        """Builds a student with one branch per teacher and a mean head.

        `num_branches` is ignored: the number of teachers sets it. See
        `Method.build_student` for the other arguments.
        """
        return super().build_student(
            model,
            num_classes=num_classes,
            input_shape=input_shape,
            num_branches=len(self.teachers),
            **model_kwargs,
        )

    def build(self, inputs_shape, outputs_shape):
        super().build(inputs_shape, outputs_shape)
        self.feature_extractors = []
        self.adapters = []
        if not self.feature_layers:
            return
        for index, (teacher, layer_name) in enumerate(
            zip(self.teachers, self.feature_layers, strict=True)
        ):
            inputs, feature, logits = _layer_output(teacher, layer_name)
            self.feature_extractors.append(
                keras.Model(
                    inputs,
                    {"features": feature, "logits": logits},
                    name=f"teacher_{index}_features",
                )
            )
            key = (
                "branch_feature_maps"
                if len(feature.shape) == 4
                else "branch_features"
            )
            if key not in outputs_shape:
                raise ValueError(
                    f"EKD feature transfer from layer {layer_name!r} needs "
                    f"the student output {key!r}, which this student lacks. "
                    "Build the student with keras_one.models (its branches "
                    "end in global pooling)."
                )
            student_shape = tuple(outputs_shape[key][index])
            if student_shape[1:-1] != tuple(feature.shape[1:-1]):
                raise ValueError(
                    f"EKD cannot compare branch {index}'s features of shape "
                    f"{student_shape} with teacher {teacher.name!r}'s layer "
                    f"{layer_name!r} of shape {tuple(feature.shape)}: the "
                    "spatial sizes differ. Choose a teacher layer with the "
                    "spatial size of the branch's last feature map."
                )
            if len(feature.shape) == 4:
                adapter = keras.layers.Conv2D(
                    feature.shape[-1], 1, name=f"adapter_{index}"
                )
            else:
                adapter = keras.layers.Dense(
                    feature.shape[-1], name=f"adapter_{index}"
                )
            adapter.build(student_shape)
            self.adapters.append(adapter)

    def call(self, inputs, outputs, training=None):
        if not self.feature_layers:
            return {
                "teacher_logits": [
                    self.teacher_logits(i, inputs)
                    for i in range(len(self.teachers))
                ]
            }
        teacher_logits, teacher_features, adapted = [], [], []
        for index, extractor in enumerate(self.feature_extractors):
            teacher_outputs = extractor(inputs, training=False)
            teacher_logits.append(
                ops.stop_gradient(select_logits(teacher_outputs["logits"]))
            )
            teacher_features.append(
                ops.stop_gradient(teacher_outputs["features"])
            )
            adapter = self.adapters[index]
            key = (
                "branch_feature_maps"
                if isinstance(adapter, keras.layers.Conv2D)
                else "branch_features"
            )
            adapted.append(adapter(outputs[key][index]))
        return {
            "teacher_logits": teacher_logits,
            "teacher_features": teacher_features,
            "adapted_features": adapted,
        }

    def compute_losses(self, labels, outputs, epoch):
        branch_logits = outputs["branch_logits"]
        weight = rampup_weight(epoch, self.rampup_epochs)
        terms = {
            "ce": (1.0 - self.alpha)
            * sum(cross_entropy(labels, z) for z in branch_logits),
            "kl": self.alpha
            * weight
            * sum(
                distillation_kl(ops.stop_gradient(t), z, self.temperature)
                for t, z in zip(
                    outputs["teacher_logits"], branch_logits, strict=True
                )
            ),
            "ensemble_ce": cross_entropy(labels, outputs["ensemble_logits"]),
        }
        if self.feature_layers:
            terms["feature"] = self.feature_weight * sum(
                _mean_squared_error(a, ops.stop_gradient(g))
                for a, g in zip(
                    outputs["adapted_features"],
                    outputs["teacher_features"],
                    strict=True,
                )
            )
        return terms

    def get_config(self):
        return {
            **super().get_config(),
            "teachers": [
                self.serialize_teacher(i) for i in range(len(self.teachers))
            ],
            "alpha": self.alpha,
            "feature_layers": self.feature_layers,
            "feature_weight": self.feature_weight,
        }

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        config["teachers"] = [
            keras.saving.deserialize_keras_object(t) for t in config["teachers"]
        ]
        return cls(**config)


def _layer_output(teacher, layer_name):
    """`(inputs, feature, logits)`: the teacher's graph and `layer_name`'s
    output in it.

    A layer of the teacher itself is read where the teacher computes it; a
    layer of a model nested in it (a keras-hub teacher's backbone), named
    by its path as `keras_one.models.make_multi_branch` names it
    (`"res_net_image_classifier/res_net_backbone/stack1_block0_out"`), in
    the teacher traced flat (`keras_one.graph.trace_calls`), which shares
    its weights.
    """
    if symbolic_io(teacher) is None:
        raise ValueError(
            f"EKD feature transfer reads a layer inside teacher "
            f"{teacher.name!r}, which needs a functional or Sequential "
            "teacher; this one is subclassed. Use feature_layers=None."
        )
    if not isinstance(layer_name, str):
        raise TypeError(
            "EKD feature_layers are layer names (strings such as "
            f"'stage3_block1_out'); got {type(layer_name).__name__}."
        )
    names = [layer.name for layer in teacher.layers]
    if layer_name in names:
        inputs, logits = teacher.inputs, teacher.output
        feature = teacher.get_layer(layer_name).output
    else:
        inputs, logits, calls = trace_calls(teacher)
        found = [call for call in calls if call.path == layer_name]
        if not found:
            paths = [call.path for call in calls]
            nested = [p for p in paths if p.rsplit("/", 1)[-1] == layer_name]
            close = nested[:5] or difflib.get_close_matches(
                layer_name, paths, n=5, cutoff=0.5
            )
            hint = f" Did you mean one of {close}?" if close else ""
            raise ValueError(
                f"No layer named {layer_name!r} in teacher {teacher.name!r}."
                f"{hint} A layer inside a nested model is named by its "
                "path, 'backbone_name/layer_name' "
                "(keras_one.models.split_points(teacher) lists some)."
            )
        if len(found) > 1 or len(found[0].outputs) != 1:
            raise ValueError(
                f"EKD cannot read one feature tensor from layer "
                f"{layer_name!r} of teacher {teacher.name!r}: it is called "
                f"{len(found)} times or returns several tensors. Choose a "
                "layer called once with a single output."
            )
        feature = found[0].outputs[0]
    if len(feature.shape) not in (2, 4):
        raise ValueError(
            f"EKD transfers 4D feature maps or 2D feature vectors; layer "
            f"{layer_name!r} of teacher {teacher.name!r} outputs shape "
            f"{tuple(feature.shape)}."
        )
    return inputs, feature, logits


def _mean_squared_error(adapted, target):
    difference = ops.cast(adapted, "float32") - ops.cast(target, "float32")
    axes = tuple(range(1, len(difference.shape)))
    return ops.mean(ops.square(difference), axis=axes)
