"""A check that a student's ensemble comes from the head a method expects."""

import warnings

from keras_one.graph import find_producer
from keras_one.student_outputs import normalize_outputs
from keras_one.student_outputs import symbolic_io


def warn_unless_from(student, layer_class, method_name, head_name):
    """Warns if a student's `ensemble_logits` do not come from `layer_class`.

    A student built with another head, e.g. ONE's gate, gets a warning,
    since the method would then train something else than the paper's
    network. Students whose ensemble's layer is unknown pass silently:
    subclassed students (they have no symbolic graph) and those whose
    ensemble comes from a layer that `keras_one.graph.find_producer`
    cannot see (a shared layer's second call, a nested functional model).

    Call it from `Method.build_state`, which receives the student.

    Args:
        student: the student `keras.Model`, built.
        layer_class: the head layer class the method expects.
        method_name: the method's class name, for the message.
        head_name: the name of the head that builds a `layer_class`.
    """
    io = symbolic_io(student)
    if io is None:
        return
    outputs = normalize_outputs(io[1])
    if "ensemble_logits" not in outputs:
        return
    operation = find_producer(outputs["ensemble_logits"], student)
    if operation is None or isinstance(operation, layer_class):
        return
    warnings.warn(
        f"{method_name} expects its student's `ensemble_logits` to come "
        f"from a {layer_class.__name__} (head={head_name!r}), but they come "
        f"from layer {operation.name!r} ({type(operation).__name__}). Build "
        f"the student with head={head_name!r}, e.g. "
        f"keras_one.methods.{method_name}().build_student(...).",
        stacklevel=3,
    )
