"""Data is read as the user meant, or refused naming the file or index.

Each case of a wrong or unusual dataset (labels, classes, folder layout,
pixels) either loads the way a user means or raises a `ValueError` (or a
`FileNotFoundError` for a missing folder) before anything trains.
"""

import os
import re
import warnings

import numpy as np
import pytest
import tensorflow as tf
import tensorflow_datasets as tfds

from keras_one.data import DatasetInfo
from keras_one.data import load
from keras_one.data import load_arrays
from keras_one.data import load_image_folder
from keras_one.data import load_npz
from keras_one.data import tfds_dataset


def _images(n, shape=(6, 6, 3), seed=0):
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, (n,) + shape, dtype="uint8")


def _labels(dataset):
    return np.concatenate([labels for _, labels in dataset.as_numpy_iterator()])


def _png(path, shape=(6, 6, 3), value=None, seed=0):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    if value is None:
        pixels = np.random.default_rng(seed).integers(0, 256, shape, "uint8")
    else:
        pixels = np.full(shape, value, "uint8")
    tf.io.write_file(str(path), tf.io.encode_png(pixels))


def _folder(root, classes=("ant", "bee"), per_class=2, shape=(6, 6, 3)):
    for label, name in enumerate(classes):
        for i in range(per_class):
            _png(os.path.join(root, name, f"{i}.png"), shape, seed=label + i)


# 1. Labels outside the classes.


@pytest.mark.parametrize(
    "y_train,y_test,message",
    [
        (
            np.r_[np.arange(9), 10],
            np.arange(10),
            r"y_train\[9\] = 10 is outside",
        ),
        (np.arange(10), np.r_[0, 1, 12], r"y_test\[2\] = 12 is outside"),
        (np.r_[0, -1, 2], np.arange(10), r"y_train\[1\] = -1 is negative"),
        (np.arange(10), np.r_[3, -2], r"y_test\[1\] = -2 is negative"),
    ],
)
def test_labels_outside_the_classes_are_refused(y_train, y_test, message):
    names = [f"c{i}" for i in range(10)]
    with pytest.raises(ValueError, match=message):
        load_arrays(
            _images(len(y_train)),
            y_train,
            _images(len(y_test)),
            y_test,
            class_names=names,
        )


def test_a_bad_label_in_an_npz_names_the_file_and_the_array(tmp_path):
    path = tmp_path / "bad.npz"
    y = np.arange(8) % 2
    np.savez(
        path,
        x_train=_images(8),
        y_train=y,
        x_valid=_images(4),
        y_valid=np.r_[0, 1, 0, 7],
        class_names=np.array(["a", "b"]),
    )
    match = r"bad\.npz: y_valid\[3\] = 7 is outside the 2 classes"
    with pytest.raises(ValueError, match=match):
        load_npz(path, split=("train", "valid"))
    with pytest.raises(ValueError, match=match):  # the one entry point
        load(str(path), split=("train", "valid"))


# 2. Labels counted from 1.


def test_labels_counted_from_one_are_refused_never_shifted():
    y = np.arange(1, 11) % 4 + 1  # 1..4, no 0
    x = _images(10)
    with pytest.raises(
        ValueError,
        match=r"from 1 to 4 and none is 0.*"
        r"subtract 1 \(y_train - 1, y_test - 1\)",
    ):
        load_arrays(x, y, x, y)
    with pytest.raises(
        ValueError,
        match=r"y_train\[\d\] = 4 is outside the 4 "
        r"classes.*counted from 1 .*subtract 1",
    ):
        load_arrays(x, y, x, y, class_names=["a", "b", "c", "d"])


def test_labels_from_one_with_a_name_for_class_zero_warn_of_it():
    y = np.arange(1, 11) % 4 + 1
    x = _images(10)
    with pytest.warns(
        UserWarning,
        match=r"no training examples of class 0 \('none'\) \(of 5 classes\)",
    ):
        _, test_ds, info = load_arrays(
            x, y, x, y, class_names=["none", "a", "b", "c", "d"]
        )
    assert info.num_classes == 5
    np.testing.assert_array_equal(_labels(test_ds), y)


