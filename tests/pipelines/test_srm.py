"""SRM: its losses against NumPy, its stages, its resume, its refusals."""

import json
import re

import keras
import numpy as np
import pytest
from keras import ops

from keras_one import pipelines
from keras_one import recipes
from keras_one.layers import SparseCoding
from keras_one.pipelines import srm


def numpy_bce(target, output):
    output = np.clip(output, 1e-7, 1 - 1e-7)
    return -(target * np.log(output) + (1 - target) * np.log(1 - output))


def numpy_code_matching(student_codes, teacher_codes):
    total = 0.0
    for s, t in zip(student_codes, teacher_codes, strict=True):
        image_level = numpy_bce(t.mean((1, 2)), s.mean((1, 2))).mean()
        logits = s - s.max(-1, keepdims=True)
        log_p = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
        labels = t.argmax(-1)
        pixel_level = -np.take_along_axis(log_p, labels[..., None], -1)
        total += image_level + pixel_level.mean()
    return total


def test_code_matching_loss_matches_numpy(gradients):
    rng = np.random.default_rng(0)
    shapes = [(2, 4, 4, 6), (2, 2, 2, 10)]
    logits = [rng.normal(size=s).astype("float32") for s in shapes]
    student = [1 / (1 + np.exp(-z)) for z in logits]
    teacher = [rng.uniform(0, 1, s).astype("float32") for s in shapes]
    teacher = [t * (t > 0.7) for t in teacher]  # top-k kept codes
    expected = numpy_code_matching(student, teacher)
    # Fed a sigmoid's output, as the heads give it: the codes themselves
    # are the logits of the pixel-level cross-entropy.
    codes = [ops.sigmoid(z) for z in logits]
    got = ops.convert_to_numpy(srm.code_matching_loss(codes, teacher))
    np.testing.assert_allclose(got, expected, rtol=1e-5)
    # The teacher's codes are targets: no gradient reaches them.
    variables = [keras.Variable(x) for x in student + teacher]
    grads = gradients(
        lambda: srm.code_matching_loss(variables[:2], variables[2:]),
        variables,
    )
    assert all(np.abs(g).sum() > 0 for g in grads[:2])
    assert all(np.abs(g).sum() == 0 for g in grads[2:])


def test_fitting_the_codebooks_lowers_the_reconstruction_error(tools):
    teacher = tools.resnet()
    plan = srm.check_arguments(tools.resnet, teacher, None, None, 2.0, 0.02)
    assert plan["codewords"] == [32, 64, 128]
    assert plan["sparsity"] == [1, 1, 2]  # int(16 * 0.04) = 0 -> 1
    coder = srm.coding_model(
        plan["teacher_shapes"], plan["codewords"], plan["sparsity"]
    )
    features = pipelines._features.outputs_model(
        teacher, plan["teacher_layers"], "features"
    )
    model = srm._Reconstruction(features, coder)
    model.compile(optimizer=keras.optimizers.Adam(1e-2))
    images = np.random.default_rng(0).normal(size=(16, 8, 8, 1))
    images = images.astype("float32")
    labels = np.zeros(16, "int32")
    teacher_before = teacher.get_weights()

    def error():
        outputs = model(images)
        layers = [
            layer for layer in coder.layers if isinstance(layer, SparseCoding)
        ]
        # Independently: x_hat = s_topk . W^T from the kept codes.
        total = 0.0
        for layer, x in zip(layers, outputs["features"], strict=True):
            x = ops.convert_to_numpy(x)
            w = ops.convert_to_numpy(layer.codewords)
            b = ops.convert_to_numpy(layer.bias)
            codes = 1 / (1 + np.exp(-(x @ w + b)))
            kth = np.sort(codes, -1)[..., -layer.sparsity][..., None]
            total += ((x - (codes * (codes >= kth)) @ w.T) ** 2).mean()
        got = ops.convert_to_numpy(model.objective(outputs))
        np.testing.assert_allclose(got, total, rtol=1e-4)
        return total

    before = error()
    model.fit(images, labels, batch_size=16, epochs=20, verbose=0)
    assert error() < 0.7 * before
    for got, expected in zip(
        teacher.get_weights(), teacher_before, strict=True
    ):
        np.testing.assert_array_equal(got, expected)  # frozen


def run_srm(tools, folder, callbacks=()):
    train_ds, test_ds = tools.fresh_data()
    keras.utils.set_random_seed(1)
    teacher = tools.convnet(16, "teacher")  # stands for a trained one
    return pipelines.sparse_representation_matching(
        tools.convnet,
        teacher,
        train_ds,
        test_ds,
        epochs=2,
        directory=folder,
        callbacks=callbacks,
        verbose=0,
    )


STAGES = ["sparse_coding", "srm_init", "student"]


@pytest.fixture(scope="module")
def uninterrupted(tools, tmp_path_factory):
    folder = tmp_path_factory.mktemp("srm")
    watch = tools.Watch()
    models, accuracy = run_srm(tools, folder, [watch])
    return folder, models, accuracy, watch


