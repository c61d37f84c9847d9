import difflib

import keras

from keras_one.graph import find_producer
from keras_one.models import heads
from keras_one.student_outputs import check_logits
from keras_one.student_outputs import symbolic_io

_POOLING_LAYERS = (
    keras.layers.GlobalAveragePooling2D,
    keras.layers.GlobalMaxPooling2D,
    keras.layers.Flatten,
)


def _find_features(model, logits):
    """Finds the pooled features and feature map a classifier reads.

    Walks back from the logits: the input of the last layer is the pooled
    feature vector; if that comes from a global pooling (or Flatten) layer,
    possibly through Dropout, the pooling layer's input is the feature map.
    Returns `(None, None)` where the classifier is unknown (see
    `keras_one.graph.find_producer`).
    """
    classifier = find_producer(logits, model)
    if classifier is None:
        return None, None
    features = classifier.input
    if isinstance(features, (list, tuple)):
        return None, None
    feature_map = None
    layer = find_producer(features, model)
    while isinstance(layer, keras.layers.Dropout):
        layer = find_producer(layer.input, model)
    if isinstance(layer, _POOLING_LAYERS):
        feature_map = layer.input
    return features, feature_map


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
    io = symbolic_io(model)
    if io is None:
        raise ValueError(
            "make_multi_branch needs a functional or Sequential model with "
            f"a defined input shape; {model.name!r} is not one."
        )
    inputs, logits = io
    if isinstance(logits, (list, tuple, dict)):
        raise ValueError(
            "make_multi_branch needs a model with a single logits output; "
            f"{model.name!r} has several outputs."
        )
    names = [layer.name for layer in model.layers]
    if split_at not in names:
        close = difflib.get_close_matches(split_at, names, n=5, cutoff=0.5)
        hint = f" Did you mean one of {close}?" if close else ""
        raise ValueError(
            f"No layer named {split_at!r} in model {model.name!r}.{hint} "
            "Print model.summary() to see the layer names."
        )
    if split_at == model.layers[-1].name:
        raise ValueError(
            f"split_at={split_at!r} is the model's last layer: nothing would "
            "be left to replicate. Split at an earlier layer."
        )
    shared_features = model.get_layer(split_at).output
    features, feature_map = _find_features(model, logits)
    tail_outputs = {"logits": logits}
    if features is not None and features is not shared_features:
        tail_outputs["features"] = features
    if feature_map is not None and feature_map is not shared_features:
        tail_outputs["feature_map"] = feature_map
    try:
        tail = keras.Model(shared_features, tail_outputs)
    except ValueError as error:
        raise ValueError(
            f"The layers after {split_at!r} also read tensors from before "
            "it (a skip connection crosses the split), so they cannot be "
            "replicated on its output alone. Split at a layer whose output "
            "is the only input of what follows, such as the end of a block."
            f" (Keras said: {error})"
        ) from None
    check_logits({"branch_logits": [logits]}, model)
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
