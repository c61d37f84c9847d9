"""Checks that the data is what the user meant, before anything trains.

Labels of every loader become int32 class indices `0..num_classes-1` here,
or are refused with one sentence that names the split, the index and the
fix; pixels of float arrays are checked to be finite.
"""

import sys
import warnings

import numpy as np

# Classification needs at least this many classes.
MIN_CLASSES = 2
# Labels at or above this, without class names, are taken for ids.
MAX_INFERRED_CLASSES = 1_000_000
# Images checked at a time for non-finite pixels (bounds the memory used).
_CHUNK = 4096
# Classes named in a message before "and N more".
_SHOWN = 5


def encode_labels(y_train, y_test, class_names=None, splits=None, source=None):
    """Class indices of both splits, and one name per class.

    The rules (every refusal is a `ValueError`):

    - Integer labels (or floats holding whole numbers, e.g. `2.0`, or
      booleans) of shape `(n,)` or `(n, 1)` are class indices. Negative
      ones are refused. Without `class_names` there are `max + 1` classes,
      named `"0"`, `"1"`, ...; labels that never use 0 (`1..N`) are refused
      with the fix (subtract 1), never shifted silently. With `class_names`
      there is one class per name, and a label outside them is refused.
    - One-hot labels `(n, classes)` (a single 1 per row, the rest 0) are
      their argmax; their width is the number of classes. Rows that are
      not one-hot (soft or multi-label targets) are refused.
    - String (or bytes) labels are the classes' names: with `class_names`
      they index into it, else the classes are the sorted distinct
      training labels (numerically when all are integers) and a test label
      the training split lacks is refused.
    - At least two classes, and training examples of at least two of
      them; a class without training examples gives a `UserWarning`.

    Args:
        y_train: training labels.
        y_test: test labels.
        class_names: names of the classes, or `None`.
        splits: `(train_name, test_name)` of the labels in messages;
            defaults to `("y_train", "y_test")`.
        source: the file the labels come from, named in messages.

    Returns:
        `(y_train, y_test, class_names)`: int32 arrays of shape `(n,)` and
        a tuple of strings, one per class.
    """
    names = splits or ("y_train", "y_test")
    prefix = f"{source}: " if source else ""
    if class_names is not None:
        class_names = _class_names(class_names, prefix)
    columns = [
        _column(y, name, prefix)
        for y, name in zip((y_train, y_test), names, strict=True)
    ]
    (y_train, train_width), (y_test, test_width) = columns
    texts = [_is_text(y) for y in (y_train, y_test)]
    if texts[0] != texts[1]:
        kinds = ["strings" if text else "numbers" for text in texts]
        raise ValueError(
            f"{prefix}{names[0]} holds {kinds[0]} but {names[1]} "
            f"{kinds[1]}: give both splits' labels the same way (class "
            "indices, or class names)."
        )
    if texts[0]:
        y_train, y_test, class_names = _index_strings(
            y_train, y_test, class_names, names, prefix
        )
    else:
        y_train = _integers(y_train, names[0], prefix)
        y_test = _integers(y_test, names[1], prefix)
        num_classes = _num_classes(
            (y_train, y_test),
            (train_width, test_width),
            class_names,
            names,
            prefix,
            source,
        )
        if class_names is None:
            class_names = tuple(str(i) for i in range(num_classes))
    check_classes(
        np.bincount(y_train, minlength=len(class_names)),
        class_names,
        f"{prefix}{names[0]}",
        test_counts=np.bincount(y_test, minlength=len(class_names)),
    )
    return y_train.astype("int32"), y_test.astype("int32"), class_names


def check_classes(train_counts, class_names, where, test_counts=None):
    """Refuses fewer than 2 classes; warns of classes without examples.

    Args:
        train_counts: training examples per class.
        class_names: one name per class.
        where: what holds the training labels, for messages (e.g.
            `"y_train"` or a folder).
        test_counts: test examples per class, or `None`.
    """
    if len(class_names) < MIN_CLASSES:
        which = f" ({_class_list([0], class_names)})" if class_names else ""
        raise ValueError(
            f"{where}: the labels hold a single class{which}: "
            "classification needs at least 2 classes; add examples of the "
            "other classes."
        )
    present = np.flatnonzero(train_counts)
    if len(present) < MIN_CLASSES:
        raise ValueError(
            f"{where} has training examples of a single class "
            f"({_class_list(present, class_names)}) out of "
            f"{len(class_names)}: classification needs examples of at least "
            "2 classes to learn from."
        )
    missing = np.flatnonzero(np.asarray(train_counts) == 0)
    if len(missing):
        in_test = ""
        if test_counts is not None:
            tested = [i for i in missing if test_counts[i]]
            if tested:
                in_test = (
                    "; the test split has examples of "
                    f"{_class_list(tested, class_names)}"
                )
        plural = "es" if len(missing) > 1 else ""
        warn(
            f"{where} has no training examples of class{plural} "
            f"{_class_list(missing, class_names)} (of "
            f"{len(class_names)} classes){in_test}. The model gets "
            f"{'outputs' if plural else 'an output'} for "
            f"{'them' if plural else 'it'} that it never learns; check the "
            f"labels, or leave {'those classes' if plural else 'it'} out."
        )


