"""Prefect kinds: finished flow runs (and their and their task runs' persisted results), and what active
flow runs reference."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from uuid import UUID

from aicml.retention.engine import Item, References, collect_references
from aicml.retention.policy import Kind

log = logging.getLogger(__name__)

FINISHED = ("COMPLETED", "FAILED", "CANCELLED", "CRASHED")
# Scheduled and waiting runs count: their parameters name what they will read.
ACTIVE = ("SCHEDULED", "PENDING", "RUNNING", "PAUSED", "CANCELLING")
_PAGE = 200


def _flow_runs(
    client: Any, state_types: tuple[str, ...], flows: tuple[str, ...] | None = None
) -> Iterator[Any]:
    from prefect.client.schemas.filters import (
        FlowFilter,
        FlowFilterName,
        FlowRunFilter,
        FlowRunFilterState,
        FlowRunFilterStateType,
    )
    from prefect.client.schemas.objects import StateType

    flt = FlowRunFilter(
        state=FlowRunFilterState(type=FlowRunFilterStateType(any_=[StateType(s) for s in state_types]))
    )
    by_flow = FlowFilter(name=FlowFilterName(any_=list(flows))) if flows is not None else None
    offset = 0
    while True:
        page = client.read_flow_runs(flow_run_filter=flt, flow_filter=by_flow, limit=_PAGE, offset=offset)
        yield from page
        if len(page) < _PAGE:
            return
        offset += _PAGE


def active_references(client: Any, exclude: set[str] | None = None) -> References:
    """What every running, pending, paused or scheduled flow run names in its parameters (the flow run
    doing the retention itself excluded)."""
    runs = [r for r in _flow_runs(client, ACTIVE) if str(r.id) not in (exclude or set())]
    strings, pairs = collect_references(r.parameters for r in runs)
    return References(frozenset(strings), frozenset(pairs), tuple(str(r.id) for r in runs))


def result_path(state: Any, storage: Path) -> Path | None:
    """The local file holding a flow or task run's persisted result, when it is one under the local storage."""
    data = getattr(state, "data", None) if state is not None else None
    if isinstance(data, dict):
        key, block = data.get("storage_key"), data.get("storage_block_id")
    else:
        key, block = getattr(data, "storage_key", None), getattr(data, "storage_block_id", None)
    if not key or block is not None:
        return None  # a result in a storage block: left to the block's own lifecycle rules
    path = Path(key) if Path(key).is_absolute() else storage / key
    try:
        path.resolve().relative_to(storage.resolve())
    except ValueError:
        return None
    return path


@dataclass
class FlowRuns:
    """Finished flow runs, grouped by deployment (or flow when run without one), with their persisted
    result files in the local result storage."""

    client: Any
    hold_tag: str
    result_storage: Path | None = None
    flows: tuple[str, ...] | None = None  # only runs of these flows (None: all)
    kind: Kind = "prefect_flow_runs"

    def _storage(self) -> Path:
        if self.result_storage is not None:
            return self.result_storage
        from prefect.settings import get_current_settings

        return Path(get_current_settings().results.local_storage_path).expanduser()

    def items(self, now: datetime) -> list[Item]:
        storage = self._storage()
        runs = list(_flow_runs(self.client, FINISHED, self.flows))
        names: dict[UUID, str] = {}
        found: list[Item] = []
        for run in runs:
            group_id = run.deployment_id or run.flow_id
            if group_id not in names:
                names[group_id] = self._name(run)
            created = run.end_time or run.expected_start_time or run.created or now
            result = result_path(run.state, storage)
            found.append(
                Item(
                    kind=self.kind, id=str(run.id), group=names[group_id],
                    created=created if created.tzinfo else created.replace(tzinfo=UTC),
                    location=f"{run.name}" + (f" (result {result})" if result else ""),
                    refs=frozenset({str(run.id)}), held=self.hold_tag in (run.tags or []),
                    handle=(run.id, result),
                )
            )  # fmt: skip
        return found

    def _task_results(self, run_id: Any) -> list[Path]:
        from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

        runs = self.client.read_task_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[run_id])))
        storage = self._storage()
        return [p for p in (result_path(r.state, storage) for r in runs) if p is not None]

    def _name(self, run: Any) -> str:
        try:
            if run.deployment_id:
                deployment = self.client.read_deployment(run.deployment_id)
                flow = self.client.read_flow(deployment.flow_id)
                return f"{flow.name}/{deployment.name}"
            return str(self.client.read_flow(run.flow_id).name)
        except Exception:  # a deleted deployment: its runs still group together
            return str(run.deployment_id or run.flow_id)

    def delete(self, item: Item, step: Callable[[str], None]) -> None:
        from prefect.exceptions import ObjectNotFound

        run_id, result = item.handle
        # Its task runs' results first: once the flow run is deleted, its task runs are gone and nothing
        # would name their files any more.
        for path in self._task_results(run_id):
            path.unlink(missing_ok=True)
        step("task-results-deleted")
        if result is not None:
            Path(result).unlink(missing_ok=True)
        step("result-deleted")
        with contextlib.suppress(ObjectNotFound):  # deleted by an earlier, interrupted run
            self.client.delete_flow_run(run_id)
