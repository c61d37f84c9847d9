import keras
from keras import ops

from keras_one.layers import _pytorch_init


@keras.saving.register_keras_serializable(package="keras_one")
class PeerAttention(keras.layers.Layer):
    """OKDDip's peer attention: one ensemble target per peer.

    Implements the first-level distillation targets of Online Knowledge
    Distillation with Diverse Peers (OKDDip; Chen, Mei, Wang, Feng and Chen,
    AAAI 2020, arXiv:1912.00350) as in its official code: each peer's
    pooled feature `h_i` is projected by two bias-free linear maps shared by
    all peers, `q_i = h_i W_q` and `k_i = h_i W_k` (feature dim -> feature
    dim / 8, i.e. 64 -> 8 for CIFAR ResNets), the attention is
    `A_ij = softmax_j(q_i . k_j)` (no scaling), and peer `i`'s target is
    `t_i = sum_j A_ij z_j`, a per-example weighted ensemble of all peers'
    logits (itself included). The projections learn only through the
    distillation loss on these targets, so the targets must not be
    detached there (`keras_one.methods.OKDDip` does not). As in that code,
    the projections have PyTorch's default initialization
    (`torch.nn.Linear`'s: uniform in `+-1/sqrt(fan_in)`), and the official
    optimizer applies weight decay to them as to every parameter, which
    `regularizer` gives here.

    Args:
        projection_dim: size of the query/key projections; defaults to
            `feature_dim // 8`, as in the official code.
        return_attention_weights: if `True`, the layer returns
            `(targets, attention)`; otherwise only `targets`.
        kernel_initializer: initializer of the projections `W_q` and `W_k`
            (each draws its own values). `None` (the default) for
            PyTorch's default, `keras.initializers.VarianceScaling(1/3,
            mode="fan_in", distribution="uniform")`.
        regularizer: regularizer of `W_q` and `W_k`, e.g.
            `keras.regularizers.L2(weight_decay / 2)` for PyTorch's coupled
            weight decay `weight_decay`; `None` (the default) for none. The
            `"peer_attention"` head (`keras_one.models.heads`) passes the
            network's.
        **kwargs: base layer keyword arguments, such as `name`.

    Call arguments:
        features: a list of `P >= 2` tensors `(batch, feature_dim)`, the
            peers' pooled features (what their classifiers read).
        logits: a list of `P` tensors `(batch, num_classes)`, the peers'
            logits, in the same order.

    Output shape:
        A list of `P` tensors `(batch, num_classes)` (the targets), and
        `(batch, P, P)` (row `i`: the weights of target `i`) when
        `return_attention_weights=True`.

    Example:

    >>> features = [keras.Input((64,)) for _ in range(3)]
    >>> logits = [keras.layers.Dense(10)(f) for f in features]
    >>> targets, attention = PeerAttention(return_attention_weights=True)(
    ...     features, logits)
    >>> [tuple(t.shape) for t in targets], tuple(attention.shape)
    ([(None, 10), (None, 10), (None, 10)], (None, 3, 3))
    """

    def __init__(
        self,
        projection_dim=None,
        return_attention_weights=False,
        kernel_initializer=None,
        regularizer=None,
        **kwargs,
    ):
        super().__init__(**kwargs)
        if projection_dim is not None and int(projection_dim) < 1:
            raise ValueError(
                f"projection_dim must be >= 1; got {projection_dim}."
            )
        self.projection_dim = (
            None if projection_dim is None else int(projection_dim)
        )
        self.return_attention_weights = return_attention_weights
        self.kernel_initializer = _pytorch_init.get_initializer(
            kernel_initializer
        )
        self.regularizer = keras.regularizers.get(regularizer)

    def build(self, features_shape, logits_shape):
        if len(features_shape) < 2 or len(features_shape) != len(logits_shape):
            raise ValueError(
                "PeerAttention needs the features and logits of at least 2 "
                f"peers, one of each per peer; got {len(features_shape)} "
                f"features and {len(logits_shape)} logits."
            )
        if any(len(shape) != 2 for shape in features_shape):
            raise ValueError(
                "PeerAttention features must be pooled vectors (batch, "
                f"feature_dim); got shapes {list(features_shape)}. Pass the "
                "student's `branch_features`."
            )
        feature_dim = features_shape[0][-1]
        units = self.projection_dim or max(1, feature_dim // 8)
        self.query = keras.layers.Dense(
            units,
            use_bias=False,
            kernel_initializer=_pytorch_init.kernel_initializer(
                self.kernel_initializer
            ),
            kernel_regularizer=self.regularizer,
            name=f"{self.name}_query",
        )
        self.key = keras.layers.Dense(
            units,
            use_bias=False,
            kernel_initializer=_pytorch_init.kernel_initializer(
                self.kernel_initializer
            ),
            kernel_regularizer=self.regularizer,
            name=f"{self.name}_key",
        )
        self.query.build((None, feature_dim))
        self.key.build((None, feature_dim))

    def call(self, features, logits):
        queries = ops.stack([self.query(h) for h in features], axis=1)
        keys = ops.stack([self.key(h) for h in features], axis=1)
        energy = ops.einsum("bid,bjd->bij", queries, keys)
        attention = ops.softmax(energy, axis=-1)
        stacked = ops.stack(logits, axis=1)
        targets = ops.einsum("bij,bjc->bic", attention, stacked)
        targets = [targets[:, i] for i in range(len(logits))]
        if self.return_attention_weights:
            return targets, attention
        return targets

    def expand(self, features, logits):
        """The same computation written with built-in Keras layers.

        Shares this layer's weights; used to export a network as a plain
        Keras model that loads without keras_one.
        """
        layers = keras.layers
        num_peers = len(features)
        units = self.query.units
        num_classes = logits[0].shape[-1]
        keys = layers.Concatenate(axis=1)(
            [layers.Reshape((1, units))(self.key(h)) for h in features]
        )
        stacked = layers.Concatenate(axis=1)(
            [layers.Reshape((1, num_classes))(z) for z in logits]
        )
        targets, rows = [], []
        for h in features:
            energy = layers.Dot(axes=(1, 2))([self.query(h), keys])
            weights = layers.Softmax(axis=-1)(energy)
            targets.append(layers.Dot(axes=(1, 1))([weights, stacked]))
            rows.append(layers.Reshape((1, num_peers))(weights))
        if self.return_attention_weights:
            return targets, layers.Concatenate(axis=1)(rows)
        return targets

    def compute_output_shape(self, features_shape, logits_shape):
        targets = [tuple(shape) for shape in logits_shape]
        if self.return_attention_weights:
            num_peers = len(logits_shape)
            return targets, (targets[0][0], num_peers, num_peers)
        return targets

    def get_config(self):
        return {
            **super().get_config(),
            "projection_dim": self.projection_dim,
            "return_attention_weights": self.return_attention_weights,
            "kernel_initializer": _pytorch_init.serialize_initializer(
                self.kernel_initializer
            ),
            "regularizer": keras.regularizers.serialize(self.regularizer),
        }