# 3. Classes without training examples.


def test_a_label_gap_warns_of_the_class_without_examples():
    y_train = np.array([0, 1, 3, 0, 1, 3])
    y_test = np.array([0, 2, 3])
    with pytest.warns(
        UserWarning,
        match=r"y_train has no training examples "
        r"of class 2 \(of 4 classes\); the test split has "
        r"examples of 2",
    ):
        _, _, info = load_arrays(_images(6), y_train, _images(3), y_test)
    assert info.num_classes == 4


@pytest.mark.parametrize("split", ["train", "test"])
def test_an_empty_class_folder_is_refused_naming_it(tmp_path, split):
    _folder(tmp_path / "train", ("ant", "bee", "cow"))
    _folder(tmp_path / "test", ("ant", "bee", "cow"))
    for path in (tmp_path / split / "cow").iterdir():
        path.unlink()
    folder = os.path.join(tmp_path, split, "cow")
    with pytest.raises(
        ValueError,
        match=f"class folder '{re.escape(folder)}' holds no "
        "images.*add the images of that class, or remove",
    ):
        load_image_folder(tmp_path)


def test_an_empty_class_folder_among_class_folders_is_refused(tmp_path):
    _folder(tmp_path, ("ant", "bee"))
    (tmp_path / "cow" / "notes").mkdir(parents=True)  # nested, no images
    with pytest.raises(ValueError, match=r"'.*cow' holds no images"):
        load_image_folder(tmp_path)


def test_a_class_held_out_whole_warns(tmp_path):
    _folder(tmp_path, ("ant", "bee"), per_class=2)
    _png(tmp_path / "cow" / "0.png")  # its one image: held out (fixed seed)
    match = (
        r"\(after holding out the test split\) has no training examples of "
        r"class 2 \('cow'\) \(of 3 classes\); the test split has examples"
    )
    with pytest.warns(UserWarning, match=match):
        _, test_ds, info = load_image_folder(tmp_path, validation_split=0.2)
    assert info.num_classes == 3
    assert (info.num_train_examples, info.num_test_examples) == (4, 1)
    np.testing.assert_array_equal(_labels(test_ds), [2])


def test_too_few_images_to_hold_out_a_test_split(tmp_path):
    _folder(tmp_path, ("ant", "bee"), per_class=1)
    with pytest.raises(
        ValueError,
        match=r"too few images to hold out "
        r"validation_split=0.2.*train/ and test/ folders",
    ):
        load_image_folder(tmp_path)


# 4. Split folders are splits, not classes.


@pytest.mark.parametrize(
    "folders,test_folder",
    [
        (("train", "val", "test"), "test"),
        (("train", "val"), "val"),
        (("train", "validation"), "validation"),
        (("Train", "Valid"), "Valid"),
        (("training", "testing"), "testing"),
    ],
)
def test_split_folders_are_read_as_splits(tmp_path, folders, test_folder):
    for i, folder in enumerate(folders):
        _folder(tmp_path / folder, ("ant", "bee"), per_class=3 + i)
    test_count = 2 * (3 + folders.index(test_folder))
    _, test_ds, info = load_image_folder(tmp_path, augment=False)
    assert info.class_names == ("ant", "bee")
    assert (info.num_train_examples, info.num_test_examples) == (6, test_count)
    assert sorted(_labels(test_ds)) == [0] * (test_count // 2) + [1] * (
        test_count // 2
    )


def test_a_lone_train_folder_is_split_by_fraction(tmp_path):
    _folder(tmp_path / "train", ("ant", "bee"), per_class=5)
    _, _, info = load_image_folder(tmp_path, validation_split=0.2)
    assert info.class_names == ("ant", "bee")
    assert (info.num_train_examples, info.num_test_examples) == (8, 2)


