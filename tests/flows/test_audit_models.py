"""`audit-models` on the real stack: every registered model with an alias gets its section (live metric over
time and open alerts from the kept monitor runs, volume from the prediction log's summary rows, last
retrain from the registry and the audit log); the report is a markdown artifact in Prefect and each
model's part is in its champion's MLflow run as audit/<date>.md. A model without an alias is left out."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import mlflow
import numpy as np
import pandas as pd
import pytest
from mlflow import MlflowClient
from sklearn.linear_model import LinearRegression

from aicml.errors import RegistryError
from aicml.monitoring.monitor import Thresholds, monitor_window
from aicml.monitoring.report import write_summary
from aicml.rollout.audit import AuditRecord, append_audit
from aicml.serving.predlog import SummaryStore
from flows.audit import ARTIFACT_KEY, AuditParams, audit_models
from tests.aicml.monitoring.test_monitor import reference, window


def register(name: str, alias: str | None) -> str:
    frame = pd.DataFrame({"size": [1.0, 2.0, 3.0], "city": [0.0, 1.0, 0.0]})
    mlflow.set_experiment("audit-test")
    with mlflow.start_run():
        mlflow.sklearn.log_model(
            LinearRegression().fit(frame, [3.0, 6.0, 9.0]), name="model", registered_model_name=name,
            serialization_format="skops", skops_trusted_types=[], pip_requirements=["scikit-learn"],
        )  # fmt: skip
    version = str(max(int(v.version) for v in MlflowClient().search_model_versions(f"name = '{name}'")))
    if alias:
        MlflowClient().set_registered_model_alias(name, alias, version)
    return version


def test_audit_reports_every_aliased_model_in_prefect_and_mlflow(
    stack: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    mlflow.set_tracking_uri(stack.settings.tracking_uri)
    tag = uuid.uuid4().hex[:6]
    served, idle, plain = f"audit-{tag}", f"audit-idle-{tag}", f"audit-plain-{tag}"
    version = register(served, "champion")
    register(idle, "staging")
    register(plain, None)
    home = stack.settings.root
    now = datetime.now(UTC)

    # Two monitor runs of the served model: a calm day, then drift on `size` with wrong labels.
    rng = np.random.default_rng(11)
    ref = reference(rng)
    ref.model, ref.version = served, version
    for days_ago, shift in ((2, 0.0), (1, 40.0)):
        end = now - timedelta(days=days_ago)
        traffic = window(rng, 300, shift)
        noise = rng.normal(0, 5 if shift == 0 else 200, 300)
        labels = traffic[["request_id", "row"]].assign(label=traffic["prediction"] + noise)
        report = monitor_window(traffic, labels, ref, end - timedelta(hours=1), end, Thresholds())
        write_summary(report, home / "monitoring" / served / f"report-{end:%Y%m%dT%H%M%SZ}.json")
    # The prediction log's summary rows, as the model server writes them.
    database = tmp_path / "deployment.db"
    monkeypatch.setenv("AIC_PREDICTION_LOG_DB", f"sqlite:///{database}")
    store = SummaryStore(f"sqlite:///{database}")
    store.insert([
        {"batch_id": f"b{i}", "version": version, "arm": "champion", "model": served,
         "window_start": now - timedelta(days=i + 1), "window_end": now - timedelta(days=i + 1) + timedelta(minutes=1),
         "count": 250, "requests": 100, "errors": 0, "latency_p50_ms": 3.0, "latency_p95_ms": 7.0,
         "latency_p99_ms": 9.0, "sample": 1.0, "path": f"/log/b{i}.parquet", "written_at": now}
        for i in range(3)
    ])  # fmt: skip
    store.close()
    append_audit(home / "audit" / "deployments.jsonl",
                 AuditRecord(served, version, "promote", f"first champion of {served}", "ml-pipeline", {}, None,
                             version))  # fmt: skip

    state = audit_models(AuditParams(), return_state=True)
    result = state.result()
    found = {m.model_name: m for m in result.models}
    assert served in found and idle in found and plain not in found
    mine = found[served]
    assert mine.monitor_runs == 2 and mine.logged_predictions == 750 and mine.latest_version == version
    assert mine.live_metric["r2"] < 0.5 and mine.drifted == {"size": 1, "prediction": 1}
    assert {a["alert"] for a in mine.open_alerts} >= {"feature drift", "live metric degraded"}
    assert found[idle].monitor_runs == 0 and found[idle].open_alerts == []

    # In Prefect: the markdown artifact of this flow run, read back from the API.
    flow_run_id = str(state.state_details.flow_run_id)
    response = httpx.post(
        f"{stack.settings.prefect_url}/artifacts/filter",
        json={"artifacts": {"key": {"any_": [ARTIFACT_KEY]}, "flow_run_id": {"any_": [flow_run_id]}}},
        timeout=30,
    )
    response.raise_for_status()
    (artifact,) = response.json()
    page = str(artifact["data"])
    assert f"## {served}" in page and f"## {idle}" in page and plain not in page
    assert "| logged predictions | 750 |" in page and "| feature drift | size |" in page
    assert f"first champion of {served}" in page and "Unknown: no monitor run in the period." in page

    # In MLflow: the served model's part, in its champion's run.
    run_id = MlflowClient().get_model_version(served, version).run_id
    assert mine.mlflow_run_id == run_id and mine.mlflow_artifact == f"audit/{result.end:%Y-%m-%d}.md"
    logged = mlflow.artifacts.load_text(f"runs:/{run_id}/{mine.mlflow_artifact}")
    assert logged.startswith(f"## {served}") and "| monitor runs | 2 |" in logged and idle not in logged
    assert "### Live metric over time" in logged and "r2: first" in logged

    with pytest.raises(RegistryError, match=plain):
        audit_models(AuditParams(models=[plain], log_to_mlflow=False))
