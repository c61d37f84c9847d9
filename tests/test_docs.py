"""The API reference renders with pdoc without warnings (if pdoc is here)."""

import pathlib
import subprocess
import sys

import pytest

SCRIPT = pathlib.Path(__file__).parent.parent / "docs" / "build_api.py"


@pytest.mark.slow
def test_api_reference_builds_without_warnings(tmp_path):
    pytest.importorskip("pdoc")
    result = subprocess.run(
        [sys.executable, str(SCRIPT), "--output", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert (tmp_path / "index.html").is_file()
    pages = {
        "keras_one/data/loader.html": "load",
        "keras_one/data/image_folder.html": "load_image_folder",
        "keras_one/tuning/distiller_hypermodel.html": "DistillerHyperModel",
        "keras_one/distiller.html": "Distiller",
    }
    for page, name in pages.items():
        html = (tmp_path / page).read_text()
        assert f'id="{name}"' in html, f"{page} does not document {name}"
        # Google-style sections are rendered as sections.
        assert '<h6 id="arguments">Arguments:</h6>' in html


def test_build_reports_warnings(tmp_path, monkeypatch):
    pdoc = pytest.importorskip("pdoc")
    monkeypatch.setenv("PDOC_ALLOW_EXEC", "1")
    monkeypatch.setattr(sys, "path", list(sys.path))
    sys.path.insert(0, str(SCRIPT.parent))
    import build_api

    def warn(*modules, output_directory):
        import warnings

        warnings.warn(
            "Error importing keras_one.broken", RuntimeWarning, stacklevel=1
        )
        warnings.warn("old API", DeprecationWarning, stacklevel=1)

    monkeypatch.setattr(pdoc, "pdoc", warn)
    problems = build_api.build(tmp_path)
    assert [str(w.message) for w in problems] == [
        "Error importing keras_one.broken"
    ]
    assert build_api.main(["--output", str(tmp_path)]) == 1
