import re

import keras
from keras import ops

from keras_one import _hub
from keras_one.graph import trace_calls
from keras_one.losses import cross_entropy
from keras_one.losses import distillation_kl
from keras_one.losses import rampup_weight
from keras_one.methods.method_info import MethodInfo
from keras_one.methods.teacher_method import TeacherMethod
from keras_one.models.multi_branch import _find_split_call
from keras_one.models.multi_branch import _split_point_tensors
from keras_one.models.multi_branch import _split_points_hint
from keras_one.student_outputs import symbolic_io


@keras.saving.register_keras_serializable(package="keras_one")
class SOKD(TeacherMethod):
    """Semi-Online Knowledge Distillation (Liu, Liu and Huang, BMVC 2021).

    "Semi-Online Knowledge Distillation" (arXiv:2111.11747, official code
    github.com/swlzq/Semi-Online-KD): a frozen pre-trained teacher and a
    trainable *knowledge bridge* attached to the teacher's intermediate
    features. The bridge is a freshly initialized copy of the teacher's
    layers after `bridge_from` (officially the output of the teacher's
    second-to-last stage: a copy of its last stage, BatchNormalization,
    ReLU, pooling and classifier), fed with the detached teacher features.
    It learns from the labels, from the teacher and from the student; the
    student learns from the labels and from the bridge; one optimizer step
    updates both:

    `L_bridge  = CE(z_A, y) + KL_T(sg z_T || z_A) + KL_T(sg z_S || z_A)`
    `L_student = CE(z_S, y) + KL_T(sg z_A || z_S)`

    with `T = 4` and `KL_T` summed over classes, averaged over the batch and
    scaled by `T^2`, as in the official code (its `SoftTarget(T=4)`). The
    terms are logged as `ce`, `kl` (student) and `bridge_ce`,
    `bridge_kl_teacher`, `bridge_kl_student`. With a multi-branch student
    every branch is a student: its terms are summed over branches.

    Readings where this differs from the official code:

    - The frozen teacher runs in inference mode: its BatchNormalization
      uses its moving statistics and never updates them (a Keras frozen
      BatchNormalization always does). The official code leaves the
      teacher in training mode (batch statistics, running averages
      updated).
    - The bridge is freshly initialized, as the official bridge is in
      effect (copied before the teacher's checkpoint is loaded).

    As in the official code, the bridge trains at the student's learning
    rate: the official optimizer gives the bridge a parameter group of its
    own, whose learning rate `lr_auxiliary` is 0.1 in the official
    configuration (`configs/sokd.yaml`), the student's; 0.05 is only the
    code's fallback when the configuration leaves it out. Here the bridge
    is trained with the student's optimizer, at its learning rate.

    Stability: with SGD at 0.1 and no warm-up (a CIFAR ResNet-20 student,
    a ResNet-32 teacher, `bench/accuracy.py`), the bridge's logits blew up
    within 3 steps and the student never recovered: the bridge, a fresh
    network, learns from three terms at full weight from the first step.
    Ramping the distillation terms up (`rampup_epochs`, e.g. a quarter of
    the epochs) trained stably there; a smaller learning rate is the
    other remedy (the official configuration does not use one: its bridge
    trains at 0.1, the student's rate).

    The teacher (and the bridge) are saved with the `Distiller`. The
    teacher must be a functional or Sequential model returning a single
    logits tensor for the student's classes, or a keras-hub classifier or
    preset name (see `TeacherMethod`). The bridge is not part of the
    student: `Distiller.get_branch_model` exports the student alone.

    Args:
        teacher: a pre-trained functional `keras.Model` returning logits,
            or a keras-hub `ImageClassifier` or preset name (give
            `input_preprocessing`, see `TeacherMethod`).
        bridge_from: name of the teacher layer whose output feeds the
            bridge. Its output alone must feed the rest of the teacher (the
            end of a stage, not inside a residual block). Defaults to the
            end of stage 2 of a `keras_one.models.cifar_resnet` teacher (its
            second-to-last stage), and to the end of the second-to-last
            stage of a keras-hub teacher (the last split point before the
            feature maps reach their final size); name the layer for other
            teachers, a
            layer of a nested model by its path (for a keras-hub teacher,
            e.g. `"res_net_image_classifier/res_net_backbone/
            stack2_block1_out"`; `keras_one.models.split_points(
            method.teacher)` lists the valid ones).
        temperature: `T`, default 4.
        **kwargs: `Method` keyword arguments (`name`; `rampup_epochs`,
            default 0: none, as in the paper).

    Example:

    >>> teacher = keras_one.models.cifar_resnet(56, num_branches=1)
    >>> method = SOKD(teacher)  # bridge_from="stage2_block9_out"
    >>> distiller = keras_one.Distiller(method.build_student("resnet20"),
    ...                                 method)
    """

    info = MethodInfo(
        name="sokd",
        branches=1,
        min_branches=1,
        student="single",
        teachers="one",
    )
    loss_names = (
        "ce",
        "kl",
        "bridge_ce",
        "bridge_kl_teacher",
        "bridge_kl_student",
    )

    def __init__(self, teacher, bridge_from=None, temperature=4.0, **kwargs):
        super().__init__(teachers=[teacher], temperature=temperature, **kwargs)
        self.bridge_from = bridge_from or _default_bridge_layer(self.teacher)
        _bridge_graph(self.teacher, self.bridge_from)

    @property
    def teacher(self):
        """The frozen teacher."""
        return self.teachers[0]

    def build(self, inputs_shape, outputs_shape):
        super().build(inputs_shape, outputs_shape)
        inputs, logits, features = _bridge_graph(self.teacher, self.bridge_from)
        self.teacher_features = keras.Model(
            inputs,
            {"features": features, "logits": logits},
            name="teacher_features",
        )
        tail = keras.Model(features, logits)
        self.bridge = keras.models.clone_model(tail)
        self.bridge.name = "bridge"
        # The cloned layers copy the frozen teacher's `trainable=False`,
        # while the new model itself is trainable; with the TensorFlow
        # backend `bridge.trainable = True` on an already-trainable model is
        # a no-op (Keras skips assigning an identical attribute value), so
        # toggle it to reach every layer.
        self.bridge.trainable = False
        self.bridge.trainable = True

    def call(self, inputs, outputs, training=None):
        teacher_outputs = self.teacher_features(inputs, training=False)
        features = ops.stop_gradient(teacher_outputs["features"])
        return {
            "teacher_logits": ops.stop_gradient(teacher_outputs["logits"]),
            "bridge_logits": self.bridge(features, training=training),
        }

    def compute_losses(self, labels, outputs, epoch):
        student_logits = outputs["branch_logits"]
        teacher = ops.stop_gradient(outputs["teacher_logits"])
        bridge = outputs["bridge_logits"]
        detached_bridge = ops.stop_gradient(bridge)
        weight = rampup_weight(epoch, self.rampup_epochs)
        temperature = self.temperature
        return {
            "ce": sum(cross_entropy(labels, z) for z in student_logits),
            "kl": weight
            * sum(
                distillation_kl(detached_bridge, z, temperature)
                for z in student_logits
            ),
            "bridge_ce": cross_entropy(labels, bridge),
            "bridge_kl_teacher": weight
            * distillation_kl(teacher, bridge, temperature),
            "bridge_kl_student": weight
            * sum(
                distillation_kl(ops.stop_gradient(z), bridge, temperature)
                for z in student_logits
            ),
        }

    def get_config(self):
        return {
            **super().get_config(),
            "teacher": self.serialize_teacher(0),
            "bridge_from": self.bridge_from,
        }

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        config["teacher"] = keras.saving.deserialize_keras_object(
            config["teacher"]
        )
        return cls(**config)


