import keras


class Method(keras.layers.Layer):
    """Base class of a distillation method.

    A method says which outputs it needs from the student and how those
    outputs make the loss. The `Distiller` runs the student, calls the
    method (which may run frozen teachers or training-only modules such as
    feature adapters), then asks it for its loss terms. Everything else
    (gradients, distribution, metrics, saving) is the Distiller's job, so a
    method is a small object:

    - `loss_names`: the names of the terms `compute_losses` returns; each is
      logged during `fit`/`evaluate`.
    - `required_outputs`: the keys of the student's output dict it reads.
    - `head`: the name of the ensemble head (see `keras_one.models.HEADS`)
      that produces those outputs, used by the model builders and in error
      messages; `None` if the plain branch logits suffice.
    - `min_branches`: the fewest branches the method accepts.
    - `compute_losses(labels, outputs, epoch)`: returns a dict of loss terms,
      each either per-example, shape `(batch,)` (weighted by
      `sample_weight` and averaged by the Distiller), or a scalar (a
      batch-independent penalty, added as is). The total loss is their sum.
    - optionally `build_student(...)`: the network the method trains by
      default (used by the `keras-one` command and the tuner); the base
      class builds a CIFAR ResNet with the method's `head`.
    - optionally `call(inputs, outputs, training)`: returns a dict of extra
      outputs (teacher logits, ...) merged into `outputs` before
      `compute_losses`. Trainable modules it creates are trained with the
      student; frozen teachers must be set `trainable=False`.

    Args:
        temperature: softening temperature of the distillation terms.
        rampup_epochs: epochs over which the distillation weight ramps up
            from about 0 to 1 (`keras_one.losses.rampup_weight`); 0 for none.
        **kwargs: base layer keyword arguments, such as `name`.
    """

    loss_names = ()
    required_outputs = ("branch_logits",)
    head = None
    min_branches = 2

    def __init__(self, temperature=3.0, rampup_epochs=0, **kwargs):
        super().__init__(**kwargs)
        if temperature <= 0:
            raise ValueError(f"temperature must be > 0; got {temperature}.")
        if rampup_epochs < 0:
            raise ValueError(
                f"rampup_epochs must be >= 0; got {rampup_epochs}."
            )
        self.temperature = float(temperature)
        self.rampup_epochs = rampup_epochs

    def check_outputs(self, outputs):
        """Raises a clear error if the student lacks what this method needs.

        Args:
            outputs: the student's normalized output dict (symbolic or
                concrete tensors).
        """
        name = type(self).__name__
        num_branches = len(outputs["branch_logits"])
        if num_branches < self.min_branches:
            raise ValueError(
                f"{name} needs a student with at least {self.min_branches} "
                f"branches; this student has {num_branches}. Build it with "
                "more branches, e.g. keras_one.models.cifar_resnet("
                f"num_branches={max(self.min_branches, 3)}) or "
                "keras_one.models.make_multi_branch(model, split_at, "
                f"num_branches={max(self.min_branches, 3)})."
            )
        missing = [k for k in self.required_outputs if k not in outputs]
        if missing:
            how = (
                f" Build the student with head={self.head!r} (for example "
                f"keras_one.models.cifar_resnet(..., head={self.head!r}))."
                if self.head
                else ""
            )
            raise ValueError(
                f"{name} needs the student outputs {missing}, but the "
                f"student only returns {sorted(outputs)}.{how}"
            )

    def build_student(
        self,
        model="resnet32",
        num_classes=10,
        input_shape=(32, 32, 3),
        num_branches=3,
        **model_kwargs,
    ):
        """Builds the student network this method trains by default.

        Args:
            model: a name accepted by `keras_one.models.get`, e.g.
                `"resnet32"`.
            num_classes: number of classes.
            input_shape: shape of one input image.
            num_branches: number of branches (ignored by single-branch
                methods).
            **model_kwargs: passed to the model builder (e.g.
                `weight_decay`).

        Returns:
            A functional `keras.Model` with the outputs this method needs.
        """
        from keras_one import models

        return models.get(model)(
            num_classes=num_classes,
            input_shape=input_shape,
            num_branches=num_branches,
            head=self.head,
            **model_kwargs,
        )

    def call(self, inputs, outputs, training=None):
        return {}

    def compute_losses(self, labels, outputs, epoch):
        raise NotImplementedError(
            f"{type(self).__name__} must implement compute_losses()."
        )

    def after_train_step(self, student):
        """Updates state the method owns, after each optimizer step.

        Override it in methods that keep state tied to the student's
        weights, such as temporal-mean (EMA) copies of them: it runs once
        per training step, after the optimizer has applied that step's
        update, outside the gradient, on every backend (under JAX inside a
        `keras.StatelessScope`, so `variable.assign(...)` works as on the
        other backends). Create the state in `build()` or the constructor
        as non-trainable `keras.Variable`s (with
        `aggregation="only_first_replica"` when every replica computes the
        same value) so that it is saved and restored with the `Distiller`.
        State that depends on the batch (memory banks) is better updated in
        `compute_losses`, on stopped-gradient values. The default does
        nothing and costs nothing.

        Args:
            student: the student `keras.Model`, with its updated weights.
        """

    def get_config(self):
        return {
            **super().get_config(),
            "temperature": self.temperature,
            "rampup_epochs": self.rampup_epochs,
        }
