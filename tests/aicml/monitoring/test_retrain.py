"""The retrain engine without servers: the cool-down ledger (SQLite) and the champion's parameters read
from an MLflow run (a SQLite tracking store) as `ml-pipeline` overrides."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest
from mlflow import MlflowClient

from aicml.errors import ConfigurationError
from aicml.monitoring.retrain import SKIPPED, TRIGGERED, RetrainLedger, champion_params
from aicml.stack.overrides import apply_overrides
from flows.pipeline import PipelineParams


def test_cooldown_lets_one_retrain_through_and_records_the_skips(tmp_path: Path) -> None:
    ledger = RetrainLedger(f"sqlite:///{tmp_path / 'deployment.db'}")
    first = ledger.claim("churn", "aicml.model.drift.detected", "e1", cooldown_hours=2, now=1000.0)
    assert first.allowed and first.last_retrain_at is None
    again = ledger.claim(
        "churn", "aicml.model.performance.degraded", "e2", cooldown_hours=2, now=1000.0 + 3600
    )
    assert not again.allowed and again.last_retrain_at == 1000.0 and "cool-down" in again.reason
    assert ledger.claim("other", "aicml.model.drift.detected", "e3", cooldown_hours=2, now=1001.0).allowed
    replay = ledger.claim("churn", "aicml.model.drift.detected", "e1", cooldown_hours=0, now=1000.0 + 9000)
    assert not replay.allowed and "already handled" in replay.reason
    later = ledger.claim("churn", "aicml.model.drift.detected", "e4", cooldown_hours=2, now=1000.0 + 7201)
    assert later.allowed and later.last_retrain_at == 1000.0
    rows = ledger.history("churn")
    assert [r["decision"] for r in rows] == [TRIGGERED, SKIPPED, SKIPPED, TRIGGERED]
    assert [r["event_id"] for r in rows] == ["e1", "e2", "e1", "e4"]
    with pytest.raises(ConfigurationError, match="cooldown_hours"):
        ledger.claim("churn", "x", None, cooldown_hours=-1)


def test_racing_events_start_one_retrain(tmp_path: Path) -> None:
    ledger = RetrainLedger(f"sqlite:///{tmp_path / 'deployment.db'}")
    ledger.history("m")  # the table exists before the race
    results: list[bool] = []
    lock = threading.Lock()

    def claim(n: int) -> None:
        decision = ledger.claim("m", "aicml.model.drift.detected", f"e{n}", cooldown_hours=1)
        with lock:
            results.append(decision.allowed)

    threads = [threading.Thread(target=claim, args=(n,)) for n in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(results) == [False] * 5 + [True]
    assert [r["decision"] for r in ledger.history("m")].count(TRIGGERED) == 1


def test_champion_params_become_pipeline_overrides(tmp_path: Path) -> None:
    store = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(tracking_uri=store, registry_uri=store)  # not a stack of the session
    experiment = client.create_experiment("e", artifact_location=str(tmp_path / "artifacts"))
    parent = client.create_run(experiment, tags={"aicml.dataset": "churn-data", "aicml.model_name": "churn"})
    run = client.create_run(experiment, tags={"mlflow.parentRunId": parent.info.run_id})
    logged = {"framework": "lightning", "max_epochs": "3", "batch_size": "64", "learning_rate": "0.01",
              "hidden": "[32, 16]", "dropout": "0.2", "accelerator": "cpu", "seed": "7",
              "problem": "classification", "target": "churn", "rows_train": "100"}  # fmt: skip
    for key, value in logged.items():
        client.log_param(run.info.run_id, key, value)
    client.create_registered_model("churn")
    version = client.create_model_version("churn", str(tmp_path / "model"), run.info.run_id)
    client.set_registered_model_alias("churn", "champion", version.version)

    found = champion_params(client, "churn")
    assert found.version == str(version.version) and found.run_id == run.info.run_id
    assert found.overrides == {
        "model_name": "churn", "target": "churn", "problem": "classification", "seed": 7, "dataset": "churn-data",
        "trainer.max_epochs": 3, "trainer.batch_size": 64, "trainer.learning_rate": 0.01,
        "trainer.hidden": [32, 16], "trainer.dropout": 0.2,
    }  # fmt: skip
    # They apply onto a pipeline preset as a retrain run's overrides do.
    preset = PipelineParams(source="data/*.csv", target="x", model_name="other")
    params = apply_overrides(preset, found.overrides, PipelineParams)
    assert (
        params.trainer.hidden == [32, 16] and params.model_name == "churn" and params.source == "data/*.csv"
    )

    with pytest.raises(ConfigurationError, match="no 'champion' alias"):
        champion_params(client, "missing")
    bare = client.create_run(experiment)
    client.create_registered_model("bare")
    client.create_model_version("bare", str(tmp_path / "model"), bare.info.run_id)
    client.set_registered_model_alias("bare", "champion", "1")
    with pytest.raises(ConfigurationError, match="no 'target' parameter"):
        champion_params(client, "bare")


def test_the_triggers_overrides_fill_the_retrain_params() -> None:
    """prefect.yaml's trigger rendered by the Prefect server's own code from a monitor event, then applied
    onto the deployment's preset as the flow does."""
    import datetime
    import uuid

    import yaml
    from prefect.server.events.actions import RunDeployment
    from prefect.server.events.schemas.events import ReceivedEvent
    from prefect.utilities.schema_tools.hydration import HydrationContext, hydrate

    from deployments.presets import preset
    from flows.retrain import RetrainParams

    spec = yaml.safe_load((Path(__file__).resolve().parents[3] / "prefect.yaml").read_text())
    (deployment,) = [d for d in spec["deployments"] if d["entrypoint"] == "flows/retrain.py:retrain_model"]
    (trigger,) = deployment["triggers"]
    assert set(trigger["expect"]) == {"aicml.model.drift.detected", "aicml.model.performance.degraded"}
    event = ReceivedEvent(
        event="aicml.model.drift.detected",
        occurred=datetime.datetime.now(datetime.UTC),
        resource={
            "prefect.resource.id": "aicml.model.churn-x",
            "aicml.model": "churn-x",
            "aicml.version": "3",
        },
        payload={"features": [{"column": "age", "value": 0.4}], "threshold": 0.2},
        id=uuid.uuid4(),
    )
    parameters = dict(trigger["parameters"])
    RunDeployment._upgrade_v1_templates(parameters)
    rendered = hydrate(parameters, HydrationContext(raise_on_error=True, render_jinja=True,
                                                    jinja_context={"event": event}))  # fmt: skip
    assert set(rendered) == {"overrides"}
    base = preset("retrain-model/local")["params"]
    params = apply_overrides(base, rendered["overrides"], RetrainParams)
    assert params.model_name == "churn-x" and params.cooldown_hours == base["cooldown_hours"]
    assert params.trigger.event == "aicml.model.drift.detected" and params.trigger.event_id == str(event.id)
    assert params.trigger.evidence == event.payload and params.trigger.version == "3"
    with pytest.raises(ConfigurationError, match=r"trigger\.evnt"):
        apply_overrides(base, {"trigger.evnt": "x"}, RetrainParams)
