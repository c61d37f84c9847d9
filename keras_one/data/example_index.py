import numpy as np

INDEX_KEY = "example_index"


def example_labels(dataset):
    """The label of every example of an indexed dataset, by index.

    Reads one pass of `dataset`, a `tf.data.Dataset` of
    `({"image": images, "example_index": indices}, labels)` batches (from
    `keras_one.data.load(..., with_index=True)`), and returns `labels`
    with `labels[i]` the label of example `i`: what MCL-OKD needs to draw
    negatives among the other classes' examples
    (`keras_one.methods.MCLOKD(example_labels(train_ds))`).

    Args:
        dataset: the indexed (training) dataset.

    Returns:
        An int32 NumPy array of one label per example.

    Raises:
        ValueError: if the batches carry no `"example_index"`, or the
            indices are not `0, ..., n - 1`, each once.

    Example:

    >>> train_ds, _, info = keras_one.data.load("digits", with_index=True)
    >>> labels = keras_one.data.example_labels(train_ds)
    >>> len(labels) == info.num_train_examples
    True
    """
    indices, labels = [], []
    for batch in dataset.as_numpy_iterator():
        inputs, batch_labels = batch[0], batch[1]
        if not isinstance(inputs, dict) or INDEX_KEY not in inputs:
            raise ValueError(
                "The dataset's examples carry no index: load it with "
                "keras_one.data.load(..., with_index=True)."
            )
        indices.append(np.asarray(inputs[INDEX_KEY]).reshape(-1))
        labels.append(np.asarray(batch_labels).reshape(-1))
    if not indices:
        raise ValueError("The dataset is empty.")
    indices = np.concatenate(indices)
    labels = np.concatenate(labels)
    if len(indices) != len(set(indices.tolist())) or (
        indices.min() != 0 or indices.max() != len(indices) - 1
    ):
        raise ValueError(
            f"The dataset's {len(indices)} example indices are not 0 to "
            f"{len(indices) - 1}, each once (a repeated, sharded or "
            "filtered dataset?): read the labels from the dataset that "
            "keras_one.data.load(..., with_index=True) returned."
        )
    result = np.empty(len(indices), "int32")
    result[indices] = labels
    return result
