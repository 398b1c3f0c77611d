"""Retention on the real stack (Prefect, MLflow on PostgreSQL with proxied artifacts) and an S3-compatible
artifact store (moto): a seeded history, a dry run that lists exactly what goes, a real run that deletes
exactly that, everything kept still loads (the champion through mlflow.pyfunc), and a run killed in the middle
of a purge converges on the rerun."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from aicml.retention.engine import Candidate
from aicml.retention.gc import Targets, collect
from aicml.retention.policy import parse_policy
from aicml.retention.prefect_runs import result_path
from aicml.rollout.audit import read_audit

POLICY = parse_policy(
    {"kinds": {
        "prefect_flow_runs": {"keep_last": 1, "keep_days": 30},
        "mlflow_runs": {"keep_last": None, "keep_days": 60, "purge_after_days": 7},
        "model_versions": {"keep_last": 1, "keep_days": None, "min_versions": 1},
        "snapshots": {"keep_last": None, "keep_days": 30},
        **{k: {"enabled": False} for k in ("quarantine", "checkpoints", "prediction_logs", "data_docs", "backups")},
    }}
)  # fmt: skip
KINDS = ["prefect_flow_runs", "mlflow_runs", "model_versions", "snapshots"]


@pytest.fixture
def s3(monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """A bucket on moto's S3 server; MLflow's S3 artifact repository reaches it through the standard variables."""
    import boto3
    from moto.server import ThreadedMotoServer

    from tests.services import free_port

    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    endpoint = f"http://127.0.0.1:{port}"
    for name, value in {
        "MLFLOW_S3_ENDPOINT_URL": endpoint, "AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
    }.items():  # fmt: skip
        monkeypatch.setenv(name, value)
    boto3.client("s3", endpoint_url=endpoint).create_bucket(Bucket="mlflow")
    try:
        yield endpoint
    finally:
        server.stop()


def _objects(endpoint: str, prefix: str) -> list[str]:
    import boto3

    listed = boto3.client("s3", endpoint_url=endpoint).list_objects_v2(Bucket="mlflow", Prefix=prefix)
    return [o["Key"] for o in listed.get("Contents", [])]


def _task_result(prefect: Any, flow_run_id: str, storage: Path) -> Path:
    """The result file of flow run ``flow_run_id``'s one task run, once the server has recorded it (task
    runs arrive as events, a moment after the flow run returns)."""
    import time

    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    deadline = time.monotonic() + 30
    while True:
        runs = prefect.read_task_runs(
            flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[uuid.UUID(flow_run_id)]))
        )
        paths = [p for p in (result_path(r.state, storage) for r in runs) if p is not None]
        if paths or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    [path] = paths
    assert path.is_file(), path
    return path


def _ms(when: datetime) -> int:
    return int(when.timestamp() * 1000)


def _old_run(client: Any, experiment: str, at: datetime, tags: dict[str, str] | None = None) -> str:
    run = client.create_run(experiment, start_time=_ms(at), tags=tags or {})
    return str(run.info.run_id)


def _finish(client: Any, run_id: str, at: datetime) -> None:
    client.set_terminated(run_id, end_time=_ms(at))


@pytest.mark.slow
def test_gc_plans_exactly_deletes_exactly_keeps_what_serves_and_converges_after_a_kill(
    stack: Any, s3: str, tmp_path: Path
) -> None:
    import mlflow
    import numpy as np
    from mlflow import MlflowClient
    from prefect import flow, task
    from prefect.client.orchestration import get_client
    from prefect.settings import get_current_settings
    from prefect.states import Running
    from sklearn.linear_model import LogisticRegression

    tag = uuid.uuid4().hex[:8]
    tracking = os.environ["MLFLOW_TRACKING_URI"]
    client = MlflowClient(tracking_uri=tracking, registry_uri=tracking)
    real_now = datetime.now(UTC)
    old = real_now - timedelta(days=100)

    # --- MLflow: an S3 experiment and one on the stack's proxied store, old and new runs -----------------
    s3_exp = client.create_experiment(f"retention-s3-{tag}", artifact_location=f"s3://mlflow/retention-{tag}")
    local_exp = client.create_experiment(f"retention-local-{tag}")
    run_a = _old_run(client, s3_exp, old)  # logs the model; its version is the champion
    mlflow.set_tracking_uri(tracking)
    # The run's own experiment made current: one another test's fixture set stays current otherwise, and
    # MLflow refuses to resume a run of a different experiment.
    mlflow.set_experiment(experiment_id=s3_exp)
    with mlflow.start_run(run_id=run_a):
        model = LogisticRegression().fit(np.array([[0.0], [1.0], [2.0], [3.0]]), np.array([0, 0, 1, 1]))
        info = mlflow.sklearn.log_model(model, name="model", pip_requirements=["scikit-learn"])
    _finish(client, run_a, old)
    run_b = _old_run(client, s3_exp, old)  # backs an unaliased, older version, with a logged model of its own
    with mlflow.start_run(run_id=run_b):
        info_b = mlflow.sklearn.log_model(model, name="model-b", pip_requirements=["scikit-learn"])
    _finish(client, run_b, old)
    run_c = _old_run(client, s3_exp, old)  # old, no version: soft-deleted, then purged
    client.log_text(run_c, "c", "notes/c.txt")
    _finish(client, run_c, old)
    run_h = _old_run(client, s3_exp, old, {"aicml.legal_hold": "case 42"})
    client.log_text(run_h, "h", "notes/h.txt")
    _finish(client, run_h, old)
    run_d = client.create_run(s3_exp).info.run_id  # new: backs the newest version
    client.log_text(run_d, "d", "notes/d.txt")
    client.set_terminated(run_d)
    run_l = _old_run(client, local_exp, old)  # old, on the proxied artifact store
    client.log_text(run_l, "l", "notes/l.txt")
    _finish(client, run_l, old)
    name = f"retention-{tag}"
    client.create_registered_model(name)
    for run, logged in (
        (run_a, info),
        (run_b, info_b),
        (run_d, info),
    ):  # versions 1 and 3 share a logged model
        client.create_model_version(name, logged.model_uri, run_id=run, model_id=logged.model_id)
    assert _objects(s3, f"retention-{tag}/models/{info_b.model_id}/")
    client.set_registered_model_alias(name, "champion", "1")
    local_artifacts = stack.home / "mlartifacts" / local_exp / run_l
    assert (local_artifacts / "artifacts" / "notes" / "l.txt").is_file()
    assert _objects(s3, f"retention-{tag}/{run_c}/")

    # --- Prefect: three finished runs of one flow and a running one that holds a snapshot ----------------
    snapshots = tmp_path / "snapshots" / "churn"
    snapshots.mkdir(parents=True)
    held, free = snapshots / f"{'a' * 32}.parquet", snapshots / f"{'b' * 32}.parquet"
    held.write_bytes(b"held")
    free.write_bytes(b"free")

    @task(persist_result=True)
    def seed_step(n: int) -> int:
        return n + 1

    @flow(name=f"retention-seed-{tag}", persist_result=True)
    def seed(params: dict[str, Any] | None = None) -> int:
        return seed_step((params or {}).get("n", -1))

    # Three finished runs with persisted results, of their own and of a task run each; the oldest two go,
    # with their result files.
    finished = [str(seed({"n": i}, return_state=True).state_details.flow_run_id) for i in range(3)]
    storage = Path(get_current_settings().results.local_storage_path).expanduser()
    with get_client(sync_client=True) as prefect:
        results = [result_path(prefect.read_flow_run(uuid.UUID(r)).state, storage) for r in finished]
        assert all(r is not None and r.is_file() for r in results), results
        task_results = [_task_result(prefect, r, storage) for r in finished]
        holder = prefect.create_flow_run(seed, parameters={"params": {"source": str(held)}}, state=Running())

    targets = Targets(
        home=tmp_path, snapshots=tmp_path / "snapshots", validated=tmp_path / "validated",
        checkpoints=tmp_path / "checkpoints", data_docs=tmp_path / "data-docs", prediction_logs=None,
        backups=tmp_path / "backups", tracking_uri=tracking, registry_uri=tracking,
        backend_store_uri=stack.settings.database_for(stack.settings.mlflow_database, "psycopg"),
        experiments=(f"retention-s3-{tag}", f"retention-local-{tag}"), models=(name,),
        flows=(f"retention-seed-{tag}",),
    )  # fmt: skip
    now1 = real_now + timedelta(days=40)
    expected = {
        ("prefect_flow_runs", finished[0], "delete"), ("prefect_flow_runs", finished[1], "delete"),
        ("mlflow_runs", run_c, "soft-delete"), ("mlflow_runs", run_l, "soft-delete"),
        ("model_versions", f"{name}/2", "delete"), ("snapshots", f"churn/{free.name}", "delete"),
    }  # fmt: skip

    try:
        dry = collect(targets, POLICY, dry_run=True, kinds=KINDS, now=now1)
        assert {(c.kind, c.id, c.action) for c in dry.plan.delete} == expected
        kept = {(k.kind, k.id): k.reason for k in dry.plan.protected}
        assert kept[("snapshots", f"churn/{held.name}")] == "named by a running or scheduled flow run"
        assert kept[("model_versions", f"{name}/1")] == "alias @champion points at it"
        assert kept[("mlflow_runs", run_h)] == "legal hold (aicml.legal_hold)"
        assert kept[("mlflow_runs", run_b)] == f"backs model version {name}/2"
        assert str(holder.id) in dry.references.runs
        assert (
            free.exists() and client.get_run(run_c).info.lifecycle_stage == "active"
        )  # a dry run deletes nothing

        first = collect(targets, POLICY, dry_run=False, kinds=KINDS, now=now1)
        assert first.outcome is not None and not first.outcome.failed
        assert {(c.kind, c.id, c.action) for c in first.outcome.deleted} == expected
        assert not free.exists() and held.exists()
        assert client.get_run(run_c).info.lifecycle_stage == "deleted"  # restorable until the purge
        assert _objects(s3, f"retention-{tag}/{run_c}/")
        assert sorted(int(v.version) for v in client.search_model_versions(f"name = '{name}'")) == [1, 3]
        # Version 2's own logged model went with it, artifacts and all; the one 1 and 3 share stays.
        assert _objects(s3, f"retention-{tag}/models/{info_b.model_id}/") == []
        with pytest.raises(mlflow.exceptions.MlflowException, match=r"not found|does not exist|RESOURCE"):
            client.get_logged_model(info_b.model_id)
        assert client.get_logged_model(info.model_id).model_id == info.model_id
        with get_client(sync_client=True) as prefect:
            from prefect.exceptions import ObjectNotFound

            for gone in finished[:2]:
                with pytest.raises(ObjectNotFound):
                    prefect.read_flow_run(uuid.UUID(gone))
            assert prefect.read_flow_run(uuid.UUID(finished[2])).state.is_completed()
            assert prefect.read_flow_run(holder.id).state.is_running()
        assert not results[0].exists() and not results[1].exists() and results[2].exists()  # type: ignore[union-attr]
        assert not task_results[0].exists() and not task_results[1].exists() and task_results[2].exists()

        # A week later: the soft-deleted runs are purged; the kill lands between a run's artifacts and its rows.
        now2 = now1 + timedelta(days=8)
        second_expected = {
            ("mlflow_runs", run_c, "purge"), ("mlflow_runs", run_l, "purge"), ("mlflow_runs", run_b, "soft-delete"),
        }  # fmt: skip
        planned = collect(targets, POLICY, dry_run=True, kinds=KINDS, now=now2)
        assert {(c.kind, c.id, c.action) for c in planned.plan.delete} == second_expected

        class Killed(BaseException):
            pass

        caught: list[Candidate] = []

        def kill(candidate: Candidate, step: str) -> None:
            if step == "artifacts-deleted":
                caught.append(candidate)
                raise Killed

        with pytest.raises(Killed):
            collect(targets, POLICY, dry_run=False, kinds=KINDS, now=now2, on_step=kill)
        (killed,) = caught
        assert killed.action == "purge"
        assert client.get_run(killed.id).info.lifecycle_stage == "deleted"  # rows still there: consistent
        rerun = collect(targets, POLICY, dry_run=False, kinds=KINDS, now=now2)
        assert rerun.outcome is not None and not rerun.outcome.failed
        assert (killed.kind, killed.id, killed.action) in {
            (c.kind, c.id, c.action) for c in rerun.outcome.deleted
        }
        # Each planned deletion happened exactly once over the killed run and its rerun.
        audited = read_audit(tmp_path / "audit" / "retention.jsonl")[len(expected) :]
        assert sorted((a["model"], a["version"], a["action"]) for a in audited) == sorted(
            (k, i, f"retention.{a}") for k, i, a in second_expected
        )
        for purged in (run_c, run_l):
            with pytest.raises(mlflow.exceptions.MlflowException, match=r"not found|does not exist|RESOURCE"):
                client.get_run(purged)
        assert _objects(s3, f"retention-{tag}/{run_c}/") == []
        assert not local_artifacts.exists() or not any(local_artifacts.rglob("*.txt"))
        after = collect(targets, POLICY, dry_run=True, kinds=KINDS, now=now2)
        assert {(c.kind, c.id, c.action) for c in after.plan.delete} == {("mlflow_runs", run_b, "purge")}

        # Everything kept still loads: the champion serves, the held and new runs keep their artifacts.
        champion = mlflow.pyfunc.load_model(f"models:/{name}@champion")
        assert list(champion.predict(np.array([[0.0], [3.0]]))) == [0, 1]
        assert mlflow.artifacts.load_text(f"runs:/{run_d}/notes/d.txt") == "d"
        assert mlflow.artifacts.load_text(f"runs:/{run_h}/notes/h.txt") == "h"
        assert client.get_run(run_a).info.lifecycle_stage == "active"
        audit = read_audit(tmp_path / "audit" / "retention.jsonl")
        assert len(audit) == len(expected) + len(second_expected)
        assert {a["action"] for a in audit} == {
            "retention.delete",
            "retention.soft-delete",
            "retention.purge",
        }
    finally:
        from prefect.states import Cancelled

        with get_client(sync_client=True) as prefect:
            prefect.set_flow_run_state(holder.id, Cancelled(), force=True)
            prefect.delete_flow_run(holder.id)