def test_split_folders_without_train_are_refused(tmp_path):
    _folder(tmp_path / "val", ("ant", "bee"))
    _folder(tmp_path / "test", ("ant", "bee"))
    with pytest.raises(
        FileNotFoundError,
        match=r"split folders \['test', 'val'\] but no train/ folder",
    ):
        load_image_folder(tmp_path)


def test_a_class_named_train_among_others_stays_a_class(tmp_path):
    _folder(tmp_path, ("bus", "train", "tram"), per_class=5)
    _, _, info = load_image_folder(tmp_path, validation_split=0.2)
    assert info.class_names == ("bus", "train", "tram")


def test_images_outside_class_folders(tmp_path):
    _png(tmp_path / "flat" / "0.png")
    with pytest.raises(ValueError, match=r"holds images but no class folders"):
        load_image_folder(tmp_path / "flat")
    _png(tmp_path / "splits" / "train" / "0.png")
    _png(tmp_path / "splits" / "test" / "0.png")
    with pytest.raises(ValueError, match=r"train' holds images but no class"):
        load_image_folder(tmp_path / "splits")
    _folder(tmp_path / "mixed", per_class=5)
    _png(tmp_path / "mixed" / "stray.png")
    with pytest.warns(
        UserWarning,
        match=r"1 images directly in .*'stray\.png'.* not used",
    ):
        _, _, info = load_image_folder(tmp_path / "mixed")
    assert info.num_train_examples + info.num_test_examples == 10


def test_test_class_folders_must_match_the_training_ones(tmp_path):
    _folder(tmp_path / "extra" / "train", ("ant", "bee"))
    _folder(tmp_path / "extra" / "test", ("ant", "bee", "cow"))
    with pytest.raises(
        ValueError,
        match=r"has class folders \['cow'\] that .*train' lacks",
    ):
        load_image_folder(tmp_path / "extra")
    _folder(tmp_path / "fewer" / "train", ("ant", "bee", "cow"))
    _folder(tmp_path / "fewer" / "test", ("ant", "bee"))
    with pytest.raises(
        ValueError,
        match=r"test' lacks the class folders \['cow'\]",
    ):
        load_image_folder(tmp_path / "fewer")


# 5. A single class.


@pytest.mark.parametrize(
    "y,class_names,message",
    [
        (np.zeros(6, int), None, r"single class \(0\): classification needs"),
        (np.zeros(6, int), ["cat"], r"single class \(0 \('cat'\)\)"),
        (
            np.zeros(6, int),
            ["cat", "dog"],
            r"examples of a single class \(0 \('cat'\)\) out of 2",
        ),
        (np.array(["dog"] * 6), None, r"single class \(0 \('dog'\)\)"),
    ],
)
def test_a_single_class_is_refused(y, class_names, message):
    x = _images(6)
    with pytest.raises(ValueError, match=message):
        load_arrays(x, y, x, y, class_names=class_names)


def test_a_single_class_folder_is_refused(tmp_path):
    _folder(tmp_path, ("ant",), per_class=5)
    with pytest.raises(
        ValueError,
        match=r"single class folder \('ant'\): "
        r"classification needs at least 2 classes",
    ):
        load_image_folder(tmp_path)


def test_a_tfds_label_that_is_not_a_class_label_is_refused():
    with pytest.raises(ValueError, match="has 1 class: classification"):
        tfds_dataset._classes("one", tfds.features.ClassLabel(num_classes=1))
    with pytest.raises(ValueError, match="not a ClassLabel"):
        tfds_dataset._classes(
            "reg", tfds.features.Tensor(shape=(), dtype=np.float32)
        )
    labels = tfds.features.ClassLabel(names=["cat", "dog"])
    assert tfds_dataset._classes("ok", labels) == (2, ("cat", "dog"))


# 6. String labels.


def test_string_labels_become_classes_sorted_by_name():
    y_train = np.array(["dog", "cat", "emu", "cat", "dog", "emu"])
    y_test = np.array(["emu", "cat", "dog"])
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)
        _, test_ds, info = load_arrays(_images(6), y_train, _images(3), y_test)
    assert info.class_names == ("cat", "dog", "emu") and info.num_classes == 3
    np.testing.assert_array_equal(_labels(test_ds), [2, 0, 1])


