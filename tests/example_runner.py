"""Runs several examples in one Python process, TensorFlow imported once.

Each example runs as written: as `__main__` (through `runpy`), with its own
`sys.argv` (`--small`), one after the other. Used by the example tests;
a new process per example would import TensorFlow again (seconds of CPU).
"""

import pathlib
import subprocess
import sys

EXAMPLES = pathlib.Path(__file__).parent.parent / "examples"
SCRIPT = """
import runpy, sys
for path in sys.argv[1:]:
    sys.argv = [path, "--small"]
    print(f"=== start {path}", flush=True)
    runpy.run_path(path, run_name="__main__")
    print(f"=== end {path}", flush=True)
"""


def run_examples(names, cwd=None, timeout=600):
    """`{name: what examples/<name> printed}`, all run in one subprocess.

    Fails (with the end of the examples' standard error) if any of them
    fails; `cwd` is where they write their files.
    """
    paths = [str(EXAMPLES / name) for name in names]
    result = subprocess.run(
        [sys.executable, "-c", SCRIPT, *paths],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=cwd,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    sections = {}
    for name, path in zip(names, paths, strict=True):
        start = result.stdout.index(f"=== start {path}")
        end = result.stdout.index(f"=== end {path}")
        sections[name] = result.stdout[start:end]
    return sections
