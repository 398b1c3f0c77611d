"""Lineage end to end on the real stack: the demo pipeline twice on changed data, then the chain of each
version (MLflow datasets, lineage tags, registry), the OpenLineage events against the schema derived from the
client's generated classes, the `aicml lineage` command on an alias and on a logged prediction's request
id."""

from __future__ import annotations

import glob
import json
import os
import subprocess
import uuid
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from mlflow import MlflowClient
from typer.testing import CliRunner

import aicml
from aicml.data.demo import write_demo_data
from aicml.lineage.chain import LineageError, model_lineage
from aicml.lineage.cli import app
from aicml.lineage.events import read_events
from aicml.models.options import TrainerOptions
from aicml.rollout.aliases import apply_decision
from aicml.serving.predlog import PredictionLog, PredictionLogConfig
from flows.deployment import DeployParams, deploy_model_flow
from flows.pipeline import PipelineParams, ml_pipeline
from tests.aicml.lineage.olschema import registry, validate_event

TINY = TrainerOptions(max_epochs=1, progress_bar=False, hidden=[16], baseline=False)
STEPS = ("ingest", "validate", "train", "register", "promote")


@pytest.mark.slow
def test_two_versions_each_name_their_own_data_and_run(
    stack: object, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    home = Path(os.environ["AIC_HOME"])
    monkeypatch.delenv("AIC_LINEAGE_TRANSPORT", raising=False)
    monkeypatch.delenv("AIC_LINEAGE_URL", raising=False)
    name = f"lineage-{uuid.uuid4().hex[:6]}"
    first = write_demo_data(tmp_path / "v1", rows=500, parts=1).clean_glob
    # Changed data the first batch's suite still passes: a subset of its rows, so no value is new to it.
    second = str(tmp_path / "v2.csv")
    pd.concat(pd.read_csv(p) for p in sorted(glob.glob(first))).iloc[100:].to_csv(second, index=False)
    results = [
        ml_pipeline(PipelineParams(source=source, target="churn", model_name=name, trainer=TINY))
        for source in (first, second)
    ]
    assert results[0].fingerprint != results[1].fingerprint
    assert [r.version for r in results] == ["1", "2"]

    client = MlflowClient(os.environ["MLFLOW_TRACKING_URI"], os.environ["MLFLOW_TRACKING_URI"])
    head = subprocess.run(
        ["git", "rev-parse", "HEAD"], capture_output=True, text=True, check=True
    ).stdout.strip()
    chains = []
    for source, result in zip((first, second), results, strict=True):
        chain = model_lineage(client, f"models:/{name}/{result.version}")
        chains.append(chain)
        version = client.get_model_version(name, result.version)
        assert chain["model"]["version"] == result.version
        assert chain["source"]["uri"] == source
        assert chain["snapshot"]["fingerprint"] == result.fingerprint == chain["model"]["data_fingerprint"]
        assert chain["snapshot"]["rows"] == result.rows and chain["snapshot"]["uri"].endswith(
            f"{result.fingerprint}.parquet"
        )
        assert "churn" in [column for column, _ in chain["snapshot"]["columns"]]
        assert chain["validated"]["fingerprint"] == result.fingerprint
        assert chain["validated"]["rows"] == result.labelled_rows
        quality = chain["quality"]
        assert quality["success"] is True and quality["expectations"] > 5 and quality["failed"] == 0
        assert quality["suite"].endswith(f"suites/{name}.json") and len(quality["suite_digest"]) == 12
        assert chain["training_run"]["id"] == version.run_id
        assert chain["pipeline_run"]["id"] == result.mlflow_run_id
        # The commit of the checkout that ran (HEAD then; others may commit to a shared checkout since).
        recorded = chain["code"]["commit"]
        assert (
            recorded
            and subprocess.run(["git", "merge-base", "--is-ancestor", recorded, head]).returncode == 0
        )
        assert chain["image"] == aicml.IMAGE
        flow_run = chain["prefect_flow_run"]
        assert flow_run["id"] and flow_run["url"].endswith(f"/runs/flow-run/{flow_run['id']}")
        # MLflow's own view: the run's Datasets.
        training_inputs = client.get_run(version.run_id).inputs.dataset_inputs
        assert [d.dataset.name for d in training_inputs] == [f"{name}.validated"]
        assert training_inputs[0].dataset.digest.startswith(result.fingerprint)
    first_chain, second_chain = chains
    assert first_chain["snapshot"]["fingerprint"] != second_chain["snapshot"]["fingerprint"]
    assert first_chain["training_run"]["id"] != second_chain["training_run"]["id"]
    assert first_chain["prefect_flow_run"]["id"] != second_chain["prefect_flow_run"]["id"]

    # A rollout decision on version 1, and a Kubernetes render of it (the deploy step's events).
    apply_decision(name, "1", "hold", "lineage test", {}, "tester", home / "audit" / "deployments.jsonl")
    deploy_model_flow(DeployParams(model_name=name, version="1", target="kubernetes"))

    runner = CliRunner()
    shown = runner.invoke(app, [f"models:/{name}@champion", "--json"])
    assert shown.exit_code == 0, shown.output
    champion = json.loads(shown.output)
    assert champion["model"]["version"] == client.get_model_version_by_alias(name, "champion").version
    assert "champion" in champion["model"]["aliases"]
    text = runner.invoke(app, [f"models:/{name}/1"])
    assert text.exit_code == 0 and results[0].fingerprint in text.output and "hold by tester" in text.output

    # A logged prediction answered by version 1 leads back to version 1's data.
    predictions = tmp_path / "predictions"
    log = PredictionLog(name, PredictionLogConfig(root=str(predictions), flush_seconds=0.1))
    log.start()
    request = f"req-{uuid.uuid4().hex[:8]}"
    assert log.record(request, "1", "champion", 0.01, {"tenure": np.array([3.0])}, 1, np.array(["no"]))
    log.close()
    monkeypatch.setenv("AIC_PREDICTION_LOG", str(predictions))
    traced = runner.invoke(app, [f"models:/{name}@champion", "--request-id", request, "--json"])
    assert traced.exit_code == 0, traced.output
    traced_chain = json.loads(traced.output)
    assert traced_chain["prediction"]["version"] == "1"
    assert traced_chain["snapshot"]["fingerprint"] == results[0].fingerprint
    missing = runner.invoke(app, [f"models:/{name}@champion", "--request-id", "req-nope"])
    assert missing.exit_code == 2 and "'req-nope' is not in the prediction log" in missing.output
    with pytest.raises(LineageError, match="has no alias 'nobody'"):
        model_lineage(client, f"models:/{name}@nobody")

    # OpenLineage: every event of these runs validates; each step started and completed, twice.
    flow_runs = {c["prefect_flow_run"]["id"] for c in chains}
    events = [
        e
        for e in read_events(home / "lineage" / "events.jsonl")
        if e["run"]["facets"].get("parent", {}).get("run", {}).get("runId") in flow_runs
        or name in json.dumps(e.get("outputs", [])) + json.dumps(e.get("inputs", []))
    ]
    reg = registry()
    for event in events:
        validate_event(event, reg)
    seen = [(e["job"]["name"], e["eventType"]) for e in events]
    for step in STEPS:
        assert seen.count((f"ml-pipeline.{step}", "START")) == 2, (step, seen)
        assert seen.count((f"ml-pipeline.{step}", "COMPLETE")) == 2, (step, seen)
    # The deploy step is the deploy-model flow itself: its run is the flow run, with no parent.
    assert ("deploy-model.deploy", "START") in seen and ("deploy-model.deploy", "COMPLETE") in seen
    registered = [
        e for e in events if e["job"]["name"] == "ml-pipeline.register" and e["eventType"] == "COMPLETE"
    ]
    assert sorted(o["name"] for e in registered for o in e["outputs"]) == [
        f"models:/{name}/1",
        f"models:/{name}/2",
    ]
    snapshots = {
        o["facets"]["version"]["datasetVersion"]
        for e in events
        if e["job"]["name"] == "ml-pipeline.ingest" and e["eventType"] == "COMPLETE"
        for o in e["outputs"]
    }
    assert snapshots == {r.fingerprint for r in results}
