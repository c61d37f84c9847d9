import math

import keras
from keras import ops

AVERAGES = ("logits", "probabilities")


@keras.saving.register_keras_serializable(package="keras_one")
class EnsembleAverage(keras.layers.Layer):
    """The unweighted average of several networks' predictions, as logits.

    The prediction of an ensemble of independently trained networks
    (Allen-Zhu and Li, ICLR 2023, arXiv:2012.09816; the Born-Again Network
    ensembles of Furlanello et al., ICML 2018, arXiv:1805.04770):

    - `average="logits"` (the default): the mean of the members' logits,
      `mean_i z_i`. Allen-Zhu and Li's theory averages the networks'
      functions `F_i`, which are their logits.
    - `average="probabilities"`: the mean of the members' softmax
      probabilities, returned as logits, `log(mean_i softmax(z_i))`, so
      that a softmax of the output gives the averaged probabilities back
      (and the output can teach by knowledge distillation, which softens
      logits by a temperature). It is computed as a `logsumexp` of the log
      probabilities, in float32.

    The layer has no weights.

    Args:
        average: `"logits"` or `"probabilities"`.
        **kwargs: base layer keyword arguments, such as `name`.

    Call arguments:
        member_logits: a list of at least 2 tensors of logits, each of
            shape `(batch, num_classes)`.

    Output shape:
        `(batch, num_classes)`: logits.

    Example:

    >>> logits = [keras.Input((10,)) for _ in range(3)]
    >>> tuple(EnsembleAverage("probabilities")(logits).shape)
    (None, 10)
    """

    def __init__(self, average="logits", **kwargs):
        super().__init__(**kwargs)
        if average not in AVERAGES:
            raise ValueError(
                f"average must be one of {AVERAGES}; got {average!r}."
            )
        self.average = average

    def build(self, member_logits_shape):
        shapes = [tuple(shape) for shape in member_logits_shape]
        if len(shapes) < 2:
            raise ValueError(
                "EnsembleAverage averages at least 2 members; got "
                f"{len(shapes)}."
            )
        if any(shape[1:] != shapes[0][1:] for shape in shapes):
            raise ValueError(
                "EnsembleAverage needs members of one shape (the same "
                f"classes); got the shapes {shapes}."
            )

    def call(self, member_logits):
        stacked = ops.stack(list(member_logits), axis=0)
        if self.average == "logits":
            return ops.mean(stacked, axis=0)
        log_probabilities = ops.log_softmax(ops.cast(stacked, "float32"))
        members = len(member_logits)
        return ops.logsumexp(log_probabilities, axis=0) - math.log(members)

    def compute_output_shape(self, member_logits_shape):
        return tuple(member_logits_shape[0])

    def get_config(self):
        return {**super().get_config(), "average": self.average}
