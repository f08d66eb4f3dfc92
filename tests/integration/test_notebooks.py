"""The notebooks run top to bottom, offline, on the CPU, and are stored without outputs."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")

NOTEBOOKS = Path(__file__).resolve().parents[2] / "notebooks"
NAMES = ["01_quickstart.ipynb", "02_finetune_and_compare.ipynb"]


@pytest.mark.parametrize("name", NAMES)
def test_stored_without_outputs(name) -> None:
    notebook = nbformat.read(NOTEBOOKS / name, as_version=4)
    nbformat.validate(notebook)
    for cell in notebook.cells:
        if cell.cell_type == "code":
            assert cell.outputs == [] and cell.execution_count is None, f"{name}: clear the outputs before saving"


@pytest.mark.slow
@pytest.mark.parametrize("name", NAMES)
def test_runs_top_to_bottom_offline(name, monkeypatch, tmp_path) -> None:
    # the kernel inherits the environment: any attempt to reach the hub fails instead of downloading, and the
    # notebooks' temporary folders land in pytest's
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("TRANSFORMERS_OFFLINE", "1")
    monkeypatch.setenv("TMPDIR", str(tmp_path))
    # the kernel starts in notebooks/: it imports the embedkit of this checkout, not another installed copy
    paths = [str(NOTEBOOKS.parent), *filter(None, [os.environ.get("PYTHONPATH")])]
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(paths))
    notebook = nbformat.read(NOTEBOOKS / name, as_version=4)
    client = nbclient.NotebookClient(
        notebook, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(NOTEBOOKS)}}
    )
    client.execute()  # a failing cell raises CellExecutionError, naming the cell
    printed = "".join(
        output.get("text", "") for cell in notebook.cells if cell.cell_type == "code" for output in cell.outputs
    )
    # without ipywidgets, tqdm.auto would warn on its first import; bars that say nothing stay hidden
    assert "TqdmWarning" not in printed and "IProgress" not in printed
    assert "Loading weights" not in printed and "Writing model shards" not in printed and "Batches" not in printed
