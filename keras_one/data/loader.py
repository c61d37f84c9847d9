import os

import numpy as np

from keras_one.data import tfds_dataset
from keras_one.data.arrays import load_arrays
from keras_one.data.digits import load_digits
from keras_one.data.image_folder import load_image_folder
from keras_one.data.npz import load_npz
from keras_one.data.tfds_dataset import load_tfds

# The bundled digits are not mirror-symmetric: shift them, never flip.
DIGITS_AUGMENTATION = "pad_crop"
TFDS_OPTIONS = ("data_dir", "manual_dir", "download")
# The bundled digits' pixel values go from 0 to 16.
DIGITS_MAX = 16


def load(
    name_or_path="digits",
    split=None,
    batch_size=128,
    augment=True,
    normalize=True,
    seed=None,
    **kwargs,
):
    """Loads a dataset as training and test `tf.data` pipelines.

    One entry point for every source, chosen from `name_or_path`:

    - `"digits"`: scikit-learn's bundled 8x8 handwritten digits
      (`keras_one.data.load_digits`), no download; augmented by shifts of
      up to one pixel (no flips).
    - a tensorflow-datasets name: `"cifar10"`, `"cifar100"`,
      `"svhn_cropped"` (or `"svhn"`), `"imagenet2012"` (or `"imagenet"`)
      with the papers' preprocessing, or any other tfds image
      classification dataset (`keras_one.data.load_tfds`).
    - a folder of class-per-folder images, such as CINIC-10
      (`keras_one.data.load_image_folder`).
    - an `.npz` file with `x_train`, `y_train`, `x_test`, `y_test`
      (`keras_one.data.load_npz`).

    Data is read as the user means it or refused before anything trains,
    with a `ValueError` naming the file, folder or index and the fix:
    labels outside the classes, labels counted from 1, a single class,
    NaN or infinite pixels, an empty class folder are refused; string and
    one-hot labels become class indices; `train/`, `val/` (or `test/`)
    subfolders are splits, not classes; images of mixed sizes or channels
    are converted; a class without training examples is warned about. The
    rules are those of `keras_one.data.load_arrays` (arrays, `.npz`) and
    `keras_one.data.load_image_folder`. `info.num_classes` is always
    `len(info.class_names)`, and every label is below it.

    The training pipeline shuffles, augments and normalizes in a parallel
    `tf.data` map and prefetches; the test pipeline only normalizes. With
    a `seed`, the batches (order and augmentation) are the same on every
    call.

    Args:
        name_or_path: a dataset name or a path (above).
        split: `(train_split, test_split)`: tfds split names, subfolder
            names of an image folder, or key suffixes of an `.npz` file;
            defaults to the dataset's own. Not used for `"digits"`.
        batch_size: examples per batch.
        augment: `True` for the dataset's augmentation, `False` for none,
            or a policy name: `"pad_crop_flip"`, `"pad_crop"`, `"flip"`,
            `"resized_crop_flip"`.
        normalize: whether to normalize per channel (with the paper's
            constants for the tfds datasets above, else with the training
            images' mean and standard deviation).
        seed: seed of the shuffling and of the augmentation.
        **kwargs: options of the specific loader, e.g. `data_dir`,
            `manual_dir`, `download` for tfds; `image_size`,
            `validation_split` for image folders; `mean`, `std`, `cache`,
            `shuffle_buffer`; `test_fraction` for the digits; `views` (every
            source): the number of independently augmented views of each
            training image, for students that give each branch its own
            view (PCL; default 1, see `keras_one.data.load_arrays`);
            `with_index=True` (arrays, `.npz`, digits, tfds): each example
            also carries its index in its split, batches
            `({"image": images, "example_index": indices}, labels)`, for
            methods with per-example state (MCL-OKD; see
            `keras_one.data.example_labels`);
            `raw=True` (every source): pipelines of the raw images (e.g.
            uint8 0-255 values, the digits' 0-16), un-augmented and
            unnormalized, as float32: the input of a model exported with
            `info.preprocessing`.

    Returns:
        `(train_ds, test_ds, info)`: `tf.data.Dataset`s of
        `(images, labels)` batches (float32 images, int32 labels) and a
        `keras_one.data.DatasetInfo` (`num_classes`, `input_shape`,
        `class_names`, ...).

    Example:

    >>> train_ds, test_ds, info = keras_one.data.load("digits", seed=0)
    >>> info.num_classes, info.input_shape
    (10, (8, 8, 1))
    >>> images, labels = next(iter(train_ds))
    >>> images.shape
    TensorShape([128, 8, 8, 1])
    """
    options = dict(
        batch_size=batch_size, augment=augment, normalize=normalize, seed=seed
    )
    if not isinstance(name_or_path, (str, os.PathLike)):
        raise TypeError(
            "name_or_path must be a dataset name or a path; got "
            f"{type(name_or_path).__name__}. For arrays in memory use "
            "keras_one.data.load_arrays(x_train, y_train, x_test, y_test)."
        )
    path = os.fspath(name_or_path)
    if path.lower() == "digits" or os.path.exists(path):
        tfds_only = sorted(set(kwargs) & set(TFDS_OPTIONS))
        if tfds_only:
            raise ValueError(
                f"{tfds_only} apply to tensorflow-datasets names only, not "
                f"to {path!r}: leave them out."
            )
    if path.lower() == "digits":
        if split is not None:
            raise ValueError(
                "The digits have a fixed split: leave `split` out and use "
                "test_fraction= to change the share of test images."
            )
        digits_options = {
            key: kwargs.pop(key) for key in ("test_fraction",) if key in kwargs
        }
        (x_train, y_train), (x_test, y_test) = load_digits(**digits_options)
        if augment is True and not kwargs.get("raw"):
            options["augment"] = DIGITS_AUGMENTATION
        # The raw digits are the dataset's own 0..16 values (exactly
        # `load_digits`' images times 16): an exported model takes them.
        kwargs.setdefault("pixel_scale", 1.0 / DIGITS_MAX)
        return load_arrays(
            _digits_pixels(x_train),
            y_train,
            _digits_pixels(x_test),
            y_test,
            name="digits",
            **options,
            **kwargs,
        )
    if os.path.isdir(path):
        return load_image_folder(path, split=split, **options, **kwargs)
    if os.path.isfile(path):
        if path.lower().endswith(".npz"):
            return load_npz(path, split=split, **options, **kwargs)
        raise ValueError(
            f"{path!r} is a file but not an .npz file: pass an .npz with "
            "x_train, y_train, x_test and y_test, or a folder of images."
        )
    if _is_tfds_name(path):
        return load_tfds(path, split=split, **options, **kwargs)
    if path.lower().endswith(".npz") or os.sep in path:
        raise FileNotFoundError(
            f"No file or folder at {path!r}. Pass an existing .npz file, a "
            "class-per-folder image directory, 'digits', or a "
            "tensorflow-datasets name."
        )
    raise ValueError(
        f"Unknown dataset {path!r}: it is not 'digits', an existing folder "
        "or .npz file, nor a tensorflow-datasets name. Known names include "
        f"'digits', {sorted(tfds_dataset.PRESETS)} and the tfds catalog "
        "(https://www.tensorflow.org/datasets/catalog)."
    )


def _digits_pixels(images):
    """`load_digits`' [0, 1] images as their original 0..16 uint8 values."""
    return np.round(images * DIGITS_MAX).astype("uint8")


def _is_tfds_name(name):
    import tensorflow_datasets as tfds

    key = tfds_dataset.ALIASES.get(name.lower(), name)
    try:
        tfds.builder_cls(key.split(":")[0].split("/")[0])
    except ValueError:  # tfds' DatasetNotFoundError, or a malformed name
        return False
    return True
