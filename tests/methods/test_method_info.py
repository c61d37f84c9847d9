import dataclasses

import pytest

import keras_one
from keras_one import cli
from keras_one import methods
from keras_one import models
from keras_one.methods import MethodInfo
from keras_one.methods import rampup_epochs
from keras_one.methods.method_info import STUDENTS
from keras_one.methods.method_info import TEACHERS
from keras_one.methods.method_info import num_teachers
from keras_one.student_outputs import normalize_outputs

TINY = dict(num_classes=4, input_shape=(8, 8, 1))


def tiny_teacher(name):
    return models.cifar_resnet(8, num_branches=1, name=name, **TINY)


def make_method(method_class):
    """The method with the teachers its description asks for."""
    info = method_class.info
    if info.teachers == "one":
        return method_class(teacher=tiny_teacher("teacher"))
    if info.teachers in ("per_branch", "several"):
        return method_class(
            teachers=[
                tiny_teacher(f"teacher_{i}")
                for i in range(num_teachers(method_class))
            ]
        )
    if info.example_index:
        # The labels of the training examples, by index (MCL-OKD).
        return method_class(example_labels=[0, 1, 2, 3] * 4, num_negatives=2)
    return method_class()


@pytest.mark.parametrize("name", methods.names())
def test_every_method_has_a_complete_consistent_description(name):
    method_class = methods.get(name)
    info = method_class.info
    assert isinstance(info, MethodInfo) and "info" in vars(method_class)
    assert info.name == name
    assert getattr(keras_one.methods, method_class.__name__) is method_class
    assert 1 <= info.min_branches <= info.branches
    assert info.teachers in TEACHERS and info.student in STUDENTS
    assert info.head in models.HEADS
    assert 0.0 <= info.rampup_fraction <= 1.0
    # The class attributes read the description.
    assert method_class.head == info.head
    assert method_class.min_branches == info.min_branches
    # The command line accepts the name.
    args = cli.build_parser().parse_args(["train", "--method", name])
    assert args.method == name
    # The constructor's default ramp-up agrees with the description: none
    # for the methods without one.
    method = make_method(method_class)
    assert (method.rampup_epochs == 0) == (info.rampup_fraction == 0)
    # The default student has the described branches and what the method
    # needs.
    student = method.build_student("resnet8", **TINY)
    outputs = normalize_outputs(student.output)
    assert len(outputs["branch_logits"]) == info.branches
    method.check_outputs(outputs)
    # It takes the images the description says the data must give, and
    # the example index if it keeps state per example.
    assert len(student.inputs) == methods.data_views(method_class) + int(
        info.example_index
    )


def test_the_built_in_methods_state_their_papers_defaults():
    described = {
        name: (
            methods.get(name).info.branches,
            methods.get(name).info.teachers,
            rampup_epochs(methods.get(name), 300),
        )
        for name in methods.names()
    }
    assert described == {
        "cl_ilr": (3, "none", 0),
        "dml": (2, "none", 0),
        "ekd": (2, "per_branch", 0),
        "ffl": (2, "none", 80),
        "kd": (1, "one", 0),
        "mcl_okd": (4, "none", 0),
        "meal": (1, "several", 0),
        "mde": (3, "none", 80),
        "oec": (5, "none", 0),
        "okddip": (4, "none", 80),
        "one": (3, "none", 80),
        "pcl": (3, "none", 80),
        "sokd": (1, "one", 0),
    }
    assert methods.DML.info.student == "independent"
    assert methods.OEC.info.student == "own"
    assert methods.OKDDip.info.min_branches == 3
    # Only PCL's peers each take their own view of the image.
    per_branch_views = [
        name
        for name in methods.names()
        if methods.get(name).info.views == "per_branch"
    ]
    assert per_branch_views == ["pcl"]
    assert methods.data_views(methods.PCL) == 3
    assert methods.data_views(methods.PCL(), num_branches=5) == 5
    assert methods.data_views(methods.ONE, num_branches=5) == 1


@pytest.mark.parametrize(
    "method, epochs, fraction, expected",
    [
        (methods.ONE, 300, None, 80),  # the official 80 of 300 epochs
        (methods.ONE, 30, None, 8),
        (methods.ONE, 80, None, 21),
        (methods.ONE, 1, None, 0),
        (methods.ONE, 0, None, 0),
        (methods.FFL, 150, None, 40),
        (methods.DML, 300, None, 0),
        (methods.KD, 300, None, 0),
        (methods.MDE, 20, 0.25, 5),  # a given fraction replaces the method's
        (methods.DML, 80, 0.27, 22),
        (methods.ONE, 10, 1.0, 10),
        (methods.ONE, 10, 0.0, 0),
    ],
)
def test_rampup_epochs_resolves_the_fraction(
    method, epochs, fraction, expected
):
    got = rampup_epochs(method, epochs, fraction)
    assert got == expected and isinstance(got, int)


