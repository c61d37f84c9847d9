"""Networks: CIFAR ResNets and a converter to multi-branch networks."""

from keras_one.models.cifar_resnet import cifar_resnet
from keras_one.models.heads import HEADS
from keras_one.models.multi_branch import make_multi_branch
