"""Finding, through Keras' public API, what produced a symbolic tensor."""

from typing import NamedTuple

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


class OperationCall(NamedTuple):
    """One call of an operation in a graph traced by `trace_calls`.

    Attributes:
        path: the operation's name, prefixed by the names of the models it
            is nested in (`"res_net_backbone/stack2_block0_out"`).
        operation: the `keras.Operation` (usually a `keras.Layer`).
        inputs: the symbolic tensors the call reads, a flat list.
        outputs: the symbolic tensors it returns, a flat list.
        inlined: whether `operation` is a nested model whose own calls were
            recorded (before this one) instead of calling it whole.
    """

    path: str
    operation: object
    inputs: list
    outputs: list
    inlined: bool


def trace_calls(model):
    """Rebuilds a model as one flat graph of its layers and records it.

    Calls `model`'s layers again on new inputs, through
    `keras.models.clone_model(..., clone_function=..., call_function=...)`
    with the layers themselves (nothing is copied: the traced graph shares
    `model`'s weights), and calls the layers of every nested functional
    or `Sequential` model in place of the nested model, so that a tensor
    inside a backbone used as one layer (a keras-hub `Backbone` in an
    `ImageClassifier`, itself inside a teacher) is a tensor of the traced
    graph. Each model is first run through on inputs of its own, then its
    calls are made again on the tensors it is called with. Unlike the graph's
    first call (`keras_one.graph.find_producer`), every call is recorded,
    with the tensors it reads and returns.

    Args:
        model: a functional or `Sequential` `keras.Model` with a defined
            input.

    Returns:
        `(inputs, outputs, calls)`: the new symbolic inputs (the structure
        of `model.input`), the outputs computed from them (the structure
        of `model.output`), and the `OperationCall`s in execution order:
        first one per input (its `InputLayer`, reading nothing, named as
        the input), then the layers (an inlined model after the calls of
        its layers).

    Example:

    >>> inner = keras.Sequential([keras.layers.Dense(3, name="hidden")],
    ...                          name="backbone")
    >>> inputs = keras.Input((4,))
    >>> model = keras.Model(
    ...     inputs, keras.layers.Dense(2, name="classifier")(inner(inputs)))
    >>> _, _, calls = trace_calls(model)
    >>> [call.path for call in calls][1:]
    ['backbone/hidden', 'backbone', 'classifier']
    """
    try:
        model_input = model.input
    except (AttributeError, ValueError):
        # A Sequential model built from an `Input` lists it in `inputs`.
        model_input = model.inputs[0]
    inputs = keras.tree.map_structure(
        lambda x: keras.Input(batch_shape=x.shape, dtype=x.dtype, name=x.name),
        model_input,
    )
    # Each input first, as a call of its `InputLayer` that reads nothing:
    # splitting "at the input" replicates the whole network.
    calls = [
        OperationCall(
            path=original.name,
            operation=find_producer(original, model),
            inputs=[],
            outputs=[new],
            inlined=False,
        )
        for original, new in zip(
            keras.tree.flatten(model_input),
            keras.tree.flatten(inputs),
            strict=True,
        )
    ]
    program = _record(model, model_input)
    outputs = _replay(program, inputs, "", calls)
    return inputs, outputs, calls


def _is_graph_model(operation):
    """Whether `operation` is a functional or `Sequential` model."""
    return isinstance(operation, keras.Sequential) or (
        isinstance(operation, keras.Model) and hasattr(operation, "operations")
    )


class _Step(NamedTuple):
    """One call recorded by `_record`: replayed by `_replay`."""

    operation: object
    args: tuple
    kwargs: dict
    outputs: object
    program: object  # the `_Program` of an inlined model, else None


class _Program(NamedTuple):
    """A model's calls, recorded on inputs of its own (see `_record`)."""

    inputs: object
    steps: list
    outputs: object


def _record(model, example):
    """Records the calls of `model`'s graph on new inputs of its own.

    Each model, the nested ones included, is run through on new
    `keras.Input`s, never on a tensor of the graph it is called in: Keras
    rebuilds a model made from intermediate tensors by cloning its graph's
    nodes, with inputs named after those tensors, so two nested models
    reading the same tensor (a keras-hub classifier and its backbone) would
    clash ("The name ... is used 2 times"). A nested model is called whole
    here, and its own recorded program inlined by `_replay`.

    `example` is a tensor (structure) the model is called on, for the
    shape of a `Sequential` model's input.
    """
    steps = []
    if isinstance(model, keras.Sequential):
        inputs = _new_inputs(example)
        outputs = inputs
        for layer in model.layers:
            outputs = _record_step(layer, (outputs,), {}, steps)
        return _Program(inputs, steps, outputs)

    def call_function(operation, *args, **kwargs):
        return _record_step(operation, args, kwargs, steps)

    inputs = _new_inputs(model.input)
    clone = keras.models.clone_model(
        model,
        input_tensors=inputs,
        clone_function=lambda operation: operation,
        call_function=call_function,
    )
    return _Program(inputs, steps, clone.output)


def _new_inputs(structure):
    return keras.tree.map_structure(
        lambda x: keras.Input(batch_shape=x.shape, dtype=x.dtype),
        structure,
    )


def _record_step(operation, args, kwargs, steps):
    # A nested model called on one input is inlined; one called with
    # other arguments (a mask, a fixed `training=False` that its layers
    # would lose) stays whole.
    inlined = (
        _is_graph_model(operation)
        and len(args) == 1
        and all(value is None for value in kwargs.values())
    )
    program = _record(operation, args[0]) if inlined else None
    outputs = operation(*args, **kwargs)
    steps.append(_Step(operation, args, kwargs, outputs, program))
    return outputs


def _replay(program, inputs, prefix, calls):
    """Calls `program`'s operations on `inputs`, inlining nested models."""
    new = dict(
        zip(
            map(id, keras.tree.flatten(program.inputs)),
            keras.tree.flatten(inputs),
            strict=True,
        )
    )

    def translate(structure):
        return keras.tree.map_structure(
            lambda x: (
                new.get(id(x), x) if isinstance(x, keras.KerasTensor) else x
            ),
            structure,
        )

    for step in program.steps:
        args, kwargs = translate(step.args), translate(step.kwargs)
        path = prefix + step.operation.name
        if step.program is not None:
            outputs = _replay(step.program, args[0], path + "/", calls)
        else:
            outputs = step.operation(*args, **kwargs)
        flat = keras.tree.flatten(outputs)
        new.update(
            zip(map(id, keras.tree.flatten(step.outputs)), flat, strict=True)
        )
        calls.append(
            OperationCall(
                path=path,
                operation=step.operation,
                inputs=[
                    x
                    for x in keras.tree.flatten((args, kwargs))
                    if isinstance(x, keras.KerasTensor)
                ],
                outputs=flat,
                inlined=step.program is not None,
            )
        )
    return translate(program.outputs)
