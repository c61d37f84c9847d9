import keras
import numpy as np
import pytest

import keras_one
from keras_one.models import make_multi_branch
from keras_one.models import split_points


def small_cnn():
    return keras.Sequential(
        [
            keras.Input((12, 12, 3)),
            keras.layers.Conv2D(8, 3, activation="relu", name="conv1"),
            keras.layers.Conv2D(8, 3, activation="relu", name="conv2"),
            keras.layers.GlobalAveragePooling2D(name="pool"),
            keras.layers.Dense(5, name="classifier"),
        ],
        name="small_cnn",
    )


def test_small_cnn():
    base = small_cnn()
    net = make_multi_branch(base, "conv1", num_branches=3)
    out = net.output
    assert len(out["branch_logits"]) == 3
    assert tuple(out["branch_features"][0].shape) == (None, 8)
    assert tuple(out["branch_feature_maps"][0].shape) == (None, 8, 8, 8)
    assert tuple(out["ensemble_logits"].shape) == (None, 5)
    x = np.random.default_rng(0).normal(size=(4, 12, 12, 3)).astype("float32")
    logits = net(x)["branch_logits"]
    assert not np.allclose(logits[0], logits[1])  # fresh branch weights
    # The trunk is shared with the original model, not copied.
    assert net.get_layer("conv1") is base.get_layer("conv1")
    # Branch 0 alone computes what the original tail computes with its
    # weights.
    branch = net.get_layer("branch_0")
    tail_weights = [w.numpy() for w in branch.weights]
    base.get_layer("conv2").set_weights(tail_weights[:2])
    base.get_layer("classifier").set_weights(tail_weights[2:])
    np.testing.assert_allclose(logits[0], base(x), rtol=1e-5, atol=1e-5)


def test_mobilenet_v2_trains_with_one():
    base = keras.applications.MobileNetV2(
        input_shape=(32, 32, 3),
        alpha=0.35,
        weights=None,
        classes=4,
        classifier_activation=None,
    )
    net = make_multi_branch(base, "block_13_expand_relu", num_branches=2)
    assert len(net.output["branch_logits"]) == 2
    distiller = keras_one.Distiller(net, keras_one.methods.ONE())
    distiller.compile(optimizer="adam")
    rng = np.random.default_rng(0)
    x = rng.normal(size=(8, 32, 32, 3)).astype("float32")
    y = rng.integers(0, 4, 8)
    distiller.steps_per_epoch = 1  # ONE's ramp-up counts epochs of steps
    logs = distiller.train_on_batch(x, y, return_dict=True)
    assert np.isfinite(logs["loss"]) and "branch_1_accuracy" in logs


def test_unknown_split_layer():
    with pytest.raises(ValueError, match="No layer named 'conv3'.*conv1"):
        make_multi_branch(small_cnn(), "conv3")


def test_too_few_branches():
    with pytest.raises(ValueError, match="at least 2 branches"):
        make_multi_branch(small_cnn(), "conv1", num_branches=1)


def test_probabilities_instead_of_logits():
    base = keras.Sequential(
        [
            keras.Input((4,)),
            keras.layers.Dense(8, name="hidden"),
            keras.layers.Dense(3, activation="softmax", name="out"),
        ]
    )
    with pytest.raises(ValueError, match="activation=None"):
        make_multi_branch(base, "hidden")


def test_split_inside_a_residual_block():
    inputs = keras.Input((6,))
    hidden = keras.layers.Dense(6, name="a")(inputs)
    inner = keras.layers.Dense(6, name="b")(hidden)
    added = keras.layers.Add(name="add")([inner, inputs])
    outputs = keras.layers.Dense(3, name="out")(added)
    model = keras.Model(inputs, outputs)
    with pytest.raises(ValueError, match="skip connection crosses"):
        make_multi_branch(model, "a")
    # Split after the block: the skip connection stays in the trunk.
    net = make_multi_branch(model, "add", head="mean")
    x = np.random.default_rng(0).normal(size=(4, 6)).astype("float32")
    outputs = net(x)
    branch_logits = np.stack(outputs["branch_logits"])
    assert branch_logits.shape == (3, 4, 3)
    np.testing.assert_allclose(
        outputs["ensemble_logits"], branch_logits.mean(axis=0), atol=1e-6
    )
    # Branch 0 is the tail on the shared block's output.
    model.get_layer("out").set_weights(net.get_layer("branch_0").get_weights())
    np.testing.assert_allclose(branch_logits[0], model(x), atol=1e-6)


