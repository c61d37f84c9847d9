"""Drop-in Keras layers for multi-branch networks."""

from keras_one.layers.branch_split import BranchSplit
from keras_one.layers.ensemble_average import EnsembleAverage
from keras_one.layers.feature_fusion import FeatureFusion
from keras_one.layers.fused_batch_normalization import FusedBatchNormalization
from keras_one.layers.fused_conv2d import FusedConv2D
from keras_one.layers.fused_dense import FusedDense
from keras_one.layers.fusion_classifier import FusionClassifier
from keras_one.layers.gated_ensemble import GatedEnsemble
from keras_one.layers.gradient_scale import GradientScale
from keras_one.layers.peer_attention import PeerAttention
from keras_one.layers.sparse_coding import SparseCoding