def test_srm_runs_its_stages_from_a_given_teacher(uninterrupted, tools):
    folder, models, accuracy, watch = uninterrupted
    assert watch.stages == [
        ["sparse_coding_fit", 2],
        ["srm_init_fit", 2],
        ["student_distiller", 2],
    ]
    record = json.loads((folder / "pipeline.json").read_text())
    assert record["stages"] == STAGES
    assert record["teacher_layers"] == [
        "stage1_block1_out",
        "stage2_block1_out",
    ]
    # K = 2 D codewords; k = int(D * 2 * 0.02) raised to 1.
    assert (record["codewords"], record["sparsity"]) == ([32, 64], [1, 1])
    assert (record["alpha"], record["temperature"]) == (0.5, 4.0)
    assert record["teacher"]["name"] == "teacher"
    teacher = models["teacher"]
    assert accuracy["teacher"] == recipes.accuracy(
        teacher, tools.fresh_data()[1]
    )
    for name in STAGES:
        assert (folder / f"{name}.keras").exists()
    coding = json.loads((folder / "sparse_coding.json").read_text())
    assert set(coding) == {"loss", "history", "train_seconds"}
    assert 0.0 <= accuracy["student"] <= 1.0
    # Stage 4 started from stage 3's student, not from scratch.
    initialized = models["initialized"].get_weights()
    student = models["student"].get_weights()
    assert len(initialized) == len(student)
    assert not np.allclose(initialized[0], student[0])
    # The saved coding model holds the layers, loaded in safe mode.
    coder = keras.saving.load_model(folder / "sparse_coding.keras")
    kept = [
        layer.sparsity
        for layer in coder.layers
        if isinstance(layer, SparseCoding)
    ]
    assert kept == [1, 1]


def test_srm_resumes_to_the_uninterrupted_weights(
    uninterrupted, tools, tmp_path
):
    reference, _, expected, _ = uninterrupted
    with pytest.raises(KeyboardInterrupt):
        run_srm(tools, tmp_path, [tools.InterruptAfter("srm_init_fit", 0)])
    assert (tmp_path / "sparse_coding.keras").exists()
    assert not (tmp_path / "srm_init.keras").exists()
    watch = tools.Watch()
    _, accuracy = run_srm(tools, tmp_path, [watch])
    assert watch.stages == [["srm_init_fit", 1], ["student_distiller", 2]]
    for name in STAGES:
        tools.assert_same_weights(
            tmp_path / f"{name}.keras", reference / f"{name}.keras"
        )
    assert accuracy == pytest.approx(expected, abs=1e-6)


def test_the_official_schedule_is_scaled_to_the_epochs():
    # The coding's 10/60/30 epochs of 1e-3/1e-4/1e-5, over 200 steps.
    rate = srm.official_schedule("sparse_coding", 200)
    steps = (0, 20, 21, 140, 141, 199)
    got = [float(rate(step)) for step in steps]
    np.testing.assert_allclose(got, [1e-3, 1e-3, 1e-4, 1e-4, 1e-5, 1e-5])


@pytest.mark.parametrize(
    "options, message",
    [
        (
            {"teacher_layers": ["stage1_block1_out", "stage9_out"]},
            "teacher_layers: the teacher 'teacher' has no layer 'stage9_out'",
        ),
        (
            {"student_layers": ["stage2_block1_out", "stage1_block1_out"]},
            "student_layers: student layer 'stage2_block1_out' is 4x4 but "
            "teacher layer 'stage1_block1_out' is 8x8; pair layers",
        ),
        (
            {"student_layers": ["stage1_block1_out"]},
            "student_layers: 1 student layers for 2 teacher layers",
        ),
        ({"student_layers": ["logits"]}, "does not output a feature map"),
        ({"codeword_multiplier": 0}, "codeword_multiplier: must be > 0"),
        ({"codeword_multiplier": 0.01}, "gives K = int(16 * 0.01) = 0"),
        ({"sparsity_ratio": 0.0}, "sparsity_ratio: must lie in (0, 1]"),
        ({"sparsity_ratio": 1.5}, "sparsity_ratio: must lie in (0, 1]"),
        ({"epochs": 0}, "epochs must be an integer >= 1"),
        ({"alpha": 2.0}, "alpha must lie in [0, 1]"),
    ],
)
def test_bad_arguments_are_refused_before_training(
    tools, tmp_path, options, message
):
    train_ds, test_ds = tools.fresh_data()
    arguments = {"epochs": 1, "directory": tmp_path / "run", **options}
    with pytest.raises(ValueError, match=re.escape(message)) as e:
        pipelines.sparse_representation_matching(
            tools.convnet,
            tools.convnet(16, "teacher"),
            train_ds,
            test_ds,
            **arguments,
        )
    assert "\n" not in str(e.value)
    assert not (tmp_path / "run").exists()


def test_a_folder_of_other_settings_is_refused(tools, tmp_path):
    (tmp_path / "pipeline.json").write_text(
        json.dumps({"pipeline": "sparse_representation_matching"})
    )
    train_ds, test_ds = tools.fresh_data()
    with pytest.raises(ValueError, match="holds a pipeline with other") as e:
        pipelines.sparse_representation_matching(
            tools.convnet,
            tools.convnet(16, "teacher"),
            train_ds,
            test_ds,
            epochs=1,
            directory=tmp_path,
            sparsity_ratio=0.03,
        )
    assert "sparsity_ratio: 0.03 here, null there" in str(e.value)
    assert "\n" not in str(e.value)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["pipeline.json"]
