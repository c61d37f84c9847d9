import difflib

import keras

from keras_one.graph import trace_calls
from keras_one.models import heads
from keras_one.student_outputs import check_logits
from keras_one.student_outputs import symbolic_io

_POOLING_LAYERS = (
    keras.layers.GlobalAveragePooling2D,
    keras.layers.GlobalMaxPooling2D,
    keras.layers.Flatten,
)


def _find_features(calls, logits):
    """Finds the pooled features and feature map a classifier reads.

    Walks back from the logits through the traced `calls`: the input of the
    last layer is the pooled feature vector; if that comes from a global
    pooling (or Flatten) layer, possibly through Dropout, the pooling
    layer's input is the feature map. Returns `(None, None)` where the
    classifier reads several tensors.
    """
    producers = {
        id(tensor): call
        for call in calls
        if not call.inlined
        for tensor in call.outputs
    }
    classifier = producers.get(id(logits))
    if classifier is None or len(classifier.inputs) != 1:
        return None, None
    features = classifier.inputs[0]
    feature_map = None
    call = producers.get(id(features))
    while call is not None and isinstance(call.operation, keras.layers.Dropout):
        call = producers.get(id(call.inputs[0]))
    if call is not None and isinstance(call.operation, _POOLING_LAYERS):
        feature_map = call.inputs[0]
    return features, feature_map


def split_points(model):
    """The layers of `model` at which `make_multi_branch` can split it.

    A split point is a layer whose output alone feeds the rest of the
    network: no skip connection crosses it (the end of a residual block,
    not its inside). Layers of nested functional models (a keras-hub
    backbone inside its classifier) are named by their path,
    `"res_net_backbone/stack2_block0_out"`; a nested model's own name
    stands for its output.

    Args:
        model: a functional or `Sequential` `keras.Model` with one input
            and one logits output.

    Returns:
        The names, in the order the network computes them: first the
        input's (splitting there replicates the whole network), the last
        layer (whose output is the logits) left out.

    Example:

    >>> base = keras.Sequential([
    ...     keras.Input((8, 8, 3), name="image"),
    ...     keras.layers.Conv2D(4, 3, name="conv"),
    ...     keras.layers.GlobalAveragePooling2D(name="pool"),
    ...     keras.layers.Dense(2, name="classifier")])
    >>> split_points(base)
    ['image', 'conv', 'pool']
    """
    inputs, logits, calls = _trace(model)
    return [name for name, _ in _split_point_tensors(inputs, logits, calls)]


def _trace(model):
    """`trace_calls(model)`, refusing what `make_multi_branch` cannot split."""
    io = symbolic_io(model)
    if io is None:
        raise ValueError(
            "make_multi_branch needs a functional or Sequential model with "
            f"a defined input shape; {model.name!r} is not one."
        )
    if isinstance(io[1], (list, tuple, dict)):
        raise ValueError(
            "make_multi_branch needs a model with a single logits output; "
            f"{model.name!r} has several outputs."
        )
    return trace_calls(model)


def _split_point_tensors(inputs, logits, calls):
    """`(name, tensor)` of every split point, in computation order.

    Sweeps the calls in execution order (a topological order of the
    graph), keeping the tensors already computed that a later call (or
    the output) still reads: a call's output is a split point where it is
    the only such tensor.
    """
    layer_calls = [call for call in calls if not call.inlined]
    last_read = {}
    for index, call in enumerate(layer_calls):
        for tensor in call.inputs:
            last_read[id(tensor)] = index
    last_read[id(logits)] = len(layer_calls)
    # The outermost name of each tensor: an inlined model's call comes
    # after the calls of its layers.
    names = {id(t): call.path for call in calls for t in call.outputs}
    live = {id(t) for t in keras.tree.flatten(inputs) if id(t) in last_read}
    points = []
    for index, call in enumerate(layer_calls):
        live.update(
            id(t) for t in call.outputs if last_read.get(id(t), -1) > index
        )
        live = {t for t in live if last_read[t] > index}
        if (
            len(call.outputs) == 1
            and live == {id(call.outputs[0])}
            and call.outputs[0] is not logits
        ):
            points.append((names[id(call.outputs[0])], call.outputs[0]))
    return points


def _selected_split_points(points, limit=12):
    """A useful few of the split points: the ends of stages.

    All of them when there are at most `limit`; otherwise the last point
    before each change of output shape (the end of a stage), thinned
    evenly to `limit`.
    """
    names = [name for name, _ in points]
    if len(names) <= limit:
        return names
    shapes = [tuple(tensor.shape) for _, tensor in points]
    ends = [
        name
        for name, shape, following in zip(
            names, shapes, shapes[1:], strict=False
        )
        if shape != following
    ]
    if len(ends) < 4:
        ends = names
    if len(ends) > limit:
        step = (len(ends) - 1) / (limit - 1)
        ends = [ends[round(i * step)] for i in range(limit)]
    return ends


