"""Trains ONE with `BackupAndRestore(save_freq=3)`; can block to be killed.

Launched by `test_crash_and_resume.py`. The same command is run twice: the
first run blocks after batch `--block-at EPOCH:BATCH` (it writes
`<output>.ready` and sleeps until the test kills it with SIGKILL), the
second run finds the backup, resumes from it and trains to the end. A run
that starts from a backup never blocks. At the end it writes every
variable to `<output>.npz` and, to `<output>.json`, the number of
optimizer steps, the epoch logs, whether it resumed, and `current_epoch`
as seen after each batch.

96 examples in batches of 16 (6 steps per epoch), 3 epochs, inputs in a
fixed order, op determinism on: an uninterrupted run and a killed and
resumed one must end with the same weights.

Usage:
    python train_resumable.py --backup-dir /tmp/backup --output /tmp/run \
        --block-at 1:4
"""

import argparse
import json
import os
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def main(argv):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--backup-dir", required=True)
    parser.add_argument("--output", required=True)
    parser.add_argument("--block-at", default=None)
    parser.add_argument("--epochs", type=int, default=3)
    args = parser.parse_args(argv)

    import keras
    import method_zoo
    import numpy as np
    import tensorflow as tf

    tf.config.experimental.enable_op_determinism()
    resumed = os.path.exists(
        os.path.join(args.backup_dir, "training_metadata.json")
    )
    block_at = None
    if args.block_at and not resumed:
        block_at = tuple(int(i) for i in args.block_at.split(":"))

    class Recorder(keras.callbacks.Callback):
        """Records `current_epoch`; blocks at `block_at` to be killed."""

        def on_train_begin(self, logs=None):
            self.current_epochs = []

        def on_epoch_begin(self, epoch, logs=None):
            self.epoch = epoch

        def on_train_batch_begin(self, batch, logs=None):
            # The epoch ONE's ramp-up sees in this batch's step.
            self.current_epochs.append(
                [self.epoch, batch, float(self.model.current_epoch)]
            )

        def on_train_batch_end(self, batch, logs=None):
            if (self.epoch, batch) == block_at:
                with open(args.output + ".ready", "w") as file:
                    file.write("backup written; waiting to be killed\n")
                time.sleep(3600)

    x, y = method_zoo.make_images(96)
    distiller = method_zoo.make_distiller("one")
    distiller.compile(optimizer=keras.optimizers.SGD(0.05, momentum=0.9))
    recorder = Recorder()
    history = distiller.fit(
        x,
        y,
        batch_size=16,
        epochs=args.epochs,
        shuffle=False,
        verbose=0,
        callbacks=[
            keras.callbacks.BackupAndRestore(args.backup_dir, save_freq=3),
            recorder,
        ],
    )
    np.savez(args.output + ".npz", **method_zoo.weights_of(distiller))
    with open(args.output + ".json", "w") as file:
        json.dump(
            {
                "resumed": resumed,
                "steps": int(distiller.optimizer.iterations.numpy()),
                "history": history.history,
                "current_epochs": recorder.current_epochs,
            },
            file,
        )


if __name__ == "__main__":
    main(sys.argv[1:])
