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
    # The official code's head: students' CE, adapters at half the
    # learning rate from the second epoch.
    assert not method.ensemble_label_loss
    assert method.adapter_learning_rate_multiplier == 0.5
    assert method.adapter_start_epoch == 1


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
        students(num_students=2),
        OEC(
            temperature=3.0,
            ensemble_label_loss=True,
            adapter_learning_rate_multiplier=0.25,
            adapter_start_epoch=3,
        ),
    )
    distiller.compile(optimizer="adam")
    distiller.fit(x, y, epochs=1, batch_size=96, verbose=0)
    path = str(tmp_path / "oec.keras")
    distiller.save(path)
    loaded = keras.saving.load_model(path, safe_mode=True)
    assert isinstance(loaded.method, OEC)
    assert loaded.method.temperature == 3.0
    assert loaded.method.ensemble_label_loss
    assert loaded.method.adapter_learning_rate_multiplier == 0.25
    assert loaded.method.adapter_start_epoch == 3
    assert loaded.method.get_config() == distiller.method.get_config()
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


def multiplier_values(method, epoch):
    return {
        adapter.name: float(ops.convert_to_numpy(m))
        for adapter, m in method.learning_rate_multipliers(epoch).items()
    }


@pytest.mark.backend_portable
def test_adapters_train_at_half_rate_from_the_second_epoch():
    method = OEC()
    keras_one.Distiller(students(), method)
    names = {adapter.name for adapter in method.adapters}
    assert len(names) == 6
    for epoch, want in ((0, 0.0), (0.0, 0.0), (1, 0.5), (7.0, 0.5)):
        got = multiplier_values(method, ops.convert_to_tensor(epoch, "float32"))
        assert got == dict.fromkeys(names, want)
    # From the first step, at their own rate; at the students' rate.
    method = OEC(adapter_start_epoch=0, adapter_learning_rate_multiplier=0.3)
    keras_one.Distiller(students(), method)
    got = multiplier_values(method, 0)
    assert got == {a.name: pytest.approx(0.3) for a in method.adapters}
    method = OEC(adapter_start_epoch=0, adapter_learning_rate_multiplier=1)
    keras_one.Distiller(students(), method)
    assert method.learning_rate_multipliers(0) == {}


def seeded_distiller(**kwargs):
    keras.utils.set_random_seed(3)
    distiller = keras_one.Distiller(students(num_students=2), OEC(**kwargs))
    distiller.compile(optimizer=keras.optimizers.SGD(0.1))
    distiller.steps_per_epoch = 1
    return distiller


def adapter_values(distiller):
    return [
        ops.convert_to_numpy(v.value)
        for v in distiller.method.trainable_weights
    ]


def student_values(distiller):
    return [
        ops.convert_to_numpy(v.value)
        for v in distiller.student.trainable_weights
    ]


@pytest.mark.backend_portable
def test_adapters_are_frozen_in_epoch_0_then_step_at_half_rate(tiny_data):
    x, y = tiny_data
    x, y = x[:16], y[:16]
    official = seeded_distiller()
    full_rate = seeded_distiller(adapter_learning_rate_multiplier=1.0)
    start = adapter_values(official)
    for before, after in zip(start, adapter_values(full_rate), strict=True):
        np.testing.assert_array_equal(before, after)  # same initialization
    students_start = student_values(official)

    for distiller in (official, full_rate):
        distiller.train_on_batch(x, y)  # epoch 0: adapters frozen
    for distiller in (official, full_rate):
        for before, after in zip(start, adapter_values(distiller), strict=True):
            np.testing.assert_array_equal(before, after)
    # The students learn (from the hints too, through the frozen adapters).
    assert any(
        not np.allclose(a, b)
        for a, b in zip(students_start, student_values(official), strict=True)
    )
    for a, b in zip(
        student_values(official), student_values(full_rate), strict=True
    ):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)

    for distiller in (official, full_rate):
        distiller.train_on_batch(x, y)  # epoch 1: adapters train
    moved = 0.0
    for before, half, full in zip(
        start, adapter_values(official), adapter_values(full_rate), strict=True
    ):
        np.testing.assert_allclose(
            half - before, 0.5 * (full - before), rtol=1e-4, atol=1e-7
        )
        moved = max(moved, float(np.max(np.abs(full - before))))
    assert moved > 1e-4


@pytest.mark.backend_portable
def test_adapters_have_pytorch_default_initialization():
    keras.utils.set_random_seed(0)
    method = OEC()
    keras_one.Distiller(students(), method)
    for adapter in method.adapters:
        # nn.Conv2d(c_in, c_out, 1): kernel in +-1/sqrt(c_in); the bias
        # starts at zero (keras_one/layers/_pytorch_init.py says why).
        limit = 1.0 / np.sqrt(adapter.kernel.shape[2])
        kernel = ops.convert_to_numpy(adapter.kernel.value)
        bias = ops.convert_to_numpy(adapter.bias.value)
        assert np.max(np.abs(kernel)) <= limit
        np.testing.assert_array_equal(bias, 0.0)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"adapter_learning_rate_multiplier": -0.5}, "finite number >= 0"),
        ({"adapter_learning_rate_multiplier": float("nan")}, "finite"),
        ({"adapter_learning_rate_multiplier": "half"}, "finite number"),
        ({"adapter_learning_rate_multiplier": True}, "finite number"),
        ({"adapter_start_epoch": -1}, "integer >= 0"),
        ({"adapter_start_epoch": 1.5}, "integer >= 0"),
        ({"adapter_start_epoch": None}, "integer >= 0"),
    ],
)
def test_bad_adapter_options_are_refused(kwargs, message):
    with pytest.raises(ValueError, match=message):
        OEC(**kwargs)
