"""Datasets: the embedded digits, tfds pipelines, image folders, arrays."""

from keras_one.data.arrays import load_arrays
from keras_one.data.dataset_info import DatasetInfo
from keras_one.data.digits import load_digits
from keras_one.data.example_index import example_labels
from keras_one.data.image_folder import load_image_folder
from keras_one.data.loader import load
from keras_one.data.npz import load_npz
from keras_one.data.tfds_dataset import load_tfds
