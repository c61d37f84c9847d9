import contextlib

import numpy as np
import pytest

import keras_one
from keras_one import cli
from keras_one import methods
from keras_one.losses import cross_entropy
from keras_one.methods import MethodInfo
from keras_one.methods import registry


@contextlib.contextmanager
def restored_registry():
    """Undoes the registrations made inside the block."""
    saved = dict(registry._METHODS)
    try:
        yield
    finally:
        registry._METHODS.clear()
        registry._METHODS.update(saved)


def define_mean_teacher_method():
    """A tiny method, defined here: no registry is edited to add it."""

    class MeanTeacher(methods.Method):
        """Every branch learns the labels; a test-only method."""

        info = MethodInfo(
            name="test_mean_teacher", branches=2, rampup_fraction=0.5
        )
        loss_names = ("ce",)

        def compute_losses(self, labels, outputs, epoch):
            return {
                "ce": sum(
                    cross_entropy(labels, z) for z in outputs["branch_logits"]
                )
            }

    return MeanTeacher


def test_a_method_registers_itself_by_being_defined(tiny_data):
    x, y = tiny_data
    before = methods.names()
    with restored_registry():
        MeanTeacher = define_mean_teacher_method()
        assert methods.get("test_mean_teacher") is MeanTeacher
        assert methods.get("Test-Mean-Teacher") is MeanTeacher
        assert methods.names() == sorted(before + ["test_mean_teacher"])
        assert MeanTeacher.head is None and MeanTeacher.min_branches == 2
        assert methods.rampup_epochs(MeanTeacher, 10) == 5
        args = cli.build_parser().parse_args(
            ["train", "--method", "test_mean_teacher"]
        )
        assert args.method == "test_mean_teacher"
        # Reachable by name, it trains like any method.
        method = methods.get("test_mean_teacher")()
        student = method.build_student(
            "resnet8", num_classes=4, input_shape=(8, 8, 1)
        )
        distiller = keras_one.Distiller(student, method)
        distiller.compile(optimizer="sgd")
        history = distiller.fit(x, y, batch_size=48, epochs=1, verbose=0)
        assert distiller.num_branches == 2
        assert np.isfinite(history.history["ce"][-1])
    # Removed again: it does not leak into other tests.
    assert methods.names() == before
    with pytest.raises(ValueError, match="Unknown method"):
        methods.get("test_mean_teacher")


def test_a_variant_without_its_own_info_is_not_registered():
    before = methods.names()

    class LoudONE(methods.ONE):
        pass

    assert methods.names() == before
    assert methods.get("one") is methods.ONE
    assert LoudONE.info is methods.ONE.info and LoudONE.head == "gate"


def test_a_taken_name_is_refused():
    with pytest.raises(ValueError, match="'one'.*has that name"):

        class AnotherONE(methods.Method):
            info = MethodInfo(name="one")

    assert methods.get("one") is methods.ONE


def test_info_is_the_one_place_for_head_and_min_branches():
    with pytest.raises(TypeError, match="declare head= in its MethodInfo"):

        class Headed(methods.Method):
            info = MethodInfo(head="gate")
            head = "mean"

    with pytest.raises(TypeError, match="must be a keras_one.methods"):

        class Loose(methods.Method):
            info = {"name": "loose"}
