import math
import weakref

import keras
import numpy as np
from keras import ops

from keras_one import export
from keras_one.losses import cross_entropy
from keras_one.losses import distillation_kl
from keras_one.losses import rampup_weight
from keras_one.methods._integer_hash import hash31
from keras_one.methods.method import Method
from keras_one.methods.method_info import MethodInfo
from keras_one.student_outputs import normalize_outputs

# The name of the student input that carries each example's index.
INDEX_INPUT = "example_index"
# `eps` of the official `ContrastLoss` (mcl/criterion.py).
_EPS = 1e-7


@keras.saving.register_keras_serializable(package="keras_one")
class MCLOKD(Method):
    """Multi-view Contrastive Learning for Online Knowledge Distillation.

    MCL-OKD (Yang, An and Xu, ICASSP 2021, arXiv:2006.04093; official code
    github.com/winycg/MCL-OKD, `main_cifar_mcl_okd.py` and `mcl/`). `N = 4`
    branches share the stem and the first stage (`branch_stage=2`); each
    branch `i` has an embedding head on its pooled features,
    `e_i = l2norm(Dense(128)(f_i))`, and a memory bank `M_i` holding one
    128-d embedding per training example. Each example `x` (index `a`,
    class `y`) is contrasted, for every ordered pair of branches `i != j`,
    against `K` negatives: examples of other classes, drawn afresh at each
    step:

    `P_ij(b) = exp(M_i[b] . e_j(x) / tau) / Z_ij` for `b` in
    `{a, n_1, ..., n_K}`, with `tau = 0.1` and
    `Z_ij = sg(mean_{batch, b} exp(M_i[b] . e_j / tau)) * n_data`

    `L_nce,ij = -[log(P(a) / (P(a) + K/n_data))
                 + sum_k log((K/n_data) / (P(n_k) + K/n_data))]`

    (CRD's NCE loss, the bank rows detached), and the last branch, the
    deployed student, also learns from the branches' mean (Distillation
    from an Online Teacher):

    `L = sum_i CE(z_i, y) + KL_T(sg mean_i z_i || z_N)
         + 0.025 sum_{i != j} L_nce,ij`

    with `T = 3`, `KL_T` summed over classes and scaled by `T^2`. After the
    loss, outside the gradient, the bank row of every example of the batch
    becomes `M_i[a] <- l2norm(0.5 M_i[a] + 0.5 e_i(x))`. The banks start at
    `U(-s, s)`, `s = 1/sqrt(128/3)`.

    Details of the official code followed here:

    - Negatives (`mode='exact'`): the positive is the example's own row,
      the `K` negatives are drawn uniformly without replacement among the
      examples of the other classes (`np.random.choice(cls_negative[y],
      K, replace=False)` in its dataset), anew each time the example is
      drawn. `K = 256` for the ResNets and DenseNet, 16384 for VGG and
      HCGNet (its README); a `K` above the negatives a class has is
      refused (the official code then draws with replacement).
    - `Z` is recomputed for every batch and every pair (the code keeps the
      once-set constant of CRD only in a comment), from the whole batch:
      with `tf.distribute` the replicas' sums are all-reduced, as
      PyTorch's `DataParallel` gathers the batch before the loss.
    - `log` terms add `eps = 1e-7` to the denominators, as the official
      `ContrastLoss`; the l2 normalizations have none.
    - The memory momentum is 0.5 (`--nce_m`); the update uses the
      embeddings of the same forward pass, detached.
    - The embedding heads are PyTorch `Linear` layers trained with the
      network and decayed by its SGD's weight decay (5e-4): here an L2
      penalty of `embedding_weight_decay / 2` on their weights, torch's
      coupled decay, with PyTorch's default kernel initialization and a
      zero bias (see `keras_one.layers`).
    - The training recipe (not part of the method): SGD with Nesterov
      momentum 0.9, weight decay 5e-4, batch 64, learning rate 0.05 on one
      cosine to 0 over 300 epochs.

    Readings where the paper and the code leave a detail open:

    - Negatives are drawn in the training step, not by the data pipeline:
      the example's class is read from `example_labels` (the class of
      every training example, by index) and the draw is a pure function of
      `seed`, the method's step count and the example's index (random keys
      from an integer hash, the `K` largest kept among the other classes'
      examples: a uniform draw without replacement). So the draw does not
      depend on how the batch is split over replicas, and a run resumed
      from a checkpoint draws what the uninterrupted run would have.
    - In evaluation there is no contrastive term (`nce` is 0) and the
      banks are left alone; the official test loop computes the
      cross-entropies and DOT only.
    - An index that appears twice in a global batch is updated once, with
      one of its embeddings (PyTorch's `index_copy_` with repeated indices
      is unspecified); `keras_one.data` pipelines never repeat an example
      within a batch.

    Data and student. Every training example must carry its index in the
    dataset (stable across epochs and shuffles): load it with
    `keras_one.data.load(..., with_index=True)`, whose batches are
    `({"image": images, "example_index": indices}, labels)`, and pass the
    labels by index to the method, `keras_one.data.example_labels(
    train_ds)`. The student takes the index as a second input named
    `"example_index"`, which no layer reads (the exported branches do not
    have it): `build_student` builds such a student, and
    `MCLOKD.add_index_input(student)` adds it to one of your own, which
    must return `branch_logits` and `branch_features` (the pooled features
    of every branch, as `keras_one.models` networks do).

    The deployed model is the last branch: `get_deployed_model()` (or
    `Distiller.get_branch_model(N - 1)`) exports it as a plain Keras model
    from one image to its logits.

    Args:
        example_labels: the class of every training example, in index
            order: `n_data = len(example_labels)` rows per bank. May be
            left out only for a method restored from a saved `Distiller`
            (its config keeps `num_examples`; the labels and banks are
            weights).
        num_examples: `n_data`, when `example_labels` is not given (a
            loaded method); must equal `len(example_labels)` when both are.
        num_negatives: `K`, default 256.
        embedding_dim: the embeddings' size, default 128.
        nce_temperature: `tau`, default 0.1.
        memory_momentum: the bank's momentum, default 0.5.
        temperature: `T` of DOT, default 3.
        dot_weight: the weight of DOT, default 1.
        nce_weight: the weight of the contrastive terms, default 0.025.
        embedding_weight_decay: torch's weight decay of the embedding
            heads, default 5e-4 (0 for none).
        seed: seed of the banks' initialization and of the negatives;
            `None` draws one from NumPy's global generator (seeded by
            `keras.utils.set_random_seed`).
        rampup_epochs: epochs to ramp the DOT and contrastive weights up
            (`keras_one.losses.rampup_weight`; 0: none, the official
            code's).
        **kwargs: base layer keyword arguments.

    Example:

    ```python
    train_ds, test_ds, info = keras_one.data.load("cifar100", with_index=True)
    method = keras_one.methods.MCLOKD(
        keras_one.data.example_labels(train_ds))
    student = method.build_student("resnet32", num_classes=100)
    distiller = keras_one.Distiller(student, method)
    distiller.compile(optimizer=keras.optimizers.SGD(
        0.05, momentum=0.9, nesterov=True))
    distiller.fit(train_ds, epochs=300, validation_data=test_ds)
    deployed = method.get_deployed_model()  # image -> logits, last branch
    ```
    """

    info = MethodInfo(
        name="mcl_okd",
        branches=4,
        branch_stage=2,
        example_index=True,
    )
    loss_names = ("ce", "dot", "nce")
    required_outputs = ("branch_logits", "branch_features")

    def __init__(
        self,
        example_labels=None,
        num_examples=None,
        num_negatives=256,
        embedding_dim=128,
        nce_temperature=0.1,
        memory_momentum=0.5,
        temperature=3.0,
        dot_weight=1.0,
        nce_weight=0.025,
        embedding_weight_decay=5e-4,
        seed=None,
        rampup_epochs=0,
        **kwargs,
    ):
        super().__init__(
            temperature=temperature, rampup_epochs=rampup_epochs, **kwargs
        )
        if example_labels is not None:
            example_labels = np.asarray(example_labels)
            if example_labels.ndim != 1 or not len(example_labels):
                raise ValueError(
                    "example_labels must hold one class per training "
                    f"example (a 1-D array); got shape {example_labels.shape}."
                )
            if not np.issubdtype(example_labels.dtype, np.integer):
                raise ValueError(
                    "example_labels must be integer class indices; got "
                    f"dtype {example_labels.dtype}."
                )
            if num_examples is not None and num_examples != len(example_labels):
                raise ValueError(
                    f"num_examples={num_examples} but example_labels has "
                    f"{len(example_labels)} entries: give one of them."
                )
            num_examples = len(example_labels)
        if num_examples is None:
            raise ValueError(
                "MCLOKD needs the class of every training example: "
                "MCLOKD(keras_one.data.example_labels(train_ds)) with "
                "train_ds from keras_one.data.load(..., with_index=True)."
            )
        for name, value in (
            ("num_examples", num_examples),
            ("num_negatives", num_negatives),
            ("embedding_dim", embedding_dim),
        ):
            if int(value) != value or value < 1:
                raise ValueError(f"{name} must be >= 1; got {value!r}.")
        if nce_temperature <= 0:
            raise ValueError(
                f"nce_temperature must be > 0; got {nce_temperature}."
            )
        if not 0.0 <= memory_momentum <= 1.0:
            raise ValueError(
                f"memory_momentum must lie in [0, 1]; got {memory_momentum}."
            )
        for name, value in (
            ("dot_weight", dot_weight),
            ("nce_weight", nce_weight),
            ("embedding_weight_decay", embedding_weight_decay),
        ):
            if value < 0:
                raise ValueError(f"{name} must be >= 0; got {value}.")
        if seed is None:
            seed = int(np.random.randint(0, 2**31 - 1))
        self.example_labels = example_labels
        self.num_examples = int(num_examples)
        self.num_negatives = int(num_negatives)
        self.embedding_dim = int(embedding_dim)
        self.nce_temperature = float(nce_temperature)
        self.memory_momentum = float(memory_momentum)
        self.dot_weight = float(dot_weight)
        self.nce_weight = float(nce_weight)
        self.embedding_weight_decay = float(embedding_weight_decay)
        self.seed = int(seed)
        self.memory_banks = None
        self.bank_labels = None
        self.contrast_steps = None
        self._student = None

    # === Student ===

    def build_student(
        self,
        model="resnet32",
        num_classes=10,
        input_shape=(32, 32, 3),
        num_branches=None,
        **model_kwargs,
    ):
        """Builds a CIFAR ResNet branching after stage 1, with an index input.

        As `Method.build_student` (whose default `branch_stage` is
        `info.branch_stage`, 2: stages 2 and 3 are replicated, as the
        official networks), with the `"example_index"` input of
        `add_index_input`.
        """
        student = super().build_student(
            model,
            num_classes=num_classes,
            input_shape=input_shape,
            num_branches=num_branches,
            **model_kwargs,
        )
        return self.add_index_input(student)

    @staticmethod
    def add_index_input(student):
        """Returns `student` with a second input, `"example_index"`.

        The new functional model shares every layer of `student`; no layer
        reads the index, which the method takes from the data (batches
        `({"image": ..., "example_index": ...}, labels)`). Its branches
        export without it.

        Args:
            student: a functional model with one image input, named
                `"image"` (the name the data gives it).

        Returns:
            A functional `keras.Model` with inputs `[image, example_index]`
            and the outputs of `student`.
        """
        inputs = list(student.inputs)
        if len(inputs) != 1:
            raise ValueError(
                "MCLOKD.add_index_input takes a student with one image "
                f"input; {student.name!r} has {len(inputs)}."
            )
        index = keras.Input((), dtype="int32", name=INDEX_INPUT)
        return keras.Model(
            [inputs[0], index], student.output, name=student.name
        )

    def check_outputs(self, outputs, student=None):
        super().check_outputs(outputs, student)
        if student is None:
            return
        names = [tensor.name for tensor in student.inputs]
        if INDEX_INPUT not in names or len(names) != 2:
            raise ValueError(
                "MCLOKD reads each example's index from a second student "
                f"input named {INDEX_INPUT!r}; the student's inputs are "
                f"{names}: build it with MCLOKD(...).build_student(...) or "
                "MCLOKD.add_index_input(student)."
            )

    # === State: the memory banks ===

    def build_state(self, student):
        """Creates the banks, the labels by index and the step count."""
        outputs = normalize_outputs(student.output)
        num_branches = len(outputs["branch_logits"])
        num_classes = outputs["branch_logits"][0].shape[-1]
        labels = self.example_labels
        if labels is not None:
            self._check_labels(labels, num_classes)
        self._student = weakref.ref(student)
        limit = 1.0 / math.sqrt(self.embedding_dim / 3.0)
        self.memory_banks = [
            keras.Variable(
                keras.initializers.RandomUniform(
                    -limit, limit, seed=self.seed + branch
                ),
                shape=(self.num_examples, self.embedding_dim),
                dtype="float32",
                trainable=False,
                # float32 under mixed precision too: read as stored.
                autocast=False,
                name=f"memory_bank_{branch}",
                aggregation="only_first_replica",
            )
            for branch in range(num_branches)
        ]
        self.bank_labels = keras.Variable(
            np.zeros(self.num_examples, "int32")
            if labels is None
            else labels.astype("int32"),
            dtype="int32",
            trainable=False,
            name="bank_labels",
            aggregation="only_first_replica",
        )
        self.contrast_steps = keras.Variable(
            0,
            dtype="int32",
            trainable=False,
            name="contrast_steps",
            aggregation="only_first_replica",
        )

    def _check_labels(self, labels, num_classes):
        if labels.min() < 0 or labels.max() >= num_classes:
            raise ValueError(
                f"example_labels must lie in [0, {num_classes}) for a "
                f"student with {num_classes} classes; got values from "
                f"{labels.min()} to {labels.max()}."
            )
        counts = np.bincount(labels, minlength=num_classes)
        largest = int(np.argmax(counts))
        available = len(labels) - int(counts[largest])
        if self.num_negatives > available:
            raise ValueError(
                f"num_negatives={self.num_negatives} is more than the "
                f"{available} negatives (examples of other classes) of "
                f"class {largest}: lower num_negatives to at most "
                f"{available}."
            )

    def build(self, inputs_shape, outputs_shape):
        regularizer = None
        if self.embedding_weight_decay:
            regularizer = keras.regularizers.L2(self.embedding_weight_decay / 2)
        self.embedding_heads = []
        for branch, shape in enumerate(outputs_shape["branch_features"]):
            head = keras.layers.Dense(
                self.embedding_dim,
                kernel_initializer=keras.initializers.VarianceScaling(
                    1.0 / 3.0, mode="fan_in", distribution="uniform"
                ),
                kernel_regularizer=regularizer,
                bias_regularizer=regularizer,
                name=f"embedding_{branch}",
            )
            head.build((None, shape[-1]))
            self.embedding_heads.append(head)

    # === Contrast ===

    def embeddings(self, branch_features):
        """`l2norm(Dense(f_i))` of every branch, float32, `(batch, dim)`.

        The heads compute in the dtype policy's compute dtype, as the
        student; the normalization and the contrast are float32.
        """
        return [
            _l2_normalize(ops.cast(head(features), "float32"))
            for head, features in zip(
                self.embedding_heads, branch_features, strict=True
            )
        ]

    def draw_negatives(self, index, step):
        """`K` negatives per example: other classes, without replacement.

        Each candidate row gets a random 31-bit key, a hash of `(seed,
        step, example index, candidate)`; the examples of the example's
        own class get -1, and the `K` largest keys are kept: a uniform
        draw without replacement among the other classes' examples.

        Args:
            index: the examples' indices, int32, `(batch,)`.
            step: the step count, an int32 scalar.

        Returns:
            The negatives' indices, int32, `(batch, K)`.
        """
        labels = self.bank_labels.value
        own_class = ops.take(labels, index)
        step = ops.cast(step, "int32")
        key = hash31(hash31(step + hash31(self.seed)) + index)
        candidates = ops.arange(self.num_examples, dtype="int32")
        keys = hash31(key[:, None] + hash31(candidates)[None, :] * 2 + 1)
        keys = ops.where(labels[None, :] == own_class[:, None], -1, keys)
        _, negatives = ops.top_k(keys, self.num_negatives, sorted=False)
        return ops.cast(negatives, "int32")

    def call(self, inputs, outputs, training=None):
        if not training:
            return {}
        index = self._checked_index(_example_index(inputs))
        embeddings = self.embeddings(outputs["branch_features"])
        step = self.contrast_steps.value
        rows = ops.concatenate(
            [index[:, None], self.draw_negatives(index, step)], axis=1
        )
        banks = [
            ops.stop_gradient(ops.take(bank.value, rows, axis=0))
            for bank in self.memory_banks
        ]
        scores = [
            ops.exp(
                ops.einsum("bkd,bd->bk", banks[i], embeddings[j])
                / self.nce_temperature
            )
            for i in range(len(banks))
            for j in range(len(banks))
            if i != j
        ]
        self._update_banks(index, embeddings)
        self.contrast_steps.assign(step + 1)
        return {"contrast_scores": scores}

    def _checked_index(self, index):
        """`index`, after a check that it lies within the banks.

        An error on TensorFlow and PyTorch; JAX's compiled step cannot
        raise (its gathers clamp an index out of range).
        """
        size = self.num_examples
        valid = ops.all(ops.logical_and(index >= 0, index < size))
        message = (
            f"MCLOKD's memory banks have {size} rows (num_examples), but "
            f"an example index lies outside [0, {size}): give the method "
            "the labels of the dataset it trains on, "
            "MCLOKD(keras_one.data.example_labels(train_ds))."
        )
        if keras.backend.backend() == "tensorflow":
            import tensorflow as tf

            with tf.control_dependencies(
                [tf.debugging.Assert(valid, [message])]
            ):
                return tf.identity(index)
        if keras.backend.backend() == "torch":
            if not bool(ops.convert_to_numpy(valid)):
                raise ValueError(message)
        return index

    def _update_banks(self, index, embeddings):
        """`M_i[a] <- l2norm(m M_i[a] + (1 - m) e_i)`, for the global batch."""
        momentum = self.memory_momentum
        index, *embeddings = _gather_replicas(
            [index, *[ops.stop_gradient(e) for e in embeddings]]
        )
        for bank, embedding in zip(self.memory_banks, embeddings, strict=True):
            rows = ops.take(bank.value, index, axis=0)
            rows = _l2_normalize(momentum * rows + (1.0 - momentum) * embedding)
            bank.assign(ops.scatter_update(bank.value, index[:, None], rows))

    # === Loss ===

    def contrast_loss(self, scores):
        """CRD's NCE loss of one pair's scores, per example, `(batch,)`.

        Args:
            scores: `exp(M_i[b] . e_j / tau)`, `(batch, 1 + K)`, the
                positive first.
        """
        num_negatives = scores.shape[-1] - 1
        noise = num_negatives / self.num_examples
        normalizer = ops.stop_gradient(_global_mean(scores)) * self.num_examples
        probabilities = scores / normalizer
        positive = probabilities[:, 0]
        negatives = probabilities[:, 1:]
        log_positive = ops.log(positive / (positive + noise + _EPS))
        log_negatives = ops.log(noise / (negatives + noise + _EPS))
        return -(log_positive + ops.sum(log_negatives, axis=-1))

    def compute_losses(self, labels, outputs, epoch):
        branch_logits = outputs["branch_logits"]
        mean_logits = ops.mean(
            ops.stack([ops.cast(z, "float32") for z in branch_logits]), axis=0
        )
        dot = distillation_kl(
            ops.stop_gradient(mean_logits), branch_logits[-1], self.temperature
        )
        if "contrast_scores" in outputs:
            nce = sum(self.contrast_loss(s) for s in outputs["contrast_scores"])
        else:
            nce = ops.zeros_like(dot)
        weight = rampup_weight(epoch, self.rampup_epochs)
        return {
            "ce": sum(cross_entropy(labels, z) for z in branch_logits),
            "dot": weight * self.dot_weight * dot,
            "nce": weight * self.nce_weight * nce,
        }

    # === Export ===

    def get_deployed_model(self, name=None, preprocessing=None):
        """Returns the last branch, MCL-OKD's student, as a plain model.

        The same model as `Distiller.get_branch_model(N - 1)`: built-in
        Keras layers only, from one image (no index input) to the last
        branch's logits, sharing the trained weights.

        Args:
            name: the model's name; defaults to `<student>_deployed`.
            preprocessing: `None`, or a `keras_one.data.DatasetInfo` (or
                its `preprocessing` dict) to take raw images (see
                `Distiller.get_branch_model`).

        Returns:
            A functional `keras.Model`.
        """
        student = self._student() if self._student is not None else None
        if student is None:
            raise ValueError(
                "MCLOKD's deployed branch belongs to its Distiller's "
                "student: wrap the method and its student in "
                "keras_one.Distiller(student, method) first."
            )
        name = name or f"{student.name}_deployed"
        model = export.plain_keras_model(
            student,
            lambda outputs: normalize_outputs(outputs)["branch_logits"][-1],
            name=name,
        )
        if preprocessing is None:
            return model
        return export.with_preprocessing(model, preprocessing, name=name)

    def get_config(self):
        config = super().get_config()
        return {
            **config,
            "num_examples": self.num_examples,
            "num_negatives": self.num_negatives,
            "embedding_dim": self.embedding_dim,
            "nce_temperature": self.nce_temperature,
            "memory_momentum": self.memory_momentum,
            "dot_weight": self.dot_weight,
            "nce_weight": self.nce_weight,
            "embedding_weight_decay": self.embedding_weight_decay,
            "seed": self.seed,
        }


