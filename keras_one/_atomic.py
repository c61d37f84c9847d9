"""Atomic writes: a temporary file in the same folder, then `os.replace`.

A reader, or a run resumed after a kill or a full disk, finds either the
previous complete file or the new complete one under the final name, never
a truncated one. Temporary names start with a dot and hold `.tmp`
(`.results.json.k3x9a.tmp`), so `remove_leftovers` can clear those of a
killed process.
"""

import contextlib
import json
import os
import re
import secrets
import shutil

MARK = ".tmp"
# `.<name>.<random>.tmp[.<extension>]`, as `replacing` names them.
_LEFTOVER = re.compile(r"\..+\.[^.]+\.tmp(\.[A-Za-z0-9]+)?")


@contextlib.contextmanager
def replacing(path, suffix=""):
    """Yields a temporary path next to `path`, moved onto `path` on success.

    On an exception (or an interrupt) the temporary file is removed and
    `path` is left as it was.

    Args:
        path: the final file.
        suffix: end of the temporary name, for writers that read the format
            from it: `".keras"` for `model.save`, `".png"` for matplotlib.
    """
    path = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(path))
    temporary = temporary_file(folder, os.path.basename(path), suffix)
    try:
        yield temporary
        sync(temporary)
        os.replace(temporary, path)
    except BaseException:
        _remove(temporary)
        raise
    sync(folder)


@contextlib.contextmanager
def replacing_folder(path):
    """Like `replacing`, for a folder (a SavedModel): yields an empty folder.

    An existing `path` is moved aside, the new folder renamed onto `path`,
    then the old one deleted: `path` never holds a partial folder.
    """
    path = os.fspath(path).rstrip(os.sep) or os.sep
    parent = os.path.dirname(os.path.abspath(path))
    name = os.path.basename(path)
    temporary = temporary_folder(parent, name)
    try:
        yield temporary
    except BaseException:
        _remove(temporary)
        raise
    old = None
    if os.path.lexists(path):
        old = temporary_folder(parent, name)
        os.rmdir(old)
        os.rename(path, old)
    try:
        os.rename(temporary, path)
    except BaseException:
        if old is not None:
            os.rename(old, path)
        _remove(temporary)
        raise
    if old is not None:
        _remove(old)


def write_json(path, value, **options):
    """Writes `value` as JSON to `path` atomically (`json.dump` options)."""
    with replacing(path) as temporary:
        with open(temporary, "w") as file:
            json.dump(value, file, **options)
            file.write("\n")


def write_bytes(path, data):
    """Writes `data` to `path` atomically."""
    with replacing(path) as temporary:
        with open(temporary, "wb") as file:
            file.write(data)


def save_model(model, path):
    """`model.save(path)` atomically (`path` ends with `.keras`)."""
    with replacing(path, suffix=".keras") as temporary:
        model.save(temporary)


def temporary_file(folder, name, suffix=""):
    """Creates an empty temporary file for `name` in `folder`."""
    return _create(folder, name, suffix, os.open)


def temporary_folder(parent, name):
    """Creates a folder for `replacing_folder`-like writes in `parent`."""
    return _create(parent, name, "", _make_folder)


def _make_folder(path, flags, mode):
    os.mkdir(path, 0o777)  # less the umask, as any new folder
    return None


def _create(folder, name, suffix, create):
    """Creates `.<name>.<random>.tmp<suffix>` in `folder`; returns its path.

    Unlike `tempfile`'s (0600), its permissions are a new file's (0666 less
    the umask), which the final file keeps.
    """
    for _ in range(100):
        path = os.path.join(
            folder, f".{name}.{secrets.token_hex(4)}{MARK}{suffix}"
        )
        try:
            handle = create(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o666)
        except FileExistsError:
            continue
        if handle is not None:
            os.close(handle)
        return path
    raise FileExistsError(f"no free temporary name in {folder}")


def remove_leftovers(folder):
    """Deletes the temporary files and folders left in `folder` by a kill."""
    try:
        names = os.listdir(folder)
    except OSError:
        return
    for name in names:
        if _LEFTOVER.fullmatch(name):
            _remove(os.path.join(folder, name))


def _remove(path):
    if os.path.isdir(path) and not os.path.islink(path):
        shutil.rmtree(path, ignore_errors=True)
    else:
        with contextlib.suppress(OSError):
            os.remove(path)


def sync(path):
    """Flushes a file (or a folder's entries) to disk, where supported."""
    with contextlib.suppress(OSError):
        handle = os.open(path, os.O_RDONLY)
        try:
            os.fsync(handle)
        finally:
            os.close(handle)
