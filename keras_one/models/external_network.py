import difflib

import keras

from keras_one import _hub
from keras_one.models.multi_branch import _split_point_tensors
from keras_one.models.multi_branch import _trace
from keras_one.models.multi_branch import make_multi_branch

# The prefixes of `keras_one.models.get` names for networks of other
# libraries: keras-hub presets and `keras.applications` builders.
PREFIXES = ("hub:", "applications:")


def external_network(
    model,
    num_classes=10,
    input_shape=(32, 32, 3),
    num_branches=3,
    head="gate",
    split_at=None,
    weight_decay=0.0,
    branch_stage=None,
    views=1,
    name=None,
):
    """A keras-hub or `keras.applications` classifier as a (ONE) student.

    Builds (or takes) an image classifier and, with `num_branches >= 2`,
    turns it into a multi-branch network with `make_multi_branch`: by
    default the last stage of the network and its head are replicated
    into the branches, as ONE replicates the last stage of a ResNet.

    Args:
        model: `"hub:<preset>"` (a keras-hub `ImageClassifier` from a
            built-in preset, a `kaggle://` or `hf://` handle or a local
            preset folder, with its pretrained backbone and a new head of
            `num_classes`), `"applications:<Name>"` (a `keras.applications`
            model, e.g. `"applications:MobileNetV2"`, randomly initialized),
            or a functional `keras.Model` returning logits (a keras-hub
            classifier built from a configuration, for instance).
        num_classes: number of classes (for a model given by name).
        input_shape: shape of one image (for a model given by name).
        num_branches: number of branches; 1 returns the classifier itself.
        head: ensemble head (see `make_multi_branch`).
        split_at: the layer after which the branches start, as
            `make_multi_branch` takes it (`"res_net_backbone/stack2_block0_out"`
            for a layer of a nested backbone). Defaults to the end of the
            second-to-last stage: the last split point (see
            `keras_one.models.split_points`) before the feature maps reach
            their final size; for a network without feature maps (a
            vision transformer), the split point two thirds of the way
            through those of its final shape. A keras-hub ViT's encoder is
            one layer: its branches are whole encoders.
        weight_decay: coupled weight decay: an L2 penalty of
            `weight_decay / 2` on the kernels of Keras' built-in layers
            (convolutions, dense), as `cifar_resnet` applies it. The layers
            are then copies of `model`'s with its weights; keras-hub's own
            layers (a ViT's encoder) are not decayed. 0 (the default)
            keeps `model`'s layers.
        branch_stage: `None` for the default split, or 0 to replicate the
            whole network (independent networks, as DML trains).
        views: 1, or one input per branch (see `make_multi_branch`).
        name: name of the network; defaults to the classifier's.

    Returns:
        A functional `keras.Model`: logits for one branch, otherwise the
        outputs of `make_multi_branch`.

    Example:

    >>> net = external_network("applications:MobileNetV2", num_classes=10,
    ...                        input_shape=(32, 32, 3), num_branches=2)
    >>> len(net.output["branch_logits"])
    2
    """
    if branch_stage not in (None, 0):
        raise ValueError(
            f"branch_stage must be None (the default split) or 0 (whole "
            f"networks as branches) for {_describe(model)}; got "
            f"{branch_stage}. Choose the split layer with split_at."
        )
    if isinstance(model, str):
        model = _build(model, num_classes, input_shape)
    elif not isinstance(model, keras.Model):
        raise TypeError(
            "external_network takes 'hub:<preset>', "
            "'applications:<Name>' or a keras.Model; got "
            f"{type(model).__name__}."
        )
    if weight_decay:
        model = _with_weight_decay(model, weight_decay)
    if int(num_branches) == 1:
        return model
    if branch_stage == 0:
        split_at = _input_name(model)
    elif split_at is None:
        split_at = default_split_point(model)
    return make_multi_branch(
        model,
        split_at,
        num_branches=num_branches,
        head=head,
        name=name,
        views=views,
        head_regularizer=(
            keras.regularizers.L2(weight_decay / 2) if weight_decay else None
        ),
    )


