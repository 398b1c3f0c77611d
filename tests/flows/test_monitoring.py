"""`monitor-model` end to end on the real stack: the demo churn champion trained by `ml-pipeline`, traffic
logged by the model server's prediction log, labels fed through `aicml labels ingest`. Unshifted traffic
with true labels: nothing fires. One feature shifted and labels flipped for a segment: drift on that feature
and only there, the live metric drops, both events reach the Prefect API with their evidence."""

from __future__ import annotations

import time
import uuid
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pandas as pd
import pytest
from mlflow import MlflowClient
from typer.testing import CliRunner

from aicml.data.demo import generate_churn, write_demo_data
from aicml.models.options import TrainerOptions
from aicml.observability.metrics import REGISTRY
from aicml.serving.predlog import PredictionLog, PredictionLogConfig
from aicml.serving.smoke import predict_rows
from flows.monitoring import DEGRADED_EVENT, DRIFT_EVENT, MonitorParams, MonitorThresholds, monitor_model
from flows.pipeline import PipelineParams, ml_pipeline

ROWS_PER_REQUEST = 4
THRESHOLDS = MonitorThresholds(
    drift=0.2, prediction_drift=0.2, metric_drop=0.1, min_rows=100, min_labelled=100
)


@pytest.fixture(scope="module")
def champion(stack: Any, tmp_path_factory: pytest.TempPathFactory) -> tuple[str, str]:
    """The demo churn model as the pipeline trains and promotes it: (name, version)."""
    demo = write_demo_data(tmp_path_factory.mktemp("demo"), rows=2000, parts=2)
    name = f"churn-mon-{uuid.uuid4().hex[:6]}"
    result = ml_pipeline(
        PipelineParams(
            source=demo.clean_glob, target="churn", model_name=name,
            trainer=TrainerOptions(max_epochs=1, progress_bar=False, hidden=[16]),
        )
    )  # fmt: skip
    assert result.promoted
    return name, result.version


def serve_and_log(name: str, version: str, traffic: pd.DataFrame, root: Path, prefix: str) -> pd.DataFrame:
    """The champion's predictions of ``traffic`` logged as the server logs them (requests of 4 rows);
    the request id and row of each traffic row."""
    predictions = np.asarray(predict_rows(f"models:/{name}/{version}", traffic), dtype=object)
    log = PredictionLog(name, PredictionLogConfig(root=str(root), database_url=None, flush_seconds=0.2))
    log.start()
    ids = []
    for number, first in enumerate(range(0, len(traffic), ROWS_PER_REQUEST)):
        chunk = traffic.iloc[first : first + ROWS_PER_REQUEST]
        request_id = f"{prefix}-{number}"
        columns = {c: chunk[c].to_numpy() for c in chunk.columns}
        assert log.record(request_id, version, "champion", 0.002 + 0.001 * (number % 5), columns, len(chunk),
                          predictions[first : first + len(chunk)])  # fmt: skip
        ids += [(request_id, row) for row in range(len(chunk))]
    log.close()
    assert log.counts()["written"] == len(ids) // ROWS_PER_REQUEST + bool(len(ids) % ROWS_PER_REQUEST)
    return pd.DataFrame(ids, columns=["request_id", "row"])


def feed_labels(name: str, keys: pd.DataFrame, truth: pd.Series, path: Path) -> dict[str, Any]:
    import json

    from aicml.monitoring.cli import app

    keys.assign(churned=truth.to_numpy()).to_csv(path, index=False)
    done = CliRunner().invoke(
        app, ["labels", "ingest", str(path), "--model", name, "--label-column", "churned", "--json"]
    )
    assert done.exit_code == 0, done.output
    return dict(json.loads(done.output))


def events(api: str, name: str, since: float) -> list[dict[str, Any]]:
    body = {"filter": {"event": {"prefix": ["aicml.model."]}, "resource": {"id": [f"aicml.model.{name}"]}}}
    deadline = time.monotonic() + since
    while True:
        response = httpx.post(f"{api}/events/filter", json=body, timeout=30)
        response.raise_for_status()
        found = list(response.json()["events"])
        if len(found) >= 2 or time.monotonic() > deadline:
            return found
        time.sleep(1)


