"""Turning a keras_one network into a plain Keras model."""

import keras

from keras_one.graph import used_inputs
from keras_one.student_outputs import symbolic_io


def _expanded_call(layer, *args, **kwargs):
    if _has_plain_form(layer):
        return layer.expand(*args, **kwargs)
    return layer(*args, **kwargs)


def _has_plain_form(layer):
    return _is_keras_one(layer) and hasattr(layer, "expand")


def _is_keras_one(layer):
    return type(layer).__module__.startswith("keras_one")


def _rebuild(layer):
    """`layer` itself, or a nested model rebuilt with its layers expanded.

    A keras_one model with a plain-Keras form (`FusedBranches`) is kept
    whole: its `expand` replaces it when it is called.
    """
    if _has_plain_form(layer) or not isinstance(layer, keras.Model):
        return layer
    if isinstance(layer, keras.Sequential):
        return keras.models.clone_model(layer, clone_function=_rebuild)
    if symbolic_io(layer) is None:
        return layer
    return keras.models.clone_model(
        layer, clone_function=_rebuild, call_function=_expanded_call
    )


def _all_layers(model):
    for layer in model.layers:
        yield layer
        if isinstance(layer, keras.Model):
            yield from _all_layers(layer)


def plain_keras_model(model, select, name):
    """Rebuilds a functional `model` from built-in Keras layers only.

    Every keras_one layer in the graph is replaced by its `expand()` method,
    which computes the same thing with built-in layers that share its
    weights; other layers are reused as they are (weights shared too).

    Args:
        model: a functional Keras model.
        select: a function from the rebuilt model's outputs to the output
            tensor(s) of the returned model (unused parts are pruned, and
            so are the inputs they do not read: a branch of a multi-view
            network takes its own view only).
        name: the returned model's name.

    Returns:
        A functional `keras.Model` that needs nothing from keras_one.
    """
    if symbolic_io(model) is None:
        raise ValueError(
            "Only functional students can be exported as plain Keras models; "
            f"{type(model).__name__} is a subclassed model. Build the student "
            "with the functional API (keras.Model(inputs, outputs))."
        )
    # Nested functional models (the branches that make_multi_branch
    # copies) are rebuilt too, expanding their layers.
    rebuilt = keras.models.clone_model(
        model, clone_function=_rebuild, call_function=_expanded_call
    )
    inputs, outputs = symbolic_io(rebuilt)
    selected = select(outputs)
    # A branch of a multi-view network reads its own view only.
    plain = keras.Model(used_inputs(inputs, selected), selected, name=name)
    leftovers = sorted(
        {layer.name for layer in _all_layers(plain) if _is_keras_one(layer)}
    )
    if leftovers:
        raise ValueError(
            f"Layers {leftovers} have no plain-Keras form (an `expand` "
            "method), so the exported model would need keras_one to load."
        )
    return plain
