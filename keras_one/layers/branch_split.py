import keras


@keras.saving.register_keras_serializable(package="keras_one")
class BranchSplit(keras.layers.Layer):
    """Runs `num_branches` independent copies of a block on one input.

    The building block of a multi-branch network: the shared trunk's output
    goes in, and the outputs of `num_branches` copies of `block` come out as
    a list. Every copy has its own freshly initialized weights (the copies
    share structure, not parameters).

    Args:
        block: what each branch computes. A `keras.layers.Layer` (copied from
            its config), a `keras.Sequential` or functional `keras.Model`
            (copied with `keras.models.clone_model`), or a callable that takes
            no argument and returns a new layer or model (called once per
            branch; register it with
            `keras.saving.register_keras_serializable` to save the layer).
        num_branches: number of copies, at least 2.
        **kwargs: base layer keyword arguments, such as `name`.

    Input shape:
        Any shape the block accepts.

    Output shape:
        A list of `num_branches` tensors, each of the block's output shape.

    Example:

    >>> block = keras.Sequential([keras.layers.Dense(4)])
    >>> inputs = keras.Input((8,))
    >>> outputs = BranchSplit(block, num_branches=3)(inputs)
    >>> [tuple(o.shape) for o in outputs]
    [(None, 4), (None, 4), (None, 4)]
    """

    def __init__(self, block, num_branches=3, **kwargs):
        super().__init__(**kwargs)
        if int(num_branches) < 2:
            raise ValueError(
                f"BranchSplit needs at least 2 branches; got num_branches="
                f"{num_branches}. Use the block itself for a single branch."
            )
        if not (isinstance(block, keras.layers.Layer) or callable(block)):
            raise TypeError(
                "`block` must be a keras Layer, a keras Model, or a callable "
                f"returning a new layer; got {type(block).__name__}."
            )
        if isinstance(block, keras.layers.Layer):
            # Keep the template as a config: the copies are fresh layers, and
            # the template's own weights must not join this layer's weights.
            self._block_config = keras.saving.serialize_keras_object(block)
            self._block_factory = None
        else:
            self._block_config = None
            self._block_factory = block
        self.num_branches = int(num_branches)
        self.branches = []

    def _copy_block(self, index):
        if self._block_factory is not None:
            copy = self._block_factory()
            if not isinstance(copy, keras.layers.Layer):
                raise TypeError(
                    "The `block` factory must return a keras Layer or Model; "
                    f"it returned {type(copy).__name__}."
                )
            return copy
        config = dict(self._block_config)
        config["config"] = {
            **config["config"],
            "name": f"{self.name}_{index}",
        }
        return keras.saving.deserialize_keras_object(config)

    def build(self, input_shape):
        self.branches = [self._copy_block(i) for i in range(self.num_branches)]
        for branch in self.branches:
            if not branch.built:
                branch.build(input_shape)

    def call(self, inputs, training=None):
        return [branch(inputs, training=training) for branch in self.branches]

    def expand(self, inputs, training=None):
        """Calls the branches one by one, so each is its own graph node.

        Used when a network is exported as a plain Keras model: a single
        exported branch then contains only that branch's layers.
        """
        return [branch(inputs) for branch in self.branches]

    def compute_output_shape(self, input_shape):
        if self.branches:
            shape = self.branches[0].compute_output_shape(input_shape)
        else:
            shape = self._copy_block(0).compute_output_shape(input_shape)
        return [shape for _ in range(self.num_branches)]

    def get_config(self):
        return {
            **super().get_config(),
            "block": self._block_config
            or keras.saving.serialize_keras_object(self._block_factory),
            "num_branches": self.num_branches,
        }

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        config["block"] = keras.saving.deserialize_keras_object(config["block"])
        return cls(**config)