def test_one_view_per_branch():
    base = small_cnn()
    net = make_multi_branch(
        base, "conv1", num_branches=2, head="linear_fusion", views=2
    )
    assert [x.name for x in net.inputs] == ["view_0", "view_1"]
    # One trunk for both views: the weights of a one-input network.
    one_input = make_multi_branch(
        small_cnn(), "conv1", num_branches=2, head="linear_fusion"
    )
    assert net.count_params() == one_input.count_params()
    rng = np.random.default_rng(0)
    x = rng.normal(size=(2, 4, 12, 12, 3)).astype("float32")
    logits = net((x[0], x[1]))["branch_logits"]
    # Branch i reads view i only: its logits follow that view alone.
    changed = net((x[0], x[1] + 1.0))["branch_logits"]
    np.testing.assert_array_equal(changed[0], logits[0])
    assert not np.allclose(changed[1], logits[1])
    branch = net.get_layer("branch_1")
    trunk = net.get_layer("trunk")
    np.testing.assert_allclose(
        branch(trunk(x[1]))["logits"], logits[1], rtol=1e-5, atol=1e-5
    )


def nested_classifier():
    """A classifier using a residual functional backbone as one layer."""
    image = keras.Input((12, 12, 3), name="image")
    x = keras.layers.Conv2D(4, 3, padding="same", name="stem")(image)
    y = keras.layers.Conv2D(4, 3, padding="same", name="block_conv")(x)
    x = keras.layers.Add(name="block_out")([x, y])
    x = keras.layers.Conv2D(6, 3, strides=2, name="down")(x)
    backbone = keras.Model(image, x, name="backbone")
    inputs = keras.Input((12, 12, 3), name="pixels")
    pooled = keras.layers.GlobalAveragePooling2D(name="pool")(backbone(inputs))
    return keras.Model(inputs, keras.layers.Dense(5, name="logits")(pooled))


def test_split_inside_and_after_a_nested_backbone():
    base = nested_classifier()
    assert split_points(base) == [
        "pixels",
        "backbone/stem",  # (no skip crosses it: the Add reads it)
        "backbone/block_out",
        "backbone",
        "pool",
    ]
    x = np.random.default_rng(0).normal(size=(2, 12, 12, 3)).astype("float32")
    inside = make_multi_branch(base, "backbone/block_out", head="mean")
    # The trunk runs the backbone's own layers (shared weights); each
    # branch starts with a fresh copy of the rest of it.
    assert inside.get_layer("stem") is base.get_layer("backbone").get_layer(
        "stem"
    )
    branch = inside.get_layer("branch_0")
    assert [w.shape for w in branch.weights] == [
        (3, 3, 4, 6),
        (6,),
        (6, 5),
        (5,),
    ]
    assert tuple(inside.output["branch_feature_maps"][0].shape) == (
        None,
        5,
        5,
        6,
    )
    # Branch 0 is the original tail with its weights.
    backbone = base.get_layer("backbone")
    backbone.get_layer("down").set_weights(branch.get_weights()[:2])
    base.get_layer("logits").set_weights(branch.get_weights()[2:])
    np.testing.assert_allclose(
        inside(x)["branch_logits"][0], base(x), rtol=1e-5, atol=1e-5
    )
    after = make_multi_branch(base, "backbone", num_branches=2)
    assert tuple(after.output["shared_features"].shape) == (None, 5, 5, 6)
    assert len(after.get_layer("branch_1").weights) == 2  # the Dense only


def test_nested_split_errors_name_the_fix():
    base = nested_classifier()
    with pytest.raises(ValueError, match=r"Did you mean one of \['backbone/"):
        make_multi_branch(base, "block_out")
    with pytest.raises(
        ValueError, match=r"skip connection.*Valid split points.*block_out"
    ):
        make_multi_branch(base, "backbone/block_conv")
    with pytest.raises(ValueError, match="last layer.*Valid split points"):
        make_multi_branch(base, "logits")
    with pytest.raises(TypeError, match="name of a layer"):
        make_multi_branch(base, 3)


def test_split_inside_a_model_nested_twice():
    # A classifier whose backbone reads the classifier's own input, called
    # on a tensor of an outer model (a keras-hub teacher): each nested model
    # is traced on inputs of its own, with no clash of their names.
    classifier = nested_classifier()
    images = keras.Input((12, 12, 3), name="images")
    scaled = keras.layers.Rescaling(2.0, name="scale")(images)
    outer = keras.Model(images, classifier(scaled), name="outer")
    nested = f"{classifier.name}/backbone/block_out"
    assert nested in split_points(outer)
    net = make_multi_branch(outer, nested, num_branches=2, head="mean")
    x = np.random.default_rng(0).normal(size=(2, 12, 12, 3)).astype("float32")
    outputs = net(x)
    assert np.asarray(outputs["ensemble_logits"]).shape == (2, 5)
    # The trunk is the outer model's layers up to the split, shared.
    trunk = keras.Model(net.input, net.output["shared_features"])
    backbone = classifier.get_layer("backbone")
    expected = keras.Model(
        backbone.input, backbone.get_layer("block_out").output
    )
    np.testing.assert_allclose(
        trunk(x), expected(2.0 * x), rtol=1e-5, atol=1e-5
    )
