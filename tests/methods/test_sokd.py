import keras
import numpy as np
import pytest
from keras import ops

import keras_one
from keras_one import methods
from keras_one import models
from keras_one.methods import SOKD


def np_log_softmax(z):
    z = z - z.max(axis=-1, keepdims=True)
    return z - np.log(np.exp(z).sum(axis=-1, keepdims=True))


def np_ce(labels, z):
    return -np_log_softmax(z)[np.arange(len(labels)), labels]


def np_kl(t, s, T=4.0):
    p = np.exp(np_log_softmax(t / T))
    return (T * T) * np.sum(
        p * (np_log_softmax(t / T) - np_log_softmax(s / T)), axis=1
    )


def resnet(num_classes=4, name=None, depth=8):
    return models.cifar_resnet(
        depth,
        num_classes=num_classes,
        num_branches=1,
        input_shape=(8, 8, 1),
        weight_decay=0.0,
        name=name,
    )


def pretrain(model, x, y):
    model.compile(
        optimizer=keras.optimizers.Adam(1e-2),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
    )
    model.fit(x, y, epochs=1, batch_size=32, verbose=0)
    return model


def test_defaults_and_registry():
    method = SOKD(resnet(name="teacher", depth=14))
    assert method.temperature == 4.0 and method.rampup_epochs == 0
    assert method.bridge_from == "stage2_block2_out"  # end of stage 2 of 3
    assert methods.get("sokd") is SOKD
    assert not method.teacher.trainable


@pytest.mark.backend_portable
def test_loss_matches_numpy(tiny_data):
    x, y = tiny_data
    x, y = x[:16], y[:16]
    teacher = resnet(name="teacher")
    method = SOKD(teacher, temperature=3.0)
    student = resnet()
    distiller = keras_one.Distiller(student, method)
    distiller.compile()
    logs = distiller.test_on_batch(x, y, return_dict=True)
    z_s = ops.convert_to_numpy(student(x, training=False))
    z_t = ops.convert_to_numpy(teacher(x, training=False))
    features = keras.Model(
        teacher.input, teacher.get_layer("stage2_block1_out").output
    )(x, training=False)
    z_a = ops.convert_to_numpy(method.bridge(features, training=False))
    expected = {
        "ce": np_ce(y, z_s),
        "kl": np_kl(z_a, z_s, 3.0),
        "bridge_ce": np_ce(y, z_a),
        "bridge_kl_teacher": np_kl(z_t, z_a, 3.0),
        "bridge_kl_student": np_kl(z_s, z_a, 3.0),
    }
    for name, value in expected.items():
        np.testing.assert_allclose(
            logs[name], value.mean(), rtol=1e-5, atol=1e-6
        )
    np.testing.assert_allclose(
        logs["loss"], sum(v.mean() for v in expected.values()), rtol=1e-5
    )


@pytest.mark.backend_portable
def test_detached_terms(gradients):
    rng = np.random.default_rng(0)
    student = keras.Variable(rng.normal(size=(4, 3)))
    bridge = keras.Variable(rng.normal(size=(4, 3)))
    teacher = keras.Variable(rng.normal(size=(4, 3)))
    method = SOKD(resnet(name="teacher"))

    def moves(name):
        """Which of student, bridge, teacher the term `name` moves."""

        def term():
            terms = method.compute_losses(
                np.array([0, 1, 2, 0]),
                {
                    "branch_logits": [student],
                    "bridge_logits": bridge,
                    "teacher_logits": teacher,
                },
                0,
            )
            return ops.sum(terms[name])

        grads = gradients(term, [student, bridge, teacher])
        return [bool(np.any(g)) for g in grads]

    # The student learns from the bridge but does not move it, and back;
    # nothing moves the teacher.
    assert moves("kl") == [True, False, False]
    assert moves("bridge_kl_student") == [False, True, False]
    assert moves("bridge_kl_teacher") == [False, True, False]
    assert moves("bridge_ce") == [False, True, False]