def test_rampup_epochs_reads_instances_and_rejects_bad_values():
    assert rampup_epochs(methods.ONE(), 150) == 40
    with pytest.raises(ValueError, match="fraction must lie in"):
        rampup_epochs(methods.ONE, 10, fraction=1.5)
    with pytest.raises(ValueError, match="epochs must be >= 0"):
        rampup_epochs(methods.ONE, -1)


@pytest.mark.parametrize(
    "arguments, message",
    [
        (dict(name="One"), "lowercase"),
        (dict(name="cl-ilr"), "lowercase"),
        (dict(min_branches=0, branches=1), "min_branches must be >= 1"),
        (dict(branches=2, min_branches=3), r"branches \(2\) must be >="),
        (dict(student="tree"), "student must be one of"),
        (dict(student="single", branches=3), "'single' student has 1"),
        (dict(teachers="two"), "teachers must be one of"),
        (dict(rampup_fraction=1.5), r"rampup_fraction must lie in \[0, 1\]"),
        (dict(views="two"), "views must be one of"),
        (dict(branch_stage=4), "branch_stage must be 0, 1, 2, 3 or None"),
        (
            dict(student="independent", branch_stage=2),
            "branch_stage applies to a 'shared_trunk' student only",
        ),
        (
            dict(example_index=True, views="per_branch"),
            "example_index=True gives one image per example",
        ),
    ],
)
def test_inconsistent_descriptions_are_refused(arguments, message):
    with pytest.raises(ValueError, match=message):
        MethodInfo(**arguments)


def test_a_description_is_frozen_data():
    info = MethodInfo(name="mine", branches=4, head="gate")
    assert info == MethodInfo(name="mine", branches=4, head="gate")
    assert info.min_branches == 2 and info.rampup_fraction == 0.0
    with pytest.raises(dataclasses.FrozenInstanceError):
        info.branches = 5


def test_a_described_branch_stage_is_the_default_students():
    class Stage1(methods.Method):  # not registered: no name
        info = MethodInfo(branch_stage=1)

    def top_layers(**kwargs):
        student = Stage1().build_student("resnet8", **TINY, **kwargs)
        return [layer.name for layer in student.layers]

    # Branches from stage 1 on: only the stem is shared.
    assert "stage1_block1_out" not in top_layers()
    # A branch_stage given to build_student replaces the description's.
    assert "stage2_block1_out" in top_layers(branch_stage=3)
    # MCL-OKD's (2) comes from its description alone.
    assert MethodInfo().branch_stage is None
    assert methods.MCLOKD.info.branch_stage == 2


def test_data_options_and_create_read_the_description(tiny_data):
    x, y = tiny_data
    assert methods.data_options(methods.ONE) == {}
    assert methods.data_options(methods.PCL(), num_branches=4) == {"views": 4}
    assert methods.data_options(methods.MCLOKD) == {"with_index": True}
    # Teachers go where the description says; other arguments through.
    teacher = tiny_teacher("teacher")
    kd = methods.create("kd", teachers=[teacher], temperature=2.0)
    assert kd.teachers == [teacher] and kd.temperature == 2.0
    teachers = [teacher, tiny_teacher("teacher_1")]
    assert methods.create(methods.EKD, teachers=teachers).teachers == teachers
    # Several teachers: any count, independent of the branches.
    assert methods.create("meal", teachers=[teacher]).teachers == [teacher]
    assert methods.create("meal", teachers=teachers).teachers == teachers
    with pytest.raises(ValueError, match="teachers; got none"):
        methods.create("meal", teachers=[])
    assert num_teachers(methods.MEAL, num_branches=5) == 2
    assert num_teachers(methods.EKD, num_branches=3) == 3
    assert num_teachers(methods.KD) == 1 and num_teachers(methods.ONE) == 0
    with pytest.raises(ValueError, match="takes no pre-trained teachers"):
        methods.create("one", teachers=[teacher])
    with pytest.raises(ValueError, match="one pre-trained teacher; got 2"):
        methods.create("kd", teachers=[teacher] * 2)
    # A method with state per example reads its labels from indexed data.
    indexed, _, _ = keras_one.data.load_arrays(
        x, y, x[:8], y[:8], batch_size=32, with_index=True
    )
    method = methods.create("mcl_okd", train_ds=indexed, num_negatives=4)
    assert method.num_examples == len(y)
    assert list(methods.data_arguments(methods.MCLOKD, indexed)) == [
        "example_labels"
    ]
    assert methods.data_arguments(methods.ONE, None) == {}
    with pytest.raises(ValueError, match=r"load\(\.\.\., with_index=True\)"):
        methods.create("mcl_okd")
    plain, _, _ = keras_one.data.load_arrays(x, y, x, y, batch_size=32)
    with pytest.raises(ValueError, match="carry no index"):
        methods.create("mcl_okd", train_ds=plain)
    # Given labels are kept (the data is not read).
    given = methods.create("mcl_okd", example_labels=[0, 1] * 4)
    assert given.num_examples == 8
