"""keras-one: online ensemble knowledge distillation for Keras 3."""

import importlib

from keras_one import experiment
from keras_one import layers
from keras_one import losses
from keras_one import methods
from keras_one import models
from keras_one import pipelines
from keras_one import protocols
from keras_one import recipes
from keras_one.distiller import Distiller
from keras_one.version import __version__


def __getattr__(name):
    # `keras_one.data` builds tf.data pipelines: it imports TensorFlow on
    # first use, so that `import keras_one` on the JAX and PyTorch backends
    # neither needs TensorFlow nor spends seconds loading it.
    if name == "data":
        return importlib.import_module("keras_one.data")
    raise AttributeError(f"module 'keras_one' has no attribute '{name}'")
