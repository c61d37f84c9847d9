"""Datasets: the embedded digits, tfds pipelines, image folders, arrays."""

from keras_one.data.digits import load_digits
