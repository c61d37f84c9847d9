import keras
import numpy as np
import pytest
from keras import ops

import keras_one
from keras_one import methods
from keras_one import models
from keras_one.methods import OEC


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


def students(num_students=3, head="mean"):
    return models.oec_resnet(
        8,
        num_classes=4,
        num_students=num_students,
        head=head,
        input_shape=(8, 8, 1),
        weight_decay=0.0,
    )


def np_oec_terms(method, outputs, labels, ensemble_label_loss=False):
    """OEC's loss written from the paper, batch means of each term."""

    def to_numpy(tensor):
        return ops.convert_to_numpy(tensor).astype("float64")

    logits = [to_numpy(z) for z in outputs["branch_logits"]]
    stages = [
        [to_numpy(f) for f in student]
        for student in outputs["branch_stage_features"]
    ]
    teacher = np.mean(logits, axis=0)
    if ensemble_label_loss:
        ce = np_ce(labels, teacher)
    else:
        ce = sum(np_ce(labels, z) for z in logits)
    hint = 0.0
    adapters = iter(method.adapters)
    for student in stages[1:]:
        for feature, target in zip(student, stages[0], strict=True):
            kernel, bias = (w.numpy() for w in next(adapters).weights)
            adapted = np.einsum("bhwc,cd->bhwd", feature, kernel[0, 0]) + bias
            hint = hint + np.mean((adapted - target) ** 2, axis=(1, 2, 3))
    kl = sum(np_kl(teacher, z, 2.0) for z in logits)
    return {
        "ce": 0.7 * ce.mean(),
        "hint": 0.15 * hint.mean(),
        "kl": 0.15 * kl.mean(),
    }


def test_defaults_and_registry():
    method = OEC()
    assert method.temperature == 2.0
    assert (method.ce_weight, method.hint_weight, method.kl_weight) == (
        0.7,
        0.15,
        0.15,
    )
    assert method.head == "mean" and method.rampup_epochs == 0
    assert methods.get("oec") is OEC


@pytest.mark.backend_portable
@pytest.mark.parametrize("ensemble_label_loss", [False, True])
def test_loss_matches_numpy(tiny_data, ensemble_label_loss):
    x, y = tiny_data
    x, y = x[:16], y[:16]
    student = students()
    method = OEC(ensemble_label_loss=ensemble_label_loss)
    distiller = keras_one.Distiller(student, method)
    distiller.compile()
    logs = distiller.test_on_batch(x, y, return_dict=True)
    # Adapters map the 2 narrower students' 3 stages to student 0's widths.
    assert [tuple(a.kernel.shape) for a in method.adapters] == [
        (1, 1, 10, 16),
        (1, 1, 21, 32),
        (1, 1, 42, 64),
        (1, 1, 5, 16),
        (1, 1, 10, 32),
        (1, 1, 21, 64),
    ]
    expected = np_oec_terms(
        method, student(x, training=False), y, ensemble_label_loss
    )
    for name, value in expected.items():
        np.testing.assert_allclose(logs[name], value, rtol=1e-5, atol=1e-6)


def test_fit_trains_students_and_adapters_and_exports_each(tiny_data):
    x, y = tiny_data
    student = students()
    method = OEC()
    distiller = keras_one.Distiller(student, method)
    adapters_before = [np.array(v) for v in method.trainable_weights]
    distiller.compile(optimizer=keras.optimizers.Adam(1e-2))
    history = distiller.fit(x, y, epochs=4, batch_size=32, verbose=0)
    losses = history.history["loss"]
    assert losses[-1] < 0.8 * losses[0]
    assert history.history["hint"][-1] < history.history["hint"][0]
    for old, new in zip(adapters_before, method.trainable_weights, strict=True):
        assert not np.allclose(old, np.array(new))
    predictions = distiller.predict(x, verbose=0)["branch_logits"]
    stem = {"image", "stem_conv", "stem_bn", "stem_relu"}
    for index in range(3):
        network = distiller.get_branch_model(index)
        names = {layer.name for layer in network.layers} - stem
        assert names and all(n.startswith(f"student{index}_") for n in names)
        np.testing.assert_allclose(
            network.predict(x, verbose=0),
            predictions[index],
            rtol=1e-4,
            atol=1e-5,
        )


def test_student_without_stage_features_is_refused():
    student = models.cifar_resnet(
        8, num_classes=4, num_branches=3, head="mean", input_shape=(8, 8, 1)
    )
    with pytest.raises(ValueError, match="oec_resnet"):
        keras_one.Distiller(student, OEC())


def test_build_student():
    method = OEC()
    net = method.build_student(
        "resnet8", num_classes=4, input_shape=(8, 8, 1), num_branches=4
    )
    assert len(net.output["branch_logits"]) == 4
    assert "ensemble_logits" in net.output
    with pytest.raises(ValueError, match="resnet<depth>"):
        method.build_student("mobilenet")


def test_save_and_load(tiny_data, tmp_path):
    x, y = tiny_data
    distiller = keras_one.Distiller(
        students(num_students=2), OEC(temperature=3.0, ensemble_label_loss=True)
    )
    distiller.compile(optimizer="adam")
    distiller.fit(x, y, epochs=1, batch_size=96, verbose=0)
    path = str(tmp_path / "oec.keras")
    distiller.save(path)
    loaded = keras.saving.load_model(path, safe_mode=True)
    assert isinstance(loaded.method, OEC)
    assert loaded.method.temperature == 3.0
    assert loaded.method.ensemble_label_loss
    for old, new in zip(
        distiller.method.adapters, loaded.method.adapters, strict=True
    ):
        np.testing.assert_array_equal(
            np.array(old.kernel), np.array(new.kernel)
        )
    expected = distiller.evaluate(x, y, verbose=0, return_dict=True)
    got = loaded.evaluate(x, y, verbose=0, return_dict=True)
    for name in ("loss", "ce", "hint", "kl"):
        np.testing.assert_allclose(got[name], expected[name], rtol=1e-5)
