import numpy as np
import pytest
import tensorflow_datasets as tfds

from keras_one.data import load_tfds
from keras_one.data import tfds_dataset

# The official ONE code's normalization, written out independently.
CIFAR_MEAN = np.array([0.4914, 0.4822, 0.4465])
CIFAR_STD = np.array([0.2023, 0.1994, 0.2010])


def _collect(dataset):
    images, labels = zip(*dataset.as_numpy_iterator(), strict=True)
    return np.concatenate(images), np.concatenate(labels)


def _raw(name, split, data_dir):
    """The mocked source images and labels, straight from tfds."""
    builder = tfds.builder(name, data_dir=data_dir)
    dataset = builder.as_dataset(split=split, shuffle_files=False)
    examples = list(dataset.as_numpy_iterator())
    return (
        np.stack([e["image"] for e in examples]),
        np.array([e["label"] for e in examples]),
    )


@pytest.mark.parametrize(
    "name,num_classes,policy",
    [
        ("cifar10", 10, "pad_crop_flip"),
        ("cifar100", 100, "pad_crop_flip"),
        ("svhn_cropped", 10, "pad_crop"),
    ],
)
def test_mocked_datasets(tmp_path, name, num_classes, policy):
    with tfds.testing.mock_data(num_examples=12):
        train_ds, test_ds, info = load_tfds(
            name, batch_size=5, seed=0, data_dir=tmp_path
        )
        raw_images, raw_labels = _raw(name, "test", tmp_path)
        images, labels = next(iter(train_ds))
        test_images, test_labels = _collect(test_ds)
    assert images.shape == (5, 32, 32, 3) and images.dtype == "float32"
    assert labels.shape == (5,) and labels.dtype == "int32"
    assert int(labels.numpy().max()) < num_classes
    assert info.num_classes == num_classes
    assert info.input_shape == (32, 32, 3)
    assert len(info.class_names) == num_classes
    assert (info.num_train_examples, info.num_test_examples) == (12, 12)
    assert info.train_augmentation == policy
    if name == "svhn_cropped":
        mean, std = np.full(3, 0.5), np.full(3, 0.2)
    else:
        mean, std = CIFAR_MEAN, CIFAR_STD
    np.testing.assert_allclose(info.mean, mean)
    np.testing.assert_allclose(info.std, std)
    expected = (raw_images / 255.0 - mean) / std
    np.testing.assert_allclose(test_images, expected, atol=1e-5)
    np.testing.assert_array_equal(test_labels, raw_labels)
    # Values: normalized [0, 1] pixels.
    low, high = (0 - mean) / std, (1 - mean) / std
    assert np.all(images.numpy() >= low.min() - 1e-5)
    assert np.all(images.numpy() <= high.max() + 1e-5)


def test_svhn_trains_on_train_and_extra_by_default():
    assert tfds_dataset.PRESETS["svhn_cropped"].split == ("train+extra", "test")


def test_augmentation_and_seeds(tmp_path):
    def epoch(augment, seed):
        with tfds.testing.mock_data(num_examples=16):
            train_ds, test_ds, _ = load_tfds(
                "cifar10",
                batch_size=8,
                augment=augment,
                seed=seed,
                data_dir=tmp_path,
            )
            return _collect(train_ds), _collect(test_ds)

    (plain, plain_labels), plain_test = epoch(False, 3)
    (aug, aug_labels), aug_test = epoch(True, 3)
    (again, again_labels), _ = epoch(True, 3)
    (other, _), _ = epoch(True, 4)
    np.testing.assert_array_equal(plain_labels, aug_labels)
    assert not np.allclose(plain, aug)
    np.testing.assert_array_equal(plain_test[0], aug_test[0])
    np.testing.assert_array_equal(aug, again)
    np.testing.assert_array_equal(aug_labels, again_labels)
    assert not np.array_equal(aug, other)


