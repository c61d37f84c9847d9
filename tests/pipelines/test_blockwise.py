"""Block-wise KD: its loss against NumPy, its stages, resume, refusals."""

import json
import re

import keras
import numpy as np
import pytest
from keras import ops

from keras_one import pipelines
from keras_one.pipelines import _features
from keras_one.pipelines import blockwise


def test_block_loss_matches_numpy(gradients):
    rng = np.random.default_rng(0)
    shapes = [(2, 4, 4, 3), (2, 2, 2, 5)]
    student = [rng.normal(size=s).astype("float32") for s in shapes]
    teacher = [rng.normal(size=s).astype("float32") for s in shapes]
    pairs = zip(student, teacher, strict=True)
    expected = sum(((s - t) ** 2).mean() for s, t in pairs)
    got = ops.convert_to_numpy(blockwise.block_loss(student, teacher))
    np.testing.assert_allclose(got, expected, rtol=1e-6)
    variables = [keras.Variable(x) for x in student + teacher]
    grads = gradients(
        lambda: blockwise.block_loss(variables[:2], variables[2:]), variables
    )
    np.testing.assert_allclose(
        grads[0], 2 * (student[0] - teacher[0]) / student[0].size, rtol=1e-5
    )
    assert all(np.abs(g).sum() == 0 for g in grads[2:])  # fixed targets


def test_the_block_stage_lowers_each_block_error(tools):
    teacher = tools.convnet(16, "teacher")  # the student is 8 wide
    student = tools.convnet(8, "student")
    plan = blockwise.check_arguments(tools.convnet, teacher, None, None)
    targets = _features.outputs_model(teacher, plan["teacher_layers"], "t")
    model = blockwise.BlockMatching(student, plan["student_layers"], targets)
    # 1x1 adapters: 16 -> 8 channels into block 1, 8 -> 16 and 16 -> 32
    # out of the blocks; block 0 reads the image itself.
    kinds = [type(a).__name__ for a in model.input_adapters]
    assert kinds == ["Identity", "Conv2D"]
    assert [a.filters for a in model.output_adapters] == [16, 32]
    model.compile(optimizer=keras.optimizers.Adam(1e-2))
    images = np.random.default_rng(0).normal(size=(16, 8, 8, 1))
    images = images.astype("float32")
    teacher_before = teacher.get_weights()

    def errors():
        outputs = model(images)
        pairs = zip(outputs["student"], outputs["teacher"], strict=True)
        return [float(ops.mean(ops.square(s - t))) for s, t in pairs]

    before = errors()
    model.fit(images, np.zeros(16), batch_size=16, epochs=30, verbose=0)
    after = errors()
    assert all(a < 0.7 * b for a, b in zip(after, before, strict=True))
    for got, expected in zip(
        teacher.get_weights(), teacher_before, strict=True
    ):
        np.testing.assert_array_equal(got, expected)  # frozen


def run_blockwise(tools, folder, callbacks=()):
    train_ds, test_ds = tools.fresh_data()
    return pipelines.blockwise_distillation(
        tools.convnet,
        lambda: tools.convnet(16),
        train_ds,
        test_ds,
        epochs=2,
        directory=folder,
        callbacks=callbacks,
        verbose=0,
    )


STAGES = ["teacher", "blocks", "student"]


@pytest.fixture(scope="module")
def uninterrupted(tools, tmp_path_factory):
    folder = tmp_path_factory.mktemp("blockwise")
    watch = tools.Watch()
    models, accuracy = run_blockwise(tools, folder, [watch])
    return folder, models, accuracy, watch


def test_blockwise_trains_the_teacher_the_blocks_then_the_student(
    uninterrupted,
):
    folder, models, accuracy, watch = uninterrupted
    assert watch.stages == [
        ["teacher", 2],
        ["blocks_fit", 2],
        ["student_distiller", 2],
    ]
    record = json.loads((folder / "pipeline.json").read_text())
    assert record["stages"] == STAGES
    assert record["teacher"] == "stage 1"
    assert record["student_layers"] == [
        "stage1_block1_out",
        "stage2_block1_out",
    ]
    blocks = json.loads((folder / "blocks.json").read_text())
    assert len(blocks["history"]["loss"]) == 2
    teacher = json.loads((folder / "teacher.json").read_text())
    assert accuracy["teacher"] == teacher["accuracy"]
    # The fine-tuning started from the block stage's student.
    assert models["blocks"].count_params() == models["student"].count_params()
    assert not np.allclose(
        models["blocks"].get_weights()[0], models["student"].get_weights()[0]
    )


def test_blockwise_resumes_to_the_uninterrupted_weights(
    uninterrupted, tools, tmp_path
):
    reference, _, expected, _ = uninterrupted
    with pytest.raises(KeyboardInterrupt):
        run_blockwise(tools, tmp_path, [tools.InterruptAfter("blocks_fit")])
    assert (tmp_path / "teacher.keras").exists()
    assert not (tmp_path / "blocks.keras").exists()
    watch = tools.Watch()
    _, accuracy = run_blockwise(tools, tmp_path, [watch])
    assert watch.stages == [["blocks_fit", 1], ["student_distiller", 2]]
    for name in STAGES:
        tools.assert_same_weights(
            tmp_path / f"{name}.keras", reference / f"{name}.keras"
        )
    assert accuracy == pytest.approx(expected, abs=1e-6)


@pytest.mark.parametrize(
    "options, message",
    [
        (
            {"student_layers": ["s1_conv", "nowhere"]},
            "student_layers: the student",
        ),
        (
            {"teacher_layers": ["stage2_block1_out", "stage1_block1_out"]},
            "student_layers: student layer 'stage1_block1_out' is 8x8 but "
            "teacher layer 'stage2_block1_out' is 4x4",
        ),
        ({"epochs": -1}, "epochs must be an integer >= 1"),
        ({"temperature": 0}, "temperature must be > 0"),
    ],
)
def test_bad_arguments_are_refused_before_training(
    tools, tmp_path, options, message
):
    train_ds, test_ds = tools.fresh_data()
    arguments = {"epochs": 1, "directory": tmp_path / "run", **options}
    with pytest.raises(ValueError, match=re.escape(message)) as e:
        pipelines.blockwise_distillation(
            tools.convnet,
            tools.convnet(16, "teacher"),
            train_ds,
            test_ds,
            **arguments,
        )
    assert "\n" not in str(e.value)
    assert not (tmp_path / "run").exists()


def test_a_folder_of_other_settings_is_refused(tools, tmp_path):
    record = {"pipeline": "blockwise_distillation", "alpha": 0.5}
    (tmp_path / "pipeline.json").write_text(json.dumps(record))
    train_ds, test_ds = tools.fresh_data()
    with pytest.raises(ValueError, match="alpha: 0.9 here, 0.5 there"):
        pipelines.blockwise_distillation(
            tools.convnet,
            tools.convnet(16, "teacher"),
            train_ds,
            test_ds,
            epochs=1,
            directory=tmp_path,
        )
    assert sorted(p.name for p in tmp_path.iterdir()) == ["pipeline.json"]