def _split_points_hint(points):
    selected = _selected_split_points(points)
    if not selected:
        return (
            "This model has no split point: a skip connection crosses "
            "every layer."
        )
    some = (
        ""
        if len(selected) == len(points)
        else (
            f" ({len(selected)} of {len(points)}; all of them: "
            "keras_one.models.split_points(model))"
        )
    )
    return f"Valid split points{some}: {selected}."


def make_multi_branch(
    model,
    split_at,
    num_branches=3,
    head="gate",
    name=None,
    views=1,
    head_regularizer=None,
):
    """Turns a functional model into a multi-branch (ONE-style) network.

    The layers up to and including `split_at` become the shared trunk; the
    layers after it are replicated `num_branches` times with fresh weights
    (the branches), each ending in its own classifier. A head (by default
    ONE's gate) combines the branches into an ensemble. The trunk layers are
    reused, not copied: they keep the model's weights and are shared with it.

    With `views=num_branches` each branch reads its own view of the input
    (PCL: every peer sees its own augmentation of the image): the network
    takes one image input per branch (`view_0`, `view_1`, ...), the trunk
    (a nested model named `trunk`) runs once on each view, and branch `i`
    reads the trunk's output on view `i`. Branch `i` then depends on input
    `view_i` alone, so `Distiller.get_branch_model(i)` is a single-input
    model.

    Args:
        model: a functional `keras.Model` with one input... and one output of
            logits, shape `(batch, num_classes)` (no softmax: for
            `keras.applications` pass `classifier_activation=None`).
        split_at: name of the layer whose output feeds the branches. Its
            output alone must feed the rest of the network (not inside a
            residual block).
        num_branches: number of branches, at least 2.
        head: `"gate"` (ONE's `GatedEnsemble`), `"mean"`, `None`, or a
            function (see `keras_one.models.heads`).
        name: name of the new model; defaults to `<model>_multi_branch`.
        views: 1 (the default) for one input shared by every branch, or
            `num_branches` for one input per branch (see above); feed it
            with `keras_one.data.load(..., views=num_branches)`.
        head_regularizer: regularizer of every weight of the head (the
            gate, attention or fusion module), e.g. the network's own
            `keras.regularizers.L2(weight_decay / 2)`: the official codes
            decay every parameter. `None` (the default) for none.
            `keras_one.models.cifar_resnet` passes its `weight_decay`.

    Returns:
        A functional `keras.Model` whose output is a dict with
        `branch_logits` (a list), `branch_features` (the pooled features
        each classifier reads), `branch_feature_maps` (when the branches end
        in global pooling), `shared_features` (one input only: with views,
        each branch has its own), and the head's outputs (for `"gate"`:
        `ensemble_logits` and `gate_weights`).

    Example:

    >>> base = keras.applications.MobileNetV2(
    ...     input_shape=(32, 32, 3), weights=None, classes=10,
    ...     classifier_activation=None)
    >>> net = make_multi_branch(base, split_at="block_13_expand_relu")
    >>> sorted(net.output)[:2]
    ['branch_feature_maps', 'branch_features']
    """
    if int(num_branches) < 2:
        raise ValueError(
            f"A multi-branch network needs at least 2 branches; got "
            f"num_branches={num_branches}. For one branch, train the model "
            "itself."
        )
    views = _check_views(views, num_branches, head)
    inputs, logits, calls = _original_graph(model, *_trace(model))
    points = _split_point_tensors(inputs, logits, calls)
    split_call = _find_split_call(split_at, calls, model, points)
    if split_call.outputs[0] is logits:
        raise ValueError(
            f"split_at={split_at!r} is the model's last layer: nothing would "
            "be left to replicate. Split at an earlier layer. "
            + _split_points_hint(points)
        )
    shared_features = split_call.outputs[0]
    # The pooled features and feature map, where the branches compute them.
    position = {
        id(tensor): index
        for index, call in enumerate(c for c in calls if not c.inlined)
        for tensor in call.outputs
    }
    tail_outputs = {"logits": logits}
    for key, tensor in zip(
        ("features", "feature_map"),
        _find_features(calls, logits),
        strict=True,
    ):
        if (
            tensor is not None
            and position.get(id(tensor), -1) > position[id(shared_features)]
        ):
            tail_outputs[key] = tensor
    if not any(point is shared_features for _, point in points):
        raise ValueError(
            f"The layers after {split_at!r} also read tensors from before "
            "it (a skip connection crosses the split), so they cannot be "
            "replicated on its output alone. Split at a layer whose output "
            "is the only input of what follows, such as the end of a "
            "block. " + _split_points_hint(points)
        )
    tail = keras.Model(shared_features, tail_outputs)
    check_logits({"branch_logits": [symbolic_io(model)[1]]}, model)
    if views == 1:
        branch_inputs = [shared_features] * int(num_branches)
    else:
        if isinstance(inputs, (list, tuple, dict)):
            raise ValueError(
                f"views={views} needs a model with a single image input; "
                f"{model.name!r} has several inputs."
            )
        trunk = keras.Model(inputs, shared_features, name="trunk")
        inputs = [
            keras.Input(
                batch_shape=inputs.shape, dtype=inputs.dtype, name=f"view_{i}"
            )
            for i in range(views)
        ]
        branch_inputs = [trunk(view) for view in inputs]
    branch_outputs = []
    for index, branch_input in enumerate(branch_inputs):
        branch = keras.models.clone_model(tail)
        branch.name = f"branch_{index}"
        branch_outputs.append(branch(branch_input))
    outputs = {"branch_logits": [b["logits"] for b in branch_outputs]}
    if views == 1:
        outputs["shared_features"] = shared_features
    if "features" in tail_outputs:
        outputs["branch_features"] = [b["features"] for b in branch_outputs]
    if "feature_map" in tail_outputs:
        outputs["branch_feature_maps"] = [
            b["feature_map"] for b in branch_outputs
        ]
    outputs.update(heads.get(head, head_regularizer)(outputs))
    return keras.Model(
        inputs, outputs, name=name or f"{model.name}_multi_branch"
    )


