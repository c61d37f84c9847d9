"""keras-hub and keras.applications classifiers as multi-branch students.

The keras-hub models are tiny configurations with random weights: no
download.
"""

import subprocess
import sys

import keras
import numpy as np
import pytest

import keras_one
from keras_one.models import external_network
from keras_one.models import make_multi_branch
from keras_one.models import split_points

# The tests install keras-hub without its dependencies (see setup.py).
keras_hub = pytest.importorskip("keras_hub")

H = keras_hub.models


def resnet_classifier(image_shape=(32, 32, 3)):
    backbone = H.ResNetBackbone(
        input_conv_filters=[64],
        input_conv_kernel_sizes=[3],
        stackwise_num_filters=[64, 64, 64],
        stackwise_num_blocks=[1, 1, 1],
        stackwise_num_strides=[1, 2, 2],
        block_type="basic_block",
        image_shape=image_shape,
    )
    return H.ResNetImageClassifier(backbone, num_classes=5)


def efficientnet_classifier():
    backbone = H.EfficientNetBackbone(
        width_coefficient=0.25,
        depth_coefficient=0.25,
        stackwise_kernel_sizes=[3, 3, 3],
        stackwise_num_repeats=[1, 1, 1],
        stackwise_input_filters=[32, 16, 24],
        stackwise_output_filters=[16, 24, 40],
        stackwise_expansion_ratios=[1, 2, 2],
        stackwise_strides=[1, 2, 2],
        stackwise_block_types=["v1"] * 3,
        stackwise_squeeze_and_excite_ratios=[0.25] * 3,
        stackwise_force_input_filters=[0] * 3,
        stackwise_nores_option=[False] * 3,
        min_depth=None,
        use_depth_divisor_as_min_depth=True,
        cap_round_filter_decrease=True,
        dropout=0,
        num_features=64,
        input_shape=(32, 32, 3),
    )
    return H.EfficientNetImageClassifier(backbone, num_classes=5)


def mobilenet_classifier():
    backbone = H.MobileNetBackbone(
        stackwise_expansion=[[16], [24, 24]],
        stackwise_num_blocks=[1, 2],
        stackwise_num_filters=[[8], [16, 16]],
        stackwise_kernel_size=[[3], [3, 3], [1]],
        stackwise_num_strides=[[2], [2, 1], [1]],
        stackwise_se_ratio=[[None], [0.25, 0.25]],
        stackwise_activation=[["relu"], ["hard_swish", "hard_swish"]],
        stackwise_padding=[[1], [1, 1], [1]],
        output_num_filters=32,
        depthwise_filters=8,
        depthwise_stride=2,
        depthwise_residual=False,
        last_layer_filter=32,
        squeeze_and_excite=0.5,
        input_num_filters=8,
        image_shape=(32, 32, 3),
    )
    return H.MobileNetImageClassifier(backbone, num_classes=5, num_features=32)


def vit_classifier():
    backbone = H.ViTBackbone(
        image_shape=(32, 32, 3),
        patch_size=8,
        num_layers=2,
        num_heads=2,
        hidden_dim=8,
        mlp_dim=16,
    )
    return H.ViTImageClassifier(backbone, num_classes=5)


IMAGES = np.random.default_rng(0).uniform(size=(2, 32, 32, 3)).astype("float32")


def test_split_a_keras_hub_resnet_inside_and_after_its_backbone(tmp_path):
    base = resnet_classifier()
    assert "res_net_backbone/stack1_block0_out" in split_points(base)
    # The case: right after the nested backbone.
    after = make_multi_branch(base, "res_net_backbone", num_branches=2)
    assert tuple(after.output["shared_features"].shape) == (None, 2, 2, 64)
    inside = make_multi_branch(
        base, "res_net_backbone/stack1_block0_out", num_branches=2
    )
    outputs = inside(IMAGES)
    assert np.asarray(outputs["ensemble_logits"]).shape == (2, 5)
    # Branch weights are fresh: the two branches disagree.
    assert not np.allclose(*outputs["branch_logits"])
    path = str(tmp_path / "student.keras")
    inside.save(path)
    again = keras.saving.load_model(path, safe_mode=True)
    np.testing.assert_allclose(
        again(IMAGES)["ensemble_logits"], outputs["ensemble_logits"], atol=1e-5
    )
    with pytest.raises(ValueError, match="skip connection.*stack"):
        make_multi_branch(base, "res_net_backbone/stack2_block0_1_conv")


