"""A method's own state (`build_state` / `after_train_step`): saved, restored
and correct under `tf.distribute`.

`EMAProbe` (ema_probe.py) keeps a temporal mean of the student's weights,
as PCL's mean teachers do. tests/backends/test_every_backend.py checks its
update on every backend and test_jax_data_parallel.py under JAX's
`DataParallel`; here: under a 2-replica `MirroredStrategy` (float64, same
weights, averages and auxiliary layer, which trains at its own learning
rate, as one device to 1e-12) and through `save_weights` / `load_weights`.
"""

import os
import subprocess
import sys

import keras
import numpy as np
import pytest

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.join(HERE, "..", "distribute"))

import method_zoo  # noqa: E402
from ema_probe import probe_distiller  # noqa: E402


def compiled_probe():
    distiller = probe_distiller()
    distiller.compile(optimizer=keras.optimizers.SGD(0.05, momentum=0.9))
    return distiller


def averages(distiller):
    return [np.array(a.numpy()) for a in distiller.method.averages]


def test_state_is_saved_and_restored(tmp_path):
    x, y = method_zoo.make_images(32)
    trained = compiled_probe()
    before = averages(trained)
    trained.fit(x, y, batch_size=16, epochs=1, verbose=0)
    after = averages(trained)
    assert any(
        not np.allclose(a, b) for a, b in zip(before, after, strict=True)
    )
    trained.save_weights(tmp_path / "probe.weights.h5")
    restored = compiled_probe()
    restored.load_weights(tmp_path / "probe.weights.h5")
    for a, b in zip(after, averages(restored), strict=True):
        np.testing.assert_array_equal(a, b)


@pytest.mark.slow
def test_state_under_mirrored_strategy(tmp_path):
    output = str(tmp_path / "mirrored.npz")
    process = subprocess.run(
        [
            sys.executable,
            os.path.join(HERE, "train_mirrored_ema.py"),
            "--output",
            output,
        ],
        cwd=HERE,
        env=dict(os.environ, KERAS_BACKEND="tensorflow"),
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert process.returncode == 0, process.stderr[-5000:]
    values = dict(np.load(output))
    for kind in ("average", "auxiliary"):
        assert any(k.startswith(f"single/{kind}/") for k in values)
    for key in sorted(k for k in values if k.startswith("single/")):
        np.testing.assert_allclose(
            values[key.replace("single/", "mirrored/")],
            values[key],
            rtol=0,
            atol=1e-12,
            err_msg=key,
        )
