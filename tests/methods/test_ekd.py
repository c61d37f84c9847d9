import keras
import numpy as np
import pytest
from keras import ops

import keras_one
from keras_one import methods
from keras_one import models
from keras_one.methods import EKD


def np_log_softmax(z):
    z = z - z.max(axis=-1, keepdims=True)
    return z - np.log(np.exp(z).sum(axis=-1, keepdims=True))


def np_ce(labels, z):
    return -np_log_softmax(z)[np.arange(len(labels)), labels]


def np_kl(t, s, T):
    p = np.exp(np_log_softmax(t / T))
    return (T * T) * np.sum(
        p * (np_log_softmax(t / T) - np_log_softmax(s / T)), axis=1
    )


def resnet(num_classes=4, name=None, num_branches=1, head=None):
    return models.cifar_resnet(
        8,
        num_classes=num_classes,
        num_branches=num_branches,
        head=head,
        input_shape=(8, 8, 1),
        weight_decay=0.0,
        name=name,
    )


def small_cnn(num_classes=4, name="cnn_teacher"):
    """A teacher of another architecture than the ResNet."""
    inputs = keras.Input((8, 8, 1))
    x = keras.layers.Conv2D(6, 3, strides=4, padding="same", name="conv")(
        inputs
    )
    x = keras.layers.BatchNormalization(name="bn")(x)
    x = keras.layers.ReLU(name="features")(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    outputs = keras.layers.Dense(num_classes, name="logits")(x)
    return keras.Model(inputs, outputs, name=name)


def pretrain(model, x, y):
    model.compile(
        optimizer=keras.optimizers.Adam(1e-2),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
    )
    model.fit(x, y, epochs=1, batch_size=32, verbose=0)
    return model


def test_defaults_and_registry():
    method = EKD([resnet(name="a"), small_cnn()])
    assert method.alpha == 0.9 and method.temperature == 4.0
    assert method.head == "mean" and method.feature_layers is None
    assert method.loss_names == ("ce", "kl", "ensemble_ce")
    assert methods.get("ekd") is EKD
    assert not any(t.trainable for t in method.teachers)


@pytest.mark.backend_portable
def test_loss_matches_numpy(tiny_data):
    x, y = tiny_data
    x, y = x[:16], y[:16]
    teachers = [resnet(name="a"), small_cnn()]
    method = EKD(teachers, alpha=0.7, temperature=3.0)
    student = resnet(num_branches=2, head="mean")
    distiller = keras_one.Distiller(student, method)
    distiller.compile()
    logs = distiller.test_on_batch(x, y, return_dict=True)
    outputs = student(x, training=False)
    branch = [ops.convert_to_numpy(z) for z in outputs["branch_logits"]]
    teacher_logits = [
        ops.convert_to_numpy(t(x, training=False)) for t in teachers
    ]
    ce = 0.3 * sum(np_ce(y, z) for z in branch).mean()
    kl = (
        0.7
        * sum(
            np_kl(t, z, 3.0)
            for t, z in zip(teacher_logits, branch, strict=True)
        ).mean()
    )
    ensemble_ce = np_ce(y, (branch[0] + branch[1]) / 2).mean()
    np.testing.assert_allclose(logs["ce"], ce, rtol=1e-5)
    # Untrained networks: a small KL, summed in float32.
    np.testing.assert_allclose(logs["kl"], kl, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(logs["ensemble_ce"], ensemble_ce, rtol=1e-5)
    np.testing.assert_allclose(logs["loss"], ce + kl + ensemble_ce, rtol=1e-5)


@pytest.mark.backend_portable
def test_gate_head_gives_a_learned_ensemble(tiny_data):
    x, y = tiny_data
    x, y = x[:16], y[:16]
    student = resnet(num_branches=2, head="gate")
    distiller = keras_one.Distiller(
        student, EKD([resnet(name="a"), small_cnn()])
    )
    distiller.compile()
    logs = distiller.test_on_batch(x, y, return_dict=True)
    ensemble = ops.convert_to_numpy(
        student(x, training=False)["ensemble_logits"]
    )
    np.testing.assert_allclose(
        logs["ensemble_ce"], np_ce(y, ensemble).mean(), rtol=1e-5
    )


@pytest.mark.backend_portable
def test_feature_loss_matches_numpy(tiny_data):
    x, y = tiny_data
    x, y = x[:16], y[:16]
    teachers = [resnet(name="a"), resnet(name="b")]
    method = EKD(
        teachers, feature_layers="stage3_block1_out", feature_weight=0.5
    )
    student = resnet(num_branches=2, head="mean")
    distiller = keras_one.Distiller(student, method)
    distiller.compile()
    logs = distiller.test_on_batch(x, y, return_dict=True)
    assert distiller.method.loss_names[-1] == "feature"
    maps = student(x, training=False)["branch_feature_maps"]
    expected = 0.0
    for index, teacher in enumerate(teachers):
        target = keras.Model(
            teacher.input, teacher.get_layer("stage3_block1_out").output
        )(x, training=False)
        kernel, bias = (w.numpy() for w in method.adapters[index].weights)
        feature_map = ops.convert_to_numpy(maps[index])
        adapted = np.einsum("bhwc,cd->bhwd", feature_map, kernel[0, 0]) + bias
        target = ops.convert_to_numpy(target)
        expected += np.mean((adapted - target) ** 2, axis=(1, 2, 3))
    np.testing.assert_allclose(
        logs["feature"], 0.5 * expected.mean(), rtol=1e-5
    )


def test_fit_trains_student_and_adapters_keeps_teachers_frozen(tiny_data):
    x, y = tiny_data
    teachers = [pretrain(resnet(name="a"), x, y), pretrain(small_cnn(), x, y)]
    before = [[np.array(v) for v in t.weights] for t in teachers]
    method = EKD(teachers, feature_layers=["stage3_block1_out", "features"])
    student = resnet(num_branches=2, head="mean")
    distiller = keras_one.Distiller(student, method)
    adapters_before = [np.array(v) for v in method.trainable_weights]
    assert len(adapters_before) == 4  # two 1x1 convolutions with bias
    distiller.compile(optimizer=keras.optimizers.Adam(1e-2))
    history = distiller.fit(x, y, epochs=4, batch_size=32, verbose=0)
    losses = history.history["loss"]
    assert losses[-1] < 0.8 * losses[0]
    for old, teacher in zip(before, teachers, strict=True):
        for value, variable in zip(old, teacher.weights, strict=True):
            np.testing.assert_array_equal(value, np.array(variable))
    for old, new in zip(adapters_before, method.trainable_weights, strict=True):
        assert not np.allclose(old, np.array(new))


def test_errors():
    student = resnet(num_branches=2, head="mean")
    with pytest.raises(ValueError, match="predicts 3 classes.*predicts 4"):
        keras_one.Distiller(
            student, EKD([resnet(name="a"), small_cnn(num_classes=3)])
        )
    with pytest.raises(ValueError, match="3 teachers for a student with 2"):
        keras_one.Distiller(
            student,
            EKD([resnet(name="a"), resnet(name="b"), small_cnn()]),
        )
    with pytest.raises(TypeError, match="list of teachers"):
        EKD(resnet(name="a"))
    same = resnet(name="a")
    with pytest.raises(ValueError, match="same teacher model more than once"):
        EKD([same, same])
    with pytest.raises(ValueError, match="one layer name per teacher"):
        EKD([resnet(name="a"), small_cnn()], feature_layers=["x", "y", "z"])
    with pytest.raises(ValueError, match="No layer named 'stage3_blok1_out'"):
        keras_one.Distiller(
            student,
            EKD(
                [resnet(name="a"), resnet(name="b")],
                feature_layers="stage3_blok1_out",
            ),
        )
    with pytest.raises(ValueError, match="spatial sizes differ"):
        keras_one.Distiller(
            student,
            EKD(
                [resnet(name="a"), resnet(name="b")],
                feature_layers="stage2_block1_out",
            ),
        )


def test_build_student_has_a_branch_per_teacher():
    method = EKD([resnet(name="a"), small_cnn(), resnet(name="b")])
    student = method.build_student(
        "resnet8", num_classes=4, input_shape=(8, 8, 1), num_branches=5
    )
    assert len(student.output["branch_logits"]) == 3
    assert "ensemble_logits" in student.output


def test_save_and_load(tiny_data, tmp_path):
    x, y = tiny_data
    teachers = [resnet(name="a"), small_cnn()]
    method = EKD(teachers, feature_layers=["avg_pool", "features"])
    distiller = keras_one.Distiller(resnet(num_branches=2, head="mean"), method)
    distiller.compile(optimizer="adam")
    distiller.fit(x, y, epochs=1, batch_size=96, verbose=0)
    path = str(tmp_path / "ekd.keras")
    distiller.save(path)
    loaded = keras.saving.load_model(path, safe_mode=True)
    assert isinstance(loaded.method, EKD)
    assert loaded.method.feature_layers == ["avg_pool", "features"]
    assert not any(t.trainable for t in loaded.method.teachers)
    for teacher, new in zip(teachers, loaded.method.teachers, strict=True):
        for old_w, new_w in zip(teacher.weights, new.weights, strict=True):
            np.testing.assert_array_equal(np.array(old_w), np.array(new_w))
    expected = distiller.evaluate(x, y, verbose=0, return_dict=True)
    got = loaded.evaluate(x, y, verbose=0, return_dict=True)
    for name in ("loss", "ce", "kl", "ensemble_ce", "feature"):
        np.testing.assert_allclose(got[name], expected[name], rtol=1e-5)


def nested_teacher(num_classes=4):
    """A teacher whose feature map is computed inside a nested backbone."""
    image = keras.Input((8, 8, 1))
    x = keras.layers.Conv2D(6, 3, strides=4, padding="same", name="conv")(image)
    x = keras.layers.ReLU(name="features")(x)
    backbone = keras.Model(image, x, name="backbone")
    inputs = keras.Input((8, 8, 1))
    pooled = keras.layers.GlobalAveragePooling2D()(backbone(inputs))
    logits = keras.layers.Dense(num_classes, name="logits")(pooled)
    return keras.Model(inputs, logits, name="nested_teacher")


def test_feature_layers_name_a_nested_layer_by_its_path(tiny_data):
    x, y = tiny_data
    teacher = nested_teacher()
    method = EKD(
        [resnet(name="a"), teacher],
        feature_layers=["stage3_block1_out", "backbone/features"],
    )
    distiller = keras_one.Distiller(resnet(num_branches=2, head="mean"), method)
    features = method.feature_extractors[1](x[:4], training=False)
    np.testing.assert_allclose(
        features["features"],
        teacher.get_layer("backbone")(x[:4]),
        rtol=1e-5,
        atol=1e-5,
    )
    np.testing.assert_allclose(
        features["logits"], teacher(x[:4]), rtol=1e-5, atol=1e-5
    )
    distiller.compile(optimizer="sgd")
    logs = distiller.train_on_batch(x[:8], y[:8], return_dict=True)
    assert np.isfinite(logs["feature"]) and logs["feature"] > 0
    with pytest.raises(
        ValueError, match=r"Did you mean one of \['backbone/features'\]"
    ):
        keras_one.Distiller(
            resnet(num_branches=2, head="mean"),
            EKD(
                [resnet(name="b"), nested_teacher()],
                feature_layers=["stage3_block1_out", "features"],
            ),
        )
