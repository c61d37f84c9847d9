import os

import numpy as np
import pytest
import tensorflow as tf

from keras_one.data import load_image_folder

CLASSES = ("ant", "bee", "cow")


def _write_folder(root, per_class=4, size=(12, 10), channels=3, seed=0):
    """Writes PNGs root/<class>/<i>.png; returns {path: (pixels, label)}."""
    rng = np.random.default_rng(seed)
    written = {}
    for label, name in enumerate(CLASSES):
        os.makedirs(os.path.join(root, name), exist_ok=True)
        for i in range(per_class):
            pixels = rng.integers(0, 256, size + (channels,), dtype="uint8")
            path = os.path.join(root, name, f"{i}.png")
            tf.io.write_file(path, tf.io.encode_png(pixels))
            written[path] = (pixels, label)
    return written


def _collect(dataset):
    images, labels = zip(*dataset.as_numpy_iterator(), strict=True)
    return np.concatenate(images), np.concatenate(labels)


def test_split_folders_with_inferred_size(tmp_path):
    train = _write_folder(tmp_path / "train", per_class=4, seed=0)
    test = _write_folder(tmp_path / "test", per_class=2, seed=1)
    train_ds, test_ds, info = load_image_folder(tmp_path, batch_size=5, seed=0)
    assert info.class_names == CLASSES and info.num_classes == 3
    assert info.input_shape == (12, 10, 3)
    assert (info.num_train_examples, info.num_test_examples) == (12, 6)
    assert info.train_augmentation == "pad_crop_flip"

    # Normalization: the training images' per-channel statistics.
    train_pixels = (
        np.concatenate([p.reshape(-1, 3) for p, _ in train.values()]) / 255.0
    )
    np.testing.assert_allclose(info.mean, train_pixels.mean(0), rtol=1e-5)
    np.testing.assert_allclose(info.std, train_pixels.std(0), rtol=1e-5)

    # The test pipeline: the PNGs in file order, normalized, labelled.
    images, labels = _collect(test_ds)
    expected = [test[path] for path in sorted(test)]
    np.testing.assert_array_equal(labels, [label for _, label in expected])
    pixels = np.stack([p for p, _ in expected]) / 255.0
    normalized = (pixels - train_pixels.mean(0)) / train_pixels.std(0)
    np.testing.assert_allclose(images, normalized, atol=1e-4)

    batch_images, batch_labels = next(iter(train_ds))
    assert batch_images.shape == (5, 12, 10, 3)
    assert batch_images.dtype == "float32" and batch_labels.dtype == "int32"


def test_augmentation_changes_train_images_not_test_ones(tmp_path):
    _write_folder(tmp_path / "train", per_class=4, size=(16, 16))
    _write_folder(tmp_path / "test", per_class=2, size=(16, 16), seed=1)
    results = {
        augment: load_image_folder(tmp_path, augment=augment, seed=4)
        for augment in (False, True)
    }
    plain, aug = _collect(results[False][0]), _collect(results[True][0])
    np.testing.assert_array_equal(plain[1], aug[1])  # same order
    assert not np.allclose(plain[0], aug[0])
    np.testing.assert_array_equal(
        _collect(results[False][1])[0], _collect(results[True][1])[0]
    )
    again = _collect(load_image_folder(tmp_path, augment=True, seed=4)[0])
    np.testing.assert_array_equal(aug[0], again[0])


def test_class_folders_are_split_the_same_way_every_time(tmp_path):
    _write_folder(tmp_path, per_class=5, size=(8, 8), channels=1)
    _, test_ds, info = load_image_folder(
        tmp_path, validation_split=0.2, image_size=(6, 6), seed=0
    )
    assert info.input_shape == (6, 6, 1)  # resized, grayscale inferred
    assert (info.num_train_examples, info.num_test_examples) == (12, 3)
    _, test_ds_again, _ = load_image_folder(
        tmp_path, validation_split=0.2, image_size=(6, 6), seed=1
    )
    np.testing.assert_array_equal(
        _collect(test_ds)[0], _collect(test_ds_again)[0]
    )


def test_missing_folders_are_explained(tmp_path):
    _write_folder(tmp_path / "train", per_class=1)
    with pytest.raises(FileNotFoundError, match=r"\['train', 'valid'\]"):
        load_image_folder(tmp_path, split=("train", "valid"))
    with pytest.raises(FileNotFoundError, match="No image folder"):
        load_image_folder(tmp_path / "nothing")
    os.makedirs(tmp_path / "empty" / "a")
    with pytest.raises(FileNotFoundError, match="one subfolder of images"):
        load_image_folder(tmp_path / "empty")
