import collections
import os

import keras
import numpy as np
import tensorflow as tf

from keras_one.data import _augment
from keras_one.data import _checks
from keras_one.data import _pipeline
from keras_one.data.dataset_info import DatasetInfo

# Seed of the random train/test split of a folder without split folders:
# fixed, so that every call holds out the same images.
SPLIT_SEED = 1337
IMAGE_EXTENSIONS = (".bmp", ".gif", ".jpeg", ".jpg", ".png")
# Split folders read without `split`, lowercase; the first test folder
# found in this order is the test split.
TRAIN_FOLDERS = ("train", "training")
TEST_FOLDERS = ("test", "testing", "val", "valid", "validation")
# Images decoded to choose the image size and color mode.
SAMPLE_IMAGES = 32
# Image files listed per class folder for that sample.
_FIRST_IMAGES = 4


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
    with_index=False,
):
    """Builds training and test pipelines over class-per-folder images.

    The layout of CINIC-10 and of most users' data: one subfolder per
    class, read with `keras.utils.image_dataset_from_directory`. The
    folder is read as follows:

    - Split folders: when it holds a `train/` (or `training/`) folder and
      a `test/` folder (or else `testing/`, `val/`, `valid/` or
      `validation/`, the first found in this order), those are the
      training and test splits, each holding one folder per class
      (`train/<class>/*.png`). A `train/` folder alone (with no other
      subfolder) is read as the class folders to split, below. Split
      folders without `train/` are refused.
    - Class folders: otherwise its subfolders are the classes, and a
      fixed random `validation_split` of the images is held out as the
      test split (the same images on every call); a warning names
      classes left without training images.

    Refused with a `ValueError` naming the folder: a class folder without
    images, a single class, images directly in the folder with no class
    folders, and a test split whose class folders differ from the
    training split's. Hidden folders (`.name`) are not classes; images
    outside every class folder are left out with a warning.

    Images are resized to `image_size`: by default the most common size
    among up to 32 images (the first of each class folder, then others),
    with a warning when they differ (images of another size are stretched
    to it, not cropped). Their color mode is by default RGB when any of
    those images has color, grayscale when none has, RGBA when all have
    alpha; every image is converted to it (a grayscale PNG among RGB ones
    is read as RGB). They are then scaled to [0, 1], augmented in training
    (see `augment`) and normalized per channel with the mean and standard
    deviation of up to 5,000 training images taken evenly over the sorted
    file list.

    Args:
        directory: the folder.
        split: `(train_folder, test_folder)`; by default the split
            folders found (above), else the class folders of `directory`
            are split. Name split folders explicitly to choose others,
            e.g. `("train", "valid")` when the folder also has `test/`.
        batch_size: examples per batch.
        augment: `True` for the default augmentation (pad-crop-flip for
            images up to 64 pixels, as for CIFAR and CINIC-10;
            random-resized crops and flips for larger ones), `False` for
            none, or a policy name (`"pad_crop_flip"`, `"pad_crop"`,
            `"flip"`, `"resized_crop_flip"`).
        normalize: whether to normalize per channel.
        seed: seed of the shuffling and of the augmentation.
        image_size: `(height, width)` the images are resized to; by
            default the most common size (above).
        validation_split: fraction held out as the test split when the
            directory has no split folders.
        color_mode: `"rgb"`, `"grayscale"` or `"rgba"`; defaults to the
            sampled images' (above).
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
        with_index: not supported yet for image folders (refused).

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
    _pipeline.check_with_index(with_index, views)
    if with_index:
        raise ValueError(
            "with_index=True is not supported for image folders yet: load "
            "the images as arrays (keras_one.data.load_arrays(..., "
            "with_index=True)) or from tensorflow-datasets."
        )
    _pipeline.check_raw(raw, augment)
    directory = os.fspath(directory)
    if not os.path.isdir(directory):
        raise FileNotFoundError(f"No image folder at {directory!r}.")
    train_dir, test_dir = _split_dirs(directory, split)
    first_images = _class_folders(train_dir)
    if test_dir is not None:
        _check_test_folders(test_dir, train_dir, first_images)
    sample = _sample(first_images)
    shapes = [_image_shape(path) for path in sample]
    if image_size is None:
        image_size = _common_size(shapes, sample, train_dir)
    image_size = tuple(int(d) for d in image_size)
    if color_mode is None:
        color_mode = _color_mode(shapes)
    options = dict(
        labels="inferred",
        label_mode="int",
        color_mode=color_mode,
        batch_size=None,
        image_size=image_size,
        verbose=False,
    )
    if test_dir is not None:
        train_files = keras.utils.image_dataset_from_directory(
            train_dir, shuffle=False, **options
        )
        test_files = keras.utils.image_dataset_from_directory(
            test_dir,
            shuffle=False,
            class_names=train_files.class_names,
            **options,
        )
    else:
        try:
            train_files, test_files = keras.utils.image_dataset_from_directory(
                train_dir,
                shuffle=True,
                seed=SPLIT_SEED,
                validation_split=validation_split,
                subset="both",
                **options,
            )
        except ValueError as error:
            if "images found" not in str(error):
                raise
            raise ValueError(
                f"{train_dir!r} has too few images to hold out "
                f"validation_split={validation_split} of them as the test "
                "split: add images, raise validation_split, or put the "
                "images in train/ and test/ folders of class folders."
            ) from None
        _check_held_out(train_files, test_files, train_dir)
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
    """`(train_folder, test_folder)`, or `(class_root, None)` to split it."""
    if split is not None:
        if len(split) != 2:
            raise ValueError(
                f"split must be (train_folder, test_folder); got {split!r}."
            )
        paths = [os.path.join(directory, name) for name in split]
        if all(os.path.isdir(path) for path in paths):
            return paths
        raise FileNotFoundError(
            f"{directory!r} has no split folders {list(split)}; its "
            f"subfolders are {_subfolders(directory)}. Name existing split "
            "folders, or pass split=None to hold out a fraction of class "
            "folders."
        )
    subfolders = _subfolders(directory)
    by_name = {name.lower(): name for name in subfolders}
    train = next((by_name[n] for n in TRAIN_FOLDERS if n in by_name), None)
    test = next((by_name[n] for n in TEST_FOLDERS if n in by_name), None)
    if train is not None and test is not None:
        return os.path.join(directory, train), os.path.join(directory, test)
    splits = [
        n for n in subfolders if n.lower() in TRAIN_FOLDERS + TEST_FOLDERS
    ]
    if not splits or len(splits) < len(subfolders):
        return directory, None  # class folders
    if train is not None:  # train/ alone: its class folders are split
        return os.path.join(directory, train), None
    raise FileNotFoundError(
        f"{directory!r} holds the split folders {splits} but no train/ "
        "folder: put the training images in train/<class>/, or name the "
        "split folders with split=(train_folder, test_folder)."
    )


def _subfolders(directory):
    """The class (or split) folders: sorted, hidden ones left out (as
    `keras.utils.image_dataset_from_directory` does)."""
    return [
        name
        for name in sorted(os.listdir(directory))
        if os.path.isdir(os.path.join(directory, name))
        and not name.startswith(".")
    ]


def _image_files(directory, limit):
    """Up to `limit` image files under `directory`, in the loader's order."""
    found = []
    for root, dirs, files in os.walk(directory):
        dirs.sort()
        for file_name in sorted(files):
            if file_name.lower().endswith(IMAGE_EXTENSIONS):
                found.append(os.path.join(root, file_name))
                if len(found) >= limit:
                    return found
    return found


