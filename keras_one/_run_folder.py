"""The folder of a `keras-one train` run: its name, its lock, its backups.

- `default_path` and `make_unique` give a new run a folder of its own (two
  runs started in the same second get `NAME` and `NAME-2`).
- `acquire_lock` stops two live runs from sharing a folder: `run.lock`
  holds the owner's PID and host; a lock whose process is gone (same host)
  is stale and taken over.
- `Stage` backs up one training stage (the baseline or the method) with
  `keras.callbacks.BackupAndRestore`, and commits a copy of its backup at
  every epoch end, whole or not at all, so a kill at any point leaves the
  last epoch's backup intact; `Stage.dataset` gives `fit` the data order
  of an uninterrupted run from any epoch.
- `interrupts_raise` turns SIGTERM into the `KeyboardInterrupt` of Ctrl-C,
  so both leave through the same clean path.

Nothing here imports Keras or TensorFlow at import time: the command's
checks answer before either loads.
"""

import contextlib
import json
import os
import re
import shutil
import signal
import socket
import threading
import time

from keras_one import _atomic

RECORD = "run.json"
LOCK = "run.lock"
BACKUP = "backup"


# === Names ===


def default_path(method, dataset, now=None, parent="keras-one-runs"):
    """`<parent>/<method>-<dataset>-<YYYYmmdd-HHMMSS>` for a new run.

    Args:
        method: the method's name.
        dataset: the dataset's name or path (a path gives its file name).
        now: the time, seconds since the epoch (default: now).
        parent: the folder of the runs.
    """
    stem = os.path.splitext(os.path.basename(os.path.normpath(dataset)))[0]
    stem = re.sub(r"[^A-Za-z0-9_.-]+", "_", stem).strip("._") or "data"
    stamp = time.strftime("%Y%m%d-%H%M%S", time.localtime(now))
    return os.path.join(parent, f"{method}-{stem}-{stamp}")


def make_unique(path):
    """Creates the folder `path`, or `path-2`, `path-3`... if taken.

    Returns the folder created. `os.mkdir` fails on an existing folder, so
    two processes never get the same one.
    """
    parent = os.path.dirname(path)
    if parent:
        os.makedirs(parent, exist_ok=True)
    candidate, number = path, 1
    while True:
        try:
            os.mkdir(candidate)
            return candidate
        except FileExistsError:
            number += 1
            candidate = f"{path}-{number}"


# === The lock ===


def read_lock(folder):
    """The `{"pid", "host"}` of `folder`'s lock; None when it has none."""
    try:
        with open(os.path.join(folder, LOCK)) as file:
            owner = json.load(file)
    except FileNotFoundError:
        return None
    except (OSError, ValueError):
        return {"pid": None, "host": None}
    if not isinstance(owner, dict):
        return {"pid": None, "host": None}
    return owner


def is_live(owner):
    """Whether the lock `owner` may still be running.

    On this host, whether its process exists; a lock of another host is
    assumed live, an unreadable one stale.
    """
    pid, host = owner.get("pid"), owner.get("host")
    if not isinstance(pid, int) or pid <= 0:
        return False
    if host != socket.gethostname():
        return True
    return _process_exists(pid)


def acquire_lock(folder):
    """Takes `folder`'s lock for this process.

    Returns None once this process holds it, or the owner (`{"pid",
    "host"}`) of a live lock. A stale lock is replaced. The lock appears
    whole (written to a temporary file, then linked to `run.lock`).
    """
    path = os.path.join(folder, LOCK)
    me = {"pid": os.getpid(), "host": socket.gethostname()}
    for _ in range(5):
        temporary = _atomic.temporary_file(folder, LOCK)
        try:
            with open(temporary, "w") as file:
                json.dump(me, file)
            try:
                os.link(temporary, path)
                return None
            except FileExistsError:
                pass
            except OSError:  # no hard links here: exclusive creation
                try:
                    with open(path, "x") as file:
                        json.dump(me, file)
                    return None
                except FileExistsError:
                    pass
        finally:
            with contextlib.suppress(OSError):
                os.remove(temporary)
        owner = read_lock(folder)
        if owner is None:
            continue  # released meanwhile
        if is_live(owner):
            return owner
        with contextlib.suppress(FileNotFoundError):
            os.remove(path)
    return read_lock(folder) or {"pid": None, "host": None}


def release_lock(folder):
    """Removes `folder`'s lock if this process holds it."""
    owner = read_lock(folder)
    if owner and owner.get("pid") == os.getpid():
        if owner.get("host") == socket.gethostname():
            with contextlib.suppress(OSError):
                os.remove(os.path.join(folder, LOCK))


def _process_exists(pid):
    if os.name == "nt":  # os.kill would end the process
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # it exists, owned by another user
        return True
    try:  # a zombie (dead, not yet reaped) has ended
        with open(f"/proc/{pid}/stat") as file:
            return file.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return True


# === Interrupts ===


class Interrupted(KeyboardInterrupt):
    """SIGTERM (or Ctrl-C) while training; `signal_number` says which."""

    def __init__(self, signal_number):
        super().__init__(signal_number)
        self.signal_number = signal_number


def signal_number(interrupt):
    """The signal behind a `KeyboardInterrupt` (SIGINT for Ctrl-C)."""
    return getattr(interrupt, "signal_number", signal.SIGINT)


