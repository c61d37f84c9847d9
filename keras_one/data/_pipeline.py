"""The shared `tf.data` mechanism behind every loader of `keras_one.data`.

A loader turns its source into an unbatched `tf.data.Dataset` of
`(image, label)` and a `preprocess(image, seed)` function; `make_pipeline`
adds caching, seeded shuffling, per-example seeds for stateless
augmentation, a parallel map, batching and prefetching.
"""

import numpy as np
import tensorflow as tf

from keras_one.data import _augment

AUTOTUNE = tf.data.AUTOTUNE
# In-memory datasets are shuffled whole up to this many examples.
MAX_SHUFFLE_BUFFER = 50_000
# Images read to estimate the per-channel mean and std of a new dataset.
STATS_IMAGES = 5_000


def make_pipeline(
    dataset,
    preprocess,
    training,
    batch_size,
    seed=None,
    shuffle_buffer=None,
    cache=False,
    num_examples=None,
    views=1,
    with_index=False,
):
    """Builds a batched, prefetched pipeline from `(image, label)` examples.

    Args:
        dataset: unbatched `tf.data.Dataset` of `(image, label)`.
        preprocess: `preprocess(image, seed)` returning a float32 image;
            `seed` is a `(2,)` stateless seed for training pipelines and
            `None` for evaluation ones.
        training: whether to shuffle and to draw augmentation seeds.
        batch_size: examples per batch.
        seed: seed of the shuffling and of the augmentation seeds; `None`
            for the global seed (random when none is set).
        shuffle_buffer: shuffle buffer size; defaults to the whole dataset
            up to `MAX_SHUFFLE_BUFFER` examples.
        cache: `True` to cache the source in memory, a path to cache it in
            a file, `False` not to.
        num_examples: size of the dataset, if known.
        views: images per example. 1 (the default): `(images, labels)`
            batches. More: `((view_0, ..., view_{views-1}), labels)`
            batches, for students that give each branch its own view (PCL):
            in training every view is augmented independently, with its own
            stateless seed `(example seed, view index)` (so `view_0` is the
            image that `views=1` gives); in evaluation every view is the
            same un-augmented image.
        with_index: if `True`, each example also carries its position in
            `dataset` (whose order must not change between iterations),
            numbered before caching and shuffling, so stable across epochs:
            batches are `({"image": images, "example_index": indices},
            labels)`, indices int32 (for per-example state such as
            MCL-OKD's memory banks). Not with `views > 1`.

    Returns:
        A `tf.data.Dataset` of `(images, labels)` batches, labels int32
        (`images` a tuple of `views` batches when `views > 1`, a dict with
        the indices when `with_index`).
    """
    check_views(views)
    check_with_index(with_index, views)
    if with_index:
        dataset = dataset.enumerate().map(
            lambda index, example: (*example, tf.cast(index, "int32"))
        )
    if cache:
        filename = "" if cache is True else str(cache)
        dataset = dataset.cache(filename)
    if training:
        if shuffle_buffer is None:
            shuffle_buffer = min(num_examples or 10_000, MAX_SHUFFLE_BUFFER)
        dataset = dataset.shuffle(
            shuffle_buffer, seed=seed, reshuffle_each_iteration=True
        )
        seeds = tf.data.Dataset.random(
            seed=seed, rerandomize_each_iteration=True
        )
        dataset = tf.data.Dataset.zip((dataset, seeds))

        def transform(example, example_seed):
            image, label, index = _parts(example)
            images = [
                preprocess(
                    image, tf.stack([example_seed, tf.constant(view, "int64")])
                )
                for view in range(views)
            ]
            return _inputs(images, index), _label(label)

    else:

        def transform(*example):
            image, label, index = _parts(example)
            return _inputs([preprocess(image, None)] * views, index), _label(
                label
            )

    dataset = dataset.map(transform, num_parallel_calls=AUTOTUNE)
    return dataset.batch(batch_size).prefetch(AUTOTUNE)


def _label(label):
    return tf.reshape(tf.cast(label, "int32"), [])


def _parts(example):
    """`(image, label, index)` of an example, `index` None if it has none."""
    return (*example, None) if len(example) == 2 else tuple(example)


def _inputs(images, index):
    """The student's inputs: one image, a tuple of views, or a dict.

    One image is itself and several a tuple; with an example `index`, the
    dict `{"image": image, "example_index": index}`.
    """
    if index is not None:
        return {"image": images[0], "example_index": index}
    return images[0] if len(images) == 1 else tuple(images)


def image_preprocess(
    input_shape, pixel_scale, policy=None, padding=1, mean=None, std=None
):
    """The usual preprocessing: scale to [0, 1], augment, normalize.

    Args:
        input_shape: the static `(height, width, channels)` of the output.
        pixel_scale: factor taking source pixels to [0, 1] (1/255 for
            uint8 images).
        policy: augmentation policy (see `_augment.POLICIES`) applied when
            a seed is given; `None` for none.
        padding: padding of the pad-crop policies.
        mean: per-channel mean subtracted after augmentation, or `None`.
        std: per-channel standard deviation divided by, or `None`.

    Returns:
        `preprocess(image, seed)` for `make_pipeline`.
    """

    def preprocess(image, seed):
        image = tf.cast(image, "float32") * pixel_scale
        if seed is not None and policy is not None:
            image = _augment.apply_policy(image, seed, policy, padding)
        image = normalize(image, mean, std)
        return tf.ensure_shape(image, input_shape)

    return preprocess


