"""Usage accounting of real flow runs on the session's stack: a training flow and a small tuning study each
leave one usage row whose CPU seconds agree with this process's own accounting (``getrusage`` of itself and
its reaped children around the same call) within 10%, the same figures as MLflow metrics of the run and a
Prefect artifact, samples of ``ml_resource_seconds_total``, and `aicml usage` tables grouped from them."""

from __future__ import annotations

import json
import resource
import time
import uuid
from pathlib import Path

import pytest
from typer.testing import CliRunner

from aicml.models.options import TrainerOptions
from aicml.observability.metrics import REGISTRY
from aicml.usage.cli import app
from aicml.usage.store import UsageRecord, UsageStore
from blocks.settings import AicSettings
from tests.testdata import regression_csv


def _cpu() -> float:
    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def _counter(resource_name: str, flow: str, team: str) -> float:
    labels = {"resource": resource_name, "flow": flow, "deployment": "-", "team": team}
    return REGISTRY.get_sample_value("ml_resource_seconds_total", labels) or 0.0


def _rows(flow: str, since: float) -> list[UsageRecord]:
    store = UsageStore(AicSettings().usage_store_url())
    try:
        return [r for r in store.read(since) if r.flow == flow and not r.task]
    finally:
        store.close()


def _artifact_of(flow_run_id: str, key: str) -> list:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId, ArtifactFilterKey

    with get_client(sync_client=True) as client:
        return client.read_artifacts(
            artifact_filter=ArtifactFilter(
                key=ArtifactFilterKey(any_=[key]), flow_run_id=ArtifactFilterFlowRunId(any_=[flow_run_id])
            )
        )


