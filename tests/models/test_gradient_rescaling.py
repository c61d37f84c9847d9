import numpy as np
import pytest
import tensorflow as tf

from keras_one.layers import GradientScale
from keras_one.models import rescale_trunk_gradient


def trunk_and_branch_gradients(model, x):
    trunk = model.get_layer("stem_conv").kernel
    branch = model.get_layer("branch_1").trainable_variables[0]
    with tf.GradientTape() as tape:
        outputs = model(x, training=False)
        loss = sum(tf.reduce_sum(z * z) for z in outputs["branch_logits"])
    return [g.numpy() for g in tape.gradient(loss, [trunk, branch])]


@pytest.mark.parametrize("scale", [None, 0.5])
def test_scales_only_the_trunk_gradient(make_student, tiny_data, scale):
    x = tiny_data[0][:8]
    student = make_student(num_branches=3, head=None)
    rescaled = rescale_trunk_gradient(student, scale=scale, name="ilr")
    assert rescaled.name == "ilr"
    layer = rescaled.get_layer("trunk_gradient_scale")
    assert isinstance(layer, GradientScale)
    assert layer.scale == pytest.approx(1 / 3 if scale is None else scale)
    # Same layers and weights, same outputs.
    assert rescaled.count_params() == student.count_params()
    for a, b in zip(
        student(x)["branch_logits"], rescaled(x)["branch_logits"], strict=True
    ):
        np.testing.assert_array_equal(a, b)
    trunk, branch = trunk_and_branch_gradients(student, x)
    trunk_scaled, branch_scaled = trunk_and_branch_gradients(rescaled, x)
    np.testing.assert_allclose(
        trunk_scaled, layer.scale * trunk, rtol=1e-4, atol=1e-6
    )
    np.testing.assert_allclose(branch_scaled, branch, rtol=1e-6)


def test_needs_a_shared_trunk(make_student):
    with pytest.raises(ValueError, match="no shared trunk"):
        rescale_trunk_gradient(make_student(num_branches=2, branch_stage=0))
