"""Per-example loss functions shared by the distillation methods.

Every function returns one value per example, shape `(batch,)`, computed in
float32 whatever the compute dtype of the logits (mixed precision safe). The
`Distiller` weights these by `sample_weight` and averages them over the
global batch.
"""

from keras import ops


def cross_entropy(labels, logits):
    """Softmax cross-entropy of integer `labels` against `logits`.

    Args:
        labels: integer class indices, shape `(batch,)`.
        logits: unnormalized scores, shape `(batch, num_classes)`.

    Returns:
        The per-example cross-entropy, shape `(batch,)`.
    """
    logits = ops.cast(logits, "float32")
    return ops.sparse_categorical_crossentropy(labels, logits, from_logits=True)


def distillation_kl(teacher_logits, student_logits, temperature):
    """Temperature-scaled KL divergence `KL_T(teacher || student)`.

    `T^2 * sum_c p_t,c * (log p_t,c - log softmax(student / T)_c)` with
    `p_t = softmax(teacher / T)`: summed over classes, one value per example
    (averaging these over the batch gives PyTorch's "batchmean"). The `T^2`
    factor keeps the gradient scale independent of `T` (Hinton et al.,
    2015). No gradient is stopped here: wrap the teacher in
    `keras.ops.stop_gradient` where the method detaches it.

    Args:
        teacher_logits: the target's logits, shape `(batch, num_classes)`.
        student_logits: the learner's logits, same shape.
        temperature: softening temperature `T > 0`.

    Returns:
        The per-example divergence, shape `(batch,)`.
    """
    teacher = ops.cast(teacher_logits, "float32") / temperature
    student = ops.cast(student_logits, "float32") / temperature
    teacher_log_probs = ops.log_softmax(teacher, axis=-1)
    student_log_probs = ops.log_softmax(student, axis=-1)
    divergence = ops.sum(
        ops.exp(teacher_log_probs) * (teacher_log_probs - student_log_probs),
        axis=-1,
    )
    return (temperature**2) * divergence


def rampup_weight(epoch, rampup_epochs):
    """The sigmoid-shaped ramp-up of ONE's official code.

    `exp(-5 * (1 - min(epoch, R) / R)^2)` with `R = rampup_epochs`: about
    0.007 at epoch 0, 1 from epoch `R` on (Laine and Aila, 2017; used by
    ONE, OKDDip and others with R = 80 of 300 epochs). `R = 0` disables the
    ramp-up (weight 1).

    Args:
        epoch: the current epoch, counted from 0 (a scalar tensor or number).
        rampup_epochs: `R`, the number of epochs to reach weight 1.

    Returns:
        A float32 scalar.
    """
    if not rampup_epochs:
        return ops.convert_to_tensor(1.0, "float32")
    epoch = ops.cast(epoch, "float32")
    phase = 1.0 - ops.minimum(epoch, float(rampup_epochs)) / rampup_epochs
    return ops.exp(-5.0 * phase * phase)
