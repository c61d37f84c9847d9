"""The KD, EKD, SOKD, OEC, PCL and MCL-OKD examples run as written (--small).

All six run in one subprocess (each as `__main__`, through `runpy`) so
TensorFlow is imported once; they write their exported models into a
temporary working directory.
"""

import re

import pytest
from example_runner import run_examples

NAMES = ("kd", "ekd", "sokd", "oec", "pcl", "mcl_okd")
# The lines each example prints, and the accuracies that a few epochs on
# the digits reach far above chance (10%).
EXPECTED = {
    "kd": ["teacher accuracy", "exported student accuracy"],
    "ekd": [
        "teacher 1 accuracy",
        "exported branch 0 accuracy",
        "exported branch 1 accuracy",
        "ensemble accuracy",
    ],
    "sokd": ["teacher accuracy", "bridge", "exported student accuracy"],
    "oec": ["exported student 0 (100.0% ", "ensemble teacher accuracy"],
    "pcl": ["peer 2 accuracy", "exported temporal mean of peer 0 accuracy"],
    "mcl_okd": ["branch 3 accuracy", "exported student (last branch) accuracy"],
}


@pytest.fixture(scope="module")
def outputs(tmp_path_factory):
    cwd = tmp_path_factory.mktemp("examples_b")
    files = [f"{name}_cifar10.py" for name in NAMES]
    sections = run_examples(files, cwd=cwd, timeout=600)
    outputs = {name: sections[f"{name}_cifar10.py"] for name in NAMES}
    outputs["cwd"] = cwd
    return outputs


def accuracies(text):
    return {
        line: float(value)
        for line, value in re.findall(
            r"^(.*) accuracy ([0-9.]+)$", text, re.MULTILINE
        )
    }


@pytest.mark.slow
@pytest.mark.parametrize("name", NAMES)
def test_example_runs_and_reports(outputs, name):
    out = outputs[name]
    for line in EXPECTED[name]:
        assert line in out
    scores = accuracies(out)
    assert scores
    if name == "oec":
        # The x0.2 student (3 to 12 channels) learns slowly in 3 epochs.
        assert scores["exported student 0 (100.0% of the parameters)"] > 0.5
        assert scores["ensemble teacher"] > 0.5
        assert min(scores.values()) > 0.1
    elif name == "pcl":
        # One epoch; the temporal mean averages the weights of every step.
        assert min(scores.values()) > 0.3
    else:
        assert min(scores.values()) > 0.5


@pytest.mark.slow
def test_kd_batch_loss_equals_keras_distillation(outputs):
    match = re.search(
        r"batch loss: keras_one KD ([0-9.]+), keras.distillation ([0-9.]+)",
        outputs["kd"],
    )
    assert match
    ours, theirs = (float(v) for v in match.groups())
    assert abs(ours - theirs) <= 1e-4 * max(1.0, abs(theirs))


@pytest.mark.slow
def test_exported_students_load_as_plain_keras(outputs):
    import keras

    for name in (
        "kd_student.keras",
        "sokd_student.keras",
        "pcl_cifar10_mean_peer0.keras",
        "mcl_okd_cifar10_student.keras",
    ):
        model = keras.saving.load_model(outputs["cwd"] / name)
        assert all(
            type(layer).__module__.startswith("keras.")
            for layer in model.layers
        )
