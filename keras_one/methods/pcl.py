import weakref

import keras
from keras import ops

from keras_one import export
from keras_one.graph import used_inputs
from keras_one.losses import cross_entropy
from keras_one.losses import distillation_kl
from keras_one.losses import rampup_weight
from keras_one.methods.method import Method
from keras_one.methods.method_info import MethodInfo
from keras_one.student_outputs import normalize_outputs


@keras.saving.register_keras_serializable(package="keras_one")
class PCL(Method):
    """Peer Collaborative Learning (Wu and Gong, AAAI 2021).

    "Peer Collaborative Learning for Online Knowledge Distillation"
    (arXiv:2006.04147). A shared trunk feeds `m` peers (branches); each
    peer sees its own random augmentation of the image (the trunk runs once
    per view, peer `i` reads view `x_i`), and a linear fusion of the peers'
    pooled features, `z_e = Dense(C)(concat(f_1, ..., f_m))`, is the peer
    ensemble teacher. A temporal mean of the whole network (its peer mean
    teachers, an exponential moving average of the weights) gives every
    peer the knowledge of the others:

    `L = CE(z_e, y) + sum_i [ CE(z_i, y) + w(e) KL_T(sg z_e || z_i)
         + w(e) / (m - 1) sum_{l != i} KL_T(z'_l || z_i) ]`

    with `z'_l` the mean network's peer-`l` logits on view `x_l` (no
    gradient), `T = 3`, `KL_T` summed over classes and scaled by `T^2`, and
    `w(e)` ONE's ramp-up `exp(-5 (1 - min(e, R)/R)^2)` with `R = 80` of 300
    epochs (scale it with `keras_one.methods.rampup_epochs(PCL, epochs)`).
    The ensemble is detached in the peers' KL, so the fusion learns only
    from its own cross-entropy, whose gradient also reaches the peers
    through the concatenation.

    The mean network `th'` follows the student's trainable weights `th`
    after every optimizer step (`after_train_step`):
    `th' <- a th' + (1 - a) th`, `a = min(1 - 1/(k + 1), max_decay)`, `k`
    the number of updates made before this one (the first update copies
    the weights; until `a` reaches `max_decay` the mean network is the
    plain average of the weights after each step). It is the student's own
    graph evaluated with the mean weights (`keras.Layer.stateless_call`),
    so it needs no second copy of the network's layers; its weights are
    non-trainable `keras.Variable`s of the method, saved and loaded with the
    `Distiller`.

    Readings where the paper is open (no official code; the
    reimplementation github.com/shaoeric/Peer-Collaborative-Learning-for-
    Online-Knowledge-Distillation is followed):

    - The mean network's BatchNormalization runs in the step's mode: on the
      batch's statistics in training, as the reimplementation keeps its
      mean model in train mode. Its moving statistics are its own: updated
      by its own forward passes in training (momentum as the student's),
      not averaged from the student's, and used in evaluation and in the
      deployed model (as the reimplementation's `mean_model.eval()`).
    - `k` counts from 0, as in the reimplementation (Mean Teacher's code
      counts from 1, so its first update mixes in the initial weights).
    - In evaluation the data gives every peer the same un-augmented image
      (`keras_one.data.load(..., views=m)`), as the reimplementation's
      test set does; the loss terms logged there use the mean network in
      inference mode.
    - The fusion is a Dense layer without weight decay, like every head
      of `keras_one.models`.
    - The reimplementation's ramp-up divides the epoch by the weight
      (1.0) instead of by `R`; this is the paper's ramp-up, ONE's.

    The deployed model is the temporal mean of a peer (the paper reports
    peer 1's): `get_mean_branch_model(index)` exports it as a plain Keras
    model, image to logits. `Distiller.get_branch_model(index)` gives the
    peer's live weights ("PCL-E" is the fusion, `get_ensemble_model()`,
    whose inputs are the `m` views).

    The student must have one image input per peer, each peer reading its
    own (`view_0`, ..., `view_{m-1}`), and return `branch_logits`,
    `branch_features` and the fusion's `ensemble_logits`: build it with
    `PCL().build_student(...)`, `keras_one.models.cifar_resnet(...,
    num_branches=m, views=m, head="linear_fusion")` or
    `keras_one.models.make_multi_branch(..., views=m,
    head="linear_fusion")`, and feed it `keras_one.data.load(...,
    views=m)`.

    Args:
        temperature: `T`, default 3.
        rampup_epochs: `R`, default 80.
        max_decay: the largest decay `a` of the mean network, default
            0.999.
        **kwargs: base layer keyword arguments.

    Example:

    ```python
    method = keras_one.methods.PCL()
    student = method.build_student("resnet32", num_classes=100)
    train_ds, test_ds, info = keras_one.data.load("cifar100", views=3)
    distiller = keras_one.Distiller(student, method)
    distiller.compile(optimizer=keras.optimizers.SGD(0.1, momentum=0.9))
    distiller.fit(train_ds, epochs=300, validation_data=test_ds)
    deployed = method.get_mean_branch_model(0)  # image -> logits
    ```
    """

    info = MethodInfo(
        name="pcl",
        branches=3,
        head="linear_fusion",
        rampup_fraction=80 / 300,
        views="per_branch",
    )
    loss_names = ("ce", "ensemble_ce", "ensemble_kl", "mean_teacher_kl")
    required_outputs = ("branch_logits", "ensemble_logits")

    def __init__(
        self, temperature=3.0, rampup_epochs=80, max_decay=0.999, **kwargs
    ):
        super().__init__(
            temperature=temperature, rampup_epochs=rampup_epochs, **kwargs
        )
        if not 0.0 <= max_decay < 1.0:
            raise ValueError(f"max_decay must lie in [0, 1); got {max_decay}.")
        self.max_decay = float(max_decay)
        self.mean_weights = None
        self.mean_statistics = None
        self.mean_updates = None
        self._student = None

    def build_student(
        self,
        model="resnet32",
        num_classes=10,
        input_shape=(32, 32, 3),
        num_branches=None,
        **model_kwargs,
    ):
        """Builds a CIFAR ResNet with one view per peer and PCL's fusion.

        As `Method.build_student`, with `views=num_branches`: the network
        takes one image input per peer.
        """
        num_branches = num_branches or self.info.branches
        model_kwargs.setdefault("views", num_branches)
        return super().build_student(
            model,
            num_classes=num_classes,
            input_shape=input_shape,
            num_branches=num_branches,
            **model_kwargs,
        )

    def check_outputs(self, outputs, student=None):
        super().check_outputs(outputs, student)
        if student is None:
            return
        num_peers = len(outputs["branch_logits"])
        inputs = list(student.inputs)
        if len(inputs) != num_peers:
            raise ValueError(
                f"PCL gives each of its {num_peers} peers its own view of the "
                f"image, so the student needs {num_peers} image inputs; it "
                f"has {len(inputs)}. Build it with views={num_peers}, e.g. "
                "PCL().build_student(...) or keras_one.models.cifar_resnet("
                f"..., num_branches={num_peers}, views={num_peers}, "
                "head='linear_fusion')."
            )
        for index, logits in enumerate(outputs["branch_logits"]):
            if used_inputs(inputs, logits) is not inputs[index]:
                raise ValueError(
                    f"PCL's peer {index} must read input {index} (its own "
                    "view) and no other; build the student with views= "
                    "(keras_one.models.make_multi_branch(..., views=N))."
                )

    # === State: the mean network ===

    def build_state(self, student):
        """Creates the mean network: a copy of every student variable."""

        def copies(variables, prefix):
            return [
                keras.Variable(
                    ops.convert_to_numpy(variable.value),
                    dtype=variable.dtype,
                    trainable=False,
                    name=f"{prefix}_{index}",
                    aggregation="only_first_replica",
                )
                for index, variable in enumerate(variables)
            ]

        self._student = weakref.ref(student)
        self.mean_weights = copies(student.trainable_variables, "mean_weight")
        self.mean_statistics = copies(
            student.non_trainable_variables, "mean_statistic"
        )
        self.mean_updates = keras.Variable(
            0,
            dtype="int32",
            trainable=False,
            name="mean_updates",
            aggregation="only_first_replica",
        )

    def mean_decay(self):
        """The decay `a` of the next update: `min(1 - 1/(k + 1), max_decay)`."""
        updates = ops.cast(self.mean_updates.value, "float32")
        return ops.minimum(1.0 - 1.0 / (updates + 1.0), self.max_decay)

    def after_train_step(self, student):
        decay = self.mean_decay()
        for mean, weight in zip(
            self.mean_weights, student.trainable_variables, strict=True
        ):
            a = ops.cast(decay, mean.dtype)
            mean.assign(a * mean.value + (1.0 - a) * weight.value)
        self.mean_updates.assign_add(1)

    def call(self, inputs, outputs, training=None):
        training = bool(training)
        mean_outputs, statistics = self._built_student().stateless_call(
            [v.value for v in self.mean_weights],
            [v.value for v in self.mean_statistics],
            inputs,
            training=training,
        )
        if training:
            for variable, value in zip(
                self.mean_statistics, statistics, strict=True
            ):
                variable.assign(value)
        mean_logits = normalize_outputs(mean_outputs)["branch_logits"]
        return {
            "mean_branch_logits": [ops.stop_gradient(z) for z in mean_logits]
        }

    # === Loss ===

    def compute_losses(self, labels, outputs, epoch):
        branch_logits = outputs["branch_logits"]
        mean_logits = outputs["mean_branch_logits"]
        num_peers = len(branch_logits)
        ensemble = outputs["ensemble_logits"]
        teacher = ops.stop_gradient(ensemble)
        weight = rampup_weight(epoch, self.rampup_epochs)
        temperature = self.temperature
        ensemble_kl = sum(
            distillation_kl(teacher, z, temperature) for z in branch_logits
        )
        mean_teacher_kl = sum(
            distillation_kl(mean_logits[other], z, temperature)
            for index, z in enumerate(branch_logits)
            for other in range(num_peers)
            if other != index
        )
        return {
            "ce": sum(cross_entropy(labels, z) for z in branch_logits),
            "ensemble_ce": cross_entropy(labels, ensemble),
            "ensemble_kl": weight * ensemble_kl,
            "mean_teacher_kl": weight / (num_peers - 1) * mean_teacher_kl,
        }

    # === Export ===

    def get_mean_branch_model(self, index=0, name=None):
        """Returns the temporal mean of peer `index`: PCL's deployed model.

        A plain Keras model (built-in layers only, it loads without
        keras_one) from one image to the logits of peer `index`, with the
        mean network's weights and BatchNormalization statistics, copied
        (it shares no variable with the Distiller, so it does not follow
        further training).

        Args:
            index: the peer, 0 to `m - 1`; the paper deploys peer 1's (the
                first, `index=0`).
            name: the model's name; defaults to
                `<student>_mean_branch_<index>`.

        Returns:
            A functional `keras.Model`.
        """
        student = self._built_student()
        num_peers = len(normalize_outputs(student.output)["branch_logits"])
        if not 0 <= index < num_peers:
            raise ValueError(
                f"Peer index {index} is out of range: the student has "
                f"{num_peers} peers (0 to {num_peers - 1})."
            )
        variables = list(student.trainable_variables)
        variables += student.non_trainable_variables
        means = self.mean_weights + self.mean_statistics
        live = [ops.convert_to_numpy(v.value) for v in variables]
        try:
            # The export copies some weights and shares others: export the
            # student while it holds the mean weights, then copy the model.
            for variable, mean in zip(variables, means, strict=True):
                variable.assign(mean.value)
            peer = export.plain_keras_model(
                student,
                lambda outputs: normalize_outputs(outputs)["branch_logits"][
                    index
                ],
                name=name or f"{student.name}_mean_branch_{index}",
            )
            model = keras.models.clone_model(peer)
            model.set_weights(peer.get_weights())
        finally:
            for variable, value in zip(variables, live, strict=True):
                variable.assign(value)
        return model

    def _built_student(self):
        student = self._student() if self._student is not None else None
        if student is None:
            raise ValueError(
                "PCL's mean network is created with its Distiller: wrap the "
                "method and its student in keras_one.Distiller(student, "
                "method) first."
            )
        return student

    def get_config(self):
        return {**super().get_config(), "max_decay": self.max_decay}
