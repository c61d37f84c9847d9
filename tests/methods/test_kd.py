import warnings

import keras
import numpy as np
import pytest
from keras import ops

import keras_one
from keras_one import methods
from keras_one import models
from keras_one.methods import KD


def np_log_softmax(z):
    z = z - z.max(axis=-1, keepdims=True)
    return z - np.log(np.exp(z).sum(axis=-1, keepdims=True))


def np_kd_terms(labels, student_logits, teacher_logits, alpha=0.9, T=4.0):
    """Hinton's KD written from the paper; batch means of CE and KL."""
    n = len(labels)
    student_logits = np.asarray(student_logits, "float64")
    teacher_logits = np.asarray(teacher_logits, "float64")
    ce = -np_log_softmax(student_logits)[np.arange(n), labels]
    p = np.exp(np_log_softmax(teacher_logits / T))
    kl = (T * T) * np.sum(
        p
        * (
            np_log_softmax(teacher_logits / T)
            - np_log_softmax(student_logits / T)
        ),
        axis=1,
    )
    return (1 - alpha) * ce.mean(), alpha * kl.mean()


def tiny_net(num_classes=4, name=None, num_branches=1, head=None):
    return models.cifar_resnet(
        8,
        num_classes=num_classes,
        num_branches=num_branches,
        head=head,
        input_shape=(8, 8, 1),
        weight_decay=0.0,
        name=name,
    )


def pretrained_teacher(x, y, num_classes=4):
    teacher = tiny_net(num_classes, name="teacher")
    teacher.compile(
        optimizer=keras.optimizers.Adam(1e-2),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
    )
    teacher.fit(x, y, epochs=1, batch_size=32, verbose=0)
    return teacher


def test_defaults_and_registry():
    method = KD(tiny_net(name="teacher"))
    assert method.alpha == 0.9 and method.temperature == 4.0
    assert method.min_branches == 1 and method.rampup_epochs == 0
    assert methods.get("kd") is KD
    assert not method.teacher.trainable


