import keras
import numpy as np
import pytest
from keras import ops

import keras_one
from keras_one import models
from keras_one.methods import MEAL
from keras_one.methods.meal import _pool_block

portable = pytest.mark.backend_portable
TINY = dict(num_classes=4, input_shape=(8, 8, 1))
LAYER = "stage1_block1_out"  # 8x8 positions, 16 channels


def resnet(name):
    return models.cifar_resnet(8, num_branches=1, name=name, **TINY)


def dense_teacher(name, scale):
    """A cheap teacher: logits = scale * flattened image @ fixed weights."""
    teacher = keras.Sequential(
        [keras.Input((8, 8, 1)), keras.layers.Flatten(), keras.layers.Dense(4)],
        name=name,
    )
    rng = np.random.default_rng(int(scale))
    teacher.set_weights([scale * rng.normal(size=(64, 4)), np.zeros(4)])
    return teacher


def distiller_for(method, model="resnet8"):
    student = method.build_student(model, **TINY)
    return keras_one.Distiller(student, method)


def np_softmax(z):
    e = np.exp(z - z.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


def np_block(feature, dim):
    """The official `fc_out`: (N, C, HW), AdaptiveAvgPool1d(dim), mean C."""
    n, c = feature.shape[0], feature.shape[-1]
    x = np.moveaxis(feature, -1, 1).reshape(n, c, -1)
    length = x.shape[-1]
    pooled = np.stack(
        [
            x[..., (i * length) // dim : -(-(i + 1) * length // dim)].mean(-1)
            for i in range(dim)
        ],
        axis=-1,
    )
    return pooled.mean(axis=1)


def np_discriminator(discriminator, rows):
    weights = discriminator.get_weights()
    for kernel, bias in zip(weights[::2], weights[1::2], strict=True):
        rows = np.maximum(rows @ kernel + bias, 0.0)
    return rows


def np_bce(logits, target):
    return (
        np.maximum(logits, 0)
        - logits * target
        + np.log1p(np.exp(-np.abs(logits)))
    )


def layer_model(model, name):
    return keras.Model(model.input, model.get_layer(name).output)


@portable
@pytest.mark.parametrize("dim", [16, 64, 100])
def test_block_pooling_matches_the_official_order(dim):
    feature = np.random.default_rng(1).normal(size=(3, 4, 4, 5))
    feature = feature.astype("float32")
    got = ops.convert_to_numpy(_pool_block(feature, dim))
    np.testing.assert_allclose(got, np_block(feature, dim), atol=1e-6)


@portable
def test_loss_matches_numpy():
    teachers = [resnet("teacher_0"), resnet("teacher_1")]
    method = MEAL(
        teachers,
        feature_layers=[LAYER],
        block_dims=[100],  # more values than the 64 positions
        gamma=[0.3, 1.0],
        eta=[0.5, 2.0],
    )
    distiller = distiller_for(method)
    x = np.random.default_rng(0).normal(size=(6, 8, 8, 1)).astype("float32")
    outputs = distiller(x, training=False)
    outputs.update(method(x, outputs, training=False))
    terms = method.compute_losses(ops.zeros((6,), "int32"), outputs, 0.0)
    chosen = int(ops.convert_to_numpy(outputs["teacher_index"]))
    teacher = teachers[chosen]

    student = distiller.student
    s_blocks = [
        np_block(ops.convert_to_numpy(layer_model(student, LAYER)(x)), 100),
        ops.convert_to_numpy(outputs["branch_logits"][0]),
    ]
    t_blocks = [
        np_block(ops.convert_to_numpy(layer_model(teacher, LAYER)(x)), 100),
        ops.convert_to_numpy(teacher(x, training=False)),
    ]
    # The chosen teacher's logits are the ones used.
    np.testing.assert_allclose(
        ops.convert_to_numpy(outputs["teacher_blocks"][-1]),
        t_blocks[-1],
        atol=1e-5,
    )
    other = ops.convert_to_numpy(teachers[1 - chosen](x, training=False))
    assert np.abs(other - t_blocks[-1]).max() > 1e-3
    similarity = sum(
        g * -(np_softmax(t) * np.log(np_softmax(s))).sum(-1)
        for g, s, t in zip([0.3, 1.0], s_blocks, t_blocks, strict=True)
    )
    discriminator = 0.0
    for eta, d, s, t in zip(
        [0.5, 2.0], method.discriminators, s_blocks, t_blocks, strict=True
    ):
        out = np_discriminator(d, np.concatenate([s, t]))
        target = np.array([[1.0, 0.0]] * 6 + [[0.0, 1.0]] * 6)
        bce = np_bce(out, target)
        # Mean over the 2N rows and 2 outputs, written per student example.
        discriminator += eta * (bce[:6].sum(-1) + bce[6:].sum(-1)) / 4
        assert np.isclose(
            ((bce[:6].sum(-1) + bce[6:].sum(-1)) / 4).mean(), bce.mean()
        )
    np.testing.assert_allclose(
        ops.convert_to_numpy(terms["similarity"]), similarity, atol=1e-5
    )
    np.testing.assert_allclose(
        ops.convert_to_numpy(terms["discriminator"]), discriminator, atol=1e-5
    )


@portable
def test_teacher_is_drawn_uniformly_and_its_logits_are_used():
    teachers = [dense_teacher(f"teacher_{i}", i + 1) for i in range(3)]
    method = MEAL(teachers, seed=7)
    x = np.random.default_rng(0).normal(size=(2, 8, 8, 1)).astype("float32")
    model = keras.Sequential(
        [keras.Input((8, 8, 1)), keras.layers.Flatten(), keras.layers.Dense(4)]
    )
    keras_one.Distiller(model, method)
    logits = [ops.convert_to_numpy(t(x)) for t in teachers]
    outputs = {"branch_logits": [model(x)]}
    draws = 300
    counts = np.zeros(3, int)
    for _ in range(draws):
        result = method(x, outputs, training=True)
        index = int(ops.convert_to_numpy(result["teacher_index"]))
        counts[index] += 1
        method.after_train_step(model)  # the next optimizer step
        np.testing.assert_allclose(
            ops.convert_to_numpy(result["teacher_blocks"][-1]),
            logits[index],
            rtol=1e-6,
        )
    # Each count is Binomial(300, 1/3): mean 100, sd 8.2. 100 +- 40 (4.9
    # sd) fails by chance with probability < 1e-5.
    assert np.all(np.abs(counts - draws / 3) < 40), counts


def one_step(multiplier, x, y):
    keras.utils.set_random_seed(3)
    method = MEAL(
        [resnet("teacher_0")],
        discriminator_learning_rate_multiplier=multiplier,
        adversarial=False,
    )
    distiller = distiller_for(method)
    distiller.compile(optimizer=keras.optimizers.SGD(0.5))
    distiller.steps_per_epoch = 1
    # Positive weights: no ReLU of the tiny discriminator (4 -> 2 -> 1 -> 2)
    # starts dead, so that every weight gets a gradient.
    for weight in method.discriminators[0].trainable_variables:
        weight.assign(0.1 + ops.abs(weight))
    before = [np.array(w) for w in method.discriminators[0].get_weights()]
    student_before = [np.array(w) for w in distiller.student.get_weights()]
    distiller.train_on_batch(x, y)
    disc = [
        w - b
        for w, b in zip(
            method.discriminators[0].get_weights(), before, strict=True
        )
    ]
    student = [
        w - b
        for w, b in zip(
            distiller.student.get_weights(), student_before, strict=True
        )
    ]
    return disc, student


@portable
def test_discriminators_train_at_their_own_learning_rate(tiny_data):
    x, y = tiny_data
    x, y = x[:16], y[:16]
    full, student_full = one_step(1.0, x, y)
    scaled, student_scaled = one_step(0.01, x, y)
    assert max(np.abs(d).max() for d in full) > 1e-4
    for a, b in zip(full, scaled, strict=True):
        np.testing.assert_allclose(b, 0.01 * a, atol=1e-7)
    # The student steps at the optimizer's rate either way.
    for a, b in zip(student_full, student_scaled, strict=True):
        np.testing.assert_allclose(a, b, atol=1e-6)


@portable
def test_gradient_reversal_flips_the_students_discriminator_gradient(
    gradients,
):
    keras.utils.set_random_seed(1)
    teacher = dense_teacher("teacher", 1)
    method = MEAL([teacher], eta=[1.0])
    model = keras.Sequential(
        [keras.Input((8, 8, 1)), keras.layers.Flatten(), keras.layers.Dense(4)]
    )
    keras_one.Distiller(model, method)
    x = np.random.default_rng(0).normal(size=(4, 8, 8, 1)).astype("float32")
    # Positive inputs and weights: every ReLU of the discriminator is active.
    logits = keras.Variable(1.0 + np.abs(ops.convert_to_numpy(model(x))))
    weights = method.discriminators[0].trainable_variables
    for weight in weights:
        weight.assign(0.1 + ops.abs(weight))

    def grads(adversarial):
        method.adversarial = adversarial

        def loss():
            outputs = {"branch_logits": [logits.value]}
            outputs.update(method(x, outputs, training=True))
            terms = method.compute_losses(ops.zeros(4, "int32"), outputs, 0)
            return ops.mean(terms["discriminator"])

        return gradients(loss, [logits] + weights)

    adversarial, cooperative = grads(True), grads(False)
    assert np.abs(cooperative[0]).max() > 1e-4
    np.testing.assert_allclose(adversarial[0], -cooperative[0], atol=1e-7)
    # The discriminators minimise L_D either way.
    for a, c in zip(adversarial[1:], cooperative[1:], strict=True):
        np.testing.assert_allclose(a, c, atol=1e-7)


@portable
def test_teacher_batch_statistics_normalize_with_the_batch(tiny_data):
    x, y = tiny_data
    teacher = resnet("teacher")
    # Moving statistics that differ from any batch's.
    for layer in teacher.layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            layer.moving_mean.assign(ops.full(layer.moving_mean.shape, 0.3))
    saved = [np.array(w) for w in teacher.get_weights()]
    method = MEAL([teacher], teacher_batch_statistics=True)
    distiller = distiller_for(method)
    batch = x[:8]
    outputs = distiller(batch, training=False)
    got = ops.convert_to_numpy(
        method(batch, outputs, training=False)["teacher_blocks"][-1]
    )
    # Keras' own BatchNormalization in training mode, on a trainable copy.
    copy = resnet("copy")
    copy.set_weights(saved)
    want = ops.convert_to_numpy(copy(batch, training=True))
    np.testing.assert_allclose(got, want, atol=1e-5)
    inference = ops.convert_to_numpy(teacher(batch, training=False))
    assert np.abs(inference - want).max() > 1e-3
    distiller.compile(optimizer=keras.optimizers.SGD(0.1))
    distiller.fit(x[:32], y[:32], batch_size=16, epochs=1, verbose=0)
    for before, after in zip(saved, teacher.get_weights(), strict=True):
        np.testing.assert_array_equal(before, after)


def test_fit_evaluate_predict_save_and_load(tiny_data, tmp_path):
    x, y = tiny_data
    x, y = x[:32], y[:32]
    method = MEAL(
        [resnet("teacher_0"), resnet("teacher_1")],
        feature_layers=[LAYER],
        block_dims=[32],
        gamma=[0.1, 1.0],
    )
    distiller = distiller_for(method)
    distiller.compile(
        optimizer=keras.optimizers.SGD(0.1, momentum=0.9),
        metrics=["accuracy"],
    )
    before = [np.array(w) for w in distiller.student.get_weights()]
    history = distiller.fit(x, y, batch_size=16, epochs=1, verbose=0)
    assert {"similarity", "discriminator", "loss"} <= set(history.history)
    assert all(np.isfinite(v[-1]) for v in history.history.values())
    moved = [
        np.abs(a - b).max()
        for a, b in zip(distiller.student.get_weights(), before, strict=True)
    ]
    assert max(moved) > 0
    logs = distiller.evaluate(x, y, verbose=0, return_dict=True)
    assert np.isfinite(logs["loss"])
    predictions = distiller.predict(x, verbose=0)["branch_logits"][0]
    assert predictions.shape == (32, 4)
    path = str(tmp_path / "meal.keras")
    distiller.save(path)
    loaded = keras.saving.load_model(path, safe_mode=True)
    assert isinstance(loaded.method, MEAL)
    config = loaded.method.get_config()
    assert config["feature_layers"] == [LAYER] and config["gamma"] == [0.1, 1]
    assert config["adversarial"] is True
    assert config["discriminator_learning_rate_multiplier"] == 0.01
    np.testing.assert_allclose(
        loaded.predict(x, verbose=0)["branch_logits"][0], predictions, atol=1e-6
    )
    for a, b in zip(
        loaded.method.discriminators[0].get_weights(),
        method.discriminators[0].get_weights(),
        strict=True,
    ):
        np.testing.assert_array_equal(a, b)
    # The exported student is a plain classifier.
    branch = loaded.get_branch_model(0)
    np.testing.assert_allclose(
        branch.predict(x, verbose=0), predictions, atol=1e-6
    )


def test_defaults_are_the_official_ensemble_configuration():
    method = MEAL([resnet("teacher")])
    assert method.info.teachers == "several" and method.info.student == "single"
    assert method.feature_layers == [] and method.gamma == [1.0]
    assert method.eta == [1.0] and method.adversarial
    assert method.discriminator_learning_rate_multiplier == 0.01
    assert not method.teacher_batch_statistics and method.temperature == 1.0
    distiller_for(method)
    assert [d.units for d in method.discriminators[0].layers] == [2, 1, 2]
    assert set(method.learning_rate_multipliers(0)) == set(
        method.discriminators
    )


def softmax_teacher():
    inputs = keras.Input((8, 8, 1))
    outputs = keras.layers.Dense(4, activation="softmax")(
        keras.layers.Flatten()(inputs)
    )
    return keras.Model(inputs, outputs, name="probabilities")


def build_meal(kwargs):
    kwargs = dict(kwargs)
    teachers = kwargs.pop("teachers", None)
    if teachers is None:
        teachers = [resnet("teacher")]
    student = kwargs.pop("student", None)
    method = MEAL(teachers, **kwargs)
    if student is None:
        return distiller_for(method)
    return keras_one.Distiller(student, method)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(teachers=[]), "needs one or more pre-trained teachers"),
        (dict(teachers=[softmax_teacher()]), "outputs probabilities"),
        (dict(gamma=[1.0, 1.0]), "2 gamma weights for 1 blocks"),
        (dict(feature_layers=[LAYER], eta=[1.0]), "1 eta weights for 2"),
        (dict(feature_layers=["stage1_blok1_out"]), "no layer named"),
        (
            dict(discriminator_learning_rate_multiplier=-0.1),
            "must be a finite number >= 0",
        ),
        (
            dict(
                teachers=[
                    models.cifar_resnet(
                        8, num_branches=1, num_classes=5, input_shape=(8, 8, 1)
                    )
                ]
            ),
            "predicts 5 classes but the student predicts 4",
        ),
        (dict(feature_layers=[LAYER], block_dims=[0]), "block_dims must give"),
        (dict(feature_layers=[LAYER], block_dims=[2]), "needs d_b >= 4"),
        (
            dict(
                student=models.cifar_resnet(8, num_branches=2, **TINY),
            ),
            "MEAL trains a single network",
        ),
        (
            dict(
                feature_layers=[LAYER],
                student=models.cifar_resnet(8, num_branches=1, **TINY),
            ),
            "method.with_block_outputs",
        ),
    ],
    ids=lambda value: value if isinstance(value, str) else None,
)
def test_bad_inputs_are_refused(kwargs, message):
    with pytest.raises((ValueError, TypeError), match=message) as error:
        build_meal(kwargs)
    assert "\n" not in str(error.value)


def test_same_teacher_twice_is_refused():
    teacher = resnet("teacher")
    with pytest.raises(ValueError, match="same teacher model more than once"):
        MEAL([teacher, teacher])