def _check_views(views, num_branches, head):
    """`views` as an int: 1, or one view per branch."""
    if isinstance(views, bool) or int(views) != views:
        raise ValueError(f"views must be an integer; got {views!r}.")
    views = int(views)
    if views not in (1, int(num_branches)):
        raise ValueError(
            f"views must be 1 (one input for every branch) or the number of "
            f"branches ({num_branches}, one view per branch); got {views}."
        )
    if views > 1 and head == "gate":
        raise ValueError(
            "ONE's gate (head='gate') reads the shared features of one "
            "input, but with views each branch has its own: use "
            "head='linear_fusion' (PCL), 'mean' or None."
        )
    return views


def _find_split_call(split_at, calls, model, points):
    """The one call of the layer `split_at` names, or a clear error."""
    if not isinstance(split_at, str):
        raise TypeError(
            "split_at must be the name of a layer (a string such as "
            f"'stack2_block0_out'); got {type(split_at).__name__}."
        )
    found = [call for call in calls if call.path == split_at]
    if not found:
        paths = [call.path for call in calls]
        nested = [p for p in paths if p.rsplit("/", 1)[-1] == split_at]
        close = nested or difflib.get_close_matches(
            split_at, paths, n=5, cutoff=0.5
        )
        hint = f" Did you mean one of {close}?" if close else ""
        raise ValueError(
            f"No layer named {split_at!r} in model {model.name!r}.{hint} "
            "A layer inside a nested model is named by its path, "
            "'backbone_name/layer_name'. " + _split_points_hint(points)
        )
    if len(found) > 1:
        raise ValueError(
            f"Layer {split_at!r} is called {len(found)} times in model "
            f"{model.name!r} (a shared layer): its output is not one "
            "tensor. Split at a layer called once. "
            + _split_points_hint(points)
        )
    if len(found[0].outputs) != 1:
        raise ValueError(
            f"Layer {split_at!r} returns {len(found[0].outputs)} tensors; "
            "the branches read one. Split at a layer with a single output. "
            + _split_points_hint(points)
        )
    return found[0]


def _original_graph(model, inputs, logits, calls):
    """The traced graph in `model`'s own tensors, where it is the same.

    A model without nested models whose layers are each called once keeps
    its own graph: the multi-branch network is then built on `model`'s
    tensors (the layers' first calls), which `keras_one.graph.
    find_producer` (and so `rescale_trunk_gradient`) can follow. Otherwise
    the traced graph is returned as it is.
    """
    operations = [call.operation for call in calls]
    if any(call.inlined for call in calls) or len(
        {id(op) for op in operations}
    ) != len(operations):
        return inputs, logits, calls
    original = {}
    for call in calls:
        try:
            outputs = keras.tree.flatten(call.operation.output)
        except (AttributeError, ValueError):
            return inputs, logits, calls
        if len(outputs) != len(call.outputs):
            return inputs, logits, calls
        original.update(zip(map(id, call.outputs), outputs, strict=True))

    def translate(tensor):
        return original.get(id(tensor), tensor)

    calls = [
        call._replace(
            inputs=[translate(t) for t in call.inputs],
            outputs=[translate(t) for t in call.outputs],
        )
        for call in calls
    ]
    return (
        keras.tree.map_structure(translate, inputs),
        translate(logits),
        calls,
    )
