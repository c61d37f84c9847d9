"""Trains every method with `BackupAndRestore(save_freq=3)`; can be killed.

Launched by `test_crash_and_resume.py`, which runs the same command twice.
96 examples in batches of 16 (6 steps per epoch), 3 epochs, inputs in a
fixed order, op determinism on: an uninterrupted run and a crashed and
resumed one must end with the same weights.

The first run trains the methods one after the other. At batch
`--block-at EPOCH:BATCH` (two batches after the last backup) it copies
each method's backup folder to `<backup-dir>/crashed/<method>`: the files
that a crash there would leave on disk. It then trains that method on to
the end (the uninterrupted reference, written at once) and goes on with
the next. At the last method it copies nothing: it writes `<output>.ready`
and sleeps until the test kills the process with SIGKILL, which leaves the
real backup of a killed run in `<backup-dir>/<method>`.

The second run resumes every method from its backup (the copies, and the
killed run's own for the last method), trains it to the end without
stopping, and trains the uninterrupted reference the first run could not
write (the last method's). So each method trains twice and once more in
part, instead of three times and once more in part.

For every method and kind (`straight`, `resumed`), it writes the variables
to `<output>/<kind>/<method>.npz` and, to `<output>/<kind>/<method>.json`,
the number of optimizer steps, the epoch logs, whether it resumed, and
`current_epoch` as seen before each batch.

Usage:
    python train_resumable.py --methods one,dml --backup-dir /tmp/backup \
        --output /tmp/run --block-at 1:4
"""

import argparse
import json
import os
import shutil
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def result_path(output, kind, method, extension):
    return os.path.join(output, kind, f"{method}.{extension}")


def has_backup(folder):
    return os.path.exists(os.path.join(folder, "training_metadata.json"))


def main(argv):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--methods", required=True)
    parser.add_argument("--backup-dir", required=True)
    parser.add_argument("--output", required=True)
    parser.add_argument("--block-at", default="1:4")
    parser.add_argument("--epochs", type=int, default=3)
    args = parser.parse_args(argv)
    stop_at = tuple(int(i) for i in args.block_at.split(":"))

    import keras
    import method_zoo
    import numpy as np
    import tensorflow as tf

    tf.config.experimental.enable_op_determinism()

    class Recorder(keras.callbacks.Callback):
        """Records `current_epoch`; at `stop_at`, calls `at_stop()`."""

        def __init__(self, at_stop=None):
            super().__init__()
            self.at_stop = at_stop

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
            # After BackupAndRestore's own (it comes first in the list).
            if self.at_stop and (self.epoch, batch) == stop_at:
                self.at_stop()

    def block():
        with open(args.output + ".ready", "w") as file:
            file.write("backups written; waiting to be killed\n")
        time.sleep(3600)

    def train(name, backup_dir, at_stop=None):
        keras.backend.clear_session(free_memory=False)
        distiller = method_zoo.make_distiller(name)
        method_zoo.compile_distiller(
            distiller, keras.optimizers.SGD(0.05, momentum=0.9)
        )
        recorder = Recorder(at_stop)
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
        return distiller, history, recorder

    def write(kind, name, resumed, distiller, history, recorder):
        os.makedirs(os.path.join(args.output, kind), exist_ok=True)
        np.savez(
            result_path(args.output, kind, name, "npz"),
            **method_zoo.weights_of(distiller),
        )
        report = {
            "resumed": resumed,
            "steps": int(distiller.optimizer.iterations.numpy()),
            "history": history.history,
            "current_epochs": recorder.current_epochs,
        }
        with open(result_path(args.output, kind, name, "json"), "w") as file:
            json.dump(report, file)

    names = args.methods.split(",")
    x, y = method_zoo.make_images(96)
    for name in names:
        last = name == names[-1]
        backup_dir = os.path.join(args.backup_dir, name)
        # Where the crash's backup is: the killed run's own for the last
        # method, a copy for the others.
        crashed = backup_dir
        if not last:
            crashed = os.path.join(args.backup_dir, "crashed", name)
        # (Read first: a run that ends deletes its backup.)
        resumable = has_backup(crashed)
        if resumable:
            # Resumes from what the crash left, to the end.
            write("resumed", name, True, *train(name, crashed))
        if os.path.exists(result_path(args.output, "straight", name, "json")):
            continue
        if resumable:
            # The killed method's reference, from a folder of its own.
            straight_dir = os.path.join(args.backup_dir, "straight", name)
            write("straight", name, False, *train(name, straight_dir))
        elif last:
            train(name, backup_dir, at_stop=block)
        else:

            def copy_backup(source=backup_dir, target=crashed):
                shutil.copytree(source, target)

            write(
                "straight",
                name,
                False,
                *train(name, backup_dir, at_stop=copy_backup),
            )


if __name__ == "__main__":
    main(sys.argv[1:])
