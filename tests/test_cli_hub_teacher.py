"""`keras-one train --teacher hub:<preset>`: a keras-hub classifier teacher.

The preset is a local folder saved with `save_to_preset()` from a tiny
configuration (random weights): no download.
"""

import json

import keras
import numpy as np
import pytest

from keras_one import cli

# The tests install keras-hub without its dependencies (see setup.py).
keras_hub = pytest.importorskip("keras_hub")

H = keras_hub.models


def save_preset(folder, num_classes=10):
    """A keras-hub ResNet classifier for the digits, saved in `folder`."""
    backbone = H.ResNetBackbone(
        input_conv_filters=[64],
        input_conv_kernel_sizes=[3],
        stackwise_num_filters=[64],
        stackwise_num_blocks=[1],
        stackwise_num_strides=[1],
        block_type="basic_block",
        image_shape=(None, None, 1),
    )
    converter = keras_hub.layers.ResNetImageConverter(
        image_size=(8, 8), scale=1 / 255.0
    )
    classifier = H.ResNetImageClassifier(
        backbone,
        num_classes=num_classes,
        preprocessor=H.ResNetImageClassifierPreprocessor(converter),
    )
    classifier.save_to_preset(str(folder))
    return classifier


def train(*flags):
    return cli.main(
        ["train", "--method", "kd", "--epochs", "1", "--batch-size", "512",
         "--no-baseline", "--verbose", "0", *flags]
    )  # fmt: skip


def test_train_distils_a_keras_hub_preset_folder(tmp_path):
    folder = str(tmp_path / "preset")
    classifier = save_preset(folder)
    out = tmp_path / "run"
    assert train("--teacher", f"hub:{folder}", "--output-dir", str(out)) == 0
    results = json.loads((out / "results.json").read_text())
    assert results["arguments"]["teacher"] == [f"hub:{folder}"]
    distiller = keras.saving.load_model(out / "distiller.keras", safe_mode=True)
    (teacher,) = distiller.method.teachers
    # The digits' normalization is undone before the classifier reads them.
    assert teacher.get_layer("raw_pixels") is not None
    inner = teacher.get_layer(classifier.name)
    for got, expected in zip(
        inner.get_weights(), classifier.get_weights(), strict=True
    ):
        np.testing.assert_array_equal(got, expected)


def one_line_error(*flags):
    with pytest.raises(SystemExit) as exit:
        train(*flags)
    message = str(exit.value)
    assert "\n" not in message and message.startswith("keras-one: error:")
    return message


def test_bad_hub_teachers_are_refused_in_one_line(monkeypatch, tmp_path):
    out = str(tmp_path / "run")
    assert "names no preset" in one_line_error("--teacher", "hub:")
    message = one_line_error("--teacher", "hub:resnet_18_imagenett")
    assert "Did you mean" in message and "resnet_18_imagenet" in message
    assert "hub:<preset" in one_line_error("--teacher", "missing.keras")
    message = one_line_error("--teacher", f"hub:{tmp_path / 'missing'}")
    assert "no preset folder" in message
    save_preset(tmp_path / "three", num_classes=3)
    message = one_line_error("--teacher", f"hub:{tmp_path / 'three'}")
    assert "predicts 3 classes" in message and "save_to_preset()" in message

    def offline(*args, **kwargs):
        raise ConnectionError("Max retries exceeded\nmore lines")

    monkeypatch.setattr(H.ImageClassifier, "from_preset", offline)
    message = one_line_error(
        "--teacher", "hub:resnet_18_imagenet", "--output-dir", out
    )
    assert "could not be downloaded" in message
    assert "--teacher hub:./folder" in message
    assert "--teacher teacher.keras" in message
    assert not (tmp_path / "run").exists()  # refused before training
