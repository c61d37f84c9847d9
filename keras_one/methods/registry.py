"""The registry of methods by name, filled as method classes are defined.

`Method.__init_subclass__` calls `register` for every class whose own
`info` has a name, so a method is registered by being defined; importing
`keras_one.methods` imports every module of the package.
"""

_METHODS = {}


def register(method_class):
    """Registers `method_class` under `method_class.info.name`.

    Called by `Method.__init_subclass__`; a class defined again (a reloaded
    module) replaces its previous definition.

    Raises:
        ValueError: if another method has that name.
    """
    name = method_class.info.name
    existing = _METHODS.get(name)
    if existing is not None and _qualified_name(existing) != _qualified_name(
        method_class
    ):
        raise ValueError(
            f"Cannot register {_qualified_name(method_class)} as {name!r}: "
            f"{_qualified_name(existing)} has that name. Give its "
            "MethodInfo another name."
        )
    _METHODS[name] = method_class


def get(name):
    """Returns the method class registered under `name` (case-insensitive).

    `"-"` reads as `"_"`: `get("cl-ilr")` is `get("cl_ilr")`.

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
    """The names `get` accepts, sorted."""
    return sorted(_METHODS)


def _qualified_name(method_class):
    return f"{method_class.__module__}.{method_class.__qualname__}"
