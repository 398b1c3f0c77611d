"""The loop closed on the real stack: the demo churn champion's traffic drifts (ages move up) and its labels
flip for month-to-month customers; `monitor-model` emits both events; the trigger of `retrain-model/local`
(prefect.yaml) starts the retrain on the stack's worker, which runs `ml-pipeline/local` with the champion's
parameters on the new data; the challenger is promoted; the second event, inside the cool-down, is skipped;
every decision is in the audit log with the event's evidence; the next window, traffic like the new training
data, is quiet. (Unshifted traffic triggering nothing: tests/flows/test_monitoring.py.)"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from mlflow import MlflowClient

from aicml.data.demo import generate_churn, write_demo_data
from aicml.models.options import TrainerOptions
from aicml.monitoring.retrain import RetrainLedger, champion_params
from aicml.rollout.audit import read_audit
from flows.monitoring import DEGRADED_EVENT, DRIFT_EVENT, MonitorParams, monitor_model
from flows.pipeline import PipelineParams, ml_pipeline
from flows.retrain import AUDIT_FILE
from tests.flows.test_monitoring import THRESHOLDS, feed_labels, serve_and_log

REPO = Path(__file__).resolve().parents[2]


def drifted(rows: int, seed: int) -> pd.DataFrame:
    """Customers aged 60 to 84 (inside the training range, so the data still passes its suite) whose
    month-to-month contracts churn the other way round."""
    frame = generate_churn(rows, seed=seed)
    frame["age"] = np.random.default_rng(seed).integers(60, 85, size=rows).astype(float)
    frame["churn"] = frame["churn"].where(
        frame["contract"] != "month-to-month", frame["churn"].map({"yes": "no", "no": "yes"})
    )
    return frame


async def _runs(deployment_id: Any, count: int, deadline_s: float, model: str) -> list[Any]:
    """The deployment's flow runs for ``model`` once ``count`` of them are final (or at the deadline),
    oldest first. Runs for other models are not ours: earlier tests' monitors emit model events too, and
    any registration of `retrain-model/local` on the session's stack carries the trigger that turns them
    into runs of the same deployment."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import DeploymentFilter, DeploymentFilterId

    deadline = time.monotonic() + deadline_s
    async with get_client() as client:
        while True:
            runs = await client.read_flow_runs(
                deployment_filter=DeploymentFilter(id=DeploymentFilterId(any_=[deployment_id]))
            )
            runs = [r for r in runs if (r.parameters.get("overrides") or {}).get("model_name") == model]
            final = [r for r in runs if r.state and r.state.is_final()]
            if len(final) >= count or time.monotonic() > deadline:
                return sorted(runs, key=lambda r: r.created)
            await asyncio.sleep(2)


def _diagnose(api: str, deployment_id: Any) -> str:
    """What Prefect says about the trigger: its automation and what its actions did."""
    import httpx

    automations = httpx.post(f"{api}/automations/filter", json={}, timeout=30).json()
    mine = [a for a in automations if str(deployment_id) in str(a)]
    body = {"filter": {"event": {"prefix": ["prefect.automation."]}}, "limit": 50}
    happened = httpx.post(f"{api}/events/filter", json=body, timeout=30).json().get("events", [])
    return f"automations: {mine}\nautomation events: {[(e['event'], e.get('payload')) for e in happened]}"


