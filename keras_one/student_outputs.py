"""The output contract between a student network and the methods.

A student returns a dict with `branch_logits` (a list of `(batch, C)`
logits) and, depending on its head, `ensemble_logits`, `gate_weights`,
`branch_features`, `branch_feature_maps` and `shared_features`. A list of
logits or a single logits tensor is accepted as shorthand.
"""

import keras

from keras_one.graph import find_producer

LOGIT_KEYS = ("branch_logits", "ensemble_logits")


def symbolic_io(model):
    """Returns the symbolic `(inputs, outputs)` of a functional model.

    Works for functional models (keeping their input/output structure) and
    for Sequential models built with an input shape; returns `None` for
    subclassed or unbuilt models (a subclassed model called on symbolic
    inputs has an `input` and an `output`, but no graph to clone).
    """
    functional = hasattr(model, "operations")
    if not (functional or isinstance(model, keras.Sequential)):
        return None
    try:
        return model.input, model.output
    except (AttributeError, ValueError):
        pass
    inputs = getattr(model, "inputs", None)
    outputs = getattr(model, "outputs", None)
    if not inputs or not outputs:
        return None
    return (
        inputs[0] if len(inputs) == 1 else inputs,
        outputs[0] if len(outputs) == 1 else outputs,
    )


def normalize_outputs(outputs):
    """Puts a student's outputs in the dict form the methods read.

    A dict must hold `"branch_logits"` (a list, or one tensor for a single
    branch); a list or tuple is taken as the branch logits; a single tensor
    as one branch.
    """
    if isinstance(outputs, dict):
        if "branch_logits" not in outputs:
            raise ValueError(
                "A student that returns a dict must have the key "
                f"'branch_logits' (a list of logits); got keys "
                f"{sorted(outputs)}."
            )
        outputs = dict(outputs)
    elif isinstance(outputs, (list, tuple)):
        outputs = {"branch_logits": list(outputs)}
    else:
        outputs = {"branch_logits": [outputs]}
    if not isinstance(outputs["branch_logits"], (list, tuple)):
        outputs["branch_logits"] = [outputs["branch_logits"]]
    outputs["branch_logits"] = list(outputs["branch_logits"])
    return outputs


def check_logits(outputs, model=None):
    """Raises a clear error unless all logits are `(batch, C)` of one `C`.

    With the functional `model` that computed `outputs`, it also refuses
    outputs that a softmax or sigmoid produced (probabilities, not logits):
    a `Softmax` layer, a layer with `activation="softmax"` (or sigmoid),
    or a `keras.ops.softmax` (or sigmoid) call in the graph, where the
    producer can be found (`keras_one.graph`).
    """
    logits = list(outputs["branch_logits"])
    if "ensemble_logits" in outputs:
        logits.append(outputs["ensemble_logits"])
    shapes = [tuple(z.shape) for z in logits]
    if any(len(s) != 2 for s in shapes) or len({s[-1] for s in shapes}) != 1:
        raise ValueError(
            "The student's outputs must be logits of one shape "
            f"(batch, num_classes); got shapes {shapes}. Return one "
            "Dense(num_classes) output per branch."
        )
    for z in logits:
        operation = find_producer(z, model) if model is not None else None
        if operation is None or not _makes_probabilities(operation):
            continue
        if isinstance(operation, keras.Layer):
            source = f"layer '{operation.name}'"
        else:
            source = (
                f"operation '{operation.name}' (keras.ops."
                f"{_OPERATIONS[type(operation).__name__]})"
            )
        raise ValueError(
            f"The student's output from {source} is a probability, not "
            "logits. Distillation needs logits: build the last layer with "
            "activation=None (for keras.applications models, "
            "classifier_activation=None) and return its output without a "
            "softmax or sigmoid."
        )


# Activations, and `keras.ops` operations (by class name), whose outputs
# are probabilities.
_ACTIVATIONS = ("softmax", "sigmoid", "hard_sigmoid", "sparsemax")
_OPERATIONS = {
    "Softmax": "softmax",
    "Sigmoid": "sigmoid",
    "HardSigmoid": "hard_sigmoid",
    "Sparsemax": "sparsemax",
}


def _makes_probabilities(operation):
    """Whether a layer or `keras.ops` operation outputs probabilities.

    A `keras.layers.Softmax`, a layer with a softmax-like `activation`, or
    a `keras.ops.softmax` (`sigmoid`, ...) call of a functional graph,
    which appears there as an operation of class `Softmax` (`Sigmoid`,
    ...) on Keras 3.12 to 3.15.
    """
    if isinstance(operation, keras.layers.Softmax):
        return True
    if not isinstance(operation, keras.Layer):
        return type(operation).__name__ in _OPERATIONS
    activation = getattr(operation, "activation", None)
    activation = getattr(activation, "__name__", activation)
    return activation in _ACTIVATIONS
