"""The researcher's notebook (scaling/scaling_law.ipynb) runs top to bottom, in a temp dir, in under a minute."""

from __future__ import annotations

import json
import shutil
import sys
import time
from pathlib import Path

import pytest

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")

SCALING = Path(__file__).resolve().parent.parent / "scaling"
NOTEBOOK = SCALING / "scaling_law.ipynb"


def test_stored_notebook_is_cleared_and_labels_synthetic_data():
    nb = nbformat.read(NOTEBOOK, as_version=4)
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert code and all(not c.outputs and c.execution_count is None for c in code)
    first = nb.cells[0]
    assert first.cell_type == "markdown" and "SYNTHETIC" in first.source and "not measured" in first.source
    assert "exact equation was not available" in first.source


def test_notebook_executes_top_to_bottom(tmp_path, monkeypatch):
    monkeypatch.delenv("XLLAMA_SCALING_POINTS", raising=False)
    for name in ("scaling_law.ipynb", "points_synthetic.csv"):
        shutil.copy(SCALING / name, tmp_path / name)
    nb = nbformat.read(tmp_path / "scaling_law.ipynb", as_version=4)
    nb.cells.append(nbformat.v4.new_code_cell("import sys; print(sys.prefix)"))  # which Python ran it
    client = nbclient.NotebookClient(nb, kernel_name="python3", timeout=60,
                                     resources={"metadata": {"path": str(tmp_path)}})
    start = time.perf_counter()
    client.execute()
    elapsed = time.perf_counter() - start
    assert elapsed < 60, f"notebook took {elapsed:.1f} s"

    assert nb.cells[-1].outputs[0]["text"].strip() == sys.prefix  # the kernel is this environment's Python
    outputs = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs]
    assert not [o for o in outputs if o.output_type == "error"]
    assert sum("image/png" in o.get("data", {}) for o in outputs) >= 3  # forms, fit, allocation
    fit = json.loads((tmp_path / "fit.json").read_text())
    assert fit["source"] == "points_synthetic.csv" and fit["form"] in ("power", "joint", "log")
    alloc = json.loads((tmp_path / "alloc.json").read_text())
    assert sum(alloc["allocation"].values()) == alloc["budget"]
    assert (tmp_path / "fit.png").stat().st_size > 1000
