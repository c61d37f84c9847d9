"""Finding, through Keras' public API, what produced a symbolic tensor."""

import keras


def find_producer(tensor, model):
    """Returns the operation of `model` that produced the symbolic `tensor`.

    Searches the operations of a functional `model` (the layers of a
    `Sequential` one), and those of the models nested in it, for the one
    whose output is `tensor`, compared by identity: the `InputLayer` for
    one of the model's inputs, and otherwise the layer or `keras.ops`
    operation that computed it.

    Keras' public API gives an operation's output for its first call only
    (`keras.Operation.output`), and a nested functional model's output only
    inside that model. So the producer of a tensor computed by a second
    call of a shared layer, or returned by a functional model called inside
    `model`, is not found: `None` is returned, meaning "unknown", as for a
    tensor that is not in `model`'s graph or a `model` that is neither
    functional nor `Sequential`.

    Args:
        tensor: a symbolic `keras.KerasTensor` of `model`'s graph.
        model: a functional or `Sequential` `keras.Model`.

    Returns:
        The producing `keras.Operation` (usually a `keras.Layer`), or
        `None`.

    Example:

    >>> inputs = keras.Input((4,))
    >>> classifier = keras.layers.Dense(2, name="classifier")
    >>> model = keras.Model(inputs, classifier(inputs))
    >>> find_producer(model.output, model).name
    'classifier'
    >>> type(find_producer(inputs, model)).__name__
    'InputLayer'
    """
    # Functional models (and `keras.Function`s) list every operation,
    # InputLayers and `keras.ops` calls included; other models their layers.
    operations = getattr(model, "operations", None)
    if operations is None:
        operations = model.layers
    for operation in operations:
        if isinstance(operation, keras.Model):
            inner = find_producer(tensor, operation)
            if inner is not None:
                return inner
            if hasattr(operation, "operations"):
                # A functional model's `output` is its inner graph's, just
                # searched; its output where it is called is not public.
                continue
        if any(x is tensor for x in _first_call_outputs(operation)):
            return operation
    return None


def _first_call_outputs(operation):
    try:
        return keras.tree.flatten(operation.output)
    except (AttributeError, ValueError):
        # Never called (`AttributeError`), or its output is not defined.
        return []


def used_inputs(inputs, outputs):
    """The inputs of a functional graph that `outputs` are computed from.

    For a network with one input per view (`views=` of
    `keras_one.models.make_multi_branch`), the branch that reads view `i`
    depends on that input alone. Found through Keras' public API: an input
    is unused if a `keras.Model` from the other inputs still reaches
    `outputs`.

    Args:
        inputs: a symbolic input tensor, or a list or tuple of them.
        outputs: symbolic tensors (any nested structure) computed from
            `inputs`.

    Returns:
        The input tensors `outputs` need, in their order: a list, or the
        tensor itself when only one is needed (or `inputs` was one).

    Example:

    >>> a, b = keras.Input((4,), name="a"), keras.Input((4,), name="b")
    >>> dense = keras.layers.Dense(2)
    >>> used_inputs([a, b], dense(b)) is b
    True
    """
    if not isinstance(inputs, (list, tuple)):
        return inputs
    used = list(inputs)
    for tensor in inputs:
        others = [x for x in used if x is not tensor]
        if others and _reaches(others, outputs):
            used = others
    return used[0] if len(used) == 1 else used


def _reaches(inputs, outputs):
    try:
        model = keras.Model(inputs, outputs)
    except ValueError:  # "Output ... is not connected to `inputs`"
        return False
    # Keras 3.12 builds the model without that check: its graph then
    # starts at an input it was not given.
    given = {id(tensor) for tensor in inputs}
    return not any(
        isinstance(operation, keras.layers.InputLayer)
        and id(operation.output) not in given
        for operation in model.operations
    )
