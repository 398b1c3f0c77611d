"""The quickstart notebook imports the flow and runs it against the real stack, executed by nbclient."""

from __future__ import annotations

import os
import uuid
from pathlib import Path

import nbformat
from mlflow import MlflowClient
from nbclient import NotebookClient

NOTEBOOK = Path(__file__).resolve().parents[2] / "notebooks" / "quickstart.ipynb"


def test_quickstart_notebook_runs_the_pipeline(stack, monkeypatch) -> None:
    name = f"churn-nb-{uuid.uuid4().hex[:6]}"
    monkeypatch.setenv("AIC_NOTEBOOK_ROWS", "1500")
    monkeypatch.setenv("AIC_NOTEBOOK_MODEL", name)
    notebook = nbformat.read(NOTEBOOK, as_version=4)
    NotebookClient(
        notebook, timeout=600, kernel_name="python3", resources={"metadata": {"path": os.getcwd()}}
    ).execute()
    printed = "".join(
        output.get("text", "")
        for cell in notebook.cells
        if cell.cell_type == "code"
        for output in cell.outputs
    )
    assert "promoted=True" in printed and "version=1" in printed
    assert MlflowClient().get_model_version_by_alias(name, "champion").version == "1"
