import os
import subprocess
import sys

import keras
import numpy as np
import pytest

from keras_one import Distiller
from keras_one import methods
from keras_one.models import FusedBranches
from keras_one.models import cifar_resnet

SHAPE = (8, 8, 1)


def pair(branch_stage=3, num_branches=3, head="gate", depth=8):
    """An N-copy student and a fused one holding the same weights."""
    kwargs = dict(
        depth=depth,
        num_classes=4,
        num_branches=num_branches,
        branch_stage=branch_stage,
        head=head,
        input_shape=SHAPE,
    )
    copies = cifar_resnet(**kwargs)
    fused = cifar_resnet(fused=True, **kwargs)
    layer = fused.get_layer("fused_branches")
    for index in range(num_branches):
        layer.set_branch_weights(index, copies.get_layer(f"branch_{index}"))
    for source in copies.layers:
        if not source.name.startswith("branch_") and source.weights:
            fused.get_layer(source.name).set_weights(source.get_weights())
    return copies, fused


def images(n=6, seed=0):
    return np.random.default_rng(seed).normal(size=(n, *SHAPE)).astype("f4")


def assert_same_outputs(a, b, x, training, atol=1e-5, rtol=1e-5):
    out_a, out_b = a(x, training=training), b(x, training=training)
    assert sorted(out_a) == sorted(out_b)
    for key in ("branch_logits", "branch_features", "branch_feature_maps"):
        for p, q in zip(out_a[key], out_b[key], strict=True):
            np.testing.assert_allclose(p, q, rtol=rtol, atol=atol)
    if "ensemble_logits" in out_a:
        np.testing.assert_allclose(
            out_a["ensemble_logits"], out_b["ensemble_logits"], atol=atol
        )


def trainable_count(model):
    return sum(int(np.prod(w.shape)) for w in model.trainable_weights)


def test_shapes_and_weight_counts():
    shared = keras.Input((8, 8, 16))
    layer = FusedBranches(
        3, stages=[(32, 2, 2)], num_classes=5, input_shape=(8, 8, 16)
    )
    outputs = layer(shared)
    assert [tuple(z.shape) for z in outputs["logits"]] == [(None, 5)] * 3
    assert [tuple(f.shape) for f in outputs["features"]] == [(None, 32)] * 3
    maps = [tuple(f.shape) for f in outputs["feature_maps"]]
    assert maps == [(None, 4, 4, 32)] * 3
    # 2 blocks x 2 convs, 1 projection: 5 kernels, 5 BNs (gamma, beta), and
    # the classifiers' kernel and bias.
    assert len(layer.trainable_weights) == 5 + 5 * 2 + 2
    assert len(layer.non_trainable_weights) == 5 * 2


@pytest.mark.parametrize("branch_stage", [0, 2, 3])
def test_identical_to_n_copies(branch_stage):
    copies, fused = pair(branch_stage=branch_stage)
    assert trainable_count(fused) == trainable_count(copies)
    assert sum(int(np.prod(w.shape)) for w in fused.weights) == sum(
        int(np.prod(w.shape)) for w in copies.weights
    )
    for training in (False, True):
        assert_same_outputs(copies, fused, images(), training)
    # The regularization penalties add up to the same total.
    np.testing.assert_allclose(
        keras.ops.sum(fused.losses), keras.ops.sum(copies.losses), rtol=1e-5
    )


def test_identical_training_to_n_copies(tiny_data):
    x, y = tiny_data
    copies, fused = pair()
    distillers = []
    for student in (copies, fused):
        distiller = Distiller(student, methods.ONE(rampup_epochs=2))
        distiller.compile(
            optimizer=keras.optimizers.SGD(0.1, momentum=0.9, nesterov=True)
        )
        history = distiller.fit(
            x, y, batch_size=32, epochs=2, shuffle=False, verbose=0
        )
        distillers.append((distiller, history.history))
    (_, copies_history), (_, fused_history) = distillers
    np.testing.assert_allclose(
        copies_history["loss"], fused_history["loss"], rtol=2e-6
    )
    # Same weights (and BatchNorm statistics) after training, up to the
    # float32 rounding that 6 steps of training amplify: 1.7e-4 at most on
    # outputs up to 22 (measured), so an absolute 5e-4 everywhere. Float64
    # would be tighter, but TensorFlow has no float64 gradient of grouped
    # convolutions on the CPU.
    assert_same_outputs(
        copies, fused, images(), training=False, atol=5e-4, rtol=0
    )


def test_bottleneck_blocks_match_their_plain_form():
    layer = FusedBranches(
        2,
        stages=[(4, 2, 2)],
        num_classes=3,
        input_shape=(8, 8, 8),
        block="bottleneck",
        name="fb",
    )
    x = np.random.default_rng(0).normal(size=(4, 8, 8, 8)).astype("f4")
    outputs = layer(x, training=False)
    for index in range(2):
        branch = layer.branch_model(index)
        assert branch.get_layer("stage1_block1_conv3").filters == 16
        plain = branch(x, training=False)
        np.testing.assert_allclose(
            plain["logits"], outputs["logits"][index], rtol=1e-5, atol=1e-5
        )
        np.testing.assert_allclose(
            plain["feature_map"],
            outputs["feature_maps"][index],
            rtol=1e-5,
            atol=1e-5,
        )