@contextlib.contextmanager
def interrupts_raise():
    """Within, SIGTERM raises `Interrupted` in the main thread, as Ctrl-C.

    The previous handlers are restored on exit. Outside the main thread
    (where Python runs no signal handler) nothing changes.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(number, frame):
        raise Interrupted(number)

    previous = signal.signal(signal.SIGTERM, handler)
    previous_int = signal.getsignal(signal.SIGINT)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)
        signal.signal(signal.SIGINT, previous_int)


def ignore_interrupts():
    """Ignores Ctrl-C and SIGTERM (while a run cleans up and exits)."""
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)


# === Backups ===


class Stage:
    """The backup of one training stage of a run, in `<run>/backup`.

    `keras.callbacks.BackupAndRestore` saves into `backup/<name>/` at
    every epoch end; right after, `backup/<name>.epoch-<N>/` receives a
    copy of it and the epoch logs, built in a temporary folder and renamed
    (then older copies are deleted). `restore` puts the newest copy back
    for Keras to restore, so a kill during Keras' own save loses at most
    the epoch being saved.

    Args:
        run_folder: the run's folder.
        name: the stage, `"baseline"` or the method's name.
    """

    def __init__(self, run_folder, name):
        self.name = name
        self.folder = os.path.join(run_folder, BACKUP)
        self.keras_folder = os.path.join(self.folder, name)
        self.epochs = []

    def restore(self):
        """Prepares the backup of the newest committed epoch.

        Returns:
            The number of epochs it holds (0: none, start from scratch).
        """
        os.makedirs(self.folder, exist_ok=True)
        _atomic.remove_leftovers(self.folder)
        shutil.rmtree(self.keras_folder, ignore_errors=True)
        self.epochs = []
        commits = self._commits()
        if not commits:
            return 0
        newest = os.path.join(self.folder, commits[-1][1])
        with open(os.path.join(newest, "epochs.json")) as file:
            self.epochs = json.load(file)
        shutil.copytree(os.path.join(newest, "keras"), self.keras_folder)
        return len(self.epochs)

    def callbacks(self):
        """Keras' `BackupAndRestore` and the callback committing its saves."""
        import keras

        return [
            keras.callbacks.BackupAndRestore(self.keras_folder),
            _commit_callback(self),
        ]

    def dataset(self, dataset):
        """`dataset` as `fit` should get it to continue after `restore`.

        A seeded `shuffle` (and `Dataset.random`) draws a new order for
        each iterator made of the dataset, and Keras' `fit` makes two per
        epoch (it makes the next epoch's in advance), so the order of an
        epoch depended on how training had gone before. `fit` gets a
        dataset that opens `dataset` lazily, once per epoch trained, after
        opening (and dropping, unread) one per epoch already in the
        backup: epoch `e` always gets the `e`-th order of `dataset`, which
        must be fresh (never iterated).
        """
        import tensorflow as tf

        for _ in range(len(self.epochs)):
            iter(dataset)
        steps = len(dataset)
        epoch = tf.data.Dataset.from_tensors(0).flat_map(lambda _: dataset)
        return epoch.apply(tf.data.experimental.assert_cardinality(steps))

    def history(self):
        """The logs of every epoch, as Keras' `History.history`."""
        history = {}
        for epoch in self.epochs:
            for key, value in epoch["logs"].items():
                history.setdefault(key, []).append(value)
        return history

    def train_seconds(self):
        """Training time of the epochs (validation excluded), every session."""
        return sum(epoch["seconds"] for epoch in self.epochs)

    def finish(self):
        """Deletes the stage's backups (its results are saved)."""
        for _, name in self._commits():
            shutil.rmtree(os.path.join(self.folder, name), ignore_errors=True)
        shutil.rmtree(self.keras_folder, ignore_errors=True)

    def commit(self, logs, seconds):
        """Records an epoch and copies Keras' backup of it (whole or not)."""
        self.epochs.append(
            {"logs": {k: float(v) for k, v in logs.items()}, "seconds": seconds}
        )
        number = len(self.epochs)
        temporary = _atomic.temporary_folder(self.folder, self.name)
        try:
            shutil.copytree(self.keras_folder, os.path.join(temporary, "keras"))
            with open(os.path.join(temporary, "epochs.json"), "w") as file:
                json.dump(self.epochs, file)
            for root, _, files in os.walk(temporary):
                for name in files:
                    _atomic.sync(os.path.join(root, name))
            final = os.path.join(self.folder, f"{self.name}.epoch-{number:05d}")
            shutil.rmtree(final, ignore_errors=True)
            os.rename(temporary, final)
        except BaseException:
            shutil.rmtree(temporary, ignore_errors=True)
            raise
        _atomic.sync(self.folder)
        for older, name in self._commits():
            if older < number:
                shutil.rmtree(os.path.join(self.folder, name), True)

    def _commits(self):
        """`(epochs, folder name)` of the committed backups, oldest first."""
        pattern = re.compile(re.escape(self.name) + r"\.epoch-(\d+)")
        try:
            names = os.listdir(self.folder)
        except FileNotFoundError:
            return []
        found = []
        for name in names:
            match = pattern.fullmatch(name)
            if match:
                found.append((int(match.group(1)), name))
        return sorted(found)


def _commit_callback(stage):
    """A callback calling `stage.commit` after Keras' epoch-end backup."""
    import keras

    class CommitBackup(keras.callbacks.Callback):
        # Placed after BackupAndRestore, whose epoch-end save comes first.

        def on_epoch_begin(self, epoch, logs=None):
            self._start = self._last = time.perf_counter()

        def on_train_batch_end(self, batch, logs=None):
            self._last = time.perf_counter()

        def on_epoch_end(self, epoch, logs=None):
            stage.commit(logs or {}, self._last - self._start)

    return CommitBackup()
