import warnings

import keras
from keras import ops

from keras_one.losses import cross_entropy
from keras_one.losses import distillation_kl
from keras_one.losses import rampup_weight
from keras_one.methods.method_info import MethodInfo
from keras_one.methods.teacher_method import TeacherMethod


@keras.saving.register_keras_serializable(package="keras_one")
class KD(TeacherMethod):
    """Knowledge distillation from a frozen teacher (Hinton et al., 2015).

    The classic offline distillation of "Distilling the Knowledge in a
    Neural Network" (arXiv:1503.02531): a pre-trained teacher is frozen and
    the student learns from the labels and from the teacher's softened
    predictions:

    `L = (1 - alpha) * CE(z_s, y)
         + alpha * KL_T(stop_gradient(z_t) || z_s)`

    with `KL_T` summed over classes, averaged over the batch and multiplied
    by `T^2` (so its gradients keep their scale whatever `T`). The paper
    fixes no single `alpha` or `T`; the defaults `alpha = 0.9`, `T = 4` are
    those of the standard CIFAR benchmark of KD (Tian et al., ICLR 2020,
    "Contrastive Representation Distillation", code RepDistiller). With a
    multi-branch student every branch distils from the teacher (the terms
    are summed over branches); a single-branch student (a plain
    classifier) is the usual case.

    The teacher is frozen (`trainable=False`; its BatchNormalization runs in
    inference mode) and saved with the `Distiller`. It must predict the
    student's classes.

    Interoperability with `keras.distillation`: KD gives the same loss as
    `keras.distillation.Distiller(teacher, student,
    LogitsDistillation(temperature=T, loss=keras.losses.KLDivergence()),
    student_loss_weight=1 - alpha)` compiled with
    `loss=SparseCategoricalCrossentropy(from_logits=True)`, on one device
    (Keras clips probabilities at 1e-7 in `KLDivergence`, so they agree to
    about 1e-6). Keras' default `LogitsDistillation(loss="kl_divergence")`
    computes something else: the string resolves to the function
    `keras.losses.kl_divergence`, which Keras applies to the
    temperature-scaled *logits* (clipped into [1e-7, 1]) rather than to
    probabilities, without the `T^2` factor.

    Any `keras.distillation` loss on logits can replace the built-in
    divergence through `distillation_loss` (for instance
    `LogitsDistillation(loss="categorical_crossentropy")` or
    `FeatureDistillation(loss="mse")` on the logits). It is then computed
    exactly as Keras computes it: a scalar averaged over the batch, so that
    term ignores `sample_weight`.

    Args:
        teacher: a pre-trained `keras.Model` returning logits for the
            student's classes.
        alpha: weight of the distillation term; `1 - alpha` weighs the
            cross-entropy. Default 0.9.
        temperature: `T`, default 4. Leave it `None` with a
            `distillation_loss`, which applies its own temperature.
        distillation_loss: optional `keras.distillation.DistillationLoss`
            applied to `(teacher_logits, branch_logits)` instead of `KL_T`.
        **kwargs: `Method` keyword arguments (`name`; `rampup_epochs`,
            default 0: none, as in the paper).

    Example:

    >>> teacher = keras_one.models.cifar_resnet(56, num_branches=1)
    >>> student = keras_one.models.cifar_resnet(20, num_branches=1)
    >>> distiller = keras_one.Distiller(student, KD(teacher))
    """

    info = MethodInfo(
        name="kd", branches=1, min_branches=1, student="single", teachers="one"
    )
    loss_names = ("ce", "kl")

    def __init__(
        self,
        teacher,
        alpha=0.9,
        temperature=None,
        distillation_loss=None,
        **kwargs,
    ):
        if not 0.0 <= alpha <= 1.0:
            raise ValueError(f"alpha must lie in [0, 1]; got {alpha}.")
        if distillation_loss is not None:
            _check_distillation_loss(distillation_loss, temperature)
            resolved_temperature = getattr(
                distillation_loss, "temperature", 1.0
            )
        else:
            resolved_temperature = 4.0 if temperature is None else temperature
        super().__init__(
            teachers=[teacher], temperature=resolved_temperature, **kwargs
        )
        self.alpha = float(alpha)
        self.distillation_loss = distillation_loss

    @property
    def teacher(self):
        """The frozen teacher."""
        return self.teachers[0]

    def call(self, inputs, outputs, training=None):
        return {"teacher_logits": self.teacher_logits(0, inputs)}

    def compute_losses(self, labels, outputs, epoch):
        branch_logits = outputs["branch_logits"]
        teacher = ops.stop_gradient(outputs["teacher_logits"])
        if self.distillation_loss is None:
            divergence = sum(
                distillation_kl(teacher, z, self.temperature)
                for z in branch_logits
            )
        else:
            teacher = ops.cast(teacher, "float32")
            divergence = sum(
                self.distillation_loss.compute_loss(
                    teacher, ops.cast(z, "float32")
                )
                for z in branch_logits
            )
        weight = rampup_weight(epoch, self.rampup_epochs)
        return {
            "ce": (1.0 - self.alpha)
            * sum(cross_entropy(labels, z) for z in branch_logits),
            "kl": self.alpha * weight * divergence,
        }

    def get_config(self):
        config = {
            **super().get_config(),
            "teacher": self.serialize_teacher(0),
            "alpha": self.alpha,
            "distillation_loss": None,
        }
        if self.distillation_loss is not None:
            config["temperature"] = None
            config["distillation_loss"] = keras.saving.serialize_keras_object(
                self.distillation_loss
            )
        return config

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        config["teacher"] = keras.saving.deserialize_keras_object(
            config["teacher"]
        )
        if config.get("distillation_loss") is not None:
            config["distillation_loss"] = keras.saving.deserialize_keras_object(
                config["distillation_loss"]
            )
        return cls(**config)


def _check_distillation_loss(distillation_loss, temperature):
    if not isinstance(distillation_loss, keras.distillation.DistillationLoss):
        raise TypeError(
            "distillation_loss must be a keras.distillation.DistillationLoss "
            "such as keras.distillation.LogitsDistillation(); got "
            f"{type(distillation_loss).__name__}."
        )
    layer_names = (
        getattr(distillation_loss, "teacher_layer_name", None),
        getattr(distillation_loss, "student_layer_name", None),
    )
    if any(layer_names):
        raise ValueError(
            "KD applies its distillation_loss to the teacher's and the "
            "student's logits, so the loss cannot name layers (got "
            f"teacher_layer_name={layer_names[0]!r}, student_layer_name="
            f"{layer_names[1]!r}). For feature transfer use "
            "keras_one.methods.EKD(feature_layers=...) or "
            "keras.distillation.Distiller."
        )
    if temperature is not None:
        raise ValueError(
            "KD got both temperature= and distillation_loss=; the "
            "keras.distillation loss applies its own temperature. Set it "
            "there, e.g. keras.distillation.LogitsDistillation("
            f"temperature={temperature})."
        )
    loss = getattr(distillation_loss, "loss", None)
    if loss is keras.losses.kl_divergence:
        warnings.warn(
            "keras.distillation.LogitsDistillation(loss='kl_divergence') "
            "applies keras.losses.kl_divergence to the temperature-scaled "
            "logits, not to probabilities, and without the T^2 factor: it "
            "is not Hinton's KD loss. Pass loss=keras.losses.KLDivergence() "
            "for the softened-probability divergence, or leave "
            "distillation_loss=None.",
            stacklevel=3,
        )