def test_imagenet_crops(tmp_path):
    with tfds.testing.mock_data(num_examples=4):
        train_ds, test_ds, info = load_tfds(
            "imagenet",
            batch_size=2,
            seed=0,
            image_size=(32, 32),
            data_dir=tmp_path,
        )
        images, _ = next(iter(train_ds))
        test_images, _ = next(iter(test_ds))
    assert info.name == "imagenet2012" and info.num_classes == 1000
    assert info.input_shape == (32, 32, 3)
    assert info.train_augmentation == "resized_crop_flip"
    assert images.shape == (2, 32, 32, 3)
    assert test_images.shape == (2, 32, 32, 3)
    np.testing.assert_allclose(info.mean, [0.485, 0.456, 0.406])
    np.testing.assert_allclose(info.std, [0.229, 0.224, 0.225])


def test_offline_download_explains_local_options(tmp_path, monkeypatch):
    # The servers seem to answer (the network check of
    # tests/test_cli_fast.py passes), then the download fails.
    from keras_one.data import _network

    monkeypatch.setattr(_network, "unreachable", lambda *args, **kw: None)

    def unreachable(*args, **kwargs):
        raise ConnectionError("Failed to resolve 'www.cs.toronto.edu'")

    monkeypatch.setattr(
        tfds.download.DownloadManager, "download_and_extract", unreachable
    )
    monkeypatch.setattr(tfds.download.DownloadManager, "download", unreachable)
    with pytest.raises(ConnectionError) as error:
        load_tfds("cifar10", data_dir=tmp_path / "tfds")
    message = str(error.value)
    assert "offline" in message
    for hint in ("data_dir=", "manual_dir=", ".npz", "image directory"):
        assert hint in message
    assert isinstance(error.value.__cause__, ConnectionError)


def test_missing_manual_download_is_explained(tmp_path):
    (tmp_path / "manual").mkdir()
    with pytest.raises(FileNotFoundError, match="manual_dir") as error:
        load_tfds(
            "imagenet2012",
            data_dir=tmp_path / "tfds",
            manual_dir=tmp_path / "manual",
        )
    assert "ILSVRC2012_img_train.tar" in str(error.value)


def test_no_download_and_unknown_names(tmp_path):
    with pytest.raises(FileNotFoundError, match="download=False"):
        load_tfds("cifar10", data_dir=tmp_path, download=False)
    with pytest.raises(ValueError, match="not a tensorflow-datasets"):
        load_tfds("no_such_dataset_here", data_dir=tmp_path)
    with tfds.testing.mock_data(num_examples=4):
        with pytest.raises(ValueError, match="image_size applies"):
            load_tfds("cifar10", data_dir=tmp_path, image_size=(64, 64))


def test_other_tfds_image_datasets(tmp_path):
    with tfds.testing.mock_data(num_examples=10):
        train_ds, test_ds, info = load_tfds(
            "mnist", batch_size=4, seed=0, data_dir=tmp_path
        )
        raw_images, _ = _raw("mnist", "train", tmp_path)
        images, labels = next(iter(train_ds))
        with pytest.raises(ValueError, match="vary in size"):
            load_tfds("oxford_flowers102", data_dir=tmp_path)
        _, _, flowers = load_tfds(
            "oxford_flowers102",
            image_size=(20, 24),
            data_dir=tmp_path,
            normalize=False,
            split=("train", "test"),
        )
        with pytest.raises(ValueError, match="no `image` and `label`"):
            load_tfds("glue", data_dir=tmp_path)
    assert images.shape == (4, 28, 28, 1) and labels.dtype == "int32"
    assert info.input_shape == (28, 28, 1) and info.num_classes == 10
    assert info.train_augmentation == "pad_crop_flip"
    # Normalized with the statistics of the (first) training images.
    pixels = raw_images.reshape(-1, 1) / 255.0
    np.testing.assert_allclose(info.mean, pixels.mean(0), rtol=1e-5)
    np.testing.assert_allclose(info.std, pixels.std(0), rtol=1e-5)
    assert flowers.input_shape == (20, 24, 3)
    assert flowers.train_augmentation == "pad_crop_flip"