def warn(message):
    """A `UserWarning` attributed to the first caller outside the loaders."""
    frame = sys._getframe(1)
    level = 2
    while frame is not None and frame.f_globals.get("__name__", "").startswith(
        "keras_one.data"
    ):
        frame = frame.f_back
        level += 1
    warnings.warn(message, UserWarning, stacklevel=level)


def check_finite(x, name, source=None):
    """Refuses float images holding NaN or infinite pixels.

    Args:
        x: `(n, ...)` array of images.
        name: the array's name in messages (e.g. `"x_train"`).
        source: the file the images come from, named in messages.
    """
    if not np.issubdtype(x.dtype, np.floating):
        return
    for start in range(0, len(x), _CHUNK):
        chunk = x[start : start + _CHUNK]
        finite = np.isfinite(chunk).reshape(len(chunk), -1).all(axis=1)
        if finite.all():
            continue
        index = start + int(np.argmin(finite))
        kind = "NaN" if np.isnan(x[index]).any() else "infinite"
        prefix = f"{source}: " if source else ""
        raise ValueError(
            f"{prefix}{name}[{index}] has {kind} pixels: every pixel must be "
            "a finite number. Fix or drop the bad images, e.g. keep "
            f"np.isfinite({name}).all(axis=(1, 2, 3))."
        )


def _class_names(class_names, prefix):
    names = tuple(_text(c) for c in np.asarray(class_names).reshape(-1))
    if not names:
        raise ValueError(
            f"{prefix}class_names is empty: give one name per class, or "
            "leave it out."
        )
    seen = set()
    for name in names:
        if name in seen:
            raise ValueError(
                f"{prefix}class_names holds {name!r} twice: give each class "
                "one distinct name."
            )
        seen.add(name)
    return names


def _column(y, name, prefix):
    """`(labels, one_hot_width)`: 1-D labels; the width of one-hot ones."""
    y = np.asarray(y)
    if y.ndim == 2 and y.shape[1] == 1:
        return y[:, 0], None
    numeric = y.dtype == bool or np.issubdtype(y.dtype, np.number)
    if y.ndim == 2 and numeric:
        ones = y == 1
        one_hot = ((y == 0) | ones).all(axis=1) & (ones.sum(axis=1) == 1)
        if not one_hot.all():
            row = int(np.argmin(one_hot))
            values = np.array2string(
                y[row], threshold=8, max_line_width=10**6, precision=3
            )
            raise ValueError(
                f"{prefix}{name} has shape {y.shape}, read as one-hot rows, "
                f"but row {row} is {values}, not one-hot (a single 1, the "
                "rest 0): pass class indices of shape (n,) instead, e.g. "
                f"np.argmax({name}, axis=-1) for soft labels."
            )
        return np.argmax(y, axis=1), y.shape[1]
    if y.ndim != 1:
        raise ValueError(
            f"{prefix}{name} must hold class indices of shape (n,) or (n, 1), "
            f"or one-hot rows of shape (n, classes); got shape {y.shape}."
        )
    return y, None


def _is_text(y):
    if y.dtype.kind in "US":
        return True
    if y.dtype.kind == "O" and len(y):
        return all(isinstance(v, (str, bytes)) for v in y)
    return False


def _text(value):
    if isinstance(value, bytes):
        return value.decode("utf-8", errors="replace")
    return str(value)


def _natural(names):
    """Sorted names: numerically when all are integers, else as strings."""
    try:
        return sorted(names, key=int)
    except ValueError:
        return sorted(names)


def _index_strings(y_train, y_test, class_names, names, prefix):
    given = class_names is not None
    encoded = []
    for y, name in zip((y_train, y_test), names, strict=True):
        values, inverse = np.unique(y, return_inverse=True)
        values = [_text(v) for v in values]
        if class_names is None:
            class_names = tuple(_natural(values))
        lookup = {c: i for i, c in enumerate(class_names)}
        unknown = [v not in lookup for v in values]
        if any(unknown):
            bad = np.flatnonzero(np.asarray(unknown)[inverse])[0]
            value = _text(y[bad])
            if given:
                reason = f"not one of the class_names {_short(class_names)}"
                fix = "add it to class_names, or fix the label"
            else:
                reason = (
                    f"not a class of {names[0]} "
                    f"(its classes: {_short(class_names)})"
                )
                fix = (
                    "every class needs training examples; fix the label, "
                    "or pass class_names to name every class"
                )
            raise ValueError(
                f"{prefix}{name}[{bad}] = {value!r} is {reason}: {fix}."
            )
        codes = np.array([lookup[v] for v in values], "int64")
        encoded.append(codes[inverse.reshape(-1)])
    return encoded[0], encoded[1], class_names


