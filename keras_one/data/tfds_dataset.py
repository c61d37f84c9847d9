import collections
import urllib.error

import tensorflow as tf

from keras_one.data import _augment
from keras_one.data import _checks
from keras_one.data import _pipeline
from keras_one.data.dataset_info import DatasetInfo

_Preset = collections.namedtuple(
    "_Preset", ["split", "mean", "std", "augment", "cache", "image_size"]
)
# The official ONE code (Lan1991Xu/ONE_NeurIPS2018, cifar_one.py)
# normalizes CIFAR-10 and CIFAR-100 alike with these constants.
CIFAR_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR_STD = (0.2023, 0.1994, 0.2010)
# ... and SVHN (train + extra) with these.
SVHN_MEAN = (0.5, 0.5, 0.5)
SVHN_STD = (0.2, 0.2, 0.2)
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
PRESETS = {
    "cifar10": _Preset(
        ("train", "test"), CIFAR_MEAN, CIFAR_STD, "pad_crop_flip", True, None
    ),
    "cifar100": _Preset(
        ("train", "test"), CIFAR_MEAN, CIFAR_STD, "pad_crop_flip", True, None
    ),
    "svhn_cropped": _Preset(
        ("train+extra", "test"), SVHN_MEAN, SVHN_STD, "pad_crop", True, None
    ),
    "imagenet2012": _Preset(
        ("train", "validation"),
        IMAGENET_MEAN,
        IMAGENET_STD,
        "resized_crop_flip",
        False,
        (224, 224),
    ),
}
ALIASES = {"svhn": "svhn_cropped", "imagenet": "imagenet2012"}
# tfds stores imagenet2012 as JPEG: the training crop is decoded alone.
_JPEG_DATASETS = ("imagenet2012",)
_IMAGENET_SHUFFLE_BUFFER = 10_000
_CACHE_LIMIT_BYTES = 1 << 30


