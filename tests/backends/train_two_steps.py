"""Trains every method two steps on the backend `KERAS_BACKEND` names.

Launched by tests/backends/test_every_backend.py, once per backend. Every
method's tiny Distiller (tests/distribute/method_zoo.py) starts from the
weights in `--weights` (written by the TensorFlow run, which creates them
when the file does not exist), trains two `train_on_batch` steps with one
step per epoch (so the ramp-ups move), and its logs and weights after each
step are written to `--output` (.json and .npz).

It also trains `EMAProbe`, a method with state updated by
`after_train_step` (a temporal mean of the student's weights).
"""

import argparse
import json
import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "distribute"))


def record_ema(weights, when, distiller):
    """The probe's student weights and averages, under `ema/<when>/`."""
    import keras

    values = {
        "student": distiller.student.trainable_weights,
        "average": distiller.method.averages,
    }
    for kind, variables in values.items():
        for i, variable in enumerate(variables):
            value = keras.ops.convert_to_numpy(variable.value)
            weights[f"ema/{when}/{kind}/{i:04d}"] = value


def main(argv):
    parser = argparse.ArgumentParser()
    parser.add_argument("--weights", required=True)
    parser.add_argument("--output", required=True)
    args = parser.parse_args(argv)

    import keras
    import method_zoo
    import numpy as np
    from ema_probe import probe_distiller

    from keras_one import methods

    x, y = method_zoo.make_images(32)
    saved = dict(np.load(args.weights)) if os.path.exists(args.weights) else {}
    weights, logs = {}, {}
    names = [*methods.names(), "ema_probe"]
    for name in names:
        if name == "ema_probe":
            distiller = probe_distiller()
        else:
            distiller = method_zoo.make_distiller(name)
        distiller.compile(optimizer=keras.optimizers.SGD(0.05, momentum=0.9))
        start = [k for k in saved if k.startswith(f"{name}/")]
        if start:
            distiller.set_weights(
                [saved[f"{name}/{i:04d}"] for i in range(len(start))]
            )
        else:
            for i, value in enumerate(distiller.get_weights()):
                weights[f"{name}/{i:04d}"] = value
        distiller.steps_per_epoch = 1
        inputs = method_zoo.student_inputs(distiller, x)
        logs[name] = []
        if name == "ema_probe":
            record_ema(weights, "initial", distiller)
        for step in range(2):
            result = distiller.train_on_batch(inputs, y, return_dict=True)
            logs[name].append({k: float(v) for k, v in result.items()})
            for i, value in enumerate(distiller.get_weights()):
                weights[f"{name}/step{step}/{i:04d}"] = value
            if name == "ema_probe":
                record_ema(weights, f"step{step}", distiller)
        keras.backend.clear_session(free_memory=False)
    if not saved:
        start = {k: v for k, v in weights.items() if k.count("/") == 1}
        np.savez(args.weights, **start)
    np.savez(args.output + ".npz", **weights)
    with open(args.output + ".json", "w") as file:
        json.dump({"backend": keras.backend.backend(), "logs": logs}, file)


if __name__ == "__main__":
    main(sys.argv[1:])
