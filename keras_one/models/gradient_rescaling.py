import keras
from keras import tree

from keras_one.graph import find_producer
from keras_one.layers.gradient_scale import GradientScale
from keras_one.student_outputs import normalize_outputs


def rescale_trunk_gradient(student, scale=None, name=None):
    """Scales the gradient that a multi-branch student's trunk receives.

    Inserts a `keras_one.layers.GradientScale` between the shared trunk and
    everything that reads it (the branches): the forward pass is unchanged,
    and the gradient flowing back into the trunk is multiplied by `scale`.
    With `scale = 1 / num_branches` this is the backpropagation rescaling
    of CL-ILR (Song and Chai, NeurIPS 2018), which keeps the trunk's
    gradient on the scale of one network's although `N` branches' losses
    flow into it. The trunk's own weight decay is not rescaled.

    The returned model shares all layers (and weights) with `student`.

    Args:
        student: a functional multi-branch network as built by
            `keras_one.models.cifar_resnet` or
            `keras_one.models.make_multi_branch` (its output dict has
            `branch_logits` and `shared_features`).
        scale: the gradient factor; defaults to `1 / num_branches`.
        name: name of the returned model; defaults to the student's name.

    Returns:
        A functional `keras.Model` with the same outputs.

    Example:

    >>> net = keras_one.models.cifar_resnet(depth=8, head=None)
    >>> net = rescale_trunk_gradient(net)
    >>> [layer.name for layer in net.layers
    ...  if isinstance(layer, keras_one.layers.GradientScale)]
    ['trunk_gradient_scale']
    """
    try:
        raw_outputs = student.output
    except (AttributeError, ValueError):
        raise ValueError(
            "rescale_trunk_gradient needs a functional student; "
            f"{type(student).__name__} is not one."
        ) from None
    outputs = normalize_outputs(raw_outputs)
    if "shared_features" not in outputs:
        raise ValueError(
            "rescale_trunk_gradient needs a student whose output dict has "
            "'shared_features' (the trunk output the branches read), as "
            "built by keras_one.models.cifar_resnet or make_multi_branch; "
            f"this one returns {sorted(outputs)}."
        )
    trunk_layer = find_producer(outputs["shared_features"], student)
    if trunk_layer is None:
        raise ValueError(
            "rescale_trunk_gradient cannot find the layer of this student "
            "that outputs 'shared_features'. The trunk must end in a layer "
            "of the student called once (not a shared layer's second call, "
            "nor a nested functional model), as in keras_one.models."
            "cifar_resnet and make_multi_branch."
        )
    if isinstance(trunk_layer, keras.layers.InputLayer):
        raise ValueError(
            "This student has no shared trunk (its branches read the input "
            "directly, e.g. cifar_resnet(branch_stage=0)), so there is no "
            "trunk gradient to rescale."
        )
    num_branches = len(outputs["branch_logits"])
    scale = 1.0 / num_branches if scale is None else float(scale)
    gradient_scale = GradientScale(scale, name="trunk_gradient_scale")
    rescaled = {}

    def call_function(layer, *args, **kwargs):
        if rescaled:
            trunk, scaled = rescaled["trunk"], rescaled["scaled"]
            args, kwargs = tree.map_structure(
                lambda t: scaled if t is trunk else t, (args, kwargs)
            )
        result = layer(*args, **kwargs)
        if layer is trunk_layer:
            rescaled["trunk"] = result
            rescaled["scaled"] = gradient_scale(result)
        return result

    model = keras.models.clone_model(
        student,
        clone_function=lambda layer: layer,
        call_function=call_function,
    )
    if name is not None:
        model.name = name
    return model