def load_tfds(
    name,
    split=None,
    batch_size=128,
    augment=True,
    normalize=True,
    seed=None,
    data_dir=None,
    manual_dir=None,
    download=True,
    image_size=None,
    cache=None,
    mean=None,
    std=None,
    shuffle_buffer=None,
    views=1,
    raw=False,
    with_index=False,
):
    """Builds training and test pipelines for a tensorflow-datasets dataset.

    The datasets of the papers come with their preprocessing:

    - `"cifar10"`, `"cifar100"`: per-channel normalization with the
      official ONE code's constants (mean `(0.4914, 0.4822, 0.4465)`, std
      `(0.2023, 0.1994, 0.2010)` for both), pad-4 random crops and
      horizontal flips in training.
    - `"svhn_cropped"` (alias `"svhn"`): trained on `train+extra` and
      normalized with mean 0.5 and std 0.2, as in the official ONE code;
      pad-4 random crops without flips (digits are not mirror-symmetric).
      The ONE code uses no augmentation on SVHN: pass `augment=False` to
      match it, `split=("train", "test")` for the small training set.
    - `"imagenet2012"` (alias `"imagenet"`): random-resized crops (area
      8-100%, aspect ratio 3/4-4/3, torchvision's sampling) to 224 and
      horizontal flips in training; shorter side resized to 256 and a
      central 224 crop for evaluation; ImageNet mean and std. tfds cannot
      download it: get `ILSVRC2012_img_train.tar` and
      `ILSVRC2012_img_val.tar` from https://image-net.org and pass their
      folder as `manual_dir`.

    Other tfds datasets with `image` and `label` features load too, with
    the default augmentation of `keras_one.data.load_arrays` and
    normalization by the statistics of their first 5,000 training images.

    The classes are those of the dataset's `label` feature (`num_classes`,
    `names`); a dataset whose label is not a tfds `ClassLabel`, or has
    fewer than 2 classes, is refused with a `ValueError`. Each label is
    checked against the classes as the pipelines read it (no scan before
    training): a label outside them stops the pipeline with an
    `InvalidArgumentError` naming the dataset.

    When the data cannot be downloaded (no network), a `ConnectionError`
    says how to point at local files instead.

    Args:
        name: the tfds name.
        split: `(train_split, test_split)` tfds split names (slicing such
            as `"train[:10%]"` works); defaults to the paper's splits.
        batch_size: examples per batch.
        augment: `True` for the dataset's augmentation (above), `False` for
            none, or a policy name (`"pad_crop_flip"`, `"pad_crop"`,
            `"flip"`, `"resized_crop_flip"`).
        normalize: whether to normalize per channel.
        seed: seed of the shuffling (files and examples) and of the
            augmentation.
        data_dir: tfds data directory (default `~/tensorflow_datasets` or
            `$TFDS_DATA_DIR`); point it at a copy prepared elsewhere to
            work offline.
        manual_dir: folder of manually downloaded archives, passed as
            `tfds.download.DownloadConfig(manual_dir=...)`.
        download: whether to download and prepare the dataset if
            `data_dir` lacks it.
        image_size: `(height, width)` of the crops of datasets whose images
            vary in size (224 for ImageNet).
        cache: cache the decoded source in memory (`True`), in a file (a
            path) or not (`False`); defaults to `True` for CIFAR and SVHN
            (SVHN `train+extra` takes about 1.9 GB), `False` for ImageNet,
            and for other datasets `True` when they are stored in under
            1 GB.
        mean: per-channel mean (in [0, 1] units) instead of the preset.
        std: per-channel standard deviation to use with `mean`.
        shuffle_buffer: shuffle buffer size (default: the training set up
            to 50,000 examples; 10,000 for ImageNet).
        views: images per example: 1 (the default) or one per branch of
            a student that gives each branch its own view (PCL): training
            batches are then `((view_0, ..., view_{views-1}), labels)`, each
            view augmented independently; test batches repeat the
            un-augmented image `views` times.
        raw: `True` for pipelines of the raw images (0-255 pixel values,
            resized and cropped like the test images, as float32; not
            augmented nor normalized): the input of a model exported with
            its preprocessing (`info.preprocessing`, the same either way).
        with_index: `True` to give each example its index in its split
            (batches `({"image": images, "example_index": indices},
            labels)`, see `keras_one.data.load_arrays`); the training
            files are then read in their stored order, so that the indices
            stay the same across epochs.

    Returns:
        `(train_ds, test_ds, info)`: batched `tf.data.Dataset`s of float32
        images and int32 labels, and a `keras_one.data.DatasetInfo`.

    Example:

    ```python
    train_ds, test_ds, info = keras_one.data.load_tfds("cifar100")
    info.num_classes  # 100
    ```
    """
    import tensorflow_datasets as tfds

    _pipeline.check_batch_size(batch_size)
    _pipeline.check_views(views)
    _pipeline.check_with_index(with_index, views)
    _pipeline.check_raw(raw, augment)
    key = ALIASES.get(str(name).lower(), str(name))
    preset = PRESETS.get(key)
    try:
        builder = tfds.builder(key, data_dir=data_dir)
    except tfds.core.registered.DatasetNotFoundError as error:
        raise ValueError(
            f"{name!r} is not a tensorflow-datasets dataset. Known here: "
            f"{sorted(PRESETS)}; see https://www.tensorflow.org/datasets/"
            "catalog for the others."
        ) from error
    _prepare(builder, key, data_dir, manual_dir, download)
    features = builder.info.features
    if "image" not in features or "label" not in features:
        raise ValueError(
            f"{key!r} has no `image` and `label` features (it has "
            f"{sorted(features)}): keras_one.data loads image classification "
            "datasets only."
        )
    num_classes, class_names = _classes(key, features["label"])
    train_split, test_split = (
        split
        or (preset.split if preset else None)
        or (
            "train",
            "test",
        )
    )
    source_shape = tuple(features["image"].shape)
    channels = int(source_shape[-1])
    fixed_size = None not in source_shape[:2]
    if fixed_size:
        if image_size is not None and tuple(image_size) != source_shape[:2]:
            raise ValueError(
                f"{key!r} images are {source_shape[:2]}; image_size applies "
                "to datasets whose images vary in size (imagenet2012). "
                "Leave it out."
            )
        image_size = source_shape[:2]
    elif image_size is None:
        if preset is None:
            raise ValueError(
                f"{key!r} images vary in size: pass image_size=(height, "
                "width), e.g. (224, 224)."
            )
        image_size = preset.image_size
    image_size = tuple(int(d) for d in image_size)
    input_shape = image_size + (channels,)
    encoded = key in _JPEG_DATASETS

    decoders = {"image": tfds.decode.SkipDecoding()} if encoded else None

    def source(split_name, training):
        dataset = builder.as_dataset(
            split=split_name,
            # Indexed examples keep the files' order (the shuffle buffer
            # still shuffles them).
            shuffle_files=training and not with_index,
            decoders=decoders,
            read_config=tfds.ReadConfig(shuffle_seed=seed, try_autocache=False),
        )
        return dataset.map(
            lambda example: (
                example["image"],
                _checked_label(example["label"], num_classes, key),
            ),
            num_parallel_calls=_pipeline.AUTOTUNE,
        )

    train_source = source(train_split, True)
    test_source = source(test_split, False)

    default_policy = preset.augment if preset else None
    default_policy = default_policy or _pipeline.default_policy(image_size)
    policy = _pipeline.resolve_policy(augment, default_policy)
    padding = _augment.default_padding(min(image_size))
    eval_transform = _eval_transform(fixed_size, encoded, image_size)

    def compute_stats():
        if preset is not None:
            return preset.mean, preset.std
        images = train_source.map(
            lambda image, label: eval_transform(image),
            num_parallel_calls=_pipeline.AUTOTUNE,
        )
        return _pipeline.channel_stats(images)

    mean, std = _pipeline.resolve_normalization(
        normalize, mean, std, compute_stats, channels
    )

    def train_preprocess(image, seed):
        if seed is None or policy is None:
            image = eval_transform(image)
        elif policy == "resized_crop_flip" and encoded:
            image = _augment.decode_resized_crop_flip(image, seed, image_size)
        elif policy == "resized_crop_flip" and not fixed_size:
            image = _to_float(image)
            image = _augment.resized_crop_flip(image, seed, image_size)
        else:
            image = _augment.apply_policy(
                eval_transform(image), seed, policy, padding
            )
        image = _pipeline.normalize(image, mean, std)
        return tf.ensure_shape(image, input_shape)

    def test_preprocess(image, seed):
        image = _pipeline.normalize(eval_transform(image), mean, std)
        return tf.ensure_shape(image, input_shape)

    if raw:
        policy = None
        raw_transform = _eval_transform(fixed_size, encoded, image_size, 1.0)

        def train_preprocess(image, seed):
            return tf.ensure_shape(raw_transform(image), input_shape)

        test_preprocess = train_preprocess

    if cache is None:
        cache = preset.cache if preset else _fits_in_memory(builder)
    if shuffle_buffer is None and encoded:
        shuffle_buffer = _IMAGENET_SHUFFLE_BUFFER
    num_train = _num_examples(builder, train_split, train_source)
    num_test = _num_examples(builder, test_split, test_source)
    train_ds = _pipeline.make_pipeline(
        train_source,
        train_preprocess,
        training=True,
        batch_size=batch_size,
        seed=seed,
        shuffle_buffer=shuffle_buffer,
        cache=cache,
        num_examples=num_train,
        views=views,
        with_index=with_index,
    )
    test_ds = _pipeline.make_pipeline(
        test_source,
        test_preprocess,
        training=False,
        batch_size=batch_size,
        cache=_pipeline.test_cache(cache),
        views=views,
        with_index=with_index,
    )
    info = DatasetInfo(
        name=key,
        num_classes=num_classes,
        input_shape=input_shape,
        class_names=class_names,
        num_train_examples=num_train,
        num_test_examples=num_test,
        mean=mean,
        std=std,
        train_augmentation=policy,
        preprocessing=_pipeline.preprocessing_dict(
            input_shape,
            1.0 / 255.0,
            mean,
            std,
            resize=None if fixed_size else "center_crop",
        ),
    )
    return train_ds, test_ds, info


