import keras
import numpy as np
import pytest
import tensorflow as tf
import tensorflow_datasets as tfds

import keras_one
from keras_one.data import load


def test_digits_is_the_offline_default():
    train_ds, test_ds, info = load(batch_size=64, seed=0)
    assert info.name == "digits"
    assert info.num_classes == 10 and info.input_shape == (8, 8, 1)
    assert (info.num_train_examples, info.num_test_examples) == (1437, 360)
    # Digits are shifted, never mirrored.
    assert info.train_augmentation == "pad_crop"
    images, labels = next(iter(train_ds))
    assert images.shape == (64, 8, 8, 1) and labels.dtype == "int32"
    (_, _), (x_test, y_test) = keras_one.data.load_digits()
    test_images = np.concatenate([x for x, _ in test_ds.as_numpy_iterator()])
    expected = (x_test - np.array(info.mean)) / np.array(info.std)
    np.testing.assert_allclose(test_images, expected, atol=1e-5)
    with pytest.raises(ValueError, match="fixed split"):
        load("digits", split=("train", "test"))


def test_paths_dispatch_to_npz_and_folders(tmp_path):
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, (10, 8, 8, 3), dtype="uint8")
    y = np.arange(10) % 2
    np.savez(tmp_path / "data.npz", x_train=x, y_train=y, x_test=x, y_test=y)
    _, _, info = load(str(tmp_path / "data.npz"))
    assert info.name == "data" and info.num_train_examples == 10

    for label in ("a", "b"):
        (tmp_path / "images" / label).mkdir(parents=True)
        for i in range(3):
            png = tf.io.encode_png(x[i])
            tf.io.write_file(str(tmp_path / "images" / label / f"{i}.png"), png)
    _, _, info = load(tmp_path / "images", validation_split=0.5)
    assert info.class_names == ("a", "b") and info.input_shape == (8, 8, 3)


def test_names_dispatch_to_tfds(tmp_path):
    with tfds.testing.mock_data(num_examples=6):
        _, _, info = load("svhn", data_dir=tmp_path, batch_size=3)
    assert info.name == "svhn_cropped"


def test_unknown_sources_are_explained(tmp_path):
    with pytest.raises(ValueError, match="Unknown dataset 'cifar11'"):
        load("cifar11")
    with pytest.raises(FileNotFoundError, match="No file or folder"):
        load(str(tmp_path / "missing.npz"))
    (tmp_path / "notes.txt").write_text("hello")
    with pytest.raises(ValueError, match="not an .npz"):
        load(str(tmp_path / "notes.txt"))
    with pytest.raises(TypeError, match="load_arrays"):
        load(np.zeros((2, 8, 8, 1)))
    with pytest.raises(ValueError, match=r"\['data_dir'\] apply to tensor"):
        load("digits", data_dir=str(tmp_path))


def test_normalization_layer_reproduces_the_pipeline():
    _, test_ds, info = load("digits")
    _, raw_test_ds, _ = load("digits", normalize=False)
    layer = info.normalization_layer()
    assert type(layer) is keras.layers.Normalization
    normalized = next(iter(test_ds))[0]
    raw = next(iter(raw_test_ds))[0]
    np.testing.assert_allclose(layer(raw), normalized, atol=1e-5)


@pytest.mark.slow
def test_a_distiller_trains_on_the_pipeline(make_student):
    train_ds, test_ds, info = load("digits", batch_size=64, seed=0)
    student = make_student(
        num_classes=info.num_classes, input_shape=info.input_shape
    )
    distiller = keras_one.Distiller(student, keras_one.methods.ONE())
    distiller.compile(optimizer=keras.optimizers.SGD(0.05, momentum=0.9))
    history = distiller.fit(train_ds.take(6), epochs=1, verbose=0)
    assert np.isfinite(history.history["loss"][0])
    logs = distiller.evaluate(test_ds.take(2), return_dict=True, verbose=0)
    # The test split comes in a fixed order, its labels integer classes.
    logits = distiller.predict(test_ds.take(2), verbose=0)["ensemble_logits"]
    labels = np.concatenate([y for _, y in test_ds.take(2)])
    np.testing.assert_allclose(
        logs["ensemble_accuracy"], np.mean(logits.argmax(-1) == labels)
    )
