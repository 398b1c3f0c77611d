"""Follow a flow run through the Prefect API until it ends, then read and summarize what it returned.

`aicml run`, `demo` and `resume` print the run's UI link as soon as it exists, then every state change of
the flow run and of its task runs and every new log line (polling, like `prefect flow-run logs --follow`),
then a few lines of result: what `ml-pipeline` returned (its persisted `PipelineResult`) with the links
to the MLflow run and model version.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any
from uuid import UUID

Emit = Callable[[str], None]
POLL_SECONDS = 1.0
# Log lines reach the API in batches, in any order within a few seconds: each poll looks back this far
# and skips the lines it has already shown.
LOG_LOOKBACK = timedelta(seconds=30)
LOG_PAGE = 200


def flow_run_url(ui_url: str, flow_run_id: UUID | str) -> str:
    return f"{ui_url.rstrip('/')}/runs/flow-run/{flow_run_id}"


@dataclass
class WatchOutcome:
    """How a watched flow run ended (``finished`` False: still running at the timeout)."""

    flow_run: Any
    seconds: float
    finished: bool
    result: dict[str, Any] | None = None
    result_error: str | None = None
    task_states: dict[str, str] = field(default_factory=dict)

    @property
    def state_name(self) -> str:
        state = self.flow_run.state
        return str(state.name) if state is not None else "Unknown"

    @property
    def completed(self) -> bool:
        state = self.flow_run.state
        return bool(state is not None and state.is_completed())


def _plain(value: Any) -> Any:
    """A returned value as JSON-ready data (pydantic models and dataclasses included)."""
    import dataclasses

    if hasattr(value, "model_dump"):
        return value.model_dump(mode="json")
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return dataclasses.asdict(value)
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    if value is None or isinstance(value, str | int | float | bool):
        return value
    return repr(value)


def _entrypoint_module(entrypoint: str | None) -> tuple[str, str] | None:
    """``flows/pipeline.py:ml_pipeline`` -> (``pipeline``, ``flows.pipeline``): the name the worker's
    flow-run process gave the flow's module (Prefect loads the file by path, under its stem) and the
    module that file is in this installation."""
    if not entrypoint or ":" not in entrypoint:
        return None
    path = entrypoint.rsplit(":", 1)[0]
    if not path.endswith(".py"):
        return None
    dotted = path.removesuffix(".py").replace("/", ".").strip(".")
    return dotted.rsplit(".", 1)[-1], dotted


# The pipeline publishes its result as a table artifact keyed by this prefix and the model: read when the
# persisted result is not reachable from here (a cluster's volume).
RESULT_ARTIFACT_PREFIX = "pipeline-result-"


def result_from_artifact(client: Any, flow_run_id: UUID) -> dict[str, Any] | None:
    """The flow run's result as its table artifact holds it (one row), or None when it published none."""
    import json

    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId, ArtifactFilterType

    artifacts = client.read_artifacts(
        artifact_filter=ArtifactFilter(
            flow_run_id=ArtifactFilterFlowRunId(any_=[flow_run_id]), type=ArtifactFilterType(any_=["table"])
        )
    )
    for artifact in artifacts:
        if not (artifact.key or "").startswith(RESULT_ARTIFACT_PREFIX.rstrip("-")):
            continue
        rows = json.loads(artifact.data) if isinstance(artifact.data, str) else artifact.data
        if isinstance(rows, list) and rows and isinstance(rows[0], dict):
            return rows[0]
    return None


def read_result(flow_run: Any, entrypoint: str | None = None) -> tuple[dict[str, Any] | None, str | None]:
    """The flow run's returned value, read from its persisted result; (None, why) when it cannot be read.

    A result pickled by a flow loaded from ``entrypoint`` refers to its classes under the file's stem
    (``pipeline.PipelineResult``); that name is mapped to the installed module for the read.
    """
    import importlib
    import sys

    state = flow_run.state
    if state is None or not state.is_completed():
        return None, None
    aliased: str | None = None
    try:
        for _attempt in range(2):
            try:
                value = state.result(raise_on_failure=False)
                break
            except ModuleNotFoundError as exc:
                names = _entrypoint_module(entrypoint)
                if aliased or names is None or exc.name != names[0] or names[0] in sys.modules:
                    raise
                sys.modules[names[0]] = importlib.import_module(names[1])
                aliased = names[0]
    except Exception as exc:  # storage not reachable from here (a cluster's volume), or no persisted result
        return None, f"the result is not readable from here ({type(exc).__name__}: {exc})"
    finally:
        if aliased:
            sys.modules.pop(aliased, None)
    data = _plain(value)
    return (data if isinstance(data, dict) else {"value": data}), None


