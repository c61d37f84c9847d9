"""keras-hub classifiers (and presets) as pretrained teachers."""

import keras
import numpy as np
import pytest

import keras_one
from keras_one.models import pretrained_teacher

# The tests install keras-hub without its dependencies (see setup.py).
keras_hub = pytest.importorskip("keras_hub")

H = keras_hub.models
# The digits' preprocessing: raw 0-16 pixels, normalized per channel.
PREPROCESSING = {
    "input_shape": [8, 8, 1],
    "pixel_scale": 1 / 16,
    "mean": [0.3],
    "std": [0.4],
}


def classifier(num_classes=3):
    backbone = H.ResNetBackbone(
        input_conv_filters=[64],
        input_conv_kernel_sizes=[3],
        stackwise_num_filters=[64, 64],
        stackwise_num_blocks=[1, 1],
        stackwise_num_strides=[1, 2],
        block_type="basic_block",
        image_shape=(None, None, 1),
    )
    converter = keras_hub.layers.ResNetImageConverter(
        image_size=(16, 16), scale=1 / 127.5, offset=-1.0
    )
    return H.ResNetImageClassifier(
        backbone,
        num_classes=num_classes,
        preprocessor=H.ResNetImageClassifierPreprocessor(converter),
    )


def test_teacher_applies_its_own_preprocessing_after_the_students():
    model = classifier()
    teacher = pretrained_teacher(model, PREPROCESSING)
    rng = np.random.default_rng(0)
    raw = rng.integers(0, 17, size=(2, 8, 8, 1)).astype("float32")
    normalized = (raw / 16 - 0.3) / 0.4  # what the student reads
    # Independently: back to 0-255, resized to 16x16, scaled to [-1, 1].
    pixels = keras.ops.image.resize(raw / 16 * 255, (16, 16))
    expected = model(np.asarray(pixels) / 127.5 - 1.0, training=False)
    np.testing.assert_allclose(
        teacher(normalized, training=False), expected, atol=1e-4
    )


def test_kd_distils_a_keras_hub_teacher(tmp_path):
    student = keras_one.models.cifar_resnet(
        8, num_classes=3, num_branches=1, input_shape=(8, 8, 1)
    )
    method = keras_one.methods.KD(
        classifier(), input_preprocessing=PREPROCESSING
    )
    distiller = keras_one.Distiller(student, method)
    distiller.compile(optimizer="sgd")
    x = np.random.default_rng(0).normal(size=(4, 8, 8, 1)).astype("float32")
    y = np.array([0, 1, 2, 0])
    logs = distiller.train_on_batch(x, y, return_dict=True)
    assert np.isfinite(logs["kl"]) and logs["kl"] > 0
    path = str(tmp_path / "kd.keras")
    distiller.save(path)
    again = keras.saving.load_model(path, safe_mode=True)
    np.testing.assert_allclose(
        again.method.teacher(x, training=False),
        distiller.method.teacher(x, training=False),
        atol=1e-5,
    )


def test_bad_teachers_are_refused_in_one_line(monkeypatch):
    with pytest.raises(ValueError, match="Did you mean.*resnet_18_imagenet"):
        keras_one.methods.KD("resnet_18_imagenett")
    with pytest.raises(TypeError, match="ImageClassifier or the name"):
        pretrained_teacher(keras.Sequential([keras.Input((2,))]))
    with pytest.raises(ValueError, match="normalizes 3 channels"):
        pretrained_teacher(
            classifier(), {**PREPROCESSING, "mean": [0] * 3, "std": [1] * 3}
        )

    def offline(*args, **kwargs):
        raise ConnectionError("Max retries exceeded")

    monkeypatch.setattr(H.ImageClassifier, "from_preset", offline)
    with pytest.raises(ValueError, match="could not be downloaded.*local"):
        keras_one.methods.EKD(["resnet_18_imagenet", "resnet_50_imagenet"])


def moving_statistics(model):
    return [
        np.array(w) for w in model.non_trainable_weights if "moving" in w.path
    ]


def test_a_bare_call_is_inference():
    # Keras' Resizing defaults to training=True; the teacher must not pass
    # that on to the classifier's BatchNormalization.
    teacher = pretrained_teacher(classifier(), PREPROCESSING)
    before = moving_statistics(teacher)
    assert before
    x = np.random.default_rng(0).normal(2.0, 3.0, size=(4, 8, 8, 1))
    teacher(x.astype("float32"))
    for old, new in zip(before, moving_statistics(teacher), strict=True):
        np.testing.assert_array_equal(old, new)
    teacher(x.astype("float32"), training=True)  # training, when asked
    assert any(
        not np.array_equal(old, new)
        for old, new in zip(before, moving_statistics(teacher), strict=True)
    )


def test_sokd_bridges_a_keras_hub_teacher(tmp_path):
    student = keras_one.models.cifar_resnet(
        8, num_classes=3, num_branches=1, input_shape=(8, 8, 1)
    )
    method = keras_one.methods.SOKD(
        classifier(), input_preprocessing=PREPROCESSING
    )
    # The default bridge: the end of the backbone's second-to-last stage.
    assert method.bridge_from == (
        "res_net_image_classifier/res_net_backbone/stack0_block0_out"
    )
    distiller = keras_one.Distiller(student, method)
    distiller.compile(optimizer="sgd")
    teacher_weights = [np.array(w) for w in method.teacher.weights]
    x = np.random.default_rng(0).normal(size=(4, 8, 8, 1)).astype("float32")
    logs = distiller.train_on_batch(x, np.array([0, 1, 2, 0]), return_dict=True)
    assert np.isfinite(logs["loss"]) and logs["bridge_kl_teacher"] > 0
    for old, new in zip(teacher_weights, method.teacher.weights, strict=True):
        np.testing.assert_array_equal(old, np.array(new))
    assert method.bridge.trainable_weights
    path = str(tmp_path / "sokd.keras")
    distiller.save(path)
    again = keras.saving.load_model(path, safe_mode=True)
    assert again.method.bridge_from == method.bridge_from
    for model in ("teacher", "bridge"):
        for old, new in zip(
            getattr(method, model).weights,
            getattr(again.method, model).weights,
            strict=True,
        ):
            np.testing.assert_array_equal(np.array(old), np.array(new))
