"""Trains methods on JAX with and without `keras.distribution.DataParallel`.

Launched by tests/backends/test_jax_data_parallel.py with two JAX CPU
devices (`XLA_FLAGS=--xla_force_host_platform_device_count=2`). For each
method named on the command line it trains the method's tiny Distiller
three `fit` steps on one device, then the same Distiller (same starting
weights) under `DataParallel` over both devices, and writes both sets of
weights to `--output` (.npz), with the device count and the number of
devices the parallel run's weights live on (.json).
"""

import argparse
import json
import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "distribute"))


def main(argv):
    parser = argparse.ArgumentParser()
    parser.add_argument("--output", required=True)
    parser.add_argument("methods", nargs="+")
    args = parser.parse_args(argv)

    import jax
    import keras
    import method_zoo
    import numpy as np
    from ema_probe import probe_distiller

    def build(name):
        if name == "ema_probe":
            return probe_distiller()
        return method_zoo.make_distiller(name)

    def train(name, start):
        distiller = build(name)
        distiller.compile(optimizer=keras.optimizers.SGD(0.05, momentum=0.9))
        if start is not None:
            distiller.set_weights(start)
        start = distiller.get_weights()
        # Two epochs: EMAProbe's auxiliary layer trains (multiplier 0.5)
        # from the second.
        distiller.fit(x, y, batch_size=16, epochs=2, shuffle=False, verbose=0)
        kernel = distiller.student.trainable_weights[0].value
        devices[name] = len(kernel.sharding.device_set)
        return start, distiller.get_weights()

    x, y = method_zoo.make_images(48)
    results, devices = {}, {}
    for name in args.methods:
        keras.distribution.set_distribution(None)
        start, single = train(name, None)
        keras.distribution.set_distribution(
            keras.distribution.DataParallel(devices=jax.devices("cpu"))
        )
        _, parallel = train(name, start)
        for i, (a, b) in enumerate(zip(single, parallel, strict=True)):
            results[f"{name}/single/{i:04d}"] = a
            results[f"{name}/parallel/{i:04d}"] = b
            results[f"{name}/start/{i:04d}"] = start[i]
    np.savez(args.output + ".npz", **results)
    with open(args.output + ".json", "w") as file:
        json.dump(
            {"devices": len(jax.devices("cpu")), "sharded": devices}, file
        )


if __name__ == "__main__":
    main(sys.argv[1:])
