"""The one place a flow run's usage is accounted: ``account_usage`` measures the block (`meter.Meter`), then
writes the record to the usage store, counts ``ml_resource_seconds_total``, logs ``usage.*`` metrics (and
the ``aicml.team`` tag) on the MLflow run the block names, and leaves a table artifact on the Prefect flow
run. The flow run's task runs (tasks marked `tasks.metered`; those on Dask workers are measured there,
`tasks.gather_remote`) get their own rows, ``usage.task.<task>.*`` metrics (summed over a task's runs) and
lines in the same artifact; the counter counts flow runs only, so nothing is counted twice. Accounting never fails the flow: a record that cannot
be written is logged as a warning.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from aicml.usage.meter import Meter
from aicml.usage.requested import requested_from
from aicml.usage.store import UsageRecord, UsageStore
from aicml.usage.tasks import TaskUse, accounted, adopted, forget, spans_of, task_usage

if TYPE_CHECKING:
    from aicml.registry.tracking import Tracking

log = logging.getLogger(__name__)
TEAM_TAG = "aicml.team"
ARTIFACT_PREFIX = "usage-"


@dataclass
class Account:
    """What the block tells the accounting while it runs: the MLflow run its usage belongs to, the model."""

    mlflow_run_id: str = ""
    model: str = ""
    record: UsageRecord | None = field(default=None, init=False)
    tasks: list[UsageRecord] = field(default_factory=list, init=False)

    def attach(self, mlflow_run_id: str | None = None, model: str | None = None) -> None:
        if mlflow_run_id:
            self.mlflow_run_id = mlflow_run_id
        if model:
            self.model = model


# Job variables of the work-pool templates whose values are the pod's requests.
REQUEST_VARIABLES = {"cpu_request": "AIC_REQUESTED_CPU", "memory_request": "AIC_REQUESTED_MEMORY",
                     "gpu_count": "AIC_REQUESTED_GPU"}  # fmt: skip


def _flow_run() -> tuple[str, str, dict[str, str]]:
    """The current Prefect flow run's id, its deployment (``flow/deployment``) and the requests its own
    job variables name (as ``AIC_REQUESTED_*``); empty outside a flow run."""
    try:
        from prefect.runtime import deployment, flow_run

        run_id = flow_run.get_id() or ""
        name = deployment.get_name() or ""
        variables = flow_run.get_job_variables() or {}
        requests = {env: str(variables[var]) for var, env in REQUEST_VARIABLES.items() if variables.get(var)}
        return run_id, f"{flow_run.get_flow_name()}/{name}" if name else "", requests
    except Exception:
        return "", "", {}


def team_tag(team: str) -> str:
    """The Prefect tag that marks a team's flow runs."""
    return f"team:{team}"


def tag_flow_run(flow_run_id: str, team: str) -> None:
    """Add the team's tag to flow run ``flow_run_id`` (its other tags are kept)."""
    from prefect.client.orchestration import get_client

    with get_client(sync_client=True) as client:
        run = client.read_flow_run(flow_run_id)  # type: ignore[arg-type]
        tag = team_tag(team)
        if tag not in run.tags:
            client.update_flow_run(run.id, tags=[*run.tags, tag])


def task_records(record: UsageRecord, uses: list[TaskUse]) -> list[UsageRecord]:
    """The rows of flow run ``record``'s task runs."""
    return [
        UsageRecord(
            flow=record.flow,
            started=u.started,
            wall_s=u.wall_s,
            cpu_s=u.cpu_s,
            peak_memory_bytes=u.peak_memory_bytes,
            gpu_s=u.gpu_s,
            requested_cpu=record.requested_cpu,
            requested_memory_bytes=record.requested_memory_bytes,
            requested_gpu=record.requested_gpu,
            deployment=record.deployment,
            team=record.team,
            model=record.model,
            flow_run_id=record.flow_run_id,
            mlflow_run_id=record.mlflow_run_id,
            outcome=record.outcome,
            task=u.name,
            task_run_id=u.task_run_id,
        )
        for u in uses
    ]


def task_metrics(tasks: list[UsageRecord]) -> dict[str, float]:
    """``usage.task.<task>.*``: seconds summed over each task's runs, the largest peak memory."""
    out: dict[str, float] = {}
    for t in tasks:
        prefix = f"usage.task.{t.task}."
        for key, value in (("wall_seconds", t.wall_s), ("cpu_seconds", t.cpu_s), ("gpu_seconds", t.gpu_s)):
            out[prefix + key] = out.get(prefix + key, 0.0) + value
        out[prefix + "peak_memory_bytes"] = max(
            out.get(prefix + "peak_memory_bytes", 0.0), t.peak_memory_bytes
        )
    return out


