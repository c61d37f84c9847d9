import keras


@keras.saving.register_keras_serializable(package="keras_one")
class FusedBatchNormalization(keras.layers.BatchNormalization):
    """`keras.layers.BatchNormalization` computed by one fused kernel.

    Keras 3 computes batch normalization from elementary operations (mean,
    variance, scale and shift: several passes over the feature map, forward
    and backward). On the TensorFlow backend this layer computes the same
    thing with TensorFlow's fused kernel (`FusedBatchNormV3`, one pass, and
    oneDNN's kernel on CPUs), as Keras 2 did with `fused=True`. On a 2-core
    CPU this makes a CIFAR ResNet's training step about 20% cheaper (see
    `bench/throughput.py`).

    The results are those of `keras.layers.BatchNormalization` up to float
    rounding: the same normalization with the batch's (biased) variance in
    training, the same moving statistics (the fused kernel's Bessel-
    corrected variance is converted back to the biased one Keras averages),
    the moving statistics in inference. Statistics are computed in float32
    also under mixed precision, as Keras does: the kernel reads float16 or
    bfloat16 feature maps as they are and computes in float32 inside (its
    scale, offset and statistics are float32), with no cast of the maps
    before or after it, forward or backward.

    Where the fused kernel does not apply (another backend, float64, inputs
    that are not 4D with channels last, a mask, `renorm`, `synchronized`, or no
    `center`/`scale`), the layer runs Keras' own computation. `expand()`
    gives a plain `keras.layers.BatchNormalization` with the same weights,
    so that exported models need nothing from keras_one.

    Args:
        **kwargs: the arguments of `keras.layers.BatchNormalization`.

    Example:

    >>> layer = FusedBatchNormalization(momentum=0.9, epsilon=1e-5)
    >>> x = np.random.default_rng(0).normal(size=(4, 3, 3, 2))
    >>> y = layer(x, training=True)
    >>> np.allclose(np.mean(y, axis=(0, 1, 2)), 0.0, atol=1e-5)
    True
    """

    def _fusable(self, inputs, mask):
        axis = self.axis if self.axis >= 0 else len(inputs.shape) + self.axis
        dtype = keras.backend.standardize_dtype(inputs.dtype)
        return (
            keras.backend.backend() == "tensorflow"
            and dtype in ("float32", "bfloat16", "float16")
            and self.compute_dtype in ("float32", "bfloat16", "float16")
            and self.moving_mean.dtype == "float32"
            and len(inputs.shape) == 4
            and axis == 3
            and mask is None
            and self.center
            and self.scale
            and not getattr(self, "renorm", False)  # Keras >= 3.14 has it
            and not self.synchronized
        )

    def call(self, inputs, training=None, mask=None):
        if not self._fusable(inputs, mask):
            return super().call(inputs, training=training, mask=mask)
        # TensorFlow-only fast path, chosen by `_fusable` above.
        import tensorflow as tf

        # The kernel takes float16/bfloat16 maps with float32 parameters
        # and returns maps of the input's dtype: the compute dtype.
        inputs = tf.cast(inputs, self.compute_dtype)
        gamma = tf.cast(self.gamma, "float32")
        beta = tf.cast(self.beta, "float32")
        if training and self.trainable:
            outputs, mean, variance = tf.compat.v1.nn.fused_batch_norm(
                inputs, gamma, beta, epsilon=self.epsilon, is_training=True
            )
            # The kernel returns the unbiased batch variance; Keras averages
            # the biased one into its moving variance.
            shape = tf.shape(inputs)
            count = tf.cast(shape[0] * shape[1] * shape[2], "float32")
            variance = variance * (count - 1.0) / tf.maximum(count, 1.0)
            momentum = self.momentum
            self.moving_mean.assign(
                self.moving_mean * momentum + mean * (1.0 - momentum)
            )
            self.moving_variance.assign(
                self.moving_variance * momentum + variance * (1.0 - momentum)
            )
        else:
            outputs, _, _ = tf.compat.v1.nn.fused_batch_norm(
                inputs,
                gamma,
                beta,
                mean=tf.cast(self.moving_mean, "float32"),
                variance=tf.cast(self.moving_variance, "float32"),
                epsilon=self.epsilon,
                is_training=False,
            )
        return outputs

    def expand(self, inputs, training=None, mask=None):
        """The same layer as a built-in `keras.layers.BatchNormalization`.

        The returned layer's weights are copies of this layer's current
        ones; used to export models that load without keras_one.
        """
        config = self.get_config()
        plain = keras.layers.BatchNormalization.from_config(config)
        plain.build(inputs.shape)
        plain.set_weights(self.get_weights())
        return plain(inputs, training=training, mask=mask)
