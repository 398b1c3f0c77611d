"""The pipeline's ingest and validate bodies on the new readers and compiled checks."""

from __future__ import annotations

from pathlib import Path

import pytest

from aicml.data.demo import write_demo_data
from aicml.errors import DataQualityError, SourceError
from tasks.ingest import ingest
from tasks.validate import validate


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("AIC_HOME", str(tmp_path / "home"))
    return tmp_path


def test_pipeline_ingest_and_gate_accept_clean_and_reject_corrupted(home: Path) -> None:
    demo = write_demo_data(home / "demo", rows=4000, parts=2)
    snapshot = ingest(demo.clean_glob, dataset="churn")
    assert snapshot.rows == 4000
    gate = validate(snapshot, "churn", "churn", None, 0.1)
    assert gate.rows + gate.set_aside == 4000 and gate.report.suite_created
    from_sql = ingest(demo.sqlite_url + "#" + demo.table, dataset="churn")
    assert from_sql.rows == 4000
    with pytest.raises(DataQualityError, match="contract"):
        validate(ingest(demo.corrupted, dataset="churn-bad"), "churn", "churn", None, 0.1)


def test_pipeline_ingest_refuses_ragged_rows_with_the_row_number(home: Path) -> None:
    path = home / "ragged.csv"
    path.write_text("a,b\n1,2\n3\n")
    with pytest.raises(SourceError, match="data row 2"):
        ingest(str(path))


def test_pipeline_ingest_refuses_injection_in_the_table_name(home: Path) -> None:
    with pytest.raises(SourceError, match="not allowed"):
        ingest(f"sqlite:///{home / 'x.db'}#t; DROP TABLE t")