def _classes(name, label):
    """`(num_classes, class_names)` of a tfds `label` feature; refuses
    labels that are not a `ClassLabel` of at least 2 classes."""
    num_classes = getattr(label, "num_classes", None)
    if not num_classes:
        raise ValueError(
            f"{name!r} has a `label` feature of type {type(label).__name__}, "
            "not a ClassLabel with a number of classes: keras_one.data loads "
            "image classification datasets only."
        )
    if int(num_classes) < _checks.MIN_CLASSES:
        raise ValueError(
            f"{name!r} has {num_classes} class: classification needs at "
            "least 2 classes."
        )
    return int(num_classes), tuple(str(n) for n in label.names)


def _checked_label(label, num_classes, name):
    """`label`, failing the pipeline if it is not in `0..num_classes-1`.

    tfds' `ClassLabel` already keeps labels in range when it prepares a
    dataset; this costs two comparisons per example, and keeps a damaged
    or hand-made copy from training silently on a wrong label.
    """
    checks = [
        tf.debugging.assert_non_negative(
            label, message=f"{name}: a label is negative"
        ),
        tf.debugging.assert_less(
            label,
            tf.constant(num_classes, label.dtype),
            message=f"{name}: a label is not below its {num_classes} classes",
        ),
    ]
    with tf.control_dependencies(checks):
        return tf.identity(label)


