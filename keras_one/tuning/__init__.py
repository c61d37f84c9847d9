"""keras-tuner search spaces over distillation methods and their students.

Imported on demand (`from keras_one import tuning`): it needs keras-tuner.
"""

from keras_one.tuning.best_branch_metric import BestBranchMetric
from keras_one.tuning.distiller_hypermodel import DistillerHyperModel
