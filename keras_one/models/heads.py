"""Ensemble heads: what a multi-branch network computes on top of its branches.

A head is a function that takes the network's output dict (with
`shared_features`, `branch_logits`, `branch_features` and, where the
branches end in global pooling, `branch_feature_maps`) and returns the
outputs it adds. Model builders take a head by name: `"gate"` (ONE),
`"mean"`, `"peer_attention"` (OKDDip), `"fusion_classifier"` (FFL),
`"feature_fusion"` (MDE), `"linear_fusion"` (PCL), or `None` (branch
logits only). Methods name the
head they need in `Method.head`.

The built-in heads also take `regularizer`, the network's weight
regularizer (`get(head, regularizer)` binds it): the official codes of
these methods apply weight decay to every parameter, the gate, attention
and fusion modules included. Their weights have PyTorch's default
initialization, as in those codes (see each layer).
"""

import functools

import keras

from keras_one.layers.feature_fusion import FeatureFusion
from keras_one.layers.fusion_classifier import FusionClassifier
from keras_one.layers.gated_ensemble import GatedEnsemble
from keras_one.layers.peer_attention import PeerAttention

# FFL's official code (train_FFL.py) trains its fusion module with an
# optimizer of its own, whose weight decay is 1e-5 whatever the network's.
FFL_FUSION_WEIGHT_DECAY = 1e-5


def gate_head(outputs, regularizer=None):
    """ONE's gate: `ensemble_logits` and `gate_weights`.

    Args:
        outputs: the network's output dict.
        regularizer: regularizer of every weight of the gate, or `None`.

    Returns:
        A dict with `ensemble_logits` and `gate_weights`.
    """
    ensemble_logits, gate_weights = GatedEnsemble(
        len(outputs["branch_logits"]),
        return_gate_weights=True,
        regularizer=regularizer,
        name="gated_ensemble",
    )(outputs["shared_features"], outputs["branch_logits"])
    return {"ensemble_logits": ensemble_logits, "gate_weights": gate_weights}


def mean_head(outputs, regularizer=None):
    """The plain average of the branch logits as `ensemble_logits`.

    It has no weights, so `regularizer` is unused.
    """
    return {
        "ensemble_logits": keras.layers.Average(name="ensemble_logits")(
            outputs["branch_logits"]
        )
    }


def _require(outputs, key, head):
    if key not in outputs:
        raise ValueError(
            f"The {head!r} head needs the branches' {key!r}, but the "
            f"network only gives {sorted(outputs)}. Its branches must end "
            "in global pooling (optionally Dropout) + Dense."
        )
    return outputs[key]


def peer_attention_head(outputs, regularizer=None):
    """OKDDip: `peer_targets` and `peer_attention` for all but the last branch.

    The last branch is the group leader; the others are peers whose
    attention-weighted ensembles (`keras_one.layers.PeerAttention`) are
    their distillation targets. `regularizer` applies to the projections.
    """
    num_peers = len(outputs["branch_logits"]) - 1
    if num_peers < 2:
        raise ValueError(
            "The 'peer_attention' head needs at least 3 branches (2 peers "
            f"and a leader); got {num_peers + 1}."
        )
    features = _require(outputs, "branch_features", "peer_attention")
    targets, attention = PeerAttention(
        return_attention_weights=True,
        regularizer=regularizer,
        name="peer_attention",
    )(features[:num_peers], outputs["branch_logits"][:num_peers])
    return {"peer_targets": targets, "peer_attention": attention}


