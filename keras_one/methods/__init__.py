"""Distillation methods: what the student outputs and how they make the loss.

Every module of this package is imported here, and every method class
registers itself under its `info.name` when it is defined, so adding a
method is adding a module: `get(name)`, `names()` and the attribute
`keras_one.methods.<ClassName>` find it.
"""

import importlib
import pkgutil

from keras_one.methods.method import Method
from keras_one.methods.method_info import MethodInfo
from keras_one.methods.method_info import create
from keras_one.methods.method_info import data_arguments
from keras_one.methods.method_info import data_options
from keras_one.methods.method_info import data_views
from keras_one.methods.method_info import rampup_epochs
from keras_one.methods.registry import get
from keras_one.methods.registry import names

for _module in pkgutil.iter_modules(__path__, prefix=f"{__name__}."):
    importlib.import_module(_module.name)
del _module

globals().update({get(name).__name__: get(name) for name in names()})

__all__ = sorted(
    [
        "Method",
        "MethodInfo",
        "create",
        "data_arguments",
        "data_options",
        "data_views",
        "get",
        "names",
        "rampup_epochs",
    ]
    + [get(name).__name__ for name in names()]
)
