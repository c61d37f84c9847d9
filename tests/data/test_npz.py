import numpy as np
import pytest

from keras_one.data import load_npz


def _write(path, **extra):
    rng = np.random.default_rng(0)
    arrays = dict(
        x_train=rng.integers(0, 256, (30, 8, 8, 3), dtype="uint8"),
        y_train=(np.arange(30) % 3).reshape(-1, 1),
        x_test=rng.integers(0, 256, (9, 8, 8, 3), dtype="uint8"),
        y_test=np.arange(9) % 3,
    )
    arrays.update(extra)
    np.savez(path, **arrays)
    return arrays


def test_loads_the_four_arrays_and_class_names(tmp_path):
    path = tmp_path / "tiny.npz"
    arrays = _write(path, class_names=np.array(["cat", "dog", "emu"]))
    train_ds, test_ds, info = load_npz(path, batch_size=4, seed=0)
    assert info.name == "tiny"
    assert info.class_names == ("cat", "dog", "emu")
    assert info.num_classes == 3 and info.input_shape == (8, 8, 3)
    assert (info.num_train_examples, info.num_test_examples) == (30, 9)
    images, labels = zip(*test_ds.as_numpy_iterator(), strict=True)
    images, labels = np.concatenate(images), np.concatenate(labels)
    pixels = arrays["x_train"].reshape(-1, 3) / 255.0
    expected = (arrays["x_test"] / 255.0 - pixels.mean(0)) / pixels.std(0)
    np.testing.assert_allclose(images, expected, atol=1e-5)
    np.testing.assert_array_equal(labels, arrays["y_test"])
    batch_images, batch_labels = next(iter(train_ds))
    assert batch_images.shape == (4, 8, 8, 3) and batch_labels.shape == (4,)


def test_other_split_names(tmp_path):
    path = tmp_path / "splits.npz"
    arrays = _write(path)
    np.savez(
        path,
        x_train=arrays["x_train"],
        y_train=arrays["y_train"],
        x_valid=arrays["x_test"][:5],
        y_valid=arrays["y_test"][:5],
    )
    _, test_ds, info = load_npz(path, split=("train", "valid"))
    assert info.num_test_examples == 5
    assert sum(len(labels) for _, labels in test_ds) == 5


def test_missing_keys_and_files_are_explained(tmp_path):
    path = tmp_path / "partial.npz"
    np.savez(path, x_train=np.zeros((2, 4, 4, 1)), y_train=np.zeros(2))
    with pytest.raises(KeyError, match=r"x_test.*np\.savez"):
        load_npz(path)
    with pytest.raises(FileNotFoundError, match="No .npz file"):
        load_npz(tmp_path / "absent.npz")
