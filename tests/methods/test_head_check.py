import keras
import pytest

from keras_one.layers import FusionClassifier
from keras_one.methods._head_check import warn_unless_from


def test_warns_about_another_head(make_student):
    student = make_student(num_branches=2, head="gate")
    with pytest.warns(UserWarning, match="from layer 'gated_ensemble'"):
        warn_unless_from(student, FusionClassifier, "FFL", "fusion_classifier")


def test_silent_for_the_expected_head(make_student, recwarn):
    student = make_student(num_branches=2, head="fusion_classifier")
    warn_unless_from(student, FusionClassifier, "FFL", "fusion_classifier")
    assert not [w for w in recwarn if "FFL expects" in str(w.message)]


def test_silent_for_a_subclassed_student(recwarn):
    class Student(keras.Model):
        def __init__(self):
            super().__init__()
            self.dense = keras.layers.Dense(4)

        def call(self, x):
            logits = self.dense(x)
            return {"branch_logits": [logits], "ensemble_logits": logits}

    student = Student()
    student(keras.ops.ones((1, 3)))
    warn_unless_from(student, FusionClassifier, "FFL", "fusion_classifier")
    assert not [w for w in recwarn if "FFL expects" in str(w.message)]
