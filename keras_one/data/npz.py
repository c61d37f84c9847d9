import os
import zipfile
import zlib

import numpy as np

from keras_one.data.arrays import build_pipelines


class MissingArraysError(KeyError, ValueError):
    """An `.npz` file lacks the arrays asked for (a `KeyError` and a
    `ValueError`, printed as its plain message)."""

    def __str__(self):
        return str(self.args[0]) if self.args else ""


def load_npz(
    path,
    split=None,
    batch_size=128,
    augment=True,
    normalize=True,
    seed=None,
    **kwargs,
):
    """Builds training and test pipelines from a NumPy `.npz` file.

    The file holds the arrays `x_train`, `y_train`, `x_test` and `y_test`
    (as written by `np.savez(path, x_train=..., ...)`), and optionally
    `class_names`. Other split names can be chosen with `split`: for
    `split=("train", "valid")` the keys are `x_train`, `y_train`,
    `x_valid` and `y_valid`. The pipelines are those of
    `keras_one.data.load_arrays`, and so are the rules on labels and
    pixels: class indices `0..K-1` (never `1..N`), one-hot rows or class
    names as strings; at least 2 classes; finite pixels. A file that
    breaks them is refused with a `ValueError` naming the file, the array
    (e.g. `y_train`) and the first bad index.

    Args:
        path: path of the `.npz` file.
        split: `(train_split, test_split)` key suffixes; defaults to
            `("train", "test")`.
        batch_size: examples per batch.
        augment: `True` for the default augmentation, `False` for none, or
            a policy name (see `keras_one.data.load_arrays`).
        normalize: whether to normalize per channel (by default with the
            training images' mean and standard deviation).
        seed: seed of the shuffling and of the augmentation.
        **kwargs: other `keras_one.data.load_arrays` arguments (`mean`,
            `std`, `class_names`, `shuffle_buffer`, `views`).

    Returns:
        `(train_ds, test_ds, info)` as `keras_one.data.load_arrays`.

    Example:

    ```python
    np.savez("data.npz", x_train=x, y_train=y, x_test=xt, y_test=yt)
    train_ds, test_ds, info = keras_one.data.load_npz("data.npz")
    ```
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"No .npz file at {path!r}.")
    train_split, test_split = split or ("train", "test")
    keys = [
        f"x_{train_split}",
        f"y_{train_split}",
        f"x_{test_split}",
        f"y_{test_split}",
    ]
    arrays, class_names = _read(path, keys)
    if class_names is not None and "class_names" not in kwargs:
        kwargs["class_names"] = class_names
    kwargs.setdefault("name", os.path.splitext(os.path.basename(path))[0])
    return build_pipelines(
        *arrays,
        splits=(train_split, test_split),
        source=path,
        batch_size=batch_size,
        augment=augment,
        normalize=normalize,
        seed=seed,
        **kwargs,
    )


# What NumPy raises on a damaged archive: not a zip, cut short, a bad
# compressed stream, or a member that is not a plain .npy array (object
# arrays need pickle, which is refused).
_DAMAGE = (zipfile.BadZipFile, EOFError, zlib.error, ValueError, OSError)


def _read(path, keys):
    """`(arrays of keys, class_names or None)` of the .npz at `path`.

    Raises a `ValueError` naming the file when it is damaged or not an
    .npz archive, and `MissingArraysError` when it lacks one of `keys`.
    """
    with open(path, "rb") as file:
        magic = file.read(4)
    if magic != b"PK\x03\x04":
        raise ValueError(
            f"{path!r} is damaged or not an .npz file (an .npz is a zip "
            "archive of .npy arrays, as np.savez writes; this file does not "
            f"start like one{': it is empty' if not magic else ''}). Write "
            "it again with np.savez(path, x_train=..., y_train=..., "
            "x_test=..., y_test=...)."
        )
    try:
        with np.load(path, allow_pickle=False) as data:
            missing = [key for key in keys if key not in data.files]
            if missing:
                raise MissingArraysError(
                    f"{path!r} lacks the arrays {missing}; it holds "
                    f"{sorted(data.files)}. Save the images and integer "
                    "labels as np.savez(path, x_train=..., y_train=..., "
                    "x_test=..., y_test=...), or pass split=(train_name, "
                    "test_name) to use other key suffixes."
                )
            arrays = [data[key] for key in keys]
            class_names = (
                data["class_names"] if "class_names" in data.files else None
            )
    except MissingArraysError:
        raise
    except _DAMAGE as error:
        raise ValueError(
            f"{path!r} is damaged: NumPy cannot read it ({type(error).__name__}"
            f": {str(error).splitlines()[0] if str(error) else 'no detail'})."
            " Write it again with np.savez(path, x_train=..., y_train=..., "
            "x_test=..., y_test=...); arrays of Python objects (pickled) are "
            "not read."
        ) from None
    return arrays, class_names
