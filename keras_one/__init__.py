"""keras-one: online ensemble knowledge distillation for Keras 3."""

from keras_one import data
from keras_one import experiment
from keras_one import layers
from keras_one import losses
from keras_one import methods
from keras_one import models
from keras_one.distiller import Distiller
from keras_one.version import __version__
