import numpy as np
import pytest

from keras_one.data import load_arrays


def _arrays(num_train=40, num_test=12, shape=(8, 8, 3), num_classes=4):
    rng = np.random.default_rng(0)
    x_train = rng.integers(0, 256, (num_train,) + shape, dtype="uint8")
    x_test = rng.integers(0, 256, (num_test,) + shape, dtype="uint8")
    y_train = np.arange(num_train) % num_classes
    y_test = np.arange(num_test) % num_classes
    return x_train, y_train, x_test, y_test


def _collect(dataset):
    images, labels = zip(*dataset.as_numpy_iterator(), strict=True)
    return np.concatenate(images), np.concatenate(labels)


def _numpy_normalized(x, x_train):
    x = x.astype("float64") / 255.0
    pixels = x_train.astype("float64").reshape(-1, x_train.shape[-1]) / 255.0
    return (x - pixels.mean(axis=0)) / pixels.std(axis=0)


def test_shapes_dtypes_and_info():
    x_train, y_train, x_test, y_test = _arrays()
    train_ds, test_ds, info = load_arrays(
        x_train, y_train, x_test, y_test, batch_size=16, seed=0
    )
    images, labels = next(iter(train_ds))
    assert images.shape == (16, 8, 8, 3) and images.dtype == "float32"
    assert labels.shape == (16,) and labels.dtype == "int32"
    assert info.num_classes == 4
    assert info.input_shape == (8, 8, 3)
    assert info.class_names == ("0", "1", "2", "3")
    assert (info.num_train_examples, info.num_test_examples) == (40, 12)
    assert info.train_augmentation == "pad_crop_flip"
    # Batches of 16, 16, 8: the last one is kept.
    assert [len(b[1]) for b in train_ds] == [16, 16, 8]


def test_test_pipeline_is_the_normalized_arrays_in_order():
    x_train, y_train, x_test, y_test = _arrays()
    _, test_ds, info = load_arrays(x_train, y_train, x_test, y_test)
    images, labels = _collect(test_ds)
    np.testing.assert_allclose(
        images, _numpy_normalized(x_test, x_train), rtol=1e-5, atol=1e-5
    )
    np.testing.assert_array_equal(labels, y_test)
    pixels = x_train.reshape(-1, 3).astype("float64") / 255
    np.testing.assert_allclose(info.mean, pixels.mean(axis=0), rtol=1e-6)
    np.testing.assert_allclose(info.std, pixels.std(axis=0), rtol=1e-6)


def test_training_epoch_is_a_permutation_of_the_training_set():
    x_train, y_train, x_test, y_test = _arrays()
    train_ds, _, _ = load_arrays(
        x_train, y_train, x_test, y_test, augment=False, seed=1
    )
    images, labels = _collect(train_ds)
    expected = _numpy_normalized(x_train, x_train)
    order = [
        int(np.argmin(np.abs(expected - image).sum(axis=(1, 2, 3))))
        for image in images
    ]
    assert sorted(order) == list(range(len(x_train)))
    assert order != list(range(len(x_train)))  # shuffled
    np.testing.assert_allclose(images, expected[order], atol=1e-5)
    np.testing.assert_array_equal(labels, y_train[order])


def test_augmentation_changes_training_images_only():
    x_train, y_train, x_test, y_test = _arrays()
    plain_train, plain_test, _ = load_arrays(
        x_train, y_train, x_test, y_test, augment=False, seed=3
    )
    aug_train, aug_test, info = load_arrays(
        x_train, y_train, x_test, y_test, augment=True, seed=3
    )
    plain_images, plain_labels = _collect(plain_train)
    aug_images, aug_labels = _collect(aug_train)
    # Same seed, same order; the augmented images differ.
    np.testing.assert_array_equal(plain_labels, aug_labels)
    changed = np.abs(plain_images - aug_images).max(axis=(1, 2, 3)) > 1e-3
    assert changed.mean() > 0.5
    np.testing.assert_array_equal(
        _collect(plain_test)[0], _collect(aug_test)[0]
    )
    # Padded pixels are black before normalization: (0 - mean) / std.
    black = -np.array(info.mean) / np.array(info.std)
    is_black = np.isclose(aug_images, black, atol=1e-5).all(axis=-1)
    assert is_black.any()


