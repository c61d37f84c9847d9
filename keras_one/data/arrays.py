import numpy as np
import tensorflow as tf

from keras_one.data import _augment
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
        y_train: integer class labels, shape `(n,)` or `(n, 1)`.
        x_test: test images, of the same height, width and channels.
        y_test: test labels.
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
        class_names: names of the classes; defaults to `"0"`, `"1"`, ...
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

    Returns:
        `(train_ds, test_ds, info)`: two `tf.data.Dataset`s of
        `(images, labels)` batches (float32 images, int32 labels) and a
        `keras_one.data.DatasetInfo`.

    Example:

    >>> x = np.random.randint(0, 256, (64, 32, 32, 3), dtype="uint8")
    >>> y = np.random.randint(0, 10, 64)
    >>> train_ds, test_ds, info = load_arrays(x, y, x[:16], y[:16])
    >>> info.input_shape
    (32, 32, 3)
    """
    _pipeline.check_batch_size(batch_size)
    _pipeline.check_views(views)
    x_train, y_train = _check_split(x_train, y_train, "train")
    x_test, y_test = _check_split(x_test, y_test, "test")
    if x_train.shape[1:] != x_test.shape[1:]:
        raise ValueError(
            f"Training images have shape {x_train.shape[1:]} but test images "
            f"{x_test.shape[1:]}: both splits need the same image shape."
        )
    num_classes = _num_classes(y_train, y_test, class_names)
    if class_names is None:
        class_names = [str(i) for i in range(num_classes)]
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
    )
    test_ds = _pipeline.make_pipeline(
        tf.data.Dataset.from_tensor_slices((x_test, y_test)),
        test_preprocess,
        training=False,
        batch_size=batch_size,
        views=views,
    )
    info = DatasetInfo(
        name=name,
        num_classes=num_classes,
        input_shape=input_shape,
        class_names=tuple(str(c) for c in class_names),
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


def _check_split(x, y, split):
    x = np.asarray(x)
    y = np.asarray(y)
    if x.ndim == 3:
        x = x[..., None]
    if x.ndim != 4:
        raise ValueError(
            f"x_{split} must hold images of shape (n, height, width, "
            f"channels) or (n, height, width); got shape {x.shape}."
        )
    if y.ndim == 2 and y.shape[1] == 1:
        y = y[:, 0]
    if y.ndim != 1:
        hint = (
            " They look one-hot encoded: pass np.argmax(y, axis=-1)."
            if y.ndim == 2
            else ""
        )
        raise ValueError(
            f"y_{split} must hold integer class indices of shape (n,) or "
            f"(n, 1); got shape {y.shape}.{hint}"
        )
    if len(x) != len(y):
        raise ValueError(
            f"x_{split} has {len(x)} images but y_{split} {len(y)} labels."
        )
    if not len(x):
        raise ValueError(f"The {split} split is empty.")
    if not np.issubdtype(y.dtype, np.integer):
        if not np.all(np.mod(y, 1) == 0):
            raise ValueError(
                f"y_{split} must hold integer class indices; got values "
                f"such as {y[np.mod(y, 1) != 0][:3]}."
            )
    y = y.astype("int32")
    if y.min() < 0:
        raise ValueError(f"y_{split} has negative labels ({y.min()}).")
    return x, y


def _num_classes(y_train, y_test, class_names):
    largest = int(max(y_train.max(), y_test.max()))
    if class_names is None:
        return largest + 1
    if largest >= len(class_names):
        raise ValueError(
            f"Labels go up to {largest} but only {len(class_names)} class "
            "names were given: pass one name per class."
        )
    return len(class_names)


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