def _default_bridge_layer(teacher):
    """The end of stage 2 of a keras_one CIFAR ResNet, else a clear error."""
    names = [layer.name for layer in getattr(teacher, "layers", [])]
    stage_ends = [n for n in names if re.fullmatch(r"stage2_block\d+_out", n)]
    if stage_ends:
        return stage_ends[-1]
    if any(_hub.is_image_classifier(layer) for layer in teacher.layers):
        # A keras-hub teacher: the end of its second-to-last stage too.
        from keras_one.models.external_network import default_split_point

        return default_split_point(teacher)
    raise ValueError(
        f"SOKD needs bridge_from, the name of the layer of teacher "
        f"{teacher.name!r} whose output feeds the knowledge bridge (the "
        "official choice: the end of the teacher's second-to-last stage). "
        "The default only recognizes keras_one.models.cifar_resnet and "
        "keras-hub teachers; keras_one.models.split_points(teacher) lists "
        "the valid layers."
    )


def _bridge_graph(teacher, layer_name):
    """`(inputs, logits, features)` of the teacher traced flat, or an error.

    `features` is the output of `layer_name`, which may name a layer of a
    nested model by its path (`"res_net_image_classifier/res_net_backbone/
    stack2_block0_out"` in a keras-hub teacher).
    """
    io = symbolic_io(teacher)
    if io is None:
        raise ValueError(
            f"SOKD copies the layers of teacher {teacher.name!r} after "
            f"{layer_name!r} into its bridge, which needs a functional or "
            "Sequential teacher; this one is subclassed."
        )
    if isinstance(io[1], (dict, list, tuple)):
        raise ValueError(
            f"SOKD copies the layers of teacher {teacher.name!r} after "
            f"{layer_name!r} into its bridge, so the teacher must return a "
            f"single logits tensor; it returns a {type(io[1]).__name__}."
        )
    inputs, logits, calls = trace_calls(teacher)
    points = _split_point_tensors(inputs, logits, calls)
    try:
        call = _find_split_call(layer_name, calls, teacher, points)
    except ValueError as error:
        raise ValueError(f"SOKD bridge_from: {error}") from None
    features = call.outputs[0]
    if features is logits:
        raise ValueError(
            f"bridge_from={layer_name!r} is the teacher's last layer: the "
            "bridge would copy nothing. Choose an earlier layer, such as "
            "the end of the teacher's second-to-last stage. "
            + _split_points_hint(points)
        )
    if not any(point is features for _, point in points):
        raise ValueError(
            f"The teacher's layers after {layer_name!r} also read tensors "
            "from before it (a skip connection crosses it), so they cannot "
            "be copied into a bridge fed by its output alone. Choose the "
            "end of a stage as bridge_from. " + _split_points_hint(points)
        )
    return inputs, logits, features