@pytest.mark.parametrize(
    "build", [efficientnet_classifier, mobilenet_classifier, vit_classifier]
)
def test_keras_hub_classifiers_become_one_students(build):
    student = external_network(build(), num_branches=2, weight_decay=1e-4)
    outputs = student(IMAGES)
    assert np.asarray(outputs["ensemble_logits"]).shape == (2, 5)
    assert len(outputs["branch_logits"]) == 2
    assert student.losses  # the L2 penalty of the built-in layers


def test_weight_decay_keeps_the_weights_and_trains_with_one():
    base = resnet_classifier()
    decayed = external_network(base, num_branches=1, weight_decay=1e-4)
    np.testing.assert_allclose(decayed(IMAGES), base(IMAGES), atol=1e-5)
    assert len(decayed.losses) > 0 and not base.losses
    method = keras_one.methods.ONE()
    student = external_network(base, num_branches=2, head=method.head)
    distiller = keras_one.Distiller(student, method)
    distiller.compile(optimizer="sgd")
    distiller.steps_per_epoch = 1
    logs = distiller.train_on_batch(IMAGES, np.array([0, 3]), return_dict=True)
    assert np.isfinite(logs["loss"]) and "branch_1_accuracy" in logs


def test_models_get_names():
    student = keras_one.models.get("applications:MobileNetV2")(
        num_classes=3, input_shape=(32, 32, 3), num_branches=2, head="mean"
    )
    # The default split: the end of the second-to-last resolution.
    assert student.get_layer("block_13_expand_relu").output is not None
    assert "block_13_depthwise" not in [layer.name for layer in student.layers]
    with pytest.raises(ValueError, match="Did you mean.*'MobileNetV2'"):
        keras_one.models.get("applications:MobileNetV9")
    with pytest.raises(ValueError, match="Did you mean.*'resnet_18_imagenet'"):
        keras_one.models.get("hub:resnet_18_imagenett")
    with pytest.raises(ValueError, match="write 'hub:<keras-hub preset>'"):
        keras_one.models.get("torch:resnet18")


def test_hub_preset_folder_and_offline_preset(tmp_path):
    base = resnet_classifier(image_shape=(None, None, 3))
    base.save_to_preset(str(tmp_path / "preset"))
    build = keras_one.models.get(f"hub:{tmp_path / 'preset'}")
    student = build(num_classes=4, input_shape=(32, 32, 3), num_branches=2)
    assert np.asarray(student(IMAGES)["ensemble_logits"]).shape == (2, 4)


def test_a_preset_that_cannot_download_fails_in_one_line(monkeypatch):
    def offline(*args, **kwargs):
        raise ConnectionError("Max retries exceeded\nmore lines")

    monkeypatch.setattr(H.ImageClassifier, "from_preset", offline)
    with pytest.raises(ValueError, match="could not be downloaded.*local"):
        keras_one.models.get("hub:resnet_18_imagenet")(
            num_classes=4, input_shape=(32, 32, 3), num_branches=1
        )


def test_without_keras_hub_import_works_and_hub_refuses():
    # keras-hub hidden: `import keras_hub` raises ImportError.
    script = (
        "import sys; sys.modules['keras_hub'] = None\n"
        "import keras_one\n"
        "keras_one.models.get('applications:MobileNetV2')\n"
        "try:\n"
        "    keras_one.models.get('hub:resnet_18_imagenet')\n"
        "except ImportError as error:\n"
        "    print(error)\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert "pip install keras-one[hub]" in result.stdout
