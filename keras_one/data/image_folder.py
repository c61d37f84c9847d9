import os

import keras
import tensorflow as tf

from keras_one.data import _augment
from keras_one.data import _pipeline
from keras_one.data.dataset_info import DatasetInfo

# Seed of the random train/test split of a folder without split folders:
# fixed, so that every call holds out the same images.
SPLIT_SEED = 1337
_COLOR_MODES = {1: "grayscale", 3: "rgb", 4: "rgba"}


def load_image_folder(
    directory,
    split=None,
    batch_size=128,
    augment=True,
    normalize=True,
    seed=None,
    image_size=None,
    validation_split=0.2,
    color_mode=None,
    cache=False,
    mean=None,
    std=None,
    shuffle_buffer=None,
    views=1,
    raw=False,
):
    """Builds training and test pipelines over class-per-folder images.

    The layout of CINIC-10 and of most users' data: one subfolder per
    class, read with `keras.utils.image_dataset_from_directory`. Either
    the directory holds split folders (`train/<class>/*.png` and
    `test/<class>/*.png`; CINIC-10 also has `valid/`), or it holds the class
    folders directly, and a fixed random `validation_split` of the images
    is held out as the test split (the same images on every call).

    Images are resized to `image_size` (by default the size of the first
    image), scaled to [0, 1], augmented in training (see `augment`) and
    normalized per channel with the mean and standard deviation of up to
    5,000 training images taken evenly over the sorted file list.

    Args:
        directory: the folder.
        split: `(train_folder, test_folder)`; defaults to
            `("train", "test")` when both exist, else the class folders of
            `directory` are split. Name split folders explicitly for other
            names, e.g. `("train", "valid")`.
        batch_size: examples per batch.
        augment: `True` for the default augmentation (pad-crop-flip for
            images up to 64 pixels, as for CIFAR and CINIC-10;
            random-resized crops and flips for larger ones), `False` for
            none, or a policy name (`"pad_crop_flip"`, `"pad_crop"`,
            `"flip"`, `"resized_crop_flip"`).
        normalize: whether to normalize per channel.
        seed: seed of the shuffling and of the augmentation.
        image_size: `(height, width)` the images are resized to.
        validation_split: fraction held out as the test split when the
            directory has no split folders.
        color_mode: `"rgb"`, `"grayscale"` or `"rgba"`; defaults to the
            channels of the first image.
        cache: `True` to cache the decoded images in memory, a file path to
            cache them on disk.
        mean: per-channel mean (in [0, 1] units) to use instead of the
            training images' own (e.g. CINIC-10's published one).
        std: per-channel standard deviation to use with `mean`.
        shuffle_buffer: shuffle buffer size; defaults to the whole training
            set (up to 50,000 images).
        views: images per example: 1 (the default) or one per branch of
            a student that gives each branch its own view (PCL): training
            batches are then `((view_0, ..., view_{views-1}), labels)`, each
            view augmented independently; test batches repeat the
            un-augmented image `views` times.
        raw: `True` for pipelines of the raw images (0-255 pixel values,
            resized to the input size, as float32; not augmented nor
            normalized): the input of a model exported with its
            preprocessing (`info.preprocessing`, the same either way).

    Returns:
        `(train_ds, test_ds, info)`: batched `tf.data.Dataset`s of float32
        images and int32 labels, and a `keras_one.data.DatasetInfo`.

    Example:

    ```python
    train_ds, test_ds, info = keras_one.data.load_image_folder(
        "CINIC-10", split=("train", "test"), batch_size=128)
    ```
    """
    _pipeline.check_batch_size(batch_size)
    _pipeline.check_views(views)
    _pipeline.check_raw(raw, augment)
    directory = os.fspath(directory)
    if not os.path.isdir(directory):
        raise FileNotFoundError(f"No image folder at {directory!r}.")
    split_dirs = _split_dirs(directory, split)
    first_image = _first_image(split_dirs[0] if split_dirs else directory)
    if image_size is None:
        image_size = tuple(int(d) for d in first_image.shape[:2])
    image_size = tuple(int(d) for d in image_size)
    if color_mode is None:
        color_mode = _COLOR_MODES.get(int(first_image.shape[-1]), "rgb")
    options = dict(
        labels="inferred",
        label_mode="int",
        color_mode=color_mode,
        batch_size=None,
        image_size=image_size,
        verbose=False,
    )
    if split_dirs:
        train_files = keras.utils.image_dataset_from_directory(
            split_dirs[0], shuffle=False, **options
        )
        test_files = keras.utils.image_dataset_from_directory(
            split_dirs[1],
            shuffle=False,
            class_names=train_files.class_names,
            **options,
        )
    else:
        train_files, test_files = keras.utils.image_dataset_from_directory(
            directory,
            shuffle=True,
            seed=SPLIT_SEED,
            validation_split=validation_split,
            subset="both",
            **options,
        )
    class_names = tuple(train_files.class_names)
    channels = {"grayscale": 1, "rgb": 3, "rgba": 4}[color_mode]
    input_shape = image_size + (channels,)

    policy = _pipeline.resolve_policy(
        augment, _pipeline.default_policy(image_size)
    )
    mean, std = _pipeline.resolve_normalization(
        normalize,
        mean,
        std,
        lambda: _folder_stats(train_files.file_paths, image_size, channels),
        channels,
    )
    padding = _augment.default_padding(min(image_size))
    pixel_scale = 1.0 / 255.0
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
        train_files,
        train_preprocess,
        training=True,
        batch_size=batch_size,
        seed=seed,
        shuffle_buffer=shuffle_buffer,
        cache=cache,
        num_examples=len(train_files.file_paths),
        views=views,
    )
    test_ds = _pipeline.make_pipeline(
        test_files,
        test_preprocess,
        training=False,
        batch_size=batch_size,
        cache=_pipeline.test_cache(cache),
        views=views,
    )
    info = DatasetInfo(
        name=os.path.basename(os.path.normpath(directory)),
        num_classes=len(class_names),
        input_shape=input_shape,
        class_names=class_names,
        num_train_examples=len(train_files.file_paths),
        num_test_examples=len(test_files.file_paths),
        mean=mean,
        std=std,
        train_augmentation=policy,
        preprocessing=_pipeline.preprocessing_dict(
            input_shape, pixel_scale, mean, std, resize="bilinear"
        ),
    )
    return train_ds, test_ds, info