def raw_preprocess(input_shape):
    """The raw images as float32: no scaling, augmentation or normalization.

    The input of a model exported with its preprocessing (`raw=True`).
    """

    def preprocess(image, seed):
        return tf.ensure_shape(tf.cast(image, "float32"), input_shape)

    return preprocess


def check_raw(raw, augment):
    """Raw pipelines are never augmented: refuses an explicit policy."""
    if raw and augment not in (True, False, None):
        raise ValueError(
            f"raw=True gives un-augmented images; augment={augment!r} "
            "cannot apply: leave augment out."
        )


def preprocessing_dict(input_shape, pixel_scale, mean, std, resize=None):
    """What a pipeline does to raw images before the network, as JSON data.

    Args:
        input_shape: `(height, width, channels)` of the network's input.
        pixel_scale: factor taking raw pixels to [0, 1].
        mean: per-channel mean subtracted after scaling, or `None`.
        std: per-channel standard deviation divided by, or `None`.
        resize: how raw images of another size are brought to
            `input_shape`: `"bilinear"` (a plain resize), `"center_crop"`
            (shorter side resized to `size / 0.875`, central crop) or
            `None` (all images have the input size).

    Returns:
        A dict with those keys and `raw_pixel_max` (`1 / pixel_scale`: the
        raw value of a white pixel, 255 for uint8 images, 16 for the
        digits), the scale from 8-bit image files to the raw range.
    """
    return {
        "input_shape": [int(d) for d in input_shape],
        "pixel_scale": float(pixel_scale),
        "raw_pixel_max": float(1.0 / pixel_scale),
        "mean": None if mean is None else [float(v) for v in mean],
        "std": None if std is None else [float(v) for v in std],
        "resize": resize,
    }


def normalize(image, mean, std):
    """`(image - mean) / std` per channel; identity when `mean` is None."""
    if mean is None:
        return image
    return (image - tf.constant(mean, "float32")) / tf.constant(std, "float32")


def channel_stats(images, max_images=STATS_IMAGES):
    """Per-channel mean and standard deviation of float images.

    Args:
        images: unbatched `tf.data.Dataset` of float32 images in [0, 1]
            (all of the same shape).
        max_images: number of images read (the first ones).

    Returns:
        `(mean, std)`: tuples of Python floats, one per channel.
    """
    batches = images.take(max_images).batch(256)
    total = count = total_sq = 0.0
    for batch in batches.as_numpy_iterator():
        pixels = batch.astype("float64").reshape(-1, batch.shape[-1])
        total = total + pixels.sum(axis=0)
        total_sq = total_sq + (pixels**2).sum(axis=0)
        count += pixels.shape[0]
    if not count:
        raise ValueError("Cannot compute image statistics: no images.")
    mean = total / count
    std = np.sqrt(np.maximum(total_sq / count - mean**2, 0.0))
    return _floats(mean), _floats(np.maximum(std, 1e-6))


def resolve_normalization(normalize, mean, std, compute, channels):
    """The `(mean, std)` a loader normalizes with, or `(None, None)`.

    Args:
        normalize: whether to normalize.
        mean: a user-given per-channel mean, or `None`.
        std: a user-given per-channel std, or `None`.
        compute: zero-argument function returning the dataset's
            `(mean, std)` (a preset, or statistics of the training images);
            called only when needed.
        channels: number of image channels.
    """
    if not normalize:
        return None, None
    if (mean is None) != (std is None):
        raise ValueError("Pass both `mean` and `std`, or neither.")
    if mean is None:
        mean, std = compute()
    mean = _floats(np.broadcast_to(np.asarray(mean, "float64"), (channels,)))
    std = _floats(np.broadcast_to(np.asarray(std, "float64"), (channels,)))
    if min(std) <= 0:
        raise ValueError(f"`std` must be positive; got {std}.")
    return mean, std


def resolve_policy(augment, default_policy):
    """The augmentation policy for `augment` (True means the default)."""
    if augment is True:
        return default_policy
    return _augment.check_policy(augment)


def default_policy(image_size):
    """Pad-crop-flip for small images (<= 64 pixels), else resized crops."""
    if min(image_size) <= 64:
        return "pad_crop_flip"
    return "resized_crop_flip"


def check_batch_size(batch_size):
    if not isinstance(batch_size, (int, np.integer)) or batch_size < 1:
        raise ValueError(
            f"batch_size must be a positive integer; got {batch_size!r}."
        )


def check_views(views):
    valid = isinstance(views, (int, np.integer)) and not isinstance(views, bool)
    if not valid or views < 1:
        raise ValueError(f"views must be a positive integer; got {views!r}.")


def check_with_index(with_index, views):
    if not isinstance(with_index, (bool, np.bool_)):
        raise ValueError(
            f"with_index must be True or False; got {with_index!r}."
        )
    if with_index and views != 1:
        raise ValueError(
            f"with_index=True gives one image per example; views={views} "
            "cannot apply: leave views out."
        )


def test_cache(cache):
    """The test split's cache: in memory like training, or its own file."""
    if cache is True or not cache:
        return cache
    return f"{cache}_test"


def _floats(values):
    return tuple(float(v) for v in np.asarray(values).reshape(-1))
