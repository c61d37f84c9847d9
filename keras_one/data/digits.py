import numpy as np


def load_digits(test_fraction=0.2, seed=0):
    """Loads scikit-learn's bundled handwritten digits: real data, no download.

    The 1,797 8x8 grayscale images of the UCI optical recognition of
    handwritten digits test set, shipped inside scikit-learn. Pixel values
    0..16 are scaled to [0, 1]; the split is stratified and fixed by `seed`.

    Args:
        test_fraction: fraction of the images held out for testing.
        seed: seed of the stratified split.

    Returns:
        `((x_train, y_train), (x_test, y_test))`: float32 images of shape
        `(n, 8, 8, 1)` and int32 labels in 0..9.

    Example:

    >>> (x_train, y_train), (x_test, y_test) = load_digits()
    >>> x_train.shape, x_test.shape
    ((1437, 8, 8, 1), (360, 8, 8, 1))
    """
    from sklearn.datasets import load_digits as sklearn_digits
    from sklearn.model_selection import train_test_split

    digits = sklearn_digits()
    x = (digits.images / 16.0).astype("float32")[..., None]
    y = digits.target.astype("int32")
    x_train, x_test, y_train, y_test = train_test_split(
        x, y, test_size=test_fraction, stratify=y, random_state=seed
    )
    return (np.ascontiguousarray(x_train), y_train), (
        np.ascontiguousarray(x_test),
        y_test,
    )
