"""keras-hub, an optional dependency: importing it and loading presets.

keras-one runs without keras-hub (`pip install keras-one[hub]` adds it).
Every feature that needs it imports it through `keras_hub_module`, which
refuses in one line naming the fix, and loads presets through
`from_preset`, which turns a failed download into one line saying how to
pass a local model instead.
"""

import difflib
import importlib
import os
import sys

INSTALL_HINT = "pip install keras-one[hub]"


def keras_hub_module(feature):
    """The `keras_hub` module, or an `ImportError` naming the extra."""
    try:
        return importlib.import_module("keras_hub")
    except ImportError:
        raise ImportError(
            f"{feature} needs keras-hub, which is not installed: "
            f"{INSTALL_HINT} (or pip install keras-hub)."
        ) from None


def is_image_classifier(model):
    """Whether `model` is a keras-hub `ImageClassifier`.

    keras-hub is not imported for this: where it is not loaded, no such
    model exists.
    """
    keras_hub = sys.modules.get("keras_hub")
    return keras_hub is not None and isinstance(
        model, keras_hub.models.ImageClassifier
    )


def check_preset_name(preset, feature):
    """Refuses a preset that is neither built in, a handle, nor a folder."""
    keras_hub = keras_hub_module(feature)
    if not isinstance(preset, str) or not preset:
        raise ValueError(
            f"{feature}: a keras-hub preset must be a non-empty string such "
            f"as 'resnet_18_imagenet'; got {preset!r}."
        )
    if (
        os.path.isdir(preset)
        or "://" in preset
        or preset in keras_hub.models.Backbone.presets
    ):
        return preset
    if preset.startswith((".", "~")) or os.sep in preset or "/" in preset:
        raise ValueError(
            f"{feature}: no preset folder {preset!r}: pass the folder of a "
            "preset saved with save_to_preset(), a built-in preset name "
            "such as 'resnet_18_imagenet', or a 'kaggle://' or 'hf://' "
            "handle."
        )
    close = difflib.get_close_matches(
        preset, list(keras_hub.models.Backbone.presets), n=3, cutoff=0.6
    )
    hint = f" Did you mean one of {close}?" if close else ""
    raise ValueError(
        f"{feature}: unknown keras-hub preset {preset!r}.{hint} Pass a "
        "built-in preset name (keras_hub.models.ImageClassifier.presets), "
        "a 'kaggle://' or 'hf://' handle, or the folder of a preset saved "
        "with save_to_preset()."
    )


LOCAL_FIX = (
    "the folder of a preset saved with save_to_preset(), or a "
    "keras_hub.models.ImageClassifier you built or loaded"
)


def from_preset(cls, preset, feature, local_fix=LOCAL_FIX, **kwargs):
    """`cls.from_preset(preset, **kwargs)`, failed downloads in one line.

    `local_fix` says what to pass instead of a preset that cannot be
    downloaded (the command line names its flags).
    """
    check_preset_name(preset, feature)
    try:
        return cls.from_preset(preset, **kwargs)
    except Exception as error:
        if os.path.isdir(preset):
            reason = (str(error).splitlines() or [""])[0][:200]
            raise ValueError(
                f"{feature}: cannot load the keras-hub preset folder "
                f"{preset!r} ({type(error).__name__}: {reason})."
            ) from None
        reason = (str(error).splitlines() or [""])[0][:160]
        raise ValueError(
            f"{feature}: the keras-hub preset {preset!r} could not be "
            f"downloaded ({type(error).__name__}: {reason}). "
            f"Without network access, pass a local model instead: "
            f"{local_fix}."
        ) from None