def _loose_images(directory):
    """Image files directly in `directory`, outside every class folder."""
    return sorted(
        entry.name
        for entry in os.scandir(directory)
        if entry.is_file() and entry.name.lower().endswith(IMAGE_EXTENSIONS)
    )


def _class_folders(root):
    """`{class: first image files}` of `root`; refuses a wrong layout."""
    first_images = {
        name: _image_files(os.path.join(root, name), _FIRST_IMAGES)
        for name in _subfolders(root)
    }
    loose = _loose_images(root)
    if not any(first_images.values()):
        if loose:
            raise ValueError(
                f"{root!r} holds images but no class folders: put the "
                "images of each class in a subfolder named after the class "
                f"({os.path.join(root, '<class>', loose[0])})."
            )
        raise FileNotFoundError(
            f"No images ({', '.join(IMAGE_EXTENSIONS)}) in {root!r}: it "
            "must hold one subfolder of images per class."
        )
    _check_not_empty(root, first_images)
    if len(first_images) < _checks.MIN_CLASSES:
        raise ValueError(
            f"{root!r} holds a single class folder "
            f"({next(iter(first_images))!r}): classification needs at least "
            "2 classes, one subfolder of images per class."
        )
    if loose:
        _checks.warn(
            f"{len(loose)} images directly in {root!r} (e.g. {loose[0]!r}) "
            "are in no class folder and are not used: move them into the "
            "folder of their class."
        )
    return first_images


