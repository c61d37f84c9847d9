"""Builds the keras_one API reference with pdoc, and fails on warnings.

    pip install -e ".[docs]"            # or: pip install pdoc
    python docs/build_api.py            # writes build/api/index.html
    python docs/build_api.py --output site/api

Docstrings are read as Google style (Args/Returns/Example). Any warning
that pdoc, or the import of keras_one under pdoc, raises (a submodule that
fails to import, an annotation or a source that cannot be read, ...) is
printed and makes the exit status 1, so that CI keeps the reference
whole. Deprecation warnings of third-party libraries do not count.
"""

import argparse
import os
import pathlib
import sys
import warnings

ROOT = pathlib.Path(__file__).resolve().parent.parent
DEFAULT_OUTPUT = ROOT / "build" / "api"
_THIRD_PARTY_NOISE = (
    DeprecationWarning,
    PendingDeprecationWarning,
    FutureWarning,
)


def build(output=DEFAULT_OUTPUT):
    """Renders the reference into `output`; returns the warnings raised."""
    # Importing TensorFlow asks the platform for its processor (a
    # subprocess), which pdoc blocks and warns about unless allowed.
    os.environ.setdefault("PDOC_ALLOW_EXEC", "1")
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    sys.path.insert(0, str(ROOT))
    import pdoc
    import pdoc.render

    pdoc.render.configure(docformat="google", show_source=True)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        pdoc.pdoc("keras_one", output_directory=pathlib.Path(output))
    return [w for w in caught if not _is_third_party_noise(w)]


def _is_third_party_noise(warning):
    ours = "keras_one" in warning.filename or "pdoc" in warning.filename
    return issubclass(warning.category, _THIRD_PARTY_NOISE) and not ours


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--output", default=str(DEFAULT_OUTPUT))
    args = parser.parse_args(argv)
    problems = build(args.output)
    for warning in problems:
        print(
            f"{warning.category.__name__}: {warning.message} "
            f"({warning.filename}:{warning.lineno})",
            file=sys.stderr,
        )
    if problems:
        print(f"{len(problems)} pdoc warning(s): fix them.", file=sys.stderr)
        return 1
    print(f"API reference written to {args.output}/index.html")
    return 0


if __name__ == "__main__":
    sys.exit(main())
