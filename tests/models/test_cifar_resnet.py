import keras
import pytest

from keras_one import models
from keras_one.models import cifar_resnet


def basic_resnet_params(depth, num_classes):
    """Trainable parameters of a basic-block CIFAR ResNet, by hand."""

    def conv(k, c_in, c_out):
        return k * k * c_in * c_out

    def bn(c):
        return 2 * c

    n = (depth - 2) // 6
    total = conv(3, 3, 16) + bn(16)
    c_in = 16
    for width in (16, 32, 64):
        for _ in range(n):
            total += conv(3, c_in, width) + bn(width)
            total += conv(3, width, width) + bn(width)
            if c_in != width:
                total += conv(1, c_in, width) + bn(width)
            c_in = width
    return total + 64 * num_classes + num_classes


def trainable(model):
    return sum(int(keras.ops.size(w)) for w in model.trainable_weights)


@pytest.mark.parametrize("depth", [8, 20, 32])
def test_single_branch_parameter_count(depth):
    model = cifar_resnet(depth, num_classes=10, num_branches=1)
    assert trainable(model) == basic_resnet_params(depth, 10)
    assert tuple(model.output.shape) == (None, 10)


def test_bottleneck_from_depth_44():
    model = cifar_resnet(56, num_classes=100, num_branches=1)
    names = {layer.name for layer in model.layers}
    assert "stage3_block9_conv3" in names
    assert model.get_layer("avg_pool").output.shape[-1] == 256


def test_one_network_replicates_the_last_stage():
    net = cifar_resnet(20, num_classes=10, num_branches=3)
    single = cifar_resnet(20, num_classes=10, num_branches=1)
    branch = net.get_layer("branch_0")
    assert "stage3_block1_conv1" in {layer.name for layer in branch.layers}
    gate = net.get_layer("gated_ensemble")
    assert gate.gate_dense.kernel.shape == (32, 3)  # stage-2 features
    stage3 = trainable(branch)
    trunk = trainable(single) - stage3
    assert trainable(net) == trunk + 3 * stage3 + trainable(gate)
    assert len(net.output["branch_logits"]) == 3


def test_branch_stage_zero_gives_independent_networks():
    net = cifar_resnet(8, num_classes=4, num_branches=2, branch_stage=0)
    single = cifar_resnet(8, num_classes=4, num_branches=1)
    gate = net.get_layer("gated_ensemble")
    assert trainable(net) == 2 * trainable(single) + trainable(gate)


def test_bad_depth():
    with pytest.raises(ValueError, match="6n \\+ 2"):
        cifar_resnet(21)
    # By name, refused when the name is looked up, before any building.
    with pytest.raises(ValueError, match="6n \\+ 2"):
        models.get("resnet7")
    assert models.get("ResNet-20").args == (20,)


@pytest.mark.backend_portable
def test_classifiers_start_as_pytorch_linear_layers():
    # The official codes leave nn.Linear at PyTorch's default: a kernel
    # uniform within 1/sqrt(fan_in) (64 features here: 0.125), where
    # Keras' glorot_uniform would reach sqrt(6 / (64 + 10)) = 0.285.
    keras.utils.set_random_seed(0)
    model = cifar_resnet(20, num_classes=10, num_branches=3)
    kernels = [
        w for w in model.weights if "logits" in w.path and "kernel" in w.path
    ]
    assert len(kernels) == 3
    for kernel in kernels:
        values = keras.ops.convert_to_numpy(kernel)
        assert values.shape == (64, 10)
        assert 0.12 < abs(values).max() <= 0.125
    assert not any(
        keras.ops.convert_to_numpy(w).any()
        for w in model.weights
        if "logits" in w.path and "bias" in w.path
    )
