import numpy as np
import tensorflow as tf

from keras_one.data import _augment
from keras_one.data import _checks
from keras_one.data import _pipeline
from keras_one.data.dataset_info import DatasetInfo


def load_arrays(
    x_train,
    y_train,
    x_test,
    y_test,
    batch_size=128,
    augment=True,
    normalize=True,
    seed=None,
    class_names=None,
    name="arrays",
    mean=None,
    std=None,
    shuffle_buffer=None,
    views=1,
    pixel_scale=None,
    raw=False,
    with_index=False,
):
    """Builds training and test pipelines over NumPy arrays of images.

    Images are `(n, height, width, channels)` (or `(n, height, width)` for
    grayscale) arrays: uint8 arrays are scaled to [0, 1] by 1/255, float
    arrays are taken as they are. The training pipeline shuffles the whole
    training set, augments it (see `augment`) and normalizes it per
    channel; the test pipeline only normalizes. By default the
    normalization uses the mean and standard deviation of the training
    images, per channel.

    Args:
        x_train: training images.
        y_train: training labels: class indices `(n,)` or `(n, 1)`
            (integers, or whole floats such as `2.0`), one-hot rows
            `(n, classes)`, or class names (strings); see "Labels" below.
        x_test: test images, of the same height, width and channels.
        y_test: test labels, given the same way.
        batch_size: examples per batch.
        augment: `True` for the default augmentation (pad-crop-flip, a
            torchvision `RandomCrop(size, padding=size // 8)` plus a
            horizontal flip, for images up to 64 pixels; random-resized
            crops plus flips for larger ones), `False` for none, or a policy
            name: `"pad_crop_flip"`, `"pad_crop"` (no flip, for digits and
            text), `"flip"` or `"resized_crop_flip"`.
        normalize: whether to subtract the per-channel mean and divide by
            the per-channel standard deviation.
        seed: seed of the shuffling and of the augmentation: the same seed
            gives the same batches. `None` uses the global seed.
        class_names: names of the classes, one per class in label order;
            it sets the number of classes. Defaults to `"0"`, `"1"`, ...
            (or to the sorted string labels).
        name: name of the dataset, for `info.name`.
        mean: per-channel mean (in [0, 1] units) to use instead of the
            training images' own.
        std: per-channel standard deviation to use with `mean`.
        shuffle_buffer: shuffle buffer size; defaults to the whole training
            set (up to 50,000 examples).
        views: images per example: 1 (the default) or one per branch of
            a student that gives each branch its own view (PCL): training
            batches are then `((view_0, ..., view_{views-1}), labels)`, each
            view augmented independently; test batches repeat the
            un-augmented image `views` times.
        pixel_scale: factor taking the images' pixels to [0, 1]; defaults
            to 1/255 for uint8 images and 1 for float images.
        raw: `True` for pipelines of the images as given (float32, not
            scaled, augmented nor normalized): the input of a model
            exported with its preprocessing (`info.preprocessing`, which is
            the same either way).
        with_index: `True` to give each example its index in its split
            (the position of its row in the arrays): batches are then
            `({"image": images, "example_index": indices}, labels)`, for
            methods that keep state per training example (MCL-OKD, which
            also reads `keras_one.data.example_labels(train_ds)`).

    Returns:
        `(train_ds, test_ds, info)`: two `tf.data.Dataset`s of
        `(images, labels)` batches (float32 images, int32 labels) and a
        `keras_one.data.DatasetInfo`.

    Raises:
        ValueError: for data that would train the wrong model, naming the
            split, the index and the fix (below), before anything trains.

    Labels are read as follows, the same way for both splits:

    - Class indices `0..K-1`. Without `class_names` there are
      `max + 1` classes; labels that never use 0 (`1..N`) are refused
      (subtract 1), never shifted. With `class_names` there are
      `len(class_names)` classes and a label outside them is refused
      (naming the first such index). Negative labels, and floats that are
      not whole numbers, NaN or infinite, are refused.
    - One-hot rows `(n, classes)`: their argmax; the number of columns is
      the number of classes. Rows that are not one-hot (soft targets,
      multi-label) are refused.
    - Strings (e.g. `["cat", "dog", ...]`): class names. With
      `class_names` they index into it; else the classes are the sorted
      distinct training labels (numerically when all are integers), and a
      test label that no training example has is refused.
    - A single class, or training examples of a single class, is refused
      (classification needs at least 2); a class without training
      examples gives a `UserWarning` naming it.

    Float images with NaN or infinite pixels are refused, naming the split
    and the first such image.

    Example:

    >>> x = np.random.randint(0, 256, (64, 32, 32, 3), dtype="uint8")
    >>> y = np.arange(64) % 10
    >>> train_ds, test_ds, info = load_arrays(x, y, x[:16], y[:16])
    >>> info.input_shape
    (32, 32, 3)
    """
    return build_pipelines(
        x_train,
        y_train,
        x_test,
        y_test,
        batch_size=batch_size,
        augment=augment,
        normalize=normalize,
        seed=seed,
        class_names=class_names,
        name=name,
        mean=mean,
        std=std,
        shuffle_buffer=shuffle_buffer,
        views=views,
        pixel_scale=pixel_scale,
        raw=raw,
        with_index=with_index,
    )


