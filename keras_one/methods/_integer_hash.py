"""An integer hash that every backend computes bit for bit alike.

Random draws that must not depend on the backend, the replica count or a
resume (MCL-OKD's negatives, MEAL's teacher per step) are hashes of a seed
and the method's own step counter, not `keras.random` streams, which
differ between backends and restart after a restore.
"""

from keras import ops


def hash31(x):
    """A 31-bit integer hash (lowbias32, masked), elementwise, in int32.

    Integer arithmetic only (int32 products wrap around; right shifts are
    made logical by masking), so every backend, and XLA, compute the same
    bits.
    """
    x = ops.convert_to_tensor(x, "int32")
    x = ops.bitwise_xor(x, _shift_right(x, 16))
    x = x * 0x7FEB352D
    x = ops.bitwise_xor(x, _shift_right(x, 15))
    x = x * (0x846CA68B - 2**32)
    x = ops.bitwise_xor(x, _shift_right(x, 16))
    return ops.bitwise_and(x, 0x7FFFFFFF)


def _shift_right(x, bits):
    """Logical right shift of int32 `x`."""
    return ops.bitwise_and(ops.right_shift(x, bits), (1 << (32 - bits)) - 1)