def test_pipelines_are_deterministic_given_a_seed():
    x_train, y_train, x_test, y_test = _arrays()

    def first_epoch(seed):
        train_ds, _, _ = load_arrays(
            x_train, y_train, x_test, y_test, batch_size=8, seed=seed
        )
        return _collect(train_ds)

    images_a, labels_a = first_epoch(7)
    images_b, labels_b = first_epoch(7)
    np.testing.assert_array_equal(images_a, images_b)
    np.testing.assert_array_equal(labels_a, labels_b)
    images_c, _ = first_epoch(8)
    assert not np.array_equal(images_a, images_c)


def test_epochs_differ_but_replay_identically():
    x_train, y_train, x_test, y_test = _arrays()

    def two_epochs():
        train_ds, _, _ = load_arrays(x_train, y_train, x_test, y_test, seed=5)
        return _collect(train_ds)[0], _collect(train_ds)[0]

    first, second = two_epochs()
    assert not np.array_equal(first, second)
    replay_first, replay_second = two_epochs()
    np.testing.assert_array_equal(first, replay_first)
    np.testing.assert_array_equal(second, replay_second)


def test_grayscale_float_images_and_custom_statistics():
    rng = np.random.default_rng(1)
    x = rng.uniform(size=(20, 8, 8)).astype("float32")
    y = np.arange(20) % 2
    _, test_ds, info = load_arrays(
        x, y, x, y, mean=0.5, std=0.25, class_names=["a", "b"]
    )
    images, _ = _collect(test_ds)
    assert info.input_shape == (8, 8, 1)
    assert info.class_names == ("a", "b")
    assert info.mean == (0.5,) and info.std == (0.25,)
    np.testing.assert_allclose(images[..., 0], (x - 0.5) / 0.25, atol=1e-6)


def test_without_normalization_images_lie_in_unit_range():
    x_train, y_train, x_test, y_test = _arrays()
    train_ds, test_ds, info = load_arrays(
        x_train, y_train, x_test, y_test, normalize=False, seed=0
    )
    assert info.mean is None and info.std is None
    for dataset in (train_ds, test_ds):
        images, _ = _collect(dataset)
        assert images.min() >= 0.0 and images.max() <= 1.0
    np.testing.assert_allclose(_collect(test_ds)[0], x_test / 255.0, atol=1e-6)


def test_explicit_policy_and_large_images_default():
    x_train, y_train, x_test, y_test = _arrays(shape=(72, 72, 3))
    _, _, info = load_arrays(x_train, y_train, x_test, y_test)
    assert info.train_augmentation == "resized_crop_flip"
    _, _, info = load_arrays(x_train, y_train, x_test, y_test, augment="flip")
    assert info.train_augmentation == "flip"


@pytest.mark.parametrize(
    "change,message",
    [
        (lambda a: (a[0], np.eye(4)[a[1]] / 2, a[2], a[3]), "not one-hot"),
        (lambda a: (a[0], a[1][:5], a[2], a[3]), "40 images but y_train 5"),
        (lambda a: (a[0], a[1], a[2][:, :4], a[3]), "same image shape"),
        (lambda a: (a[0][..., 0, 0], a[1], a[2], a[3]), "channels"),
        (lambda a: (a[0], a[1] - 1, a[2], a[3]), "negative"),
    ],
)
def test_bad_arrays_raise_clear_errors(change, message):
    with pytest.raises(ValueError, match=message):
        load_arrays(*change(_arrays()))


def test_too_few_class_names_and_bad_options():
    arrays = _arrays()
    with pytest.raises(ValueError, match="one name per class"):
        load_arrays(*arrays, class_names=["a", "b"])
    with pytest.raises(ValueError, match="Unknown augmentation"):
        load_arrays(*arrays, augment="mixup")
    with pytest.raises(ValueError, match="batch_size"):
        load_arrays(*arrays, batch_size=0)
    with pytest.raises(ValueError, match="both `mean` and `std`"):
        load_arrays(*arrays, mean=0.5)