def build_pipelines(
    x_train,
    y_train,
    x_test,
    y_test,
    splits=("train", "test"),
    source=None,
    *,
    batch_size=128,
    augment=True,
    normalize=True,
    seed=None,
    class_names=None,
    name="arrays",
    mean=None,
    std=None,
    shuffle_buffer=None,
    views=1,
    pixel_scale=None,
    raw=False,
    with_index=False,
):
    """`load_arrays` with the names its messages use.

    `splits` is `(train_split, test_split)`: messages name the arrays
    `x_<split>` and `y_<split>`; `source` is the file they come from. The
    other arguments are those of `load_arrays`.
    """
    _pipeline.check_batch_size(batch_size)
    _pipeline.check_views(views)
    _pipeline.check_with_index(with_index, views)
    prefix = f"{source}: " if source else ""
    x_train, y_train = _check_split(x_train, y_train, splits[0], prefix)
    x_test, y_test = _check_split(x_test, y_test, splits[1], prefix)
    if x_train.shape[1:] != x_test.shape[1:]:
        raise ValueError(
            f"{prefix}training images (x_{splits[0]}) have shape "
            f"{x_train.shape[1:]} but test images (x_{splits[1]}) "
            f"{x_test.shape[1:]}: both splits need the same image shape."
        )
    y_train, y_test, class_names = _checks.encode_labels(
        y_train,
        y_test,
        class_names,
        splits=(f"y_{splits[0]}", f"y_{splits[1]}"),
        source=source,
    )
    num_classes = len(class_names)
    _checks.check_finite(x_train, f"x_{splits[0]}", source)
    _checks.check_finite(x_test, f"x_{splits[1]}", source)
    input_shape = tuple(int(d) for d in x_train.shape[1:])
    if pixel_scale is None:
        pixel_scale = 1.0 / 255.0 if x_train.dtype == np.uint8 else 1.0
    _pipeline.check_raw(raw, augment)

    policy = _pipeline.resolve_policy(
        augment, _pipeline.default_policy(input_shape[:2])
    )
    mean, std = _pipeline.resolve_normalization(
        normalize,
        mean,
        std,
        lambda: _array_stats(x_train, pixel_scale),
        input_shape[-1],
    )
    padding = _augment.default_padding(min(input_shape[:2]))
    train_preprocess = _pipeline.image_preprocess(
        input_shape, pixel_scale, policy, padding, mean, std
    )
    test_preprocess = _pipeline.image_preprocess(
        input_shape, pixel_scale, None, padding, mean, std
    )
    if raw:
        policy = None
        train_preprocess = test_preprocess = _pipeline.raw_preprocess(
            input_shape
        )
    train_ds = _pipeline.make_pipeline(
        tf.data.Dataset.from_tensor_slices((x_train, y_train)),
        train_preprocess,
        training=True,
        batch_size=batch_size,
        seed=seed,
        shuffle_buffer=shuffle_buffer,
        num_examples=len(x_train),
        views=views,
        with_index=with_index,
    )
    test_ds = _pipeline.make_pipeline(
        tf.data.Dataset.from_tensor_slices((x_test, y_test)),
        test_preprocess,
        training=False,
        batch_size=batch_size,
        views=views,
        with_index=with_index,
    )
    info = DatasetInfo(
        name=name,
        num_classes=num_classes,
        input_shape=input_shape,
        class_names=class_names,
        num_train_examples=len(x_train),
        num_test_examples=len(x_test),
        mean=mean,
        std=std,
        train_augmentation=policy,
        preprocessing=_pipeline.preprocessing_dict(
            input_shape, pixel_scale, mean, std
        ),
    )
    return train_ds, test_ds, info


def _check_split(x, y, split, prefix):
    """The images as `(n, height, width, channels)`; `y` as an array."""
    x = np.asarray(x)
    y = np.asarray(y)
    if x.ndim == 3:
        x = x[..., None]
    if x.ndim != 4:
        raise ValueError(
            f"{prefix}x_{split} must hold images of shape (n, height, width, "
            f"channels) or (n, height, width); got shape {x.shape}."
        )
    if len(x) != len(y):
        raise ValueError(
            f"{prefix}x_{split} has {len(x)} images but y_{split} {len(y)} "
            "labels."
        )
    if not len(x):
        raise ValueError(f"{prefix}the {split} split is empty.")
    return x, y


def _array_stats(x, pixel_scale, chunk=4096):
    """Per-channel mean and std of `x * pixel_scale`, in float64 chunks."""
    channels = x.shape[-1]
    total = np.zeros(channels)
    total_sq = np.zeros(channels)
    for start in range(0, len(x), chunk):
        pixels = x[start : start + chunk].reshape(-1, channels)
        pixels = pixels.astype("float64") * pixel_scale
        total += pixels.sum(axis=0)
        total_sq += (pixels**2).sum(axis=0)
    count = x.size // channels
    mean = total / count
    std = np.sqrt(np.maximum(total_sq / count - mean**2, 0.0))
    return tuple(mean), tuple(np.maximum(std, 1e-6))
