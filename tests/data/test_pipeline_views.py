"""`views=`: several independently augmented views of each image (PCL)."""

import numpy as np
import pytest

from keras_one import data


def _arrays(num_train=40, num_test=12, shape=(8, 8, 3)):
    rng = np.random.default_rng(0)
    x_train = rng.integers(0, 256, (num_train,) + shape, dtype="uint8")
    x_test = rng.integers(0, 256, (num_test,) + shape, dtype="uint8")
    return x_train, np.arange(num_train) % 4, x_test, np.arange(num_test) % 4


def _epoch(dataset):
    batches = list(dataset.as_numpy_iterator())
    labels = np.concatenate([labels for _, labels in batches])
    images = [images for images, _ in batches]
    if isinstance(images[0], tuple):
        views = [np.concatenate(view) for view in zip(*images, strict=True)]
        return views, labels
    return np.concatenate(images), labels


def test_views_are_independent_augmentations():
    arrays = _arrays()
    single_train, single_test, _ = data.load_arrays(
        *arrays, batch_size=16, seed=3
    )
    train_ds, test_ds, info = data.load_arrays(
        *arrays, batch_size=16, seed=3, views=3
    )
    views, labels = _epoch(train_ds)
    assert len(views) == 3
    assert all(v.shape == (40, 8, 8, 3) and v.dtype == "float32" for v in views)
    # View 0 is the image of views=1 (same seed: same order, same crops);
    # the others are other crops and flips of the same images.
    images, single_labels = _epoch(single_train)
    np.testing.assert_array_equal(labels, single_labels)
    np.testing.assert_array_equal(views[0], images)
    for other in views[1:]:
        assert not np.allclose(other, views[0])
    assert not np.allclose(views[1], views[2])
    assert info.input_shape == (8, 8, 3)

    # Evaluation: every view is the un-augmented image of views=1.
    test_views, test_labels = _epoch(test_ds)
    test_images, single_test_labels = _epoch(single_test)
    np.testing.assert_array_equal(test_labels, single_test_labels)
    for view in test_views:
        np.testing.assert_array_equal(view, test_images)


def test_every_loader_passes_views_on():
    train_ds, test_ds, _ = data.load("digits", batch_size=8, views=2, seed=0)
    (first, second), labels = next(iter(train_ds))
    assert first.shape == second.shape == (8, 8, 8, 1) and labels.shape == (8,)
    (first, second), _ = next(iter(test_ds))
    np.testing.assert_array_equal(first, second)


@pytest.mark.parametrize("views", [0, -1, 1.5, True, "3"])
def test_bad_views_are_refused(views):
    with pytest.raises(ValueError, match="views must be a positive integer"):
        data.load_arrays(*_arrays(), views=views)
