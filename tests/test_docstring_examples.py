"""Every `>>>` example in the package's docstrings runs and prints as shown."""

import doctest
import importlib
import pkgutil

import keras
import numpy as np
import pytest

import keras_one

MODULES = sorted(
    info.name
    for info in pkgutil.walk_packages(keras_one.__path__, "keras_one.")
    if info.name != "keras_one.cli"
)


def docstring_tests(module_name):
    module = importlib.import_module(module_name)
    globs = {
        **vars(module),
        "keras": keras,
        "keras_one": keras_one,
        "np": np,
    }
    finder = doctest.DocTestFinder(exclude_empty=True)
    return [
        test
        for test in finder.find(module, module_name, globs=globs)
        if test.examples and test.name.startswith(module_name)
    ]


@pytest.mark.parametrize("module_name", MODULES)
def test_docstring_examples(module_name):
    tests = docstring_tests(module_name)
    if not tests:
        pytest.skip("no examples")
    runner = doctest.DocTestRunner(
        optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE
    )
    for test in tests:
        runner.run(test)
    assert runner.failures == 0, f"{runner.failures} failing examples"