async def _only_our_trigger(deployment_id: Any) -> list[str]:
    """Delete every automation that reacts to the model events but one trigger of ours; the names deleted.

    Earlier tests register deployments on the same session stack (`prefect deploy --all`, `aicml deploy`),
    each `retrain-model` one with the trigger of prefect.yaml; left in place, each would start its own
    retrain on this test's events, and their runs would write to the same audit log and ledger.
    """
    from prefect.client.orchestration import get_client

    removed: list[str] = []
    async with get_client() as client:
        watching = [
            a
            for a in await client.read_automations()
            if any(e in a.trigger.model_dump_json() for e in (DRIFT_EVENT, DEGRADED_EVENT, "aicml.model."))
        ]
        # Each `prefect deploy` of retrain-model/local (the session's registration, then this test's) adds
        # the same trigger again: keep one of ours, as a single registration would leave.
        ours = [a.id for a in watching if str(deployment_id) in a.model_dump_json()]
        assert ours, f"no trigger of deployment {deployment_id}"
        for automation in watching:
            if automation.id != ours[0]:
                await client.delete_automation(automation.id)
                removed.append(automation.name)
    return removed


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_drift_retrains_promotes_and_cools_down(
    stack: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import DeploymentUpdate

    root = stack.settings.root
    name = f"churn-loop-{uuid.uuid4().hex[:6]}"
    demo = write_demo_data(tmp_path / "demo", rows=2000, parts=2)
    first = ml_pipeline(
        PipelineParams(
            source=demo.clean_glob, target="churn", model_name=name,
            trainer=TrainerOptions(max_epochs=1, progress_bar=False, hidden=[16]),
        )
    )  # fmt: skip
    assert first.promoted
    repeated = champion_params(MlflowClient(), name).overrides

    # The deployments as `aicml deploy` registers them; the retrain's preset points at the newly landed data.
    env = {**os.environ, **stack.client_env(), "AIC_PROJECT_DIR": str(REPO)}
    env.pop("AIC_PREDICTION_LOG", None)
    deployed = subprocess.run(
        [str(Path(sys.executable).with_name("prefect")), "--no-prompt", "deploy",
         "--name", "ml-pipeline/local", "--name", "retrain-model/local"],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert deployed.returncode == 0 and "will not be deployed" not in deployed.stdout, deployed.stdout[-3000:]
    landed = tmp_path / "landed"
    landed.mkdir()
    drifted(2000, seed=33).to_csv(landed / "churn-new.csv", index=False)

    async def configure() -> tuple[Any, Any]:
        async with get_client() as client:
            retrain = await client.read_deployment_by_name("retrain-model/local")
            pipeline = await client.read_deployment_by_name("ml-pipeline/local")
            params = dict(retrain.parameters["params"])
            params.update(cooldown_hours=1, source=str(landed / "*.csv"), timeout_s=600)
            await client.update_deployment(retrain.id, DeploymentUpdate(parameters={"params": params}))
            return retrain.id, pipeline.id

    retrain_id, pipeline_id = asyncio.run(configure())
    asyncio.run(_only_our_trigger(retrain_id))
    try:
        # Drifted traffic with flipped labels: both events fire.
        traffic = drifted(800, seed=32)
        monkeypatch.setenv("AIC_PREDICTION_LOG", str(tmp_path / "log-drift"))
        keys = serve_and_log(
            name, first.version, traffic.drop(columns=["churn"]), tmp_path / "log-drift", "s"
        )
        assert feed_labels(name, keys, traffic["churn"], tmp_path / "labels-drift.csv")["joined"] == 800
        loud = monitor_model(MonitorParams(model_name=name, thresholds=THRESHOLDS))
        assert loud.drifted_features == ["age"] and loud.degraded, (loud.drift_scores, loud.live_metrics)
        assert loud.events == [DRIFT_EVENT, DEGRADED_EVENT]

        # Each event starts a retrain-model run through the trigger: one retrains, the other meets the cool-down.
        runs = asyncio.run(_runs(retrain_id, 2, 420, name))
        assert len(runs) == 2, _diagnose(stack.settings.prefect_url, retrain_id)
        assert len(runs) == 2 and all(r.state.is_completed() for r in runs), [(r.name, r.state) for r in runs]
        assert {r.parameters["overrides"]["trigger.event"] for r in runs} == {DRIFT_EVENT, DEGRADED_EVENT}
        assert all(r.parameters["overrides"]["model_name"] == name for r in runs)
        pipelines = asyncio.run(_runs(pipeline_id, 1, 60, name))
        assert len(pipelines) == 1 and pipelines[0].state.is_completed(), pipelines
        sent = pipelines[0].parameters["overrides"]
        assert sent["model_name"] == name and sent["source"] == str(landed / "*.csv")
        # The champion's training parameters (a Lightning champion's trainer options too) and the new data.
        assert sent == {**repeated, "source": str(landed / "*.csv")} and sent["target"] == "churn"
        assert sent["seed"] == 42 and sent["problem"] == "classification"

        # The new champion, trained on the new data.
        client = MlflowClient()
        champion = client.get_model_version_by_alias(name, "champion")
        assert int(champion.version) > int(first.version)

        # The audit log: triggered (with the event's evidence), promoted, skipped by the cool-down.
        records = [r for r in read_audit(root / "audit" / AUDIT_FILE) if r["model"] == name]
        actions = [r["action"] for r in records]
        assert sorted(actions) == ["promoted", "skipped", "triggered"], records
        by_action = {r["action"]: r for r in records}
        triggered, skipped = by_action["triggered"], by_action["skipped"]
        evidence = triggered["evidence"]["trigger"]
        assert evidence["version"] == first.version and evidence["event_id"]
        if evidence["event"] == DRIFT_EVENT:
            assert [f["column"] for f in evidence["evidence"]["features"]] == ["age"]
        else:
            assert evidence["evidence"]["metric"] == "f1_macro" and evidence["evidence"]["drop"] > 0.1
        assert (
            "cool-down" in skipped["reason"] and skipped["evidence"]["trigger"]["event"] != evidence["event"]
        )
        promoted = by_action["promoted"]
        assert promoted["version"] == str(champion.version) and promoted["previous_champion"] == first.version
        assert promoted["champion_after"] == str(champion.version) and "beats" in promoted["reason"]
        from blocks.settings import service_database_url

        ledger = RetrainLedger(
            service_database_url("MODEL_DEPLOYMENT") or f"sqlite:///{root / 'deployment.db'}"
        )
        assert [r["decision"] for r in ledger.history(name)] == ["triggered", "skipped"]

        # Traffic like the new training data, true labels: quiet, no event.
        after = drifted(800, seed=34)
        monkeypatch.setenv("AIC_PREDICTION_LOG", str(tmp_path / "log-after"))
        keys = serve_and_log(
            name, str(champion.version), after.drop(columns=["churn"]), tmp_path / "log-after", "p"
        )
        assert feed_labels(name, keys, after["churn"], tmp_path / "labels-after.csv")["joined"] == 800
        calm = monitor_model(MonitorParams(model_name=name, thresholds=THRESHOLDS))
        assert calm.version == str(champion.version)
        assert calm.drifted_features == [] and not calm.prediction_drifted, calm.drift_scores
        assert not calm.degraded and calm.events == [], (calm.live_metrics, calm.training_metrics)
    finally:

        async def remove() -> None:  # its trigger goes with it: later tests' events start nothing
            async with get_client() as client:
                await client.delete_deployment(retrain_id)

        asyncio.run(remove())
