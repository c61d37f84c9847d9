"""Distillation methods: what the student outputs and how they make the loss."""

from keras_one.methods.cl_ilr import CLILR
from keras_one.methods.dml import DML
from keras_one.methods.ekd import EKD
from keras_one.methods.ffl import FFL
from keras_one.methods.kd import KD
from keras_one.methods.mde import MDE
from keras_one.methods.method import Method
from keras_one.methods.oec import OEC
from keras_one.methods.okddip import OKDDip
from keras_one.methods.one import ONE
from keras_one.methods.sokd import SOKD

_METHODS = {"one": ONE}
_METHODS["dml"] = DML
_METHODS["cl_ilr"] = CLILR
_METHODS["okddip"] = OKDDip
_METHODS["ffl"] = FFL
_METHODS["mde"] = MDE
_METHODS["kd"] = KD
_METHODS["ekd"] = EKD
_METHODS["sokd"] = SOKD
_METHODS["oec"] = OEC


def get(name):
    """Returns the method class registered under `name` (case-insensitive).

    Raises:
        ValueError: for an unknown name, listing the known ones.
    """
    key = str(name).lower().replace("-", "_")
    if key not in _METHODS:
        raise ValueError(
            f"Unknown method {name!r}. Known methods: {sorted(_METHODS)}."
        )
    return _METHODS[key]


def names():
    """The names `get` accepts."""
    return sorted(_METHODS)
