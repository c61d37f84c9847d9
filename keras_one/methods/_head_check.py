"""A check that a student's ensemble comes from the head a method expects."""

import warnings


def warn_unless_from(tensor, layer_class, method_name, head_name):
    """Warns if a symbolic `tensor` was not produced by a `layer_class`.

    Students with a custom head (or subclassed students, whose outputs carry
    no graph history) pass silently; a student built with another known
    head, e.g. ONE's gate, gets a warning, since the method would then train
    something else than the paper's network.
    """
    history = getattr(tensor, "_keras_history", None)
    if history is None or isinstance(history.operation, layer_class):
        return
    operation = history.operation
    warnings.warn(
        f"{method_name} expects its student's `ensemble_logits` to come "
        f"from a {layer_class.__name__} (head={head_name!r}), but they come "
        f"from layer {operation.name!r} ({type(operation).__name__}). Build "
        f"the student with head={head_name!r}, e.g. "
        f"keras_one.methods.{method_name}().build_student(...).",
        stacklevel=3,
    )
