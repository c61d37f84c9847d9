"""Turning a keras_one network into a plain Keras model."""

import json
import os

import keras

from keras_one.graph import used_inputs
from keras_one.student_outputs import symbolic_io


def nonfinite_weights(model):
    """The paths of `model`'s weights that hold NaN or infinite values.

    One reduction per weight on its device and one transfer of the
    per-weight answers, so it is cheap enough for every epoch's end.

    Args:
        model: a Keras model (or layer).

    Returns:
        A list of weight paths (`"dense/kernel"`), empty when every weight
        is finite.
    """
    variables = [
        v for v in model.weights if keras.backend.is_float_dtype(v.dtype)
    ]
    if not variables:
        return []
    finite = keras.ops.convert_to_numpy(
        keras.ops.stack(
            [keras.ops.all(keras.ops.isfinite(v.value)) for v in variables]
        )
    )
    return [v.path for v, ok in zip(variables, finite, strict=True) if not ok]


def describe_weights(paths, limit=3):
    """`'N weights (a, b, c, ...)'` for a list of weight paths."""
    shown = ", ".join(paths[:limit]) + (", ..." if len(paths) > limit else "")
    noun = "weight" if len(paths) == 1 else "weights"
    return f"{len(paths)} {noun} ({shown})"


def check_finite_weights(model, what="The model"):
    """Raises a `ValueError` if a weight of `model` holds NaN or inf.

    A model trained into NaN is never exported or saved as if it were
    good.
    """
    bad = nonfinite_weights(model)
    if bad:
        raise ValueError(
            f"{what} holds NaN or infinite values in {describe_weights(bad)}:"
            " the training that produced it diverged, and it predicts "
            "nothing. Train it again (lower the learning rate, add a "
            "warm-up or clip gradients) or use an earlier saved model."
        )


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

    Raises:
        ValueError: a weight of the exported part holds NaN or inf (the
            training diverged): such a model is never exported.
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
    check_finite_weights(plain, f"The model to export, {name},")
    leftovers = sorted(
        {layer.name for layer in _all_layers(plain) if _is_keras_one(layer)}
    )
    if leftovers:
        raise ValueError(
            f"Layers {leftovers} have no plain-Keras form (an `expand` "
            "method), so the exported model would need keras_one to load."
        )
    return plain


# Names of the layers `with_preprocessing` puts in front of a network.
SCALE_LAYER = "raw_pixel_scale"
NORMALIZATION_LAYER = "raw_normalization"
# The sidecar of an exported SavedModel folder, inside it.
SAVEDMODEL_SIDECAR = "keras_one.json"


def preprocessing_of(preprocessing):
    """The preprocessing dict of a `DatasetInfo`, or the dict itself."""
    preprocessing = getattr(preprocessing, "preprocessing", preprocessing)
    if not isinstance(preprocessing, dict):
        raise TypeError(
            "preprocessing must be a keras_one.data.DatasetInfo or its "
            f"`preprocessing` dict; got {type(preprocessing).__name__}."
        )
    missing = {"input_shape", "pixel_scale"} - set(preprocessing)
    if missing:
        raise ValueError(
            f"The preprocessing dict lacks {sorted(missing)}: pass "
            "`info.preprocessing` of the keras_one.data loader."
        )
    return preprocessing


def with_preprocessing(model, preprocessing, name=None):
    """`model` behind built-in layers applying the dataset's preprocessing.

    The returned model takes raw images (the dataset's own pixel values:
    0-255 for uint8 images, 0-16 for the digits; any dtype, computed in
    float32) of `preprocessing["input_shape"]`, scales them with a
    `keras.layers.Rescaling` and normalizes them per channel with a
    `keras.layers.Normalization` of fixed mean and variance, then calls
    `model` (on every input of a multi-view model). Both layers are
    built-in: it saves as `.keras`, loads without keras_one and exports to
    SavedModel and TFLite.

    Args:
        model: a plain Keras model taking normalized images.
        preprocessing: a `keras_one.data.DatasetInfo` or its
            `preprocessing` dict.
        name: the returned model's name (default: `model.name`).

    Returns:
        A functional `keras.Model`.

    Raises:
        ValueError: a weight of `model` holds NaN or inf.
    """
    preprocessing = preprocessing_of(preprocessing)
    check_finite_weights(model, f"The model to export, {model.name},")
    shape = tuple(int(d) for d in preprocessing["input_shape"])
    for tensor in model.inputs:
        if tuple(tensor.shape[1:]) != shape:
            raise ValueError(
                f"The model takes images of shape {tuple(tensor.shape[1:])} "
                f"but the preprocessing is for {shape}: pass the "
                "preprocessing of the dataset the model was trained on."
            )
    raw = keras.Input(shape, dtype="float32", name="raw_image")
    images = keras.layers.Rescaling(
        float(preprocessing["pixel_scale"]), name=SCALE_LAYER
    )(raw)
    if preprocessing.get("mean") is not None:
        std = [float(s) for s in preprocessing["std"]]
        images = keras.layers.Normalization(
            mean=[float(m) for m in preprocessing["mean"]],
            variance=[s * s for s in std],
            name=NORMALIZATION_LAYER,
        )(images)
    inputs = images if len(model.inputs) == 1 else [images] * len(model.inputs)
    return keras.Model(raw, model(inputs), name=name or model.name)


def has_preprocessing(model):
    """Whether a Keras `model` was built by `with_preprocessing`."""
    return any(layer.name == SCALE_LAYER for layer in model.layers)


def metadata(preprocessing=None, class_names=None, included=True):
    """The JSON sidecar of an export: class names and preprocessing.

    Args:
        preprocessing: the dataset's preprocessing dict, or `None`.
        class_names: one name per class, or `None`.
        included: whether the model applies the preprocessing itself
            (takes raw images) or takes normalized images.
    """
    return {
        "format": "keras-one-export",
        "version": 1,
        "output": "logits",
        "input": "raw" if included and preprocessing else "normalized",
        "class_names": None if class_names is None else list(class_names),
        "preprocessing": preprocessing,
    }


def sidecar_path(export_path):
    """Where the sidecar of an export is: `X.keras.json`, `X/keras_one.json`."""
    if os.path.isdir(export_path):
        return os.path.join(export_path, SAVEDMODEL_SIDECAR)
    return os.fspath(export_path) + ".json"


def read_sidecar(export_path):
    """The sidecar of an export as a dict, or `None` if it has none."""
    path = sidecar_path(export_path)
    if not os.path.isfile(path):
        return None
    try:
        with open(path) as file:
            value = json.load(file)
    except (OSError, ValueError) as error:
        raise ValueError(
            f"{path} is damaged or not JSON ({type(error).__name__}: "
            f"{error}): export the model again."
        ) from None
    if not isinstance(value, dict):
        raise ValueError(f"{path} is not a keras-one export sidecar.")
    return value