@pytest.mark.backend_portable
def test_loss_matches_numpy(tiny_data):
    x, y = tiny_data
    x, y = x[:16], y[:16]
    teacher = tiny_net(name="teacher")
    student = tiny_net()
    distiller = keras_one.Distiller(student, KD(teacher, alpha=0.7))
    distiller.compile()
    logs = distiller.test_on_batch(x, y, return_dict=True)
    ce, kl = np_kd_terms(
        y,
        ops.convert_to_numpy(student(x, training=False)),
        ops.convert_to_numpy(teacher(x, training=False)),
        alpha=0.7,
    )
    np.testing.assert_allclose(logs["ce"], ce, rtol=1e-5)
    # Two untrained networks: a small KL, summed in float32.
    np.testing.assert_allclose(logs["kl"], kl, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(logs["loss"], ce + kl, rtol=1e-5)


@pytest.mark.backend_portable
def test_every_branch_distils(tiny_data):
    x, y = tiny_data
    x, y = x[:16], y[:16]
    teacher = tiny_net(name="teacher")
    student = tiny_net(num_branches=2, head="mean")
    distiller = keras_one.Distiller(student, KD(teacher, temperature=2.0))
    distiller.compile()
    logs = distiller.test_on_batch(x, y, return_dict=True)
    teacher_logits = ops.convert_to_numpy(teacher(x, training=False))
    terms = [
        np_kd_terms(y, ops.convert_to_numpy(z), teacher_logits, T=2.0)
        for z in student(x, training=False)["branch_logits"]
    ]
    np.testing.assert_allclose(logs["ce"], terms[0][0] + terms[1][0], 1e-5)
    # Untrained networks: a small KL, summed in float32 (see above).
    np.testing.assert_allclose(
        logs["kl"], terms[0][1] + terms[1][1], rtol=1e-5, atol=1e-6
    )


def test_same_loss_as_keras_distillation(tiny_data):
    x, y = tiny_data
    x, y = x[:16], y[:16]
    teacher = tiny_net(name="teacher")
    student = tiny_net()
    alpha, temperature = 0.6, 3.0
    keras_distiller = keras.distillation.Distiller(
        teacher,
        student,
        keras.distillation.LogitsDistillation(
            temperature=temperature, loss=keras.losses.KLDivergence()
        ),
        student_loss_weight=1 - alpha,
    )
    keras_distiller.compile(
        optimizer="sgd",
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
    )
    keras_loss = keras_distiller.compute_loss(
        x, y, y_pred=student(x, training=False), training=False
    )
    ours = keras_one.Distiller(
        student, KD(teacher, alpha=alpha, temperature=temperature)
    )
    ours.compile()
    logs = ours.test_on_batch(x, y, return_dict=True)
    np.testing.assert_allclose(logs["loss"], float(keras_loss), rtol=1e-5)
    # A keras.distillation loss passed to KD is computed as Keras does.
    with_keras_loss = keras_one.Distiller(
        student,
        KD(
            teacher,
            alpha=alpha,
            distillation_loss=keras.distillation.LogitsDistillation(
                temperature=temperature, loss=keras.losses.KLDivergence()
            ),
        ),
    )
    with_keras_loss.compile()
    logs = with_keras_loss.test_on_batch(x, y, return_dict=True)
    np.testing.assert_allclose(logs["loss"], float(keras_loss), rtol=1e-5)


def test_keras_default_logits_distillation_is_reproduced_and_flagged(
    tiny_data,
):
    x, y = tiny_data
    x, y = x[:16], y[:16]
    teacher = tiny_net(name="teacher")
    student = tiny_net()
    keras_loss = keras.distillation.LogitsDistillation(temperature=2.0)
    keras_distiller = keras.distillation.Distiller(
        teacher, student, keras_loss, student_loss_weight=0.5
    )
    keras_distiller.compile(
        optimizer="sgd",
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
    )
    expected = float(
        keras_distiller.compute_loss(
            x, y, y_pred=student(x, training=False), training=False
        )
    )
    with pytest.warns(UserWarning, match="not Hinton's KD loss"):
        method = KD(teacher, alpha=0.5, distillation_loss=keras_loss)
    ours = keras_one.Distiller(student, method)
    ours.compile()
    logs = ours.test_on_batch(x, y, return_dict=True)
    np.testing.assert_allclose(logs["loss"], expected, rtol=1e-5)
    hinton = KD(teacher, alpha=0.5, temperature=2.0)
    hinton_distiller = keras_one.Distiller(student, hinton)
    hinton_distiller.compile()
    hinton_logs = hinton_distiller.test_on_batch(x, y, return_dict=True)
    assert abs(hinton_logs["kl"] - logs["kl"]) > 1e-3


def test_teacher_is_frozen_during_fit(tiny_data):
    x, y = tiny_data
    teacher = pretrained_teacher(x, y)
    before = [np.array(v) for v in teacher.weights]
    moving = [
        np.array(v) for v in teacher.non_trainable_weights if "moving" in v.path
    ]
    assert moving and not all(np.allclose(m, 0) for m in moving)
    student = tiny_net()
    student_before = [np.array(v) for v in student.trainable_weights]
    distiller = keras_one.Distiller(student, KD(teacher))
    distiller.compile(optimizer=keras.optimizers.SGD(0.1))
    distiller.fit(x, y, epochs=1, batch_size=32, verbose=0)
    for old, new in zip(before, teacher.weights, strict=True):
        np.testing.assert_array_equal(old, np.array(new))
    assert not any(
        v is w for v in distiller.trainable_weights for w in teacher.weights
    )
    changed = [
        not np.allclose(old, np.array(new))
        for old, new in zip(
            student_before, student.trainable_weights, strict=True
        )
    ]
    assert all(changed)


def test_fit_reduces_the_loss(tiny_data):
    x, y = tiny_data
    teacher = pretrained_teacher(x, y)
    distiller = keras_one.Distiller(tiny_net(), KD(teacher))
    distiller.compile(optimizer=keras.optimizers.Adam(1e-2))
    history = distiller.fit(x, y, epochs=5, batch_size=32, verbose=0)
    losses = history.history["loss"]
    assert losses[-1] < 0.8 * losses[0]


def test_teacher_with_other_classes_is_refused():
    teacher = tiny_net(num_classes=3, name="teacher")
    with pytest.raises(ValueError, match="predicts 3 classes.*predicts 4"):
        keras_one.Distiller(tiny_net(), KD(teacher))


def test_teacher_with_softmax_is_refused():
    inputs = keras.Input((8, 8, 1))
    outputs = keras.layers.Dense(4, activation="softmax")(
        keras.layers.Flatten()(inputs)
    )
    teacher = keras.Model(inputs, outputs, name="soft_teacher")
    with pytest.raises(ValueError, match="probabilities"):
        keras_one.Distiller(tiny_net(), KD(teacher))


def test_bad_arguments():
    teacher = tiny_net(name="teacher")
    with pytest.raises(TypeError, match="keras.Model"):
        KD(lambda x: x)
    with pytest.raises(ValueError, match="alpha"):
        KD(teacher, alpha=1.5)
    with pytest.raises(ValueError, match="own temperature"):
        KD(
            teacher,
            temperature=3.0,
            distillation_loss=keras.distillation.LogitsDistillation(
                loss=keras.losses.KLDivergence()
            ),
        )
    with pytest.raises(ValueError, match="cannot name layers"):
        KD(
            teacher,
            distillation_loss=keras.distillation.FeatureDistillation(
                teacher_layer_name="stem_conv"
            ),
        )
    with pytest.raises(TypeError, match="DistillationLoss"):
        KD(teacher, distillation_loss="kl_divergence")


def test_build_student_is_single_branch():
    method = KD(tiny_net(name="teacher"))
    student = method.build_student(
        "resnet8", num_classes=4, input_shape=(8, 8, 1), num_branches=3
    )
    assert not isinstance(student.output, dict)
    assert student.output.shape[-1] == 4


@pytest.mark.parametrize("keras_loss", [False, True])
def test_save_and_load(tiny_data, tmp_path, keras_loss):
    x, y = tiny_data
    teacher = pretrained_teacher(x, y)
    distillation_loss = None
    if keras_loss:
        distillation_loss = keras.distillation.LogitsDistillation(
            temperature=2.0, loss=keras.losses.KLDivergence()
        )
    method = KD(teacher, alpha=0.8, distillation_loss=distillation_loss)
    distiller = keras_one.Distiller(tiny_net(), method)
    distiller.compile(optimizer="adam")
    distiller.fit(x, y, epochs=1, batch_size=96, verbose=0)
    path = str(tmp_path / "kd.keras")
    distiller.save(path)
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)
        loaded = keras.saving.load_model(path, safe_mode=True)
    assert isinstance(loaded.method, KD)
    assert loaded.method.alpha == 0.8
    assert not loaded.method.teacher.trainable
    if keras_loss:
        assert loaded.method.distillation_loss.temperature == 2.0
    for old, new in zip(
        teacher.weights, loaded.method.teacher.weights, strict=True
    ):
        np.testing.assert_array_equal(np.array(old), np.array(new))
    expected = distiller.evaluate(x, y, verbose=0, return_dict=True)
    got = loaded.evaluate(x, y, verbose=0, return_dict=True)
    for name in ("loss", "ce", "kl"):
        np.testing.assert_allclose(got[name], expected[name], rtol=1e-5)