def test_branches_are_initialized_independently_with_fan_out():
    layer = FusedBranches(
        3, stages=[(64, 1, 1)], num_classes=10, input_shape=(8, 8, 32)
    )
    slices = [
        keras.ops.convert_to_numpy(
            layer.branch_model(i).get_layer("stage1_block1_conv2").kernel
        )
        for i in range(3)
    ]
    assert not np.allclose(slices[0], slices[1])
    # He-normal with the fan-out of one branch: std = sqrt(2 / (3 * 3 * 64)).
    for piece in slices:
        assert abs(piece.std() / np.sqrt(2 / (9 * 64)) - 1) < 0.05


def test_serialization_round_trip(tmp_path):
    _, fused = pair()
    x = images()
    fused.save(tmp_path / "fused.keras")
    loaded = keras.saving.load_model(tmp_path / "fused.keras")
    assert_same_outputs(fused, loaded, x, training=False, atol=1e-6)
    config = fused.get_layer("fused_branches").get_config()
    rebuilt = FusedBranches.from_config(config)
    assert rebuilt.get_config() == config


def test_export_of_a_branch_is_plain_keras(tmp_path):
    copies, fused = pair()
    distiller = Distiller(fused, methods.ONE())
    x = images()
    for index in (0, 2):
        branch = distiller.get_branch_model(index)
        modules = {
            type(layer).__module__.split(".")[0]
            for layer in _all_layers(branch)
        }
        assert modules == {"keras"}
        expected = fused(x, training=False)["branch_logits"][index]
        np.testing.assert_allclose(branch(x), expected, rtol=1e-5, atol=1e-5)
        # The same layer names as the N-copy student's branch.
        names = {layer.name for layer in _all_layers(branch)}
        assert "stage3_block1_conv1" in names
        path = tmp_path / f"branch_{index}.keras"
        branch.save(path)
        reloaded = keras.saving.load_model(path, custom_objects={})
        np.testing.assert_allclose(reloaded(x), expected, rtol=1e-5, atol=1e-5)
    # An exported branch computes only its own branch: its parameters are
    # those of one single-branch network.
    single = cifar_resnet(8, num_classes=4, num_branches=1, input_shape=SHAPE)
    assert trainable_count(distiller.get_branch_model(1)) == trainable_count(
        single
    )
    ensemble = distiller.get_ensemble_model()
    np.testing.assert_allclose(
        ensemble(x),
        fused(x, training=False)["ensemble_logits"],
        rtol=1e-5,
        atol=1e-5,
    )


def _all_layers(model):
    for layer in model.layers:
        yield layer
        if isinstance(layer, keras.Model):
            yield from _all_layers(layer)


def test_errors():
    shape = (4, 4, 2)
    with pytest.raises(ValueError, match="block must be one of"):
        FusedBranches(2, [(4, 1, 1)], 3, shape, block="dense")
    with pytest.raises(ValueError, match="num_branches >= 1"):
        FusedBranches(0, [(4, 1, 1)], 3, shape)
    with pytest.raises(ValueError, match="stages must be"):
        FusedBranches(2, [(4, 1)], 3, shape)
    with pytest.raises(ValueError, match="input_shape must be"):
        FusedBranches(2, [(4, 1, 1)], 3, (5,))
    copies, fused = pair()
    layer = fused.get_layer("fused_branches")
    with pytest.raises(ValueError, match="out of range"):
        layer.set_branch_weights(3, copies.get_layer("branch_0"))
    other = cifar_resnet(
        8, num_classes=5, num_branches=2, input_shape=SHAPE
    ).get_layer("branch_0")
    with pytest.raises(ValueError, match="weights of shapes"):
        layer.set_branch_weights(0, other)


BACKEND_SCRIPT = """
import keras_one
from keras_one.layers import FusedConv2D
from keras_one.models import cifar_resnet

cifar_resnet(8, input_shape=(8, 8, 1))  # N copies build on every backend
builders = [lambda: cifar_resnet(8, fused=True), lambda: FusedConv2D(2, 4, 3)]
for build in builders:
    try:
        build()
    except NotImplementedError as error:
        print("error:", error)
"""


@pytest.mark.slow
def test_other_backends_get_one_clear_error():
    # JAX stands for every backend but TensorFlow (PyTorch takes the same
    # path).
    backend = "jax"
    result = subprocess.run(
        [sys.executable, "-c", BACKEND_SCRIPT],
        env={**os.environ, "KERAS_BACKEND": backend},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    errors = [line for line in result.stdout.splitlines() if "error:" in line]
    assert len(errors) == 2
    for error in errors:
        assert "needs the TensorFlow backend" in error
        assert f"runs on {backend!r}" in error
        assert "cifar_resnet(..., fused=False)" in error
