import keras
from keras import ops

from keras_one.layers import _pytorch_init


@keras.saving.register_keras_serializable(package="keras_one")
class GatedEnsemble(keras.layers.Layer):
    """ONE's gate: a learned, per-example weighting of the branch logits.

    Implements the gate of On-the-fly Native Ensemble (Lan, Zhu and Gong,
    NeurIPS 2018, arXiv:1806.04606) as in its official code: the shared
    features that enter the branches are globally average-pooled, mapped to
    one score per branch by `Dense(num_branches)` (with bias), normalized by
    `BatchNormalization`, passed through ReLU and a softmax over branches.
    The ensemble teacher is the gate-weighted sum of the branch logits,
    `ensemble_logits = sum_i gate_weights[:, i] * branch_logits[i]`.

    As in that code, the `Dense` layer has PyTorch's default initialization
    (`torch.nn.Linear`'s: kernel and bias uniform in `+-1/sqrt(fan_in)`)
    and BatchNormalization PyTorch's momentum and epsilon; the official
    optimizer applies weight decay to every parameter, gate included, which
    `regularizer` gives here.

    Args:
        num_branches: number of branches, at least 2.
        return_gate_weights: if `True`, the layer returns the tuple
            `(ensemble_logits, gate_weights)`; otherwise only
            `ensemble_logits`.
        data_format: `"channels_last"` or `"channels_first"`, for 4D
            features. Defaults to `keras.config.image_data_format()`.
        kernel_initializer: initializer of the `Dense` kernel. `None` (the
            default) for PyTorch's default, `keras.initializers.
            VarianceScaling(1/3, mode="fan_in", distribution="uniform")`.
        bias_initializer: initializer of the `Dense` bias. `None` (the
            default) for PyTorch's default, uniform in `+-1/sqrt(fan_in)`.
        regularizer: regularizer of every weight of the gate (the `Dense`
            kernel and bias, the BatchNormalization scale and offset), e.g.
            `keras.regularizers.L2(weight_decay / 2)` for PyTorch's coupled
            weight decay `weight_decay`; `None` (the default) for none. The
            `"gate"` head (`keras_one.models.heads`) passes the network's.
        **kwargs: base layer keyword arguments, such as `name`.

    Call arguments:
        features: the shared features entering the branches, of shape
            `(batch, height, width, channels)` (pooled over space),
            `(batch, tokens, channels)` (a transformer's, pooled over
            tokens) or `(batch, channels)`.
        branch_logits: a list of `num_branches` tensors of shape
            `(batch, num_classes)`.

    Output shape:
        `(batch, num_classes)`, and `(batch, num_branches)` for the gate
        weights when `return_gate_weights=True`.

    Example:

    >>> features = keras.Input((8, 8, 32))
    >>> logits = [keras.layers.Dense(10)(keras.layers.Flatten()(features))
    ...           for _ in range(3)]
    >>> ensemble, gate = GatedEnsemble(3, return_gate_weights=True)(
    ...     features, logits)
    >>> tuple(ensemble.shape), tuple(gate.shape)
    ((None, 10), (None, 3))
    """

    def __init__(
        self,
        num_branches,
        return_gate_weights=False,
        data_format=None,
        kernel_initializer=None,
        bias_initializer=None,
        regularizer=None,
        **kwargs,
    ):
        super().__init__(**kwargs)
        if int(num_branches) < 2:
            raise ValueError(
                "GatedEnsemble needs at least 2 branches; got num_branches="
                f"{num_branches}."
            )
        self.num_branches = int(num_branches)
        self.return_gate_weights = return_gate_weights
        self.data_format = data_format or keras.config.image_data_format()
        self.kernel_initializer = _pytorch_init.get_initializer(
            kernel_initializer
        )
        self.bias_initializer = _pytorch_init.get_initializer(bias_initializer)
        self.regularizer = keras.regularizers.get(regularizer)

    def build(self, features_shape, branch_logits_shape):
        if len(branch_logits_shape) != self.num_branches:
            raise ValueError(
                f"GatedEnsemble(num_branches={self.num_branches}) received "
                f"{len(branch_logits_shape)} branch logits."
            )
        if len(features_shape) not in (2, 3, 4):
            raise ValueError(
                "GatedEnsemble features must be 2D (batch, channels), 3D "
                "token sequences (batch, tokens, channels) or 4D images; got "
                f"shape {features_shape}."
            )
        channels_axis = (
            1
            if self.data_format == "channels_first" and len(features_shape) == 4
            else -1
        )
        channels = features_shape[channels_axis]
        # torch's Linear initialization, BatchNorm1d momentum and epsilon.
        self.gate_dense = keras.layers.Dense(
            self.num_branches,
            kernel_initializer=_pytorch_init.kernel_initializer(
                self.kernel_initializer
            ),
            bias_initializer=_pytorch_init.bias_initializer(
                channels, self.bias_initializer
            ),
            kernel_regularizer=self.regularizer,
            bias_regularizer=self.regularizer,
            name="dense",
        )
        self.gate_dense.build((None, channels))
        self.gate_norm = keras.layers.BatchNormalization(
            momentum=0.9,
            epsilon=1e-5,
            gamma_regularizer=self.regularizer,
            beta_regularizer=self.regularizer,
            name="batch_norm",
        )
        self.gate_norm.build((None, self.num_branches))

    def _pool(self, features):
        if len(features.shape) == 2:
            return features
        if len(features.shape) == 3:  # tokens (a transformer's)
            return ops.mean(features, axis=1)
        axes = (1, 2) if self.data_format == "channels_last" else (2, 3)
        return ops.mean(features, axis=axes)

    def call(self, features, branch_logits, training=None):
        scores = self.gate_dense(self._pool(features))
        scores = self.gate_norm(scores, training=training)
        gate_weights = ops.softmax(ops.relu(scores), axis=-1)
        stacked = ops.stack(branch_logits, axis=1)
        ensemble_logits = ops.einsum("bn,bnc->bc", gate_weights, stacked)
        if self.return_gate_weights:
            return ensemble_logits, gate_weights
        return ensemble_logits

    def expand(self, features, branch_logits, training=None):
        """The same computation written with built-in Keras layers.

        Shares this layer's weights; used to export the ensemble as a plain
        Keras model that loads without keras_one.
        """
        layers = keras.layers
        if len(features.shape) == 4:
            features = layers.GlobalAveragePooling2D(
                data_format=self.data_format
            )(features)
        scores = self.gate_norm(self.gate_dense(features))
        gate_weights = layers.Softmax()(layers.ReLU()(scores))
        num_classes = branch_logits[0].shape[-1]
        stacked = layers.Concatenate(axis=1)(
            [layers.Reshape((1, num_classes))(z) for z in branch_logits]
        )
        ensemble_logits = layers.Dot(axes=1)([gate_weights, stacked])
        if self.return_gate_weights:
            return ensemble_logits, gate_weights
        return ensemble_logits

    def compute_output_shape(self, features_shape, branch_logits_shape):
        ensemble_shape = tuple(branch_logits_shape[0])
        if self.return_gate_weights:
            return ensemble_shape, (ensemble_shape[0], self.num_branches)
        return ensemble_shape

    def get_config(self):
        return {
            **super().get_config(),
            "num_branches": self.num_branches,
            "return_gate_weights": self.return_gate_weights,
            "data_format": self.data_format,
            "kernel_initializer": _pytorch_init.serialize_initializer(
                self.kernel_initializer
            ),
            "bias_initializer": _pytorch_init.serialize_initializer(
                self.bias_initializer
            ),
            "regularizer": keras.regularizers.serialize(self.regularizer),
        }
