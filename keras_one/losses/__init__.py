"""Loss functions of the distillation methods (per-example, float32)."""

from keras_one.losses.distillation import cross_entropy
from keras_one.losses.distillation import distillation_kl
from keras_one.losses.distillation import rampup_weight