def test_string_labels_follow_the_given_class_names():
    y = np.array(["dog", "cat", "dog", "cat"])
    _, test_ds, info = load_arrays(
        _images(4), y, _images(4), y, class_names=["dog", "cat"]
    )
    assert info.class_names == ("dog", "cat")
    np.testing.assert_array_equal(_labels(test_ds), [0, 1, 0, 1])
    with pytest.raises(
        ValueError,
        match=r"y_train\[1\] = 'cat' is not one of "
        r"the class_names \['dog', 'emu'\]",
    ):
        load_arrays(_images(4), y, _images(4), y, class_names=["dog", "emu"])


def test_digit_strings_sort_as_numbers():
    y = np.array(["10", "2", "1", "2", "10", "1"])
    _, test_ds, info = load_arrays(_images(6), y, _images(6), y)
    assert info.class_names == ("1", "2", "10")
    np.testing.assert_array_equal(_labels(test_ds), [2, 1, 0, 1, 2, 0])


def test_a_test_label_unseen_in_training_is_refused():
    y_train = np.array(["cat", "dog"] * 3)
    y_test = np.array(["cat", "cow"])
    with pytest.raises(
        ValueError,
        match=r"y_test\[1\] = 'cow' is not a class "
        r"of y_train \(its classes: \['cat', 'dog'\]\)",
    ):
        load_arrays(_images(6), y_train, _images(2), y_test)


def test_string_labels_in_an_npz(tmp_path):
    path = tmp_path / "words.npz"
    np.savez(
        path,
        x_train=_images(4),
        y_train=np.array([b"cat", b"dog", b"dog", b"cat"]),
        x_test=_images(2),
        y_test=np.array([b"dog", b"cat"]),
    )
    _, test_ds, info = load(str(path))
    assert info.class_names == ("cat", "dog")
    np.testing.assert_array_equal(_labels(test_ds), [1, 0])


def test_strings_in_one_split_and_numbers_in_the_other_are_refused():
    with pytest.raises(
        ValueError, match="y_train holds strings but y_test numbers"
    ):
        load_arrays(_images(2), ["a", "b"], _images(2), [0, 1])


# 7. NaN or infinite pixels.


@pytest.mark.parametrize("split", ["train", "test"])
@pytest.mark.parametrize("value,kind", [(np.nan, "NaN"), (-np.inf, "infinite")])
def test_non_finite_pixels_are_refused_naming_the_image(split, value, kind):
    x = {s: _images(8).astype("float32") / 255 for s in ("train", "test")}
    x[split][5, 1, 2, 0] = value
    y = np.arange(8) % 2
    with pytest.raises(ValueError, match=rf"x_{split}\[5\] has {kind} pixels"):
        load_arrays(x["train"], y, x["test"], y)


def test_non_finite_pixels_in_an_npz_name_the_file(tmp_path):
    x = _images(4).astype("float32")
    x[2, 0, 0, 0] = np.nan
    y = np.arange(4) % 2
    np.savez(tmp_path / "nan.npz", x_train=x, y_train=y, x_test=x, y_test=y)
    with pytest.raises(ValueError, match=r"nan\.npz: x_train\[2\] has NaN"):
        load_npz(tmp_path / "nan.npz")


# 8. Images of mixed sizes or channels in a folder.


def test_a_grayscale_image_among_color_ones_is_read_as_rgb(tmp_path):
    _png(tmp_path / "train" / "ant" / "0.png", (6, 6, 1), value=200)
    _png(tmp_path / "train" / "ant" / "1.png", (6, 6, 3))
    _png(tmp_path / "train" / "bee" / "0.png", (6, 6, 4))
    _png(tmp_path / "test" / "ant" / "0.png", (6, 6, 1), value=200)
    _png(tmp_path / "test" / "bee" / "0.png", (6, 6, 3))
    _, test_ds, info = load_image_folder(tmp_path, normalize=False)
    assert info.input_shape == (6, 6, 3)
    images = np.concatenate([x for x, _ in test_ds.as_numpy_iterator()])
    np.testing.assert_allclose(images[0], np.full((6, 6, 3), 200 / 255))


