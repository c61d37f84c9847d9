"""Trains `EMAProbe` on one device and under a 2-replica MirroredStrategy.

Launched by tests/backends/test_stateful_method.py (TensorFlow backend).
The CPU is split into two logical devices before TensorFlow starts; both
runs start from the same weights and train two epochs of three steps; the
student's weights, the probe's averages and its auxiliary layer (trained at
its own learning rate) go to `--output` (.npz).
"""

import argparse
import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "distribute"))


def main(argv):
    parser = argparse.ArgumentParser()
    parser.add_argument("--output", required=True)
    args = parser.parse_args(argv)

    import tensorflow as tf

    (cpu,) = tf.config.list_physical_devices("CPU")
    tf.config.set_logical_device_configuration(
        cpu, [tf.config.LogicalDeviceConfiguration()] * 2
    )
    import keras
    import method_zoo
    import numpy as np
    from ema_probe import probe_distiller

    x, y = method_zoo.make_images(48)
    x, y = x.astype("float64"), y

    def train(strategy, start):
        distiller = probe_distiller(strategy)
        method = distiller.method
        with strategy.scope():
            distiller.compile(
                optimizer=keras.optimizers.SGD(0.05, momentum=0.9)
            )
        if start is not None:
            distiller.set_weights(start)
        start = distiller.get_weights()
        # Two epochs: the auxiliary layer's multiplier is 0, then 0.5.
        distiller.fit(x, y, batch_size=16, epochs=2, shuffle=False, verbose=0)
        values = {
            f"student/{i:04d}": np.array(w.numpy())
            for i, w in enumerate(distiller.student.trainable_weights)
        }
        values.update(
            {
                f"average/{i:04d}": np.array(a.numpy())
                for i, a in enumerate(method.averages)
            }
        )
        values.update(
            {
                f"auxiliary/{i:04d}": np.array(w.numpy())
                for i, w in enumerate(method.auxiliary.trainable_weights)
            }
        )
        return start, values

    keras.config.set_floatx("float64")
    keras.mixed_precision.set_dtype_policy("float64")
    devices = [d.name for d in tf.config.list_logical_devices("CPU")]
    start, single = train(tf.distribute.OneDeviceStrategy(devices[0]), None)
    _, mirrored = train(tf.distribute.MirroredStrategy(devices), start)
    results = {f"single/{k}": v for k, v in single.items()}
    results.update({f"mirrored/{k}": v for k, v in mirrored.items()})
    np.savez(args.output, **results)


if __name__ == "__main__":
    main(sys.argv[1:])