@pytest.mark.slow
def test_training_flow_usage_agrees_with_the_process_accounting(
    stack: object, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import mlflow
    from prefect.client.orchestration import get_client

    from flows.training import TrainParams, train_flow

    team = f"team-{uuid.uuid4().hex[:6]}"
    monkeypatch.setenv("AIC_TEAM", team)
    params = TrainParams(
        family="digits",
        trainer=TrainerOptions(max_epochs=1, batch_size=128, accelerator="cpu", progress_bar=False),
        checkpoint_dir=str(tmp_path),
        seed=11,
        system_metrics=False,
    )
    counted = _counter("cpu", "train-flow", team)
    since, before = time.time(), _cpu()
    result = train_flow(params)
    used = _cpu() - before

    [row] = [r for r in _rows("train-flow", since - 1) if r.team == team]
    assert row.mlflow_run_id == result.mlflow_run_id and row.outcome == "success"
    assert used > 1.0  # the training child process's work is in it
    assert row.cpu_s == pytest.approx(used, rel=0.1)
    assert row.peak_memory_bytes > 50 * 2**20 and row.wall_s > 0 and row.gpu_s == 0
    assert _counter("cpu", "train-flow", team) == pytest.approx(counted + row.cpu_s)
    assert _counter("wall", "train-flow", team) == pytest.approx(row.wall_s)

    client = mlflow.MlflowClient(stack.settings.tracking_uri)  # type: ignore[attr-defined]
    run = client.get_run(result.mlflow_run_id)
    assert run.data.metrics["usage.cpu_seconds"] == pytest.approx(row.cpu_s)
    assert run.data.metrics["usage.peak_memory_bytes"] == row.peak_memory_bytes
    assert run.data.tags["aicml.team"] == team
    assert client.get_experiment(run.info.experiment_id).name == f"{team}/aic-ml"
    with get_client(sync_client=True) as prefect:
        assert f"team:{team}" in prefect.read_flow_run(row.flow_run_id).tags  # type: ignore[arg-type]
    [artifact] = _artifact_of(row.flow_run_id, "usage-train-flow")
    assert artifact.type == "table" and team in json.dumps(artifact.data)


@pytest.mark.slow
def test_tuning_study_usage_agrees_and_the_cli_groups_it(
    stack: object, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from flows.tuning import TuneParams, tune_flow

    team = f"team-{uuid.uuid4().hex[:6]}"
    monkeypatch.setenv("AIC_TEAM", team)
    params = TuneParams(
        source=str(regression_csv(tmp_path / "data.csv", rows=200)),
        target="y",
        dataset="usage",
        model="sgd",
        max_epochs=2,
        budget={"n_trials": 2},
        parallel=1,
        storage_url=f"sqlite:///{tmp_path / 'optuna.db'}",
    )
    since, before = time.time(), _cpu()
    result = tune_flow(params)
    used = _cpu() - before

    [row] = [r for r in _rows("tune", since - 1) if r.team == team]
    assert row.mlflow_run_id == result.mlflow_run_id and row.model == ""  # no model_name: no model
    # A Dask worker process ran the trials: its CPU is the study's too.
    assert row.cpu_s == pytest.approx(used, rel=0.1)
    assert _counter("cpu", "tune", team) == pytest.approx(row.cpu_s)
    # The trial worker ran on the Dask worker: its row was measured there and handed to the tune flow's run.
    store = UsageStore(AicSettings().usage_store_url())
    try:
        tasks = [r for r in store.read(since - 1) if r.task and r.flow_run_id == row.flow_run_id]
    finally:
        store.close()
    [worker] = [t for t in tasks if t.task == "trial-worker"]
    assert 0 < worker.cpu_s <= row.cpu_s and 0 < worker.wall_s <= row.wall_s

    monkeypatch.setenv("AIC_PRICE_CPU_HOUR", "3.6")  # a CPU-second costs 0.001
    table = CliRunner().invoke(app, ["--since", "1h", "--by", "team"])
    assert table.exit_code == 0, table.output
    [line] = [line.split() for line in table.output.splitlines() if line.startswith(team)]
    assert line[1] == "1" and line[-2:] == [f"{row.cpu_s * 0.001:.4f}", "used"]
    out = json.loads(CliRunner().invoke(app, ["--since", "1h", "--by", "flow", "--json"]).output)
    [group] = [g for g in out["groups"] if g["flow"] == "tune"]
    assert group["runs"] >= 1 and group["cpu_h"] >= row.cpu_s / 3600


def _burn(seconds: float) -> float:
    """Spin this process's CPU for about ``seconds``; the CPU seconds it used, by its own count."""
    start = time.process_time()
    x = 0
    while time.process_time() - start < seconds:
        x += 1
    return time.process_time() - start


def test_task_runs_on_dask_workers_get_rows_measured_there(stack: object) -> None:
    """A flow whose subflow runs two metered tasks on a Dask LocalCluster of two worker processes: each task run
    gets its own row, with the CPU seconds the task counted in its worker within 10%, and the flow's row
    (its workers are its children) holds them both."""
    from prefect import flow, task
    from prefect_dask import DaskTaskRunner

    from aicml.usage.accounting import account_usage
    from aicml.usage.tasks import gather_remote, metered

    burn = metered(task(name="burn", persist_result=False)(_burn))

    @flow(name="usage-on-dask", persist_result=False)
    def on_dask() -> list[float]:
        futures = [burn.submit(1.5), burn.submit(0.75)]
        used = [f.result() for f in futures]
        assert gather_remote() == 2
        return used

    @flow(name="usage-dask-parent", persist_result=False)
    def parent() -> tuple[list[float], list[UsageRecord], UsageRecord]:
        runner = DaskTaskRunner(
            cluster_kwargs={
                "n_workers": 2,
                "threads_per_worker": 1,
                "processes": True,
                "dashboard_address": None,
            }
        )
        with account_usage("usage-dask-parent", store_url=None, artifact=False) as account:
            used = on_dask.with_options(task_runner=runner)()
        assert account.record is not None
        return used, account.tasks, account.record

    used, tasks, record = parent()
    by_cpu = sorted(tasks, key=lambda t: t.cpu_s)
    assert [t.task for t in by_cpu] == ["burn", "burn"]
    for row, counted in zip(by_cpu, sorted(used), strict=True):
        assert row.cpu_s == pytest.approx(counted, rel=0.1), (row, counted)
        assert row.flow_run_id == record.flow_run_id and row.task_run_id
        assert 0 < row.wall_s <= record.wall_s
    assert sum(t.cpu_s for t in tasks) <= record.cpu_s
