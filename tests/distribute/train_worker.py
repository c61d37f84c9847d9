"""Trains ONE with `fit` on one worker of a MultiWorkerMirroredStrategy.

Launched by `test_multi_worker.py`: once per worker with `TF_CONFIG` set
(two processes on loopback ports), and once without `TF_CONFIG` as the
single-process reference on the same global batches. Writes every
variable after training to `<output>.npz` and, to `<output>.json`, the
epoch logs and what this process's replica trained on: the number of
examples and the sum of their sample weights (a worker that trained on
whole global batches instead of its share would count all of them).

Float64 compute (`--policy`) keeps round-off (from summing gradients in
another order) far below the test's tolerance, so the comparison checks the
algorithm; BatchNormalization is synchronized across the workers.

Usage:
    TF_CONFIG='{"cluster": {"worker": ["localhost:12345",
        "localhost:12346"]}, "task": {"type": "worker", "index": 0}}' \
        python train_worker.py --output /tmp/worker_0
"""

import argparse
import json
import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def main(argv):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--output", required=True)
    parser.add_argument("--method", default="one")
    parser.add_argument("--policy", default="float64")
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--timeout", type=float, default=120.0)
    args = parser.parse_args(argv)

    import keras
    import method_zoo
    import numpy as np
    import tensorflow as tf

    keras.config.set_dtype_policy(args.policy)
    if "TF_CONFIG" in os.environ:
        # A collective that waits longer than this fails instead of hanging.
        options = tf.distribute.experimental.CommunicationOptions(
            timeout_seconds=args.timeout
        )
        strategy = tf.distribute.MultiWorkerMirroredStrategy(
            communication_options=options
        )
    else:
        strategy = tf.distribute.get_strategy()
    x, y = method_zoo.make_images(96)
    sample_weight = np.random.default_rng(1).uniform(0.5, 1.5, len(y))
    with strategy.scope():
        distiller = method_zoo.make_distiller(
            args.method, synchronized_batch_norm=True
        )
        distiller.compile(optimizer=keras.optimizers.SGD(0.05, momentum=0.9))
    seen = {"examples": 0, "sample_weight": 0.0}

    def record(count, weight_sum):
        seen["examples"] += int(count)
        seen["sample_weight"] += float(weight_sum)
        return count

    keras_train_step = distiller.train_step

    def train_step(data):
        # This replica's share of the batch, counted in Python as it runs.
        _, _, weights = keras.utils.unpack_x_y_sample_weight(data)
        counted = tf.numpy_function(
            record,
            [tf.shape(weights)[0], tf.reduce_sum(weights)],
            tf.int32,
            stateful=True,
        )
        with tf.control_dependencies([counted]):
            return keras_train_step(data)

    distiller.train_step = train_step
    history = distiller.fit(
        x,
        y,
        sample_weight=sample_weight,
        batch_size=32,
        epochs=args.epochs,
        shuffle=False,
        verbose=0,
    )
    np.savez(args.output + ".npz", **method_zoo.weights_of(distiller))
    with open(args.output + ".json", "w") as file:
        json.dump(
            {
                "history": history.history,
                "replicas": strategy.num_replicas_in_sync,
                "steps": int(distiller.optimizer.iterations.numpy()),
                "examples": seen["examples"],
                "sample_weight": seen["sample_weight"],
                "total_sample_weight": float(sample_weight.sum()),
            },
            file,
        )


if __name__ == "__main__":
    main(sys.argv[1:])