def test_monitor_quiet_then_drift_and_decay(stack: Any, champion: tuple[str, str], tmp_path: Path,
                                            monkeypatch: pytest.MonkeyPatch) -> None:  # fmt: skip
    name, version = champion
    api = stack.settings.prefect_url

    # Unshifted traffic, true labels: nothing crosses a threshold.
    quiet = generate_churn(800, seed=31)
    monkeypatch.setenv("AIC_PREDICTION_LOG", str(tmp_path / "log-quiet"))
    keys = serve_and_log(name, version, quiet.drop(columns=["churn"]), tmp_path / "log-quiet", "q")
    fed = feed_labels(name, keys, quiet["churn"], tmp_path / "quiet-labels.csv")
    assert fed["joined"] == 800 and fed["rejected"] == {}, fed
    calm = monitor_model(MonitorParams(model_name=name, thresholds=THRESHOLDS))
    assert calm.version == version and calm.rows == 800 and calm.error_rate == 0.0
    assert calm.drifted_features == [] and not calm.prediction_drifted, calm.drift_scores
    assert calm.labelled_rows == 800 and not calm.degraded, (calm.live_metrics, calm.training_metrics)
    assert calm.events == [] and calm.quality_failures == 0
    assert calm.latency_ms["p50"] > 0

    # `age` moves by 25 years and the labels of month-to-month customers flip.
    shifted = generate_churn(800, seed=32)
    shifted["age"] = shifted["age"] + 25
    flipped = shifted["churn"].where(
        shifted["contract"] != "month-to-month", shifted["churn"].map({"yes": "no", "no": "yes"})
    )
    monkeypatch.setenv("AIC_PREDICTION_LOG", str(tmp_path / "log-shifted"))
    keys = serve_and_log(name, version, shifted.drop(columns=["churn"]), tmp_path / "log-shifted", "s")
    assert feed_labels(name, keys, flipped, tmp_path / "flipped-labels.csv")["joined"] == 800
    started = time.monotonic()
    loud = monitor_model(MonitorParams(model_name=name, thresholds=THRESHOLDS))
    assert loud.drifted_features == ["age"], loud.drift_scores
    assert (
        loud.drift_scores["age"]
        > 0.3
        > max(v for k, v in loud.drift_scores.items() if k not in ("age", "prediction"))
    )
    assert loud.degraded and loud.live_metrics["f1_macro"] < calm.live_metrics["f1_macro"] - 0.1
    assert loud.quality_failures >= 1, "ages beyond the training range break the suite's range expectation"
    assert loud.events == [DRIFT_EVENT, DEGRADED_EVENT]

    # The events as the Prefect API stored them, with their evidence.
    stored = {e["event"]: e for e in events(api, name, 30)}
    assert set(stored) == {DRIFT_EVENT, DEGRADED_EVENT}, stored
    assert [f["column"] for f in stored[DRIFT_EVENT]["payload"]["features"]] == ["age"]
    evidence = stored[DEGRADED_EVENT]["payload"]
    assert evidence["metric"] == "f1_macro" and evidence["drop"] > 0.1 and evidence["labelled_rows"] == 800
    assert stored[DRIFT_EVENT]["resource"]["aicml.version"] == version
    assert time.monotonic() - started < 120

    # The gauges, the report in the version's MLflow run, the table artifact.
    assert (
        REGISTRY.get_sample_value("ml_model_drift_score", {"model": name, "feature": "age"})
        == loud.drift_scores["age"]
    )
    assert (
        REGISTRY.get_sample_value("ml_model_live_metric", {"model": name, "metric": "f1_macro"})
        == loud.live_metrics["f1_macro"]
    )
    run_id = MlflowClient().get_model_version(name, version).run_id
    assert run_id
    logged = {a.path for a in MlflowClient().list_artifacts(run_id, "monitoring")}
    assert loud.report_artifact in logged and calm.report_artifact in logged
    assert loud.report_artifact.replace(".html", ".json") in logged  # the figures the weekly audit reads
    page = Path(loud.report_path).read_text()
    assert "data:image/png;base64" in page and "drift on age" in page
    response = httpx.post(
        f"{api}/artifacts/filter", json={"artifacts": {"key": {"any_": [f"monitor-{name}"]}}}, timeout=30
    )
    assert any(row["check"] == "drift age (ks)" and row["verdict"] == "DRIFT"
               for artifact in response.json() for row in _table(artifact["data"]))  # fmt: skip


def _table(data: Any) -> list[dict[str, Any]]:
    import json

    return list(json.loads(data) if isinstance(data, str) else data)


def test_aicml_monitor_run_goes_through_the_deployment_and_the_worker(stack: Any, champion: tuple[str, str],
                                                                        tmp_path: Path) -> None:  # fmt: skip
    """`aicml monitor run` starts monitor-model/local; the stack's worker runs it on the log the server
    writes by default (<home>/predictions)."""
    import asyncio
    import os
    import subprocess
    import sys

    from prefect.client.orchestration import get_client

    from aicml.monitoring.cli import app

    name, version = champion
    repo = Path(__file__).resolve().parents[2]
    traffic = generate_churn(400, seed=41).drop(columns=["churn"])
    serve_and_log(name, version, traffic, stack.settings.root / "predictions", "d")
    env = {**os.environ, **stack.client_env(), "AIC_PROJECT_DIR": str(repo)}
    env.pop("AIC_PREDICTION_LOG", None)
    deployed = subprocess.run(
        [str(Path(sys.executable).with_name("prefect")), "--no-prompt", "deploy", "--name", "monitor-model/local"],
        cwd=repo, env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert deployed.returncode == 0 and "will not be deployed" not in deployed.stdout, deployed.stdout[-2000:]

    started = CliRunner().invoke(app, ["monitor", "run", "--model", name, "--window-hours", "2"])
    assert started.exit_code == 0, started.output
    run_id = started.output.strip().rsplit("(", 1)[1].rstrip(")")

    async def final_state() -> Any:
        async with get_client() as client:
            deadline = time.monotonic() + 240
            while True:
                run = await client.read_flow_run(uuid.UUID(run_id))
                if (run.state and run.state.is_final()) or time.monotonic() > deadline:
                    return run
                await asyncio.sleep(1)

    run = asyncio.run(final_state())
    assert run.state is not None and run.state.is_completed(), run.state
    assert run.parameters["overrides"] == {"model_name": name, "window_hours": 2}
    response = httpx.post(
        f"{stack.settings.prefect_url}/artifacts/filter",
        json={"artifacts": {"key": {"any_": [f"monitor-{name}"]}, "flow_run_id": {"any_": [run_id]}}},
        timeout=30,
    )
    rows = {row["check"]: row for artifact in response.json() for row in _table(artifact["data"])}
    assert rows["predictions"]["value"] == 400 and rows["drift age (ks)"]["verdict"] == "ok", rows
    # The worker's gauges reach the stack's exporter (multiprocess mode), as Prometheus scrapes them.
    scraped = httpx.get(
        f"http://{stack.settings.host}:{stack.settings.metrics_port}/metrics", timeout=30
    ).text
    assert f'ml_model_drift_score{{feature="age",model="{name}"}}' in scraped
    assert (
        f'ml_model_live_metric{{metric="f1_macro",model="{name}"}}' not in scraped
    )  # no labels in this window