def _l2_normalize(x):
    return x / ops.sqrt(ops.sum(ops.square(x), axis=-1, keepdims=True))


def _example_index(inputs):
    """The batch's example indices, int32 `(batch,)`, from the inputs."""
    if isinstance(inputs, dict) and INDEX_INPUT in inputs:
        index = inputs[INDEX_INPUT]
    elif isinstance(inputs, (list, tuple)) and len(inputs) == 2:
        index = inputs[1]
    else:
        raise ValueError(
            "MCLOKD needs each training example's index: load the data "
            "with keras_one.data.load(..., with_index=True), whose batches "
            "are ({'image': ..., 'example_index': ...}, labels)."
        )
    return ops.reshape(ops.cast(index, "int32"), (-1,))


def _gather_replicas(tensors):
    """The tensors of every replica, concatenated (TensorFlow replicas).

    Under a `tf.distribute` strategy with several replicas, each replica
    holds its share of the batch; the banks are updated with the whole
    batch on every replica, so that they stay equal. Elsewhere (one
    device, JAX's global arrays) the tensors are returned as they are.
    """
    context = _replica_context()
    if context is None:
        return tensors
    return [context.all_gather(t, axis=0) for t in tensors]


def _global_mean(x):
    """The mean of `x` over the global batch (all replicas)."""
    context = _replica_context()
    if context is None:
        return ops.mean(x)
    total = context.all_reduce("sum", ops.sum(x))
    count = context.all_reduce("sum", ops.cast(ops.size(x), x.dtype))
    return total / count


def _replica_context():
    """The TensorFlow replica context under a multi-replica strategy."""
    if keras.backend.backend() != "tensorflow":
        return None
    import tensorflow as tf

    if tf.distribute.get_strategy().num_replicas_in_sync == 1:
        return None
    return tf.distribute.get_replica_context()