class FlowRunWatcher:
    """Polls one flow run: emits its state changes, its task runs' state changes and its new log lines,
    each round's lines in time order."""

    def __init__(self, client: Any, flow_run_id: UUID, emit: Emit, min_level: int = logging.INFO):
        self.client = client
        self.flow_run_id = flow_run_id
        self.emit = emit
        self.min_level = min_level
        self.state: str | None = None
        self.task_states: dict[UUID, tuple[str, str]] = {}
        self.task_names: dict[UUID, str] = {}
        self.seen_logs: set[UUID] = set()
        self.since: datetime | None = None
        # Flow runs started by this one (a stage run as a deployment of its own, e.g. on GPU nodes).
        self.children: dict[UUID, tuple[str, str]] = {}

    def poll(self) -> Any:
        """One round: read the run, its task runs and new logs; returns the flow run as read."""
        flow_run = self.client.read_flow_run(self.flow_run_id)
        events = self._child_events() + self._task_events() + self._log_events()
        name = flow_run.state.name if flow_run.state is not None else None
        if name != self.state:
            self.state = name
            message = f": {flow_run.state.message}" if flow_run.state and flow_run.state.message else ""
            events.append(
                (_when(flow_run.state.timestamp if flow_run.state else None), f"flow run {name}{message}")
            )
        self._emit(events)
        return flow_run

    def poll_events(self) -> None:
        """Task states and logs only (after the run ended: the last lines arrive a moment later)."""
        self._emit(self._child_events() + self._task_events() + self._log_events())

    @property
    def run_ids(self) -> list[UUID]:
        return [self.flow_run_id, *self.children]

    def _child_events(self) -> list[tuple[datetime, str]]:
        from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterParentFlowRunId

        runs = self.client.read_flow_runs(
            flow_run_filter=FlowRunFilter(
                parent_flow_run_id=FlowRunFilterParentFlowRunId(any_=[self.flow_run_id])
            )
        )
        events = []
        for run in runs:
            state = str(run.state_name)
            if self.children.get(run.id, ("", ""))[1] != state:
                self.children[run.id] = (run.name, state)
                events.append(
                    (_when(run.state.timestamp if run.state else None), f"subflow run {run.name} {state}")
                )
        return events

    def _emit(self, events: list[tuple[datetime, str]]) -> None:
        for when, text in sorted(events, key=lambda event: event[0]):
            lines = text.splitlines() or [""]
            self.emit(f"  {when.astimezone():%H:%M:%S} {lines[0]}")
            for line in lines[1:]:
                self.emit(f"           {line}")

    def _task_events(self) -> list[tuple[datetime, str]]:
        from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

        runs = self.client.read_task_runs(
            flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=self.run_ids))
        )
        events = []
        for run in runs:
            state = str(run.state_name)
            self.task_names[run.id] = run.name
            if self.task_states.get(run.id, ("", ""))[1] != state:
                self.task_states[run.id] = (run.name, state)
                events.append((_when(run.state.timestamp if run.state else None), f"task {run.name} {state}"))
        return events

    def _log_events(self) -> list[tuple[datetime, str]]:
        from prefect.client.schemas.filters import LogFilter, LogFilterFlowRunId, LogFilterTimestamp

        after = self.since - LOG_LOOKBACK if self.since is not None else None
        events = []
        offset = 0
        while True:
            page = self.client.read_logs(
                log_filter=LogFilter(
                    flow_run_id=LogFilterFlowRunId(any_=self.run_ids),
                    timestamp=LogFilterTimestamp(after_=after) if after else None,
                ),
                limit=LOG_PAGE,
                offset=offset,
            )
            for log in page:
                if log.id in self.seen_logs:
                    continue
                self.seen_logs.add(log.id)
                self.since = max(self.since, log.timestamp) if self.since else log.timestamp
                # Prefect's "Finished in state Completed()" repeats a state change already shown.
                if log.level < self.min_level or str(log.message).startswith("Finished in state "):
                    continue
                if log.task_run_id:
                    where = self.task_names.get(log.task_run_id, "task")
                elif log.flow_run_id != self.flow_run_id and log.flow_run_id in self.children:
                    where = self.children[log.flow_run_id][0]
                else:
                    where = "flow"
                level = logging.getLevelName(log.level)
                events.append((_when(log.timestamp), f"{level:<7} {where} | {log.message}"))
            if len(page) < LOG_PAGE:
                return events
            offset += LOG_PAGE

    def named_task_states(self) -> dict[str, str]:
        return dict(self.task_states.values())


def _when(timestamp: datetime | None) -> datetime:
    from datetime import UTC

    if timestamp is None:
        return datetime.now(UTC)
    return timestamp if timestamp.tzinfo else timestamp.replace(tzinfo=UTC)


