import keras
from keras import ops

from keras_one.layers.feature_fusion import FeatureFusion
from keras_one.losses import cross_entropy
from keras_one.losses import distillation_kl
from keras_one.losses import rampup_weight
from keras_one.methods._head_check import warn_unless_from
from keras_one.methods.method import Method
from keras_one.methods.method_info import MethodInfo


@keras.saving.register_keras_serializable(package="keras_one")
class MDE(Method):
    """Multi-branch Diversity Enhancement (Li et al., ACCV 2020).

    Online distillation from a multi-branch ensemble whose branches are kept
    diverse (Li, Huang, Chen, Luo, Cai and Pan, arXiv:2010.00795). No
    official code exists and the paper leaves the details open; this is the
    reading implemented, built on ONE (Lan et al., 2018) as the paper is:

    - Feature Fusion Module (FFM): `keras_one.layers.FeatureFusion` (the
      `"feature_fusion"` head) fuses the branches' last-block feature maps
      (concat -> 1x1 conv -> BN -> ReLU) and feeds ONE's gate (pool ->
      Dense(N) -> BN -> ReLU -> softmax), whose weights `a_i` build the
      ensemble teacher `z_e = sum_i a_i z_i`.
    - Classifier Diversification (CD) loss, on the branches' predictions:
      for each example, `q_i` is branch `i`'s softened prediction over the
      non-target classes, `softmax(z_i / T)` without the label's class,
      renormalized; the loss is the mean cosine similarity of `q_i` and
      `q_j` over the pairs `i < j`. It leaves the label's probability to
      the cross-entropy and pushes the branches to differ in what they
      believe besides the label (their "dark knowledge"), which is what an
      ensemble gains from. The alternative reading, a penalty on the
      similarity of the branch classifiers' weight matrices, is not used:
      the branches' feature spaces are not aligned (each has its own last
      stage, with its own random channel order), so comparing their weights
      coordinate by coordinate measures nothing a prediction depends on.

    `L = sum_i CE(z_i, y) + CE(z_e, y)
         + w(epoch) * sum_i KL_T(stop_gradient(z_e) || z_i)
         + lambda * CD`

    The teacher is detached in the KL term, as in ONE, so the FFM learns
    through the ensemble cross-entropy. `KL_T` is summed over classes,
    averaged over the batch and multiplied by `T^2`; `T = 3` and the
    ramp-up `w(e) = exp(-5 (1 - min(e, R)/R)^2)`, `R = 80` of 300 epochs,
    are ONE's. `lambda` (default 1) is not given by the abstract.

    Args:
        diversity_weight: `lambda`, the weight of the CD loss.
        temperature: `T`, default 3.
        rampup_epochs: `R`, default 80.
        **kwargs: base layer keyword arguments.

    Example:

    >>> method = keras_one.methods.MDE()
    >>> student = method.build_student("resnet32", num_branches=3)
    >>> distiller = keras_one.Distiller(student, method)
    """

    info = MethodInfo(
        name="mde",
        branches=3,
        head="feature_fusion",
        rampup_fraction=80 / 300,
    )
    loss_names = ("ce", "ensemble_ce", "kl", "diversity")
    required_outputs = ("branch_logits", "ensemble_logits")

    def __init__(
        self, diversity_weight=1.0, temperature=3.0, rampup_epochs=80, **kwargs
    ):
        super().__init__(
            temperature=temperature, rampup_epochs=rampup_epochs, **kwargs
        )
        if diversity_weight < 0:
            raise ValueError(
                f"diversity_weight must be >= 0; got {diversity_weight}."
            )
        self.diversity_weight = float(diversity_weight)

    def _non_target_predictions(self, labels, logits):
        logits = ops.cast(logits, "float32") / self.temperature
        is_target = ops.one_hot(labels, ops.shape(logits)[-1]) > 0.5
        # exp(-inf) = 0: the label's class gets no probability.
        masked = ops.where(is_target, float("-inf"), logits)
        return ops.softmax(masked, axis=-1)

    def classifier_diversity(self, labels, branch_logits):
        """The CD loss before weighting, one value per example.

        Args:
            labels: integer labels, shape `(batch,)`.
            branch_logits: a list of `N >= 2` tensors `(batch, C)`, `C > 2`.

        Returns:
            The mean pairwise cosine similarity of the branches' softened
            non-target predictions, shape `(batch,)`, in `[0, 1]`.
        """
        predictions = [
            self._non_target_predictions(labels, z) for z in branch_logits
        ]
        unit = [
            p / ops.sqrt(ops.sum(p * p, axis=-1, keepdims=True))
            for p in predictions
        ]
        pairs = [
            ops.sum(unit[i] * unit[j], axis=-1)
            for i in range(len(unit))
            for j in range(i + 1, len(unit))
        ]
        return sum(pairs) / len(pairs)

    def check_outputs(self, outputs, student=None):
        super().check_outputs(outputs, student)
        if student is not None:
            warn_unless_from(student, FeatureFusion, "MDE", "feature_fusion")

    def compute_losses(self, labels, outputs, epoch):
        branch_logits = outputs["branch_logits"]
        teacher = ops.stop_gradient(outputs["ensemble_logits"])
        weight = rampup_weight(epoch, self.rampup_epochs)
        return {
            "ce": sum(cross_entropy(labels, z) for z in branch_logits),
            "ensemble_ce": cross_entropy(labels, outputs["ensemble_logits"]),
            "kl": weight
            * sum(
                distillation_kl(teacher, z, self.temperature)
                for z in branch_logits
            ),
            "diversity": self.diversity_weight
            * self.classifier_diversity(labels, branch_logits),
        }

    def get_config(self):
        return {
            **super().get_config(),
            "diversity_weight": self.diversity_weight,
        }
