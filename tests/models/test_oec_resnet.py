import keras
import numpy as np
import pytest

from keras_one import models
from keras_one.models import oec_resnet


def np_resnet_parameters(widths, blocks, in_channels=16):
    """Parameters of the basic-block stages and classifier, counted by hand.

    Convolutions have no bias; BatchNormalization holds 4 values per
    channel (gamma, beta, moving mean and variance); a block whose width
    or resolution changes has a 1x1 projection shortcut with its own
    BatchNormalization.
    """
    total, channels = 0, in_channels
    for stage, width in enumerate(widths):
        for index in range(blocks):
            strides = 2 if stage > 0 and index == 0 else 1
            total += 9 * channels * width + 4 * width
            total += 9 * width * width + 4 * width
            if strides != 1 or channels != width:
                total += channels * width + 4 * width
            channels = width
    return total


def test_students_have_the_papers_widths():
    net = oec_resnet(
        20, num_classes=100, num_students=5, input_shape=(32, 32, 3)
    )
    widths = [
        [feature.shape[-1] for feature in student]
        for student in net.output["branch_stage_features"]
    ]
    assert widths == [
        [16, 32, 64],
        [12, 25, 51],
        [9, 19, 38],
        [6, 12, 25],
        [3, 6, 12],
    ]
    assert len(net.output["branch_logits"]) == 5
    assert tuple(net.output["ensemble_logits"].shape) == (None, 100)
    assert tuple(net.output["shared_features"].shape) == (None, 32, 32, 16)


def test_parameter_counts_match_a_hand_count():
    depth, num_classes, students = 14, 10, 4  # two blocks per stage
    net = oec_resnet(
        depth,
        num_classes=num_classes,
        num_students=students,
        input_shape=(16, 16, 3),
    )
    stem = 9 * 3 * 16 + 4 * 16
    expected = stem
    for j in range(students):
        widths = [int(w * (students - j) / students) for w in (16, 32, 64)]
        expected += np_resnet_parameters(widths, blocks=2)
        expected += widths[-1] * num_classes + num_classes
    assert net.count_params() == expected
    # The widest student is the plain CIFAR ResNet of that depth.
    plain = models.cifar_resnet(
        depth, num_classes=num_classes, num_branches=1, input_shape=(16, 16, 3)
    )
    widest = keras.Model(net.input, net.output["branch_logits"][0])
    assert widest.count_params() == plain.count_params()


def test_trains_and_averages_with_the_mean_head(tiny_data):
    x, y = tiny_data
    net = oec_resnet(8, num_classes=4, num_students=3, input_shape=(8, 8, 1))
    outputs = net(x[:8], training=False)
    np.testing.assert_allclose(
        np.asarray(outputs["ensemble_logits"]),
        np.mean([np.asarray(z) for z in outputs["branch_logits"]], axis=0),
        rtol=1e-5,
        atol=1e-6,
    )
    gated = oec_resnet(
        8, num_classes=4, num_students=3, head="gate", input_shape=(8, 8, 1)
    )
    assert "gate_weights" in gated.output


def test_errors():
    with pytest.raises(ValueError, match="6n \\+ 2"):
        oec_resnet(10)
    with pytest.raises(ValueError, match="at least 2 students"):
        oec_resnet(8, num_students=1)
