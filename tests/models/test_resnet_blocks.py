import keras
import pytest

from keras_one.models import resnet_blocks


def test_cifar_stages_and_blocks():
    assert resnet_blocks.cifar_stages(20) == [
        (16, 3, 1),
        (32, 3, 2),
        (64, 3, 2),
    ]
    assert resnet_blocks.cifar_stages(8, widths=(4, 8, 16)) == [
        (4, 1, 1),
        (8, 1, 2),
        (16, 1, 2),
    ]
    assert resnet_blocks.cifar_block(32) == "basic"
    assert resnet_blocks.cifar_block(44) == "bottleneck"
    with pytest.raises(ValueError, match="6n \\+ 2"):
        resnet_blocks.cifar_stages(21)


def block_layers(block, channels, filters, strides):
    conv, batch_norm = resnet_blocks.plain_layers()
    inputs = keras.Input((8, 8, channels))
    outputs = resnet_blocks.residual_block(
        inputs, channels, filters, strides, block, conv, batch_norm, "b"
    )
    model = keras.Model(inputs, outputs)
    return model, {layer.name: layer for layer in model.layers}


def test_basic_block():
    model, layers = block_layers("basic", 4, 4, 1)
    assert tuple(model.output.shape) == (None, 8, 8, 4)
    convs = [name for name in layers if "conv" in name]
    assert convs == ["b_conv1", "b_conv2"]
    assert "b_down" not in layers  # identity shortcut
    model, layers = block_layers("basic", 4, 8, 2)
    assert tuple(model.output.shape) == (None, 4, 4, 8)
    assert layers["b_conv1"].strides == (2, 2)
    assert layers["b_down"].strides == (2, 2)
    assert layers["b_down"].kernel_size == (1, 1)


def test_bottleneck_block():
    model, layers = block_layers("bottleneck", 16, 4, 1)
    assert tuple(model.output.shape) == (None, 8, 8, 16)
    sizes = [layers[f"b_conv{k}"].kernel_size for k in (1, 2, 3)]
    assert sizes == [(1, 1), (3, 3), (1, 1)]
    assert "b_down" not in layers
    model, layers = block_layers("bottleneck", 16, 8, 2)
    assert tuple(model.output.shape) == (None, 4, 4, 32)
    assert layers["b_conv2"].strides == (2, 2)
    assert layers["b_down"].filters == 32


def test_stage_reports_one_network_channels():
    conv, batch_norm = resnet_blocks.plain_layers(fused_batch_norm=False)
    inputs = keras.Input((8, 8, 16))
    outputs, channels = resnet_blocks.residual_stage(
        inputs, 16, 8, 2, 2, "bottleneck", conv, batch_norm, "stage2"
    )
    assert channels == 32 == outputs.shape[-1]
    model = keras.Model(inputs, outputs)
    names = [layer.name for layer in model.layers]
    assert "stage2_block2_out" in names and "stage2_block1_down" in names
    assert "stage2_block2_down" not in names
    assert all(
        type(layer).__module__.startswith("keras.") for layer in model.layers
    )
