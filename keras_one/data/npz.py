import os

import numpy as np

from keras_one.data.arrays import load_arrays


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
    `keras_one.data.load_arrays`.

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
    with np.load(path, allow_pickle=False) as data:
        missing = [key for key in keys if key not in data.files]
        if missing:
            raise KeyError(
                f"{path!r} lacks the arrays {missing}; it holds "
                f"{sorted(data.files)}. Save the images and integer labels "
                "as np.savez(path, x_train=..., y_train=..., x_test=..., "
                "y_test=...), or pass split=(train_name, test_name) to use "
                "other key suffixes."
            )
        arrays = [data[key] for key in keys]
        if "class_names" in data.files and "class_names" not in kwargs:
            kwargs["class_names"] = [str(c) for c in data["class_names"]]
    kwargs.setdefault("name", os.path.splitext(os.path.basename(path))[0])
    return load_arrays(
        *arrays,
        batch_size=batch_size,
        augment=augment,
        normalize=normalize,
        seed=seed,
        **kwargs,
    )
