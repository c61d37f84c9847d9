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
    subclassed or unbuilt models.
    """
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
    outputs that a softmax or sigmoid produced (probabilities, not logits),
    where the producing layer can be found (`keras_one.graph`).
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
        activation = getattr(operation, "activation", None)
        activation = getattr(activation, "__name__", activation)
        is_softmax = isinstance(operation, keras.layers.Softmax)
        if is_softmax or activation in ("softmax", "sigmoid"):
            raise ValueError(
                f"The student's output from layer '{operation.name}' is a "
                "probability, not logits. Distillation needs logits: build "
                "the last layer with activation=None (for keras.applications "
                "models, classifier_activation=None)."
            )
