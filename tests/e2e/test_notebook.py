"""notebooks/pipeline_demo.ipynb runs top to bottom against the real servers, broker and Spark (nbclient), so the
walk-through a data scientist starts from cannot rot. Each cell asserts what it shows."""
from __future__ import annotations

from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

NOTEBOOK = Path(__file__).resolve().parents[2] / "notebooks" / "pipeline_demo.ipynb"

pytestmark = [pytest.mark.kafka, pytest.mark.spark, pytest.mark.model]


def test_pipeline_notebook_runs_top_to_bottom(admin, data_dir, monkeypatch, tmp_path) -> None:  # type: ignore[no-untyped-def]
    notebook = nbformat.read(NOTEBOOK, as_version=4)
    monkeypatch.setenv("LOGMESH_DATA", str(data_dir))  # the kernel inherits the environment
    monkeypatch.setenv("LOGMESH_BOOTSTRAP", "127.0.0.1:9092")
    monkeypatch.setenv("LOGMESH_NOTEBOOK_BLOCKS", "500")  # a third of a user's log: the same cells, ~18 failing blocks
    try:
        NotebookClient(notebook, timeout=1200, kernel_name="python3",
                       resources={"metadata": {"path": str(NOTEBOOK.parent)}}).execute()
    finally:  # what each cell printed, to read when a cell fails
        nbformat.write(notebook, tmp_path / "executed.ipynb")
    outputs = "".join(out.get("text", "") for cell in notebook.cells if cell.cell_type == "code"
                      for out in cell.get("outputs", []))
    images = [out for cell in notebook.cells if cell.cell_type == "code" for out in cell.get("outputs", [])
              if "image/png" in out.get("data", {})]
    assert "both SERVING" in outputs and "labelled failing" in outputs and "incidents" in outputs
    assert "marked suppressed by fb-" in outputs
    assert len(images) >= 3, "the evaluation's plots were not shown"