def _integers(y, name, prefix):
    """Integer labels as int64, or a refusal naming the first bad one."""
    if y.dtype.kind == "O":  # e.g. a list of Python numbers and None
        try:
            y = np.asarray(y.tolist(), dtype="float64")
        except (TypeError, ValueError):
            pass
    if y.dtype == bool:
        return y.astype("int64")
    if not (
        np.issubdtype(y.dtype, np.integer)
        or np.issubdtype(y.dtype, np.floating)
    ):
        raise ValueError(
            f"{prefix}{name} holds {y.dtype} values: labels must be integer "
            "class indices 0..K-1, one-hot rows, or class names (strings)."
        )
    if np.issubdtype(y.dtype, np.floating):
        whole = np.isfinite(y)
        whole[whole] = y[whole] == np.round(y[whole])
        if not whole.all():
            index = int(np.argmin(whole))
            raise ValueError(
                f"{prefix}{name}[{index}] = {y[index]} is not a class index: "
                "labels must be whole numbers 0..K-1 (integers, or floats "
                "such as 2.0)."
            )
    y = y.astype("int64")
    negative = np.flatnonzero(y < 0)
    if len(negative):
        index = int(negative[0])
        raise ValueError(
            f"{prefix}{name}[{index}] = {y[index]} is negative: labels are "
            "class indices 0..K-1."
        )
    return y


def _num_classes(labels, widths, class_names, names, prefix, source):
    """The number of classes; refuses labels outside them and 1..N ones."""
    # How to give class names: an argument, or an array in the file.
    pass_names = (
        "pass class_names"
        if source is None
        else ("save a class_names array in the file")
    )
    widths = [w for w in widths if w is not None]
    if len(set(widths)) > 1:
        raise ValueError(
            f"{prefix}the one-hot {names[0]} has {widths[0]} columns but "
            f"{names[1]} {widths[1]}: both need one column per class."
        )
    low = min(int(y.min()) for y in labels)
    high = max(int(y.max()) for y in labels)
    if class_names is not None:
        if widths and widths[0] != len(class_names):
            raise ValueError(
                f"{prefix}the one-hot labels have {widths[0]} columns but "
                f"{len(class_names)} class names were given: give one name "
                "per class."
            )
        num_classes = len(class_names)
        counted = "class_names"
    elif widths:
        num_classes = widths[0]
        counted = "one-hot columns"
    else:
        if low >= 1:
            raise ValueError(
                f"{prefix}the labels go from {low} to {high} and none is 0: "
                "labels are class indices 0..K-1. If they count classes "
                f"from 1, subtract 1 ({names[0]} - 1, {names[1]} - 1); if "
                f"class 0 exists but has no examples, {pass_names} with "
                f"{high + 1} names."
            )
        if high >= MAX_INFERRED_CLASSES:
            y, name = max(
                zip(labels, names, strict=True), key=lambda p: p[0].max()
            )
            index = int(np.argmax(y))
            raise ValueError(
                f"{prefix}{name}[{index}] = {high} would make {high + 1} "
                "classes: labels are class indices 0..K-1, not ids. Map "
                "them to 0..K-1 (np.unique(y, return_inverse=True)), or give "
                "them as strings (class names)."
            )
        return high + 1
    for y, name in zip(labels, names, strict=True):
        outside = np.flatnonzero(y >= num_classes)
        if not len(outside):
            continue
        index = int(outside[0])
        hint = "give one name per class"
        if counted == "one-hot columns":
            hint = "give the one-hot labels one column per class"
        if low >= 1 and high == num_classes:
            hint = (
                f"they look counted from 1 (1..{high}, no 0): subtract 1 "
                f"({names[0]} - 1, {names[1]} - 1), or {hint}"
            )
        raise ValueError(
            f"{prefix}{name}[{index}] = {y[index]} is outside the "
            f"{num_classes} classes of the {counted} (labels 0.."
            f"{num_classes - 1}): {hint}."
        )
    return num_classes


def _class_list(indices, class_names):
    """`"2 ('cat'), 5 ('emu')"`, or `"2, 5"` for classes named by index."""
    shown = [
        str(i) if class_names[i] == str(i) else f"{i} ({class_names[i]!r})"
        for i in list(indices)[:_SHOWN]
    ]
    more = len(indices) - len(shown)
    return ", ".join(shown) + (f" and {more} more" if more > 0 else "")


def _short(names):
    shown = list(names[:_SHOWN])
    more = len(names) - len(shown)
    return str(shown)[:-1] + (f", ... {more} more]" if more > 0 else "]")
