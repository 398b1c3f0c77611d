"""The ingest flow against the real local stack: Dask LocalCluster, quarantine, artifacts, Data Docs,
drift event, metrics, and a rerun that adds nothing."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import httpx
import pandas as pd
import pytest

from aicml.data.demo import generate_churn
from aicml.data.sinks import ParquetSink
from aicml.observability.metrics import REGISTRY
from flows.ingestion import IngestParams, ingest_flow


def artifacts(api: str, key: str) -> list[dict[str, Any]]:
    response = httpx.post(f"{api}/artifacts/filter", json={"artifacts": {"key": {"any_": [key]}}}, timeout=30)
    response.raise_for_status()
    return list(response.json())


def drift_events(api: str, load: str) -> list[dict[str, Any]]:
    """Drift events of ``load`` as the server stored them (events arrive asynchronously: poll)."""
    body = {
        "filter": {
            "event": {"name": ["aicml.data.drift.detected"]},
            "resource": {"id": [f"aicml.dataset.{load}"]},
        }
    }
    deadline = time.monotonic() + 30
    while True:
        response = httpx.post(f"{api}/events/filter", json=body, timeout=30)
        response.raise_for_status()
        events = list(response.json()["events"])
        if events or time.monotonic() > deadline:
            return events
        time.sleep(1)


def test_ingest_flow_end_to_end(stack: Any, tmp_path: Path) -> None:
    api = stack.settings.prefect_url
    src = tmp_path / "landing"
    src.mkdir()
    clean = generate_churn(6000, seed=21)
    for index in range(3):
        clean.iloc[index * 2000 : (index + 1) * 2000].to_csv(src / f"part-{index}.csv", index=False)
    out = tmp_path / "dataset"
    params = IngestParams(
        load="churn-flow",
        source=str(src / "*.csv"),
        key=["customer_id"],
        derived={"charge_per_month": "total_charges / (tenure_months + 1)"},
        output=str(out),
        partition_by=["region"],
        workers=2,
    )
    first = ingest_flow(params)
    assert first.partitions == 3 and first.rows_in == 6000
    assert first.accepted + first.quarantined == 6000 and first.accepted >= 5800
    data = ParquetSink(str(out), ("region",)).read()
    assert len(data) == first.committed_rows == first.accepted
    assert data["customer_id"].is_unique and "charge_per_month" in data.columns
    assert sorted(p.name for p in out.iterdir() if p.name.startswith("region=")) == [
        f"region={r}" for r in ("central", "east", "north", "south", "west")
    ]
    assert first.data_docs and Path(first.data_docs).is_file()
    quality = artifacts(api, "ingest-churn-flow-quality")
    assert quality and "expect_column_values_to_not_be_null" in str(quality[0]["data"])

    again = ingest_flow(params)
    assert again.partitions == 0 and again.skipped == 3 and again.committed_rows == 0

    # A corrupted, shifted batch: bad rows quarantined with reasons, drift reported as an event.
    bad = generate_churn(2000, seed=99)
    bad["customer_id"] = [f"X{i:07d}" for i in range(len(bad))]
    bad["monthly_charges"] = (bad["monthly_charges"] * 0.5 + 12).round(2)  # shifted, still in range
    bad["contract"] = bad["contract"].astype(object)
    bad.loc[:9, "contract"] = "lifetime"  # 0.5% unknown categories: within mostly, rows quarantined
    bad.to_csv(src / "part-9.csv", index=False)
    third = ingest_flow(params)
    assert third.partitions == 1 and third.quarantined == 10 and third.accepted == 1990
    quarantine = ParquetSink(third.quarantine_dir).read()
    assert quarantine["_aic_reason"].str.contains("in_set on 'contract': 'lifetime'").sum() == 10
    reasons = artifacts(api, "ingest-churn-flow-quarantine")
    assert any("expect_column_values_to_be_in_set on 'contract'" in str(a["data"]) for a in reasons)
    assert "monthly_charges" in third.drifted_columns
    assert drift_events(api, "churn-flow")
    assert len(ParquetSink(str(out), ("region",)).read()) == first.accepted + third.accepted

    exposition = REGISTRY.get_sample_value(
        "ml_data_integration_records_processed_total", {"source": "churn-flow", "outcome": "quarantined"}
    )
    assert exposition is not None and exposition >= third.quarantined


def test_policy_fail_stops_the_flow_and_writes_nothing(stack: Any, tmp_path: Path) -> None:
    from aicml.errors import DataQualityError

    src = tmp_path / "in"
    src.mkdir()
    pd.DataFrame({"id": [1, 2], "score": [1.0, 500.0]}).to_csv(src / "a.csv", index=False)
    suite = tmp_path / "suite.json"
    suite.write_text(
        '{"name": "s", "expectations": [{"type": "expect_column_values_to_be_between",'
        ' "kwargs": {"column": "score", "min_value": 0, "max_value": 100}}]}'
    )
    params = IngestParams(
        load="strict",
        source=str(src),
        suite_path=str(suite),
        policy="fail",
        output=str(tmp_path / "out"),
        cluster="sync",
    )
    with pytest.raises(DataQualityError, match="expect_column_values_to_be_between"):
        ingest_flow(params)
    assert ParquetSink(str(tmp_path / "out")).read().empty


def test_the_ingest_flow_loads_without_the_ml_stack() -> None:
    """Every deployment run starts a fresh process: the ingest flow must not pay for MLflow or torch
    (about 0.6 s and more) that it never uses."""
    import subprocess
    import sys

    repo = Path(__file__).resolve().parents[2]
    probe = "import sys, flows.ingestion; print(sorted({'mlflow', 'torch', 'lightning'} & set(sys.modules)))"
    out = subprocess.run([sys.executable, "-c", probe], cwd=repo, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]", out.stdout