def test_bridge_is_a_fresh_copy_of_the_teachers_last_stage():
    teacher = resnet(name="teacher")
    method = SOKD(teacher)
    keras_one.Distiller(resnet(), method)
    tail = [layer.name for layer in teacher.layers]
    tail = tail[tail.index("stage2_block1_out") + 1 :]
    assert [layer.name for layer in method.bridge.layers[1:]] == tail
    assert method.bridge.trainable_weights
    assert all(v.trainable for v in method.bridge.trainable_weights)
    kernel = method.bridge.get_layer("stage3_block1_conv1").kernel
    teacher_kernel = teacher.get_layer("stage3_block1_conv1").kernel
    assert kernel is not teacher_kernel
    assert not np.allclose(np.array(kernel), np.array(teacher_kernel))


def test_fit_trains_student_and_bridge_keeps_teacher_frozen(tiny_data):
    x, y = tiny_data
    teacher = pretrain(resnet(name="teacher"), x, y)
    before = [np.array(v) for v in teacher.weights]
    method = SOKD(teacher)
    distiller = keras_one.Distiller(resnet(), method)
    bridge_before = [np.array(v) for v in method.bridge.weights]
    distiller.compile(optimizer=keras.optimizers.Adam(1e-2))
    history = distiller.fit(x, y, epochs=4, batch_size=32, verbose=0)
    losses = history.history["loss"]
    assert losses[-1] < 0.8 * losses[0]
    assert history.history["bridge_ce"][-1] < history.history["bridge_ce"][0]
    for old, variable in zip(before, teacher.weights, strict=True):
        np.testing.assert_array_equal(old, np.array(variable))
    # Every bridge weight moves, BatchNormalization statistics included.
    for old, variable in zip(bridge_before, method.bridge.weights, strict=True):
        assert not np.allclose(old, np.array(variable)), variable.path


def test_errors():
    with pytest.raises(ValueError, match="predicts 3 classes.*predicts 4"):
        keras_one.Distiller(resnet(), SOKD(resnet(3, name="teacher")))
    with pytest.raises(ValueError, match="Did you mean"):
        SOKD(resnet(name="teacher"), bridge_from="stage2_block1_ou")
    with pytest.raises(ValueError, match="skip connection"):
        keras_one.Distiller(
            resnet(),
            SOKD(resnet(name="teacher"), bridge_from="stage3_block1_relu1"),
        )
    with pytest.raises(ValueError, match="last layer"):
        SOKD(resnet(name="teacher"), bridge_from="logits")
    inputs = keras.Input((8, 8, 1))
    hidden = keras.layers.Flatten(name="flat")(inputs)
    plain = keras.Model(inputs, keras.layers.Dense(4)(hidden), name="mlp")
    with pytest.raises(ValueError, match="needs bridge_from"):
        SOKD(plain)
    assert SOKD(plain, bridge_from="flat").bridge_from == "flat"


def test_build_student_is_single_branch():
    student = SOKD(resnet(name="teacher")).build_student(
        "resnet8", num_classes=4, input_shape=(8, 8, 1), num_branches=3
    )
    assert not isinstance(student.output, dict)


def test_save_and_load(tiny_data, tmp_path):
    x, y = tiny_data
    teacher = resnet(name="teacher")
    distiller = keras_one.Distiller(resnet(), SOKD(teacher, temperature=2.0))
    distiller.compile(optimizer="adam")
    distiller.fit(x, y, epochs=1, batch_size=96, verbose=0)
    path = str(tmp_path / "sokd.keras")
    distiller.save(path)
    loaded = keras.saving.load_model(path, safe_mode=True)
    method = loaded.method
    assert isinstance(method, SOKD) and method.temperature == 2.0
    assert not method.teacher.trainable and method.bridge.trainable_weights
    for old, new in zip(
        distiller.method.bridge.weights, method.bridge.weights, strict=True
    ):
        np.testing.assert_array_equal(np.array(old), np.array(new))
    for old, new in zip(teacher.weights, method.teacher.weights, strict=True):
        np.testing.assert_array_equal(np.array(old), np.array(new))
    expected = distiller.evaluate(x, y, verbose=0, return_dict=True)
    got = loaded.evaluate(x, y, verbose=0, return_dict=True)
    for name in ("loss", "kl", "bridge_ce", "bridge_kl_teacher"):
        np.testing.assert_allclose(got[name], expected[name], rtol=1e-5)