def check_name(name):
    """Refuses, in one line, a malformed or unknown external model name."""
    prefix, _, rest = name.partition(":")
    if f"{prefix}:" not in PREFIXES or not rest:
        raise ValueError(
            f"Unknown model {name!r}: write 'hub:<keras-hub preset>' (e.g. "
            "hub:resnet_18_imagenet) or 'applications:<Name>' (e.g. "
            "applications:MobileNetV2)."
        )
    if prefix == "hub":
        _hub.check_preset_name(rest, f"--model {name}")
    else:
        _application(rest)


def default_split_point(model):
    """The default `split_at` of `external_network` (see there)."""
    inputs, logits, calls = _trace(model)
    points = _split_point_tensors(inputs, logits, calls)
    if not points:
        raise ValueError(
            f"Model {model.name!r} has no split point (a skip connection "
            "crosses every layer): it cannot be made multi-branch."
        )
    maps = [(n, t) for n, t in points if len(t.shape) == 4]
    if maps:
        final = tuple(maps[-1][1].shape[1:3])
        earlier = [n for n, t in maps if tuple(t.shape[1:3]) != final]
        if earlier:
            return earlier[-1]
    # No feature maps: the sequences (or vectors) of the final shape.
    shapes = [tuple(t.shape) for _, t in points]
    final_shape = ([s for s in shapes if len(s) > 2] or shapes)[-1]
    same = [n for n, t in points if tuple(t.shape) == final_shape]
    candidates = same[:-1] or same
    return candidates[int(len(candidates) * 2 / 3)]


def _build(spec, num_classes, input_shape):
    check_name(spec)
    prefix, _, rest = spec.partition(":")
    if prefix == "applications":
        builder = _application(rest)
        try:
            return builder(
                input_shape=tuple(input_shape),
                weights=None,
                classes=num_classes,
                classifier_activation=None,
            )
        except (ValueError, TypeError) as error:
            reason = (str(error).splitlines() or [""])[0][:200]
            raise ValueError(
                f"keras.applications.{rest} cannot be built for images of "
                f"shape {tuple(input_shape)} and {num_classes} classes: "
                f"{reason}"
            ) from None
    keras_hub = _hub.keras_hub_module(f"--model {spec}")
    return _hub.from_preset(
        keras_hub.models.ImageClassifier,
        rest,
        f"--model {spec}",
        num_classes=num_classes,
        image_shape=tuple(input_shape),
    )


def _application(name):
    known = [n for n in dir(keras.applications) if n[:1].isupper()]
    if name not in known:
        close = difflib.get_close_matches(name, known, n=3, cutoff=0.5)
        hint = f" Did you mean one of {close}?" if close else ""
        raise ValueError(
            f"Unknown keras.applications model {name!r}.{hint} Known: "
            "the classes of keras.applications, e.g. MobileNetV2, "
            "ResNet50, EfficientNetB0."
        )
    return getattr(keras.applications, name)


def _describe(model):
    return repr(model) if isinstance(model, str) else repr(model.name)


def _input_name(model):
    inputs, _, calls = _trace(model)
    if len(keras.tree.flatten(inputs)) != 1:
        raise ValueError(
            f"branch_stage=0 needs a model with one image input; "
            f"{model.name!r} has several."
        )
    return calls[0].path


_REGULARIZED = ("kernel_regularizer", "depthwise_regularizer")


def _with_weight_decay(model, weight_decay):
    """A copy of `model` with L2 on its built-in layers' kernels."""
    regularizer = keras.regularizers.L2(weight_decay / 2)

    def clone(layer):
        config = layer.get_config() if isinstance(layer, keras.Layer) else {}
        keys = [k for k in _REGULARIZED if k in config]
        if not keys or type(layer).__module__.split(".")[0] != "keras":
            return layer
        for key in keys:
            config[key] = regularizer
        return type(layer).from_config(config)

    copy = keras.models.clone_model(model, clone_function=clone, recursive=True)
    copy.set_weights(model.get_weights())
    return copy