def publish(
    record: UsageRecord,
    store_url: str | None,
    tracking: Tracking | None,
    artifact: bool,
    tasks: list[UsageRecord] | None = None,
) -> None:
    """Hand ``record`` and its task runs' rows to every place they are read from; a place that fails is a
    warning, not an error."""
    from aicml.observability.metrics import RESOURCE_SECONDS

    tasks = tasks or []

    for resource, seconds in record.resource_seconds().items():
        RESOURCE_SECONDS.labels(
            resource=resource, flow=record.flow, deployment=record.deployment or "-", team=record.team or "-"
        ).inc(max(seconds, 0.0))
    if store_url:
        store = UsageStore(store_url)
        try:
            store.append(record, *tasks)
        except Exception as exc:
            log.warning("Usage of %s not stored (%s: %s)", record.flow, type(exc).__name__, exc)
        finally:
            store.close()
    if tracking is not None and record.mlflow_run_id:
        try:
            # One request: a metric at a time cost a round trip each (8 + 4 per metered task).
            tracking.log_batch(
                record.mlflow_run_id,
                record.metrics() | task_metrics(tasks),
                {TEAM_TAG: record.team} if record.team else None,
            )
        except Exception as exc:
            log.warning("Usage metrics of MLflow run %s not logged (%s)", record.mlflow_run_id, exc)
    if artifact and record.flow_run_id:
        try:
            from prefect.artifacts import create_table_artifact

            from aicml.names import slug

            rows = [
                {"flow": r.flow, "task": r.task or "(whole run)", "team": r.team or "-", "outcome": r.outcome,
                 **{k: round(v, 3) for k, v in r.metrics().items()}}
                for r in [record, *tasks]
            ]  # fmt: skip
            create_table_artifact(
                rows,
                key=ARTIFACT_PREFIX + slug(record.flow),
                description=f"Resources used by this {record.flow} run and its task runs (`aicml usage` sums them).",
            )
        except Exception as exc:
            log.warning("Usage artifact of %s not created (%s)", record.flow, exc)


@contextlib.contextmanager
def account_usage(
    flow: str,
    *,
    team: str | None = None,
    store_url: str | None = None,
    tracking: Tracking | None = None,
    model: str = "",
    environ: Mapping[str, str] | None = None,
    interval: float = 0.5,
    artifact: bool = True,
) -> Iterator[Account]:
    """Account the usage of the block as one run of ``flow``.

    Args:
        flow: The flow's name (the counter's and the rows' ``flow``).
        team: The team the run belongs to (``AicSettings.team``); also tags the Prefect flow run.
        store_url: The usage store (``AicSettings.usage_store_url()``); None records nowhere.
        tracking: The MLflow server of the run the block attaches (``Account.attach``).
        model: The model the run is about, when known before it starts.
        environ: Where the Kubernetes job's requests are read (``AIC_REQUESTED_*``); the process's by default,
            then the flow run's own job variables (``cpu_request``, ``memory_request``, ``gpu_count``).
        interval: Seconds between looks at memory and GPUs.
        artifact: Leave a table artifact on the flow run.
    """
    flow_run_id, deployment, run_requests = _flow_run()
    # The job template's environment first; else what this run's own job variables asked for.
    requested = requested_from({**run_requests, **(os.environ if environ is None else environ)})
    if team and flow_run_id:
        try:
            tag_flow_run(flow_run_id, team)
        except Exception as exc:
            log.warning("Flow run %s not tagged with its team (%s)", flow_run_id, exc)
    account = Account(model=model)
    meter = Meter(interval).start()
    outcome = "failure"
    try:
        with accounted(flow_run_id):
            yield account
        outcome = "success"
    finally:
        m = meter.stop()
        record = UsageRecord(
            flow=flow,
            started=m.started,
            wall_s=m.wall_s,
            cpu_s=m.cpu_s,
            peak_memory_bytes=m.peak_memory_bytes,
            gpu_s=m.gpu_s,
            gpu_memory_bytes=m.gpu_memory_bytes,
            requested_cpu=requested.cpu,
            requested_memory_bytes=requested.memory_bytes,
            requested_gpu=requested.gpu,
            deployment=deployment,
            team=team or "",
            model=account.model,
            flow_run_id=flow_run_id,
            mlflow_run_id=account.mlflow_run_id,
            outcome=outcome,
        )
        account.record = record
        spans = spans_of(flow_run_id, m.started) if flow_run_id else []
        # Task runs on Dask workers were measured there and handed here by `gather_remote` in the flow run
        # that owns the Dask task runner (this one or a subflow): the one path they come by.
        remote = adopted(flow_run_id)
        account.tasks = task_records(record, task_usage(m.samples, spans) + remote)
        forget(spans)
        publish(record, store_url, tracking, artifact, account.tasks)


def usage_summary(record: UsageRecord) -> dict[str, Any]:
    """The record as the flows log it: rounded seconds and GiB."""
    gib = 2.0**30
    return {"wall_s": round(record.wall_s, 1), "cpu_s": round(record.cpu_s, 1), "gpu_s": round(record.gpu_s, 1),
            "peak_memory_gib": round(record.peak_memory_bytes / gib, 2)}  # fmt: skip
