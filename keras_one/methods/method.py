import keras

from keras_one.methods import registry
from keras_one.methods.method_info import MethodInfo


class Method(keras.layers.Layer):
    """Base class of a distillation method.

    A method says which outputs it needs from the student and how those
    outputs make the loss. The `Distiller` runs the student, calls the
    method (which may run frozen teachers or training-only modules such as
    feature adapters), then asks it for its loss terms. Everything else
    (gradients, distribution, metrics, saving) is the Distiller's job, so a
    method is a small object:

    - `info`: a `keras_one.methods.MethodInfo`, the method's registry name
      and its paper's defaults as data (branches, student layout, teachers,
      ramp-up), read by the command line, the tuner and the benchmarks. A
      subclass whose own `info` has a name registers itself when it is
      defined: adding a method is adding a module to `keras_one.methods`.
    - `loss_names`: the names of the terms `compute_losses` returns; each is
      logged during `fit`/`evaluate`.
    - `required_outputs`: the keys of the student's output dict it reads.
    - `head`: the name of the ensemble head (see `keras_one.models.HEADS`)
      that produces those outputs, used by the model builders and in error
      messages; `None` if the plain branch logits suffice. Read from
      `info.head`.
    - `min_branches`: the fewest branches the method accepts, read from
      `info.min_branches`.
    - `compute_losses(labels, outputs, epoch)`: returns a dict of loss terms,
      each either per-example, shape `(batch,)` (weighted by
      `sample_weight` and averaged by the Distiller), or a scalar (a
      batch-independent penalty, added as is). The total loss is their sum.
    - optionally `build_student(...)`: the network the method trains by
      default (used by the `keras-one` command and the tuner); the base
      class builds a CIFAR ResNet with the layout and `head` of `info`.
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

    info = MethodInfo()
    loss_names = ()
    required_outputs = ("branch_logits",)
    head = info.head
    min_branches = info.min_branches

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        if "info" not in cls.__dict__:
            return
        if not isinstance(cls.info, MethodInfo):
            raise TypeError(
                f"{cls.__name__}.info must be a keras_one.methods.MethodInfo; "
                f"got {type(cls.info).__name__}."
            )
        for attribute in ("head", "min_branches"):
            if attribute in cls.__dict__:
                raise TypeError(
                    f"{cls.__name__} sets both `info` and `{attribute}`: "
                    f"declare {attribute}= in its MethodInfo only."
                )
        cls.head = cls.info.head
        cls.min_branches = cls.info.min_branches
        if cls.info.name is not None:
            registry.register(cls)

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

    def check_outputs(self, outputs, student=None):
        """Raises a clear error if the student lacks what this method needs.

        Args:
            outputs: the student's normalized output dict (symbolic or
                concrete tensors).
            student: the student model, when known (the `Distiller` passes
                it), for checks that look at its layers.
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
        num_branches=None,
        **model_kwargs,
    ):
        """Builds the student network this method trains by default.

        The layout is `info.student`: branches on a shared trunk, networks
        that share no layer (`branch_stage=0`), or a single network; the
        ensemble head is `info.head`, and the first replicated stage
        `info.branch_stage` when the description sets one (a
        `branch_stage` in `model_kwargs` replaces it).

        Args:
            model: a name accepted by `keras_one.models.get`, e.g.
                `"resnet32"`.
            num_classes: number of classes.
            input_shape: shape of one input image.
            num_branches: number of branches; `None` for the method's
                default, `info.branches`. Ignored by single-network methods.
            **model_kwargs: passed to the model builder (e.g.
                `weight_decay`).

        Returns:
            A functional `keras.Model` with the outputs this method needs.
        """
        from keras_one import models

        if num_branches is None:
            num_branches = self.info.branches
        if self.info.student == "single":
            num_branches = 1
        if self.info.student == "independent":
            model_kwargs.setdefault("branch_stage", 0)
        elif self.info.branch_stage is not None:
            model_kwargs.setdefault("branch_stage", self.info.branch_stage)
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

    def build_state(self, student):
        """Creates state tied to the student, such as EMA copies of it.

        The `Distiller` calls it once, with the built student, before the
        method is first called. Create the state here as non-trainable
        `keras.Variable`s assigned to attributes of the method: they are
        then saved and restored with the `Distiller` and replicated under
        `tf.distribute`. The default creates nothing.

        Args:
            student: the student `keras.Model`, built.
        """

    def get_build_config(self):
        """Saves no build shapes: a loaded method is built by its Distiller.

        The `Distiller` builds its method when it is created or loaded:
        first the state tied to the student (`build_state`), then the
        method's own layers on the student's outputs. A build by Keras from
        saved shapes would come first, mark the method built and lock its
        state, so none is saved.
        """
        return None

    def after_train_step(self, student):
        """Updates state the method owns, after each optimizer step.

        Override it in methods that keep state tied to the student's
        weights, such as temporal-mean (EMA) copies of them: it runs once
        per training step, after the optimizer has applied that step's
        update, outside the gradient, on every backend (under JAX inside a
        `keras.StatelessScope`, so `variable.assign(...)` works as on the
        other backends). Create the state in `build_state()` as
        non-trainable `keras.Variable`s (with
        `aggregation="only_first_replica"` when every replica computes the
        same value) so that it is saved and restored with the `Distiller`.
        State that depends on the batch (memory banks) is better updated in
        `compute_losses`, on stopped-gradient values. The default does
        nothing and costs nothing.

        Args:
            student: the student `keras.Model`, with its updated weights.
        """

    def learning_rate_multipliers(self, epoch):
        """The learning rates of the method's own modules, as multipliers.

        Override it in methods whose auxiliary networks (adapters, bridges,
        discriminators) train at their own learning rate, as a PyTorch
        parameter group would: return a dict mapping each such layer to the
        factor `m` by which its learning rate is multiplied at `epoch` (a
        Python number or a scalar tensor computed from `epoch`, e.g. 0 in
        the first epoch and 0.5 after). Layers not listed train at the
        optimizer's own rate.

        The `Distiller` applies it after each optimizer step, on every
        backend and under `tf.distribute`: a listed layer's weights `w` move
        by `m` times the step the optimizer took, `w <- w_old + m (w_new -
        w_old)`. For a constant `m` that is exactly training the layer at
        `m` times the learning rate with any optimizer whose step is
        proportional to its learning rate: SGD with or without (Nesterov)
        momentum, Adam, AdamW, RMSprop, decoupled `weight_decay` included.
        When `m` changes during training, later steps are scaled by the new
        `m`, the part of SGD's velocity accumulated before included (as when
        a PyTorch parameter group's learning rate is changed). With `m = 0`
        the layer is frozen for that step, though the optimizer still
        updates its slots (moments) from its gradient.
        The default lists no layer and costs nothing.

        Args:
            epoch: the current epoch of training, a float scalar tensor.

        Returns:
            A dict `{layer: multiplier}` whose layers' weights the
            `Distiller` trains (the method's own modules or the student's).
        """
        return {}

    def get_config(self):
        return {
            **super().get_config(),
            "temperature": self.temperature,
            "rampup_epochs": self.rampup_epochs,
        }
