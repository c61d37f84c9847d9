"""Image augmentation and evaluation transforms for `tf.data` pipelines.

TensorFlow-only code (it runs inside `tf.data` maps). Every random
transform is *stateless*: it takes a `seed` tensor of shape `(2,)`, so a
pipeline seeded once is reproducible however `tf.data` parallelizes it.
Images are float32, `(height, width, channels)`, pixel values in [0, 1].
"""

import math

import tensorflow as tf

POLICIES = ("pad_crop_flip", "pad_crop", "flip", "resized_crop_flip")

# torchvision's RandomResizedCrop defaults, as in the ImageNet recipe.
RESIZED_CROP_SCALE = (0.08, 1.0)
RESIZED_CROP_RATIO = (3.0 / 4.0, 4.0 / 3.0)
# Evaluation: resize the shorter side to size / 0.875 (256 for 224), then
# take the central size x size crop.
CENTER_CROP_FRACTION = 0.875


def default_padding(image_size):
    """Pad-crop padding for an image side: 4 for 32 (CIFAR), 1 for 8."""
    return max(1, int(image_size) // 8)


def pad_crop(image, seed, padding, flip):
    """Zero-pads `padding` pixels on each side, crops back, maybe flips.

    torchvision's `RandomCrop(size, padding)` (+ `RandomHorizontalFlip()`):
    the crop offset is uniform in `[0, 2 * padding]` along each axis, the
    padding is black (zero before normalization), and the flip happens with
    probability 1/2.
    """
    crop_seed, flip_seed = tf.unstack(
        tf.random.experimental.stateless_split(seed, num=2)
    )
    shape = tf.shape(image)
    padded = tf.pad(image, [[padding, padding], [padding, padding], [0, 0]])
    image = tf.image.stateless_random_crop(padded, shape, seed=crop_seed)
    if flip:
        image = tf.image.stateless_random_flip_left_right(image, flip_seed)
    return image


def random_flip(image, seed):
    """Flips left-right with probability 1/2."""
    return tf.image.stateless_random_flip_left_right(image, seed)


def resized_crop_box(
    height,
    width,
    seed,
    scale=RESIZED_CROP_SCALE,
    ratio=RESIZED_CROP_RATIO,
    attempts=10,
):
    """Samples a crop window as torchvision's `RandomResizedCrop` does.

    Up to `attempts` candidates are drawn, each covering a uniform fraction
    `scale` of the image area with a log-uniform aspect ratio in `ratio`;
    the first one that fits is used at a uniform position. If none fits,
    the central crop of the whole image with its aspect ratio clamped to
    `ratio` is used.

    Args:
        height: image height (int32 scalar tensor).
        width: image width (int32 scalar tensor).
        seed: stateless seed, shape `(2,)`.
        scale: range of the crop area as a fraction of the image area.
        ratio: range of the crop aspect ratio (width / height).
        attempts: number of candidates drawn before the fallback.

    Returns:
        `(top, left, crop_height, crop_width)` int32 scalar tensors.
    """
    seeds = tf.random.experimental.stateless_split(seed, num=4)
    height_f = tf.cast(height, "float32")
    width_f = tf.cast(width, "float32")
    area = height_f * width_f
    target_area = area * tf.random.stateless_uniform(
        [attempts], seeds[0], scale[0], scale[1]
    )
    aspect = tf.exp(
        tf.random.stateless_uniform(
            [attempts], seeds[1], math.log(ratio[0]), math.log(ratio[1])
        )
    )
    widths = tf.cast(tf.round(tf.sqrt(target_area * aspect)), "int32")
    heights = tf.cast(tf.round(tf.sqrt(target_area / aspect)), "int32")
    fits = (
        (widths > 0) & (heights > 0) & (widths <= width) & (heights <= height)
    )

    # Fallback: the whole image, its aspect ratio clamped to `ratio`.
    image_ratio = width_f / height_f
    fallback_width = tf.where(
        image_ratio > ratio[1],
        tf.cast(tf.round(height_f * ratio[1]), "int32"),
        width,
    )
    fallback_height = tf.where(
        image_ratio < ratio[0],
        tf.cast(tf.round(width_f / ratio[0]), "int32"),
        height,
    )
    first = tf.argmax(tf.cast(fits, "int32"), output_type="int32")
    any_fits = tf.reduce_any(fits)
    crop_width = tf.where(any_fits, widths[first], fallback_width)
    crop_height = tf.where(any_fits, heights[first], fallback_height)

    # Uniform position for a sampled window, the centre for the fallback.
    unit = tf.random.stateless_uniform([2], seeds[2], 0.0, 1.0)
    free_rows = height - crop_height
    free_cols = width - crop_width
    top = tf.where(
        any_fits,
        tf.cast(tf.floor(unit[0] * tf.cast(free_rows + 1, "float32")), "int32"),
        free_rows // 2,
    )
    left = tf.where(
        any_fits,
        tf.cast(tf.floor(unit[1] * tf.cast(free_cols + 1, "float32")), "int32"),
        free_cols // 2,
    )
    top = tf.minimum(top, free_rows)
    left = tf.minimum(left, free_cols)
    return top, left, crop_height, crop_width


def resized_crop_flip(image, seed, output_size):
    """Random-resized crop of a decoded image, resized, flipped at random."""
    box_seed, flip_seed = tf.unstack(
        tf.random.experimental.stateless_split(seed, num=2)
    )
    shape = tf.shape(image)
    top, left, crop_height, crop_width = resized_crop_box(
        shape[0], shape[1], box_seed
    )
    image = tf.slice(image, [top, left, 0], [crop_height, crop_width, -1])
    image = tf.image.resize(image, output_size, antialias=True)
    return tf.image.stateless_random_flip_left_right(image, flip_seed)


def decode_resized_crop_flip(encoded, seed, output_size):
    """Random-resized crop of a JPEG, decoding only the cropped window."""
    box_seed, flip_seed = tf.unstack(
        tf.random.experimental.stateless_split(seed, num=2)
    )
    shape = tf.image.extract_jpeg_shape(encoded)
    top, left, crop_height, crop_width = resized_crop_box(
        shape[0], shape[1], box_seed
    )
    image = tf.image.decode_and_crop_jpeg(
        encoded, tf.stack([top, left, crop_height, crop_width]), channels=3
    )
    image = tf.image.convert_image_dtype(image, "float32")
    image = tf.image.resize(image, output_size, antialias=True)
    return tf.image.stateless_random_flip_left_right(image, flip_seed)


def resize_center_crop(image, output_size):
    """Resizes the shorter side to `size / 0.875`, takes the central crop.

    torchvision's `Resize(256)` + `CenterCrop(224)` for `output_size`
    `(224, 224)`: the longer side is scaled by the same factor (truncated).
    """
    shape = tf.shape(image)
    height = tf.cast(shape[0], "float32")
    width = tf.cast(shape[1], "float32")
    resize_to = round(max(output_size) / CENTER_CROP_FRACTION)
    shorter = tf.minimum(height, width)
    new_height = tf.where(
        height <= width,
        resize_to,
        tf.cast(tf.floor(resize_to * height / shorter), "int32"),
    )
    new_width = tf.where(
        width <= height,
        resize_to,
        tf.cast(tf.floor(resize_to * width / shorter), "int32"),
    )
    image = tf.image.resize(
        image, tf.stack([new_height, new_width]), antialias=True
    )
    top = tf.cast(
        tf.round(tf.cast(new_height - output_size[0], "float32") / 2), "int32"
    )
    left = tf.cast(
        tf.round(tf.cast(new_width - output_size[1], "float32") / 2), "int32"
    )
    return tf.slice(image, [top, left, 0], [output_size[0], output_size[1], -1])


def check_policy(augment):
    """Returns the policy name for `augment`, or raises a clear error."""
    if augment in (None, False):
        return None
    if augment not in POLICIES:
        raise ValueError(
            f"Unknown augmentation {augment!r}. Use True (the dataset's "
            f"default), False, or one of {list(POLICIES)}."
        )
    return augment


def apply_policy(image, seed, policy, padding):
    """Applies a named augmentation policy to a decoded image."""
    if policy == "pad_crop_flip":
        return pad_crop(image, seed, padding, flip=True)
    if policy == "pad_crop":
        return pad_crop(image, seed, padding, flip=False)
    if policy == "flip":
        return random_flip(image, seed)
    if policy == "resized_crop_flip":
        return resized_crop_flip(image, seed, tf.shape(image)[:2])
    return image