def test_grayscale_folders_stay_grayscale(tmp_path):
    _folder(tmp_path / "train", shape=(6, 6, 1))
    _folder(tmp_path / "test", shape=(6, 6, 1))
    _, _, info = load_image_folder(tmp_path)
    assert info.input_shape == (6, 6, 1)


def test_images_of_mixed_sizes_are_resized_to_the_most_common(tmp_path):
    _folder(tmp_path / "train", per_class=2, shape=(6, 8, 3))
    _png(tmp_path / "train" / "ant" / "big.png", (12, 9, 3))
    _folder(tmp_path / "test", per_class=1, shape=(5, 5, 3))
    with pytest.warns(
        UserWarning,
        match=r"differ in size .*'ant/big\.png' 12x9\): all are resized to 6x8",
    ):
        train_ds, test_ds, info = load_image_folder(tmp_path)
    assert info.input_shape == (6, 8, 3)
    assert next(iter(test_ds))[0].shape == (2, 6, 8, 3)
    assert sum(len(y) for _, y in train_ds) == 5


def test_a_damaged_image_is_named(tmp_path):
    _folder(tmp_path / "train")
    _folder(tmp_path / "test")
    (tmp_path / "train" / "ant" / "0.png").write_bytes(b"not a png")
    with pytest.raises(
        ValueError,
        match=r"ant/0\.png' is damaged or not an "
        "image",
    ):
        load_image_folder(tmp_path)


# 9. The label count and the model's class count agree.


def test_class_names_set_the_number_of_classes():
    y = np.arange(6) % 3
    with pytest.warns(UserWarning, match=r"classes 3 \('d'\), 4 \('e'\)"):
        train_ds, _, info = load_arrays(
            _images(6), y, _images(6), y, class_names=list("abcde")
        )
    assert info.num_classes == len(info.class_names) == 5
    assert _labels(train_ds).max() < info.num_classes


def test_one_hot_labels_are_their_argmax_and_width_the_class_count():
    y = np.arange(8) % 3  # class 3 has no examples
    one_hot = np.eye(4, dtype="float32")[y]
    with pytest.warns(UserWarning, match="class 3"):
        _, test_ds, info = load_arrays(_images(8), one_hot, _images(8), y)
    assert info.num_classes == 4
    np.testing.assert_array_equal(_labels(test_ds), y)
    with pytest.raises(ValueError, match="4 columns but 3 class names"):
        load_arrays(_images(8), one_hot, _images(8), y, class_names=list("abc"))
    with pytest.raises(
        ValueError,
        match=r"row 0 is \[0\.7 0\.3 0\. \], not "
        "one-hot",
    ):
        soft = np.tile([0.7, 0.3, 0.0], (8, 1))
        load_arrays(_images(8), soft, _images(8), y)
    with pytest.raises(ValueError, match="has 4 columns but y_test 3"):
        load_arrays(_images(8), one_hot, _images(8), np.eye(3)[y])


def test_float_labels_are_cast_only_when_whole():
    y = np.array([0.0, 1.0, 2.0, 1.0])
    _, test_ds, info = load_arrays(_images(4), y, _images(4), y)
    assert info.num_classes == 3
    assert _labels(test_ds).dtype == np.int32
    np.testing.assert_array_equal(_labels(test_ds), [0, 1, 2, 1])
    for bad, shown in ((1.5, "1.5"), (np.nan, "nan")):
        with pytest.raises(
            ValueError,
            match=rf"y_train\[2\] = {shown} is not a class index",
        ):
            load_arrays(_images(4), np.r_[0, 1, bad, 1], _images(4), y)