def _split_dirs(directory, split):
    """The train and test folders, or None to split the class folders."""
    names = split or ("train", "test")
    if len(names) != 2:
        raise ValueError(
            f"split must be (train_folder, test_folder); got {split!r}."
        )
    paths = [os.path.join(directory, name) for name in names]
    if all(os.path.isdir(path) for path in paths):
        return paths
    if split is None:
        return None
    subfolders = sorted(
        entry.name for entry in os.scandir(directory) if entry.is_dir()
    )
    raise FileNotFoundError(
        f"{directory!r} has no split folders {list(names)}; its subfolders "
        f"are {subfolders}. Name existing split folders, or pass split=None "
        "to hold out a fraction of class folders."
    )


def _first_image(directory):
    """Decodes the first image of the first class folder, for its shape."""
    extensions = (".bmp", ".gif", ".jpeg", ".jpg", ".png")
    for root, dirs, files in sorted(os.walk(directory)):
        dirs.sort()
        for file_name in sorted(files):
            if file_name.lower().endswith(extensions):
                data = tf.io.read_file(os.path.join(root, file_name))
                return tf.io.decode_image(data, expand_animations=False)
    raise FileNotFoundError(
        f"No images (.png, .jpg, .jpeg, .bmp, .gif) in {directory!r}: it "
        "must hold one subfolder of images per class."
    )


def _folder_stats(file_paths, image_size, channels):
    """Mean and std of up to 5,000 images spread over the file list."""
    stride = max(1, -(-len(file_paths) // _pipeline.STATS_IMAGES))
    sample = list(file_paths[::stride])

    def read(path):
        image = tf.io.decode_image(
            tf.io.read_file(path), channels=channels, expand_animations=False
        )
        image = tf.image.resize(image, image_size)
        return tf.ensure_shape(image / 255.0, image_size + (channels,))

    images = tf.data.Dataset.from_tensor_slices(sample).map(
        read, num_parallel_calls=_pipeline.AUTOTUNE
    )
    return _pipeline.channel_stats(images, max_images=len(sample))