def _to_float(image):
    return tf.image.convert_image_dtype(image, "float32")


def _raw_float(image):
    return tf.cast(image, "float32")


def _eval_transform(fixed_size, encoded, image_size, scale=None):
    """Decoded, [0, 1]-scaled evaluation image of the pipeline's size.

    With `scale=1.0`, the raw 0-255 pixel values (as float32) instead.
    """
    to_float = _to_float if scale is None else _raw_float
    if fixed_size:
        return to_float

    def transform(image):
        if encoded:
            image = tf.io.decode_jpeg(image, channels=3)
        return _augment.resize_center_crop(to_float(image), image_size)

    return transform


def _fits_in_memory(builder):
    """Whether to cache an unknown dataset: when it is under 1 GB stored."""
    try:
        size = int(builder.info.dataset_size)
    except (TypeError, ValueError):
        return False
    return 0 < size < _CACHE_LIMIT_BYTES


def _num_examples(builder, split, dataset):
    cardinality = int(dataset.cardinality())
    if cardinality >= 0:
        return cardinality
    try:
        return int(builder.info.splits[split].num_examples)
    except (KeyError, ValueError, TypeError):
        return None


def _network_errors():
    errors = (ConnectionError, TimeoutError, urllib.error.URLError)
    try:
        import requests
    except ImportError:
        return errors
    return errors + (requests.exceptions.RequestException,)


def _prepare(builder, name, data_dir, manual_dir, download):
    """Downloads and prepares the dataset, or explains how to go offline."""
    import tensorflow_datasets as tfds

    if builder.is_prepared():
        return
    where = data_dir or "the default tfds data_dir (~/tensorflow_datasets)"
    if not download:
        raise FileNotFoundError(
            f"{name!r} is not prepared in {where} and download=False. "
            + _local_options(name)
        )
    # Offline, tfds retries each download for minutes: ask in seconds first.
    from keras_one.data import _network

    host = (
        None
        if _mocked(builder)
        else _network.unreachable(_network.download_urls(builder))
    )
    if host is not None:
        raise ConnectionError(
            f"Could not reach {host} to download the tensorflow-datasets "
            f"dataset {name!r}; it is not prepared in {where}. This machine "
            "looks offline, or cannot reach the download server. "
            + _local_options(name)
        )
    config = tfds.download.DownloadConfig(manual_dir=manual_dir)
    try:
        builder.download_and_prepare(download_config=config)
    except _network_errors() as error:
        raise ConnectionError(
            f"Could not download the tensorflow-datasets dataset {name!r} "
            f"({type(error).__name__}: {error}). This machine looks "
            "offline, or cannot reach the download server. "
            + _local_options(name)
        ) from error
    except AssertionError as error:
        if "manual" not in str(error).lower():
            raise
        where = (
            f"manual_dir={str(manual_dir)!r}"
            if manual_dir
            else "the default manual_dir (<data_dir>/downloads/manual)"
        )
        raise FileNotFoundError(
            f"{name!r} must be downloaded by hand and was not found in "
            f"{where}. Put the archives tfds asks for in "
            "a folder and pass manual_dir='/that/folder' (it becomes "
            "tfds.download.DownloadConfig(manual_dir=...)). tfds says: "
            f"{error} " + _local_options(name)
        ) from error


def _local_options(name):
    return (
        "To use local files instead: pass data_dir='/path/to/"
        f"tensorflow_datasets' holding a prepared copy of {name!r} (prepare "
        f"it on a connected machine with tfds.builder({name!r})."
        f"download_and_prepare() and copy its {name}/ folder); for datasets "
        "downloaded by hand, manual_dir='/folder/with/archives'; or load a "
        "class-per-folder image directory (keras_one.data.load('/path/to/"
        "images')), an .npz file with x_train, y_train, x_test and y_test "
        "(keras_one.data.load('/path/to/data.npz')), or the bundled "
        "keras_one.data.load('digits')."
    )


def _mocked(builder):
    """Whether `tfds.testing.mock_data` stands in for the download (then
    `download_and_prepare` is its function, and needs no network)."""
    prepare = getattr(type(builder), "download_and_prepare", None)
    module = getattr(prepare, "__module__", "") or ""
    return module.startswith("tensorflow_datasets.testing")