def test_tfds_labels_outside_the_classes_stop_the_pipeline():
    labels = tf.data.Dataset.from_tensor_slices(np.array([0, 1, 5], "int64"))
    checked = labels.map(lambda y: tfds_dataset._checked_label(y, 3, "mock"))
    iterator = iter(checked)
    assert [int(next(iterator)), int(next(iterator))] == [0, 1]
    with pytest.raises(
        tf.errors.InvalidArgumentError,
        match="mock: a label is not below its 3 classes",
    ):
        next(iterator)


def test_labels_that_look_like_ids_are_refused():
    y = np.array([0, 5, 2_000_000, 5])
    with pytest.raises(
        ValueError,
        match=r"y_train\[2\] = 2000000 would make 2000001 classes.*not ids",
    ):
        load_arrays(_images(4), y, _images(4), y % 2)


def test_dataset_info_class_count_agrees_with_its_names():
    with pytest.raises(ValueError, match="3 classes but 2 class names"):
        DatasetInfo("bad", 3, (8, 8, 1), class_names=("a", "b"))


@pytest.mark.parametrize(
    "class_names,message",
    [
        ([], "class_names is empty"),
        (["cat", "dog", "cat"], "class_names holds 'cat' twice"),
    ],
)
def test_bad_class_names_are_refused(class_names, message):
    y = np.arange(6) % 2
    with pytest.raises(ValueError, match=message):
        load_arrays(_images(6), y, _images(6), y, class_names=class_names)


# Damaged .npz files name the file and say so.


@pytest.mark.parametrize(
    "damage,message",
    [
        ("random", "is damaged or not an .npz file"),
        ("empty", "does not start like one: it is empty"),
        ("truncated", r"is damaged: NumPy cannot read it \(BadZipFile"),
    ],
)
def test_a_damaged_npz_is_named(tmp_path, damage, message):
    good = tmp_path / "good.npz"
    y = np.arange(4) % 2
    np.savez(
        good, x_train=_images(4), y_train=y, x_test=_images(2), y_test=y[:2]
    )
    path = tmp_path / "data.npz"
    path.write_bytes(
        {
            "random": np.random.default_rng(0).bytes(300),
            "empty": b"",
            "truncated": good.read_bytes()[:-40],
        }[damage]
    )
    with pytest.raises(ValueError, match=message) as error:
        load(str(path))
    assert repr(str(path)) in str(error.value)
    assert "np.savez" in str(error.value)


def test_the_command_prints_data_warnings_as_one_line_each(tmp_path, capsys):
    from keras_one import cli

    y_train = np.array([0, 1, 3, 0, 1, 3])
    path = tmp_path / "gap.npz"
    np.savez(
        path, x_train=_images(6), y_train=y_train, x_test=_images(3),
        y_test=np.array([0, 2, 3]),
    )  # fmt: skip
    args = cli.build_parser().parse_args(["train", "--dataset", str(path)])
    for _ in range(2):  # loaded twice (method and baseline): warned once
        cli._load_dataset(args, batch_size=2)
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1
    assert lines[0].startswith("keras-one: warning: ")
    assert "no training examples of class 2" in lines[0]


def test_the_command_names_its_image_size_flag(tmp_path, capsys):
    from keras_one import cli

    _folder(tmp_path / "train", per_class=2, shape=(6, 8, 3))
    _png(tmp_path / "train" / "ant" / "big.png", (12, 9, 3))
    _folder(tmp_path / "test", per_class=1, shape=(6, 8, 3))
    parse = cli.build_parser().parse_args
    args = parse(["train", "--dataset", str(tmp_path)])
    cli._load_dataset(args, batch_size=2)
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert "differ in size" in line
    assert line.endswith("(keras-one: --image-size HEIGHT WIDTH) to choose.")
    args = parse(
        ["train", "--dataset", str(tmp_path), "--image-size", "4", "5"]
    )
    _, test_ds, info = cli._load_dataset(args, batch_size=2)
    assert info.input_shape == (4, 5, 3)
    assert capsys.readouterr().err == ""
    digits = parse(["train", "--image-size", "4", "5"])
    with pytest.raises(SystemExit, match="--image-size applies to an image"):
        cli._load_dataset(digits, batch_size=2)