def watch_flow_run(
    flow_run_id: UUID,
    *,
    timeout: float,
    emit: Emit | None = None,
    poll_seconds: float = POLL_SECONDS,
) -> WatchOutcome:
    """Follow ``flow_run_id`` until it is final or ``timeout`` seconds passed; emit lines when ``emit``.

    Then read its result (when it completed). Uses the current Prefect settings (API URL, auth).
    """
    from prefect.client.orchestration import get_client

    started = time.monotonic()
    say = emit or (lambda _line: None)
    with get_client(sync_client=True) as client:
        watcher = FlowRunWatcher(client, flow_run_id, say)
        while True:
            flow_run = watcher.poll()
            if flow_run.state is not None and flow_run.state.is_final():
                break
            if time.monotonic() - started > timeout:
                return WatchOutcome(
                    flow_run, time.monotonic() - started, False, task_states=watcher.named_task_states()
                )
            time.sleep(poll_seconds)
        # The last log lines reach the API a moment after the final state: one more look.
        time.sleep(min(poll_seconds, 1.0))
        watcher.poll_events()
        seconds = time.monotonic() - started
        entrypoint = None
        if flow_run.deployment_id is not None and flow_run.state.is_completed():
            entrypoint = client.read_deployment(flow_run.deployment_id).entrypoint
        result, error = read_result(flow_run, entrypoint)
        if result is None and flow_run.state.is_completed():
            published = result_from_artifact(client, flow_run_id)
            if published is not None:
                result, error = published, None
    return WatchOutcome(flow_run, seconds, True, result, error, watcher.named_task_states())


# --- the summary ------------------------------------------------------------------------------------


def mlflow_links(tracking_uri: str, result: Mapping[str, Any]) -> dict[str, str]:
    """UI links to the MLflow run and the registered model version a pipeline result names."""
    base = tracking_uri.rstrip("/")
    links: dict[str, str] = {}
    if not base.startswith(("http://", "https://")):
        return links
    run_id = result.get("mlflow_run_id")
    if run_id:
        experiment_id = _experiment_of(tracking_uri, str(run_id))
        links["mlflow_run"] = (
            f"{base}/#/experiments/{experiment_id}/runs/{run_id}"
            if experiment_id
            else f"{base}/#/runs/{run_id}"
        )
    if result.get("model_name") and result.get("version"):
        links["model"] = f"{base}/#/models/{result['model_name']}/versions/{result['version']}"
    return links


def _experiment_of(tracking_uri: str, run_id: str) -> str | None:
    """The run's experiment id (the UI's run page is under it); None when MLflow does not answer at once."""
    import httpx

    try:
        answer = httpx.get(
            f"{tracking_uri.rstrip('/')}/api/2.0/mlflow/runs/get", params={"run_id": run_id}, timeout=5
        )
        answer.raise_for_status()
        return str(answer.json()["run"]["info"]["experiment_id"])
    except (httpx.HTTPError, KeyError, ValueError):
        return None


def summary_data(outcome: WatchOutcome, deployment: str, ui_url: str, tracking_uri: str) -> dict[str, Any]:
    """The outcome as one JSON-ready object (`aicml run --json`)."""
    run = outcome.flow_run
    data: dict[str, Any] = {
        "flow_run_id": str(run.id),
        "flow_run_name": run.name,
        "deployment": deployment,
        "state": outcome.state_name,
        "finished": outcome.finished,
        "message": run.state.message if run.state is not None else None,
        "seconds": round(outcome.seconds, 1),
        "url": flow_run_url(ui_url, run.id),
        "tasks": outcome.task_states,
        "result": outcome.result,
    }
    if outcome.result_error:
        data["result_error"] = outcome.result_error
    data["links"] = mlflow_links(tracking_uri, outcome.result) if outcome.result else {}
    return data


def summary_lines(data: Mapping[str, Any]) -> list[str]:
    """A few lines for people: the state, and for a pipeline result the candidates, the best, the version,
    promoted or not and why, and the links."""
    if not data["finished"]:
        lines = [f"Flow run {data['flow_run_name']!r} is still {data['state']} after {data['seconds']:.0f}s"]
        return [*lines, f"  follow it at {data['url']}"]
    lines = [
        f"Flow run {data['flow_run_name']!r} of {data['deployment']}: {data['state']} in {data['seconds']:.0f}s"
    ]
    if data["state"] != "Completed" and data.get("message"):
        lines.append(f"  {data['message']}")
    result = data.get("result") or {}
    if "candidates" in result and "best" in result:
        metric = result.get("metric", "metric")
        scores = ", ".join(f"{name} {value:.4f}" for name, value in result["candidates"].items())
        lines.append(f"  candidates ({metric} on the test split): {scores}")
        lines.append(
            f"  best       : {result['best']} -> {result.get('model_name')} version {result.get('version')}"
        )
        verdict = "promoted to champion" if result.get("promoted") else "not promoted"
        lines.append(f"  decision   : {verdict}: {result.get('reason')}")
    elif result:
        shown = ", ".join(f"{k}={v}" for k, v in list(result.items())[:6])
        lines.append(f"  result     : {shown}")
    elif data.get("result_error"):
        lines.append(f"  result     : {data['result_error']}")
    links = data.get("links") or {}
    if "mlflow_run" in links:
        lines.append(f"  MLflow run : {links['mlflow_run']}")
    if "model" in links:
        lines.append(f"  model      : {links['model']}")
    lines.append(f"  Prefect    : {data['url']}")
    return lines