def fusion_classifier_head(outputs, regularizer=None):
    """FFL: the fused classifier's logits as `ensemble_logits`.

    As in FFL's official code, which trains its fusion module with an
    optimizer of its own (weight decay 1e-5), the fusion module of a
    regularized network (`regularizer` not `None`) gets the coupled weight
    decay `FFL_FUSION_WEIGHT_DECAY = 1e-5`, whatever the network's; with
    `regularizer=None`, none.
    """
    feature_maps = _require(outputs, "branch_feature_maps", "fusion_classifier")
    num_classes = outputs["branch_logits"][0].shape[-1]
    if regularizer is not None:
        regularizer = keras.regularizers.L2(FFL_FUSION_WEIGHT_DECAY / 2)
    return {
        "ensemble_logits": FusionClassifier(
            num_classes, regularizer=regularizer, name="fusion_classifier"
        )(feature_maps)
    }


def feature_fusion_head(outputs, regularizer=None):
    """MDE: `ensemble_logits` weighted by attention on fused branch features.

    The weights (`keras_one.layers.FeatureFusion`) are returned as
    `gate_weights`. `regularizer` applies to every weight of the module.
    """
    feature_maps = _require(outputs, "branch_feature_maps", "feature_fusion")
    ensemble_logits, weights = FeatureFusion(
        len(outputs["branch_logits"]),
        return_fusion_weights=True,
        regularizer=regularizer,
        name="feature_fusion",
    )(feature_maps, outputs["branch_logits"])
    return {"ensemble_logits": ensemble_logits, "gate_weights": weights}


def linear_fusion_head(outputs, regularizer=None):
    """PCL: a linear classifier on the concatenated pooled branch features.

    `ensemble_logits = Dense(C)(concat(f_1, ..., f_N))`, with `f_i` the
    pooled features that branch `i`'s classifier reads (the peer ensemble
    teacher of Wu and Gong, AAAI 2021). Built-in Keras layers only. The
    `Dense` layer has PyTorch's default initialization (kernel and bias
    uniform in `+-1/sqrt(fan_in)`, `torch.nn.Linear`'s, as in the
    reimplementation PCL's specification follows) and `regularizer` on its
    kernel and bias.
    """
    features = _require(outputs, "branch_features", "linear_fusion")
    num_classes = outputs["branch_logits"][0].shape[-1]
    fused = keras.layers.Concatenate(name="fused_features")(features)
    return {
        "ensemble_logits": keras.layers.Dense(
            num_classes,
            kernel_initializer=keras.initializers.VarianceScaling(
                1.0 / 3.0, mode="fan_in", distribution="uniform"
            ),
            # Zero bias, as keras_one.layers' heads (see _pytorch_init).
            bias_initializer="zeros",
            kernel_regularizer=regularizer,
            bias_regularizer=regularizer,
            name="fusion_logits",
        )(fused)
    }


def no_head(outputs, regularizer=None):
    """Branch logits only: adds nothing."""
    return {}


HEADS = {"gate": gate_head, "mean": mean_head, None: no_head}
HEADS["peer_attention"] = peer_attention_head
HEADS["fusion_classifier"] = fusion_classifier_head
HEADS["feature_fusion"] = feature_fusion_head
HEADS["linear_fusion"] = linear_fusion_head


def get(head, regularizer=None):
    """Returns the head function for a name (or a callable, as is).

    Args:
        head: a name of `HEADS` (`"gate"`, `"mean"`, ..., or `None`), or a
            head function, returned as is.
        regularizer: the network's weight regularizer (e.g.
            `keras.regularizers.L2(weight_decay / 2)`), bound to a built-in
            head so that its weights are regularized like the network's;
            `None` for none.

    Returns:
        A function from the network's output dict to the outputs it adds.

    Example:

    >>> head = get("gate", keras.regularizers.L2(5e-5))
    """
    if callable(head):
        return head
    if head not in HEADS:
        known = sorted(name for name in HEADS if name is not None)
        raise ValueError(
            f"Unknown head {head!r}. Known heads: {known}, None, or a "
            "function from the output dict to the outputs it adds."
        )
    if regularizer is None:
        return HEADS[head]
    return functools.partial(
        HEADS[head], regularizer=keras.regularizers.get(regularizer)
    )
