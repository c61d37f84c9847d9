"""Trains every method with `BackupAndRestore(save_freq=3)`; can be killed.

Launched by `test_crash_and_resume.py`. The same command is run twice. The
first run trains the methods one after the other, each until batch
`--block-at EPOCH:BATCH`, two batches after its last backup: there it
leaves every method but the last (as a crash would: its backup stays on
disk) and goes on with the next; at the last one it writes
`<output>.ready` and sleeps until the test kills the process with
SIGKILL. The second run finds each method's backup, resumes from it and
trains to the end. A run that starts from a backup never stops early.
At the end it writes every method's variables to `<output>.npz`
(`<method>/<variable>`) and, to `<output>.json`, per method: the number
of optimizer steps, the epoch logs, whether it resumed, and
`current_epoch` as seen before each batch.

96 examples in batches of 16 (6 steps per epoch), 3 epochs, inputs in a
fixed order, op determinism on: an uninterrupted run and a killed and
resumed one must end with the same weights.

Usage:
    python train_resumable.py --methods one,dml --backup-dir /tmp/backup \
        --output /tmp/run --block-at 1:4
"""

import argparse
import json
import os
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


class Interrupted(Exception):
    """Leaves a method's training where a crash would have."""


def main(argv):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--methods", required=True)
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

    class Recorder(keras.callbacks.Callback):
        """Records `current_epoch`; stops or blocks at `stop_at`."""

        def __init__(self, stop_at, block):
            super().__init__()
            self.stop_at = stop_at
            self.block = block

        def on_train_begin(self, logs=None):
            self.current_epochs = []

        def on_epoch_begin(self, epoch, logs=None):
            self.epoch = epoch

        def on_train_batch_begin(self, batch, logs=None):
            # The epoch the method's ramp-up sees in this batch's step.
            self.current_epochs.append(
                [self.epoch, batch, float(self.model.current_epoch)]
            )

        def on_train_batch_end(self, batch, logs=None):
            if (self.epoch, batch) != self.stop_at:
                return
            if not self.block:
                raise Interrupted()
            with open(args.output + ".ready", "w") as file:
                file.write("backups written; waiting to be killed\n")
            time.sleep(3600)

    names = args.methods.split(",")
    x, y = method_zoo.make_images(96)
    arrays, report = {}, {}
    for name in names:
        backup_dir = os.path.join(args.backup_dir, name)
        resumed = os.path.exists(
            os.path.join(backup_dir, "training_metadata.json")
        )
        stop_at = None
        if args.block_at and not resumed:
            stop_at = tuple(int(i) for i in args.block_at.split(":"))
        keras.backend.clear_session()
        distiller = method_zoo.make_distiller(name)
        method_zoo.compile_distiller(
            distiller, keras.optimizers.SGD(0.05, momentum=0.9)
        )
        recorder = Recorder(stop_at, block=name == names[-1])
        try:
            history = distiller.fit(
                method_zoo.student_inputs(distiller, x),
                y,
                batch_size=16,
                epochs=args.epochs,
                shuffle=False,
                verbose=0,
                callbacks=[
                    keras.callbacks.BackupAndRestore(backup_dir, save_freq=3),
                    recorder,
                ],
            )
        except Interrupted:
            continue
        for path, value in method_zoo.weights_of(distiller).items():
            arrays[f"{name}/{path}"] = value
        report[name] = {
            "resumed": resumed,
            "steps": int(distiller.optimizer.iterations.numpy()),
            "history": history.history,
            "current_epochs": recorder.current_epochs,
        }
    np.savez(args.output + ".npz", **arrays)
    with open(args.output + ".json", "w") as file:
        json.dump(report, file)


if __name__ == "__main__":
    main(sys.argv[1:])