def _check_not_empty(root, first_images):
    empty = [name for name, files in first_images.items() if not files]
    if empty:
        others = f" (and {len(empty) - 1} more)" if len(empty) > 1 else ""
        raise ValueError(
            f"The class folder {os.path.join(root, empty[0])!r}{others} "
            f"holds no images ({', '.join(IMAGE_EXTENSIONS)}): add the "
            "images of that class, or remove the folder if it is not a class."
        )


def _check_test_folders(test_dir, train_dir, train_images):
    """The test split has the training split's class folders, not empty."""
    classes = _subfolders(test_dir)
    extra = [name for name in classes if name not in train_images]
    if extra:
        raise ValueError(
            f"{test_dir!r} has class folders {extra} that {train_dir!r} "
            "lacks: the model could not learn them. Add their training "
            "images, or remove them from the test split."
        )
    missing = [name for name in train_images if name not in classes]
    if missing:
        raise ValueError(
            f"{test_dir!r} lacks the class folders {missing} of "
            f"{train_dir!r}: give every class test images, or remove the "
            "class from both splits."
        )
    _check_not_empty(
        test_dir,
        {
            name: _image_files(os.path.join(test_dir, name), 1)
            for name in classes
        },
    )
    loose = _loose_images(test_dir)
    if loose:
        _checks.warn(
            f"{len(loose)} images directly in {test_dir!r} (e.g. "
            f"{loose[0]!r}) are in no class folder and are not used: move "
            "them into the folder of their class."
        )


def _sample(first_images):
    """Up to `SAMPLE_IMAGES` files: first the first image of classes spread
    over the class list, then other images, the first image file first."""
    firsts = [files[0] for files in first_images.values()]
    stride = max(1, -(-len(firsts) // SAMPLE_IMAGES))
    sample = firsts[::stride]
    for files in first_images.values():
        sample.extend(files[1:])
    return sample[:SAMPLE_IMAGES]


def _image_shape(path):
    try:
        image = tf.io.decode_image(
            tf.io.read_file(path), expand_animations=False
        )
    except (tf.errors.InvalidArgumentError, tf.errors.UnknownError) as error:
        reason = str(error).strip().splitlines()[0] if str(error) else ""
        raise ValueError(
            f"{path!r} is damaged or not an image ({reason}): replace or "
            "remove it."
        ) from None
    return tuple(int(d) for d in image.shape)


def _color_mode(shapes):
    """RGB if any sampled image has color, unless all have alpha (RGBA);
    grayscale if none has."""
    channels = {shape[-1] for shape in shapes}
    if channels <= {1, 2}:
        return "grayscale"
    if channels == {4}:
        return "rgba"
    return "rgb"


def _common_size(shapes, sample, root):
    """The most common `(height, width)` of the sample (the first on ties);
    warns when sizes differ."""
    sizes = [shape[:2] for shape in shapes]
    counts = collections.Counter(sizes)
    size = max(counts, key=lambda s: (counts[s], -sizes.index(s)))
    if len(counts) > 1:
        other = next(i for i, s in enumerate(sizes) if s != size)
        example = sizes.index(size)
        _checks.warn(
            f"The images of {root!r} differ in size (e.g. "
            f"{_relative(sample[example], root)!r} is "
            f"{size[0]}x{size[1]}, {_relative(sample[other], root)!r} "
            f"{sizes[other][0]}x{sizes[other][1]}): all are resized to "
            f"{size[0]}x{size[1]} (height x width, the most common size; "
            "stretched, not cropped). Pass image_size=(height, width) "
            "(keras-one: --image-size HEIGHT WIDTH) to choose."
        )
    return size


def _relative(path, root):
    return os.path.relpath(path, root)


def _check_held_out(train_files, test_files, root):
    """After a random hold-out: warns of classes left without training
    images, refuses training images of a single class."""
    class_names = tuple(train_files.class_names)

    def counts(files):
        index = {name: i for i, name in enumerate(class_names)}
        start = len(os.path.join(root, ""))
        result = np.zeros(len(class_names), "int64")
        for path in files.file_paths:
            name = path[start:].split(os.sep, 1)[0]
            if name in index:
                result[index[name]] += 1
        return result

    _checks.check_classes(
        counts(train_files),
        class_names,
        f"{root!r} (after holding out the test split)",
        test_counts=counts(test_files),
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
