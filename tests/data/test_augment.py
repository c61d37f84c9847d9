import math

import numpy as np
import pytest
import tensorflow as tf

from keras_one.data import _augment


def _seed(i):
    return tf.constant([i, 7], "int64")


def _windows(image, padding):
    """Every crop of the zero-padded image, and their mirror images."""
    height, width = image.shape[:2]
    padded = np.pad(image, [(padding, padding), (padding, padding), (0, 0)])
    crops = {}
    for top in range(2 * padding + 1):
        for left in range(2 * padding + 1):
            crop = padded[top : top + height, left : left + width]
            crops[(top, left, False)] = crop
            crops[(top, left, True)] = crop[:, ::-1]
    return crops


def _match(result, crops):
    return [key for key, crop in crops.items() if np.array_equal(result, crop)]


def test_pad_crop_flip_is_a_window_of_the_padded_image():
    rng = np.random.default_rng(0)
    image = rng.uniform(0.1, 1.0, (8, 8, 3)).astype("float32")
    crops = _windows(image, padding=2)
    seen = set()
    for i in range(200):
        result = _augment.pad_crop(image, _seed(i), padding=2, flip=True)
        matches = _match(result.numpy(), crops)
        assert matches, "the result is not a crop of the padded image"
        seen.update(matches)
    offsets = {(top, left) for top, left, _ in seen}
    flips = {flipped for _, _, flipped in seen}
    # All 25 offsets in [0, 2 * padding] and both orientations occur.
    assert len(offsets) == 25
    assert flips == {True, False}


def test_pad_crop_without_flip_never_mirrors():
    rng = np.random.default_rng(1)
    image = rng.uniform(0.1, 1.0, (8, 8, 1)).astype("float32")
    crops = _windows(image, padding=1)
    for i in range(100):
        result = _augment.pad_crop(image, _seed(i), padding=1, flip=False)
        matches = _match(result.numpy(), crops)
        assert matches and all(not flipped for _, _, flipped in matches)


def test_pad_crop_is_a_function_of_the_seed():
    image = np.random.default_rng(2).uniform(size=(8, 8, 3)).astype("float32")
    first = _augment.pad_crop(image, _seed(3), padding=1, flip=True)
    again = _augment.pad_crop(image, _seed(3), padding=1, flip=True)
    np.testing.assert_array_equal(first, again)
    others = [
        _augment.pad_crop(image, _seed(i), padding=1, flip=True).numpy()
        for i in range(4, 14)
    ]
    assert any(not np.array_equal(first, other) for other in others)


def test_default_padding():
    assert _augment.default_padding(32) == 4  # CIFAR, SVHN
    assert _augment.default_padding(8) == 1  # digits
    assert _augment.default_padding(64) == 8


@pytest.mark.parametrize("height,width", [(100, 100), (60, 200), (300, 40)])
def test_resized_crop_box_follows_torchvision_sampling(height, width):
    areas, ratios = [], []
    for i in range(300):
        top, left, crop_h, crop_w = (
            int(v) for v in _augment.resized_crop_box(height, width, _seed(i))
        )
        assert 0 <= top and top + crop_h <= height
        assert 0 <= left and left + crop_w <= width
        assert crop_h > 0 and crop_w > 0
        areas.append(crop_h * crop_w / (height * width))
        ratios.append(crop_w / crop_h)
    areas = np.array(areas)
    ratios = np.array(ratios)
    # Sampled windows cover 8-100% of the image (up to rounding) ...
    assert areas.min() >= 0.08 - 0.02 and areas.max() <= 1.0
    # ... with aspect ratios in [3/4, 4/3] (up to rounding).
    assert ratios.min() >= 0.75 * 0.9 and ratios.max() <= (4 / 3) * 1.1
    # The same distribution as torchvision's algorithm, simulated here.
    reference = _torchvision_areas(height, width, 20_000)
    tolerance = 4 * reference.std() / np.sqrt(len(areas))
    assert abs(areas.mean() - reference.mean()) < tolerance


def _torchvision_areas(height, width, samples):
    """Crop areas of torchvision's RandomResizedCrop.get_params, in NumPy."""
    rng = np.random.default_rng(0)
    areas = []
    for _ in range(samples):
        for _ in range(10):
            target = height * width * rng.uniform(0.08, 1.0)
            ratio = math.exp(rng.uniform(math.log(3 / 4), math.log(4 / 3)))
            w = int(round(math.sqrt(target * ratio)))
            h = int(round(math.sqrt(target / ratio)))
            if 0 < w <= width and 0 < h <= height:
                areas.append(w * h / (height * width))
                break
        else:
            ratio = width / height
            if ratio < 3 / 4:
                w, h = width, int(round(width / (3 / 4)))
            elif ratio > 4 / 3:
                h, w = height, int(round(height * (4 / 3)))
            else:
                w, h = width, height
            areas.append(w * h / (height * width))
    return np.array(areas)


def test_resized_crop_box_falls_back_to_a_clamped_centre_crop():
    # A 2x200 strip: no window of >= 8% of the area has a ratio <= 4/3.
    top, left, crop_h, crop_w = (
        int(v) for v in _augment.resized_crop_box(2, 200, _seed(0))
    )
    assert (crop_h, crop_w) == (2, round(2 * 4 / 3))
    assert top == 0 and left == (200 - crop_w) // 2


def test_resized_crop_flip_output_size_and_range():
    image = np.random.default_rng(3).uniform(size=(50, 70, 3))
    image = tf.constant(image, "float32")
    result = _augment.resized_crop_flip(image, _seed(1), (24, 24))
    assert result.shape == (24, 24, 3)
    assert -1e-3 <= float(tf.reduce_min(result))
    assert float(tf.reduce_max(result)) <= 1 + 1e-3


def test_decode_resized_crop_flip_matches_decoding_then_cropping():
    rng = np.random.default_rng(4)
    pixels = rng.integers(0, 256, (40, 60, 3), dtype="uint8")
    encoded = tf.io.encode_jpeg(pixels, quality=100)
    seed = _seed(5)
    result = _augment.decode_resized_crop_flip(encoded, seed, (16, 16))
    decoded = tf.image.convert_image_dtype(
        tf.io.decode_jpeg(encoded, channels=3), "float32"
    )
    expected = _augment.resized_crop_flip(decoded, seed, (16, 16))
    assert result.shape == (16, 16, 3)
    np.testing.assert_allclose(result, expected, atol=0.02)


def test_resize_center_crop_geometry():
    # 300x400 -> shorter side 256: 256x341, central 224x224 crop at
    # top (256 - 224) / 2 = 16, left round((341 - 224) / 2) = 58.
    image = np.random.default_rng(5).uniform(size=(300, 400, 3))
    image = tf.constant(image, "float32")
    result = _augment.resize_center_crop(image, (224, 224))
    resized = tf.image.resize(image, (256, 341), antialias=True).numpy()
    assert result.shape == (224, 224, 3)
    np.testing.assert_allclose(result, resized[16:240, 58:282], atol=1e-6)
    assert round(224 / _augment.CENTER_CROP_FRACTION) == 256
    assert math.isclose(_augment.CENTER_CROP_FRACTION, 0.875)


def test_unknown_policy_names_the_choices():
    with pytest.raises(ValueError, match="pad_crop_flip"):
        _augment.check_policy("cutout")
    assert _augment.check_policy(False) is None
