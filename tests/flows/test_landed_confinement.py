"""The event-triggered `ingest-flow/on-file-landed` deployment, on the real stack and its process worker:
an event naming a file outside the watched landing directory starts a run that refuses it (nothing
loaded), and a file that lands inside the directory is loaded. This also shows that the flow run
knows it runs in a deployment (the confinement is on there, with no setting)."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import pandas as pd
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import DeploymentFilter, DeploymentFilterId

from aicml.data.landing import emit_file_landed
from aicml.data.sinks import ParquetSink
from tests.runs import local_deployments

REPO = Path(__file__).resolve().parents[2]


def _runs_for(source: str) -> list[Any]:
    async def read() -> list[Any]:
        async with get_client() as client:
            deployment = await client.read_deployment_by_name("ingest-flow/on-file-landed")
            runs = await client.read_flow_runs(
                deployment_filter=DeploymentFilter(id=DeploymentFilterId(any_=[deployment.id])), limit=200
            )
        # The trigger changes only the preset's source, through `overrides`.
        return [r for r in runs if (r.parameters.get("overrides") or {}).get("source") == source]

    return asyncio.run(read())


def _finished(source: str, timeout_s: float) -> Any:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        done = [r for r in _runs_for(source) if r.state and r.state.is_final()]
        if done:
            return done[0]
        time.sleep(2)
    raise AssertionError(f"no finished on-file-landed run for {source} after {timeout_s:.0f}s")


def test_landed_events_load_only_files_inside_the_landing_directory(stack: Any, tmp_path: Path) -> None:
    local_deployments(stack)
    frame = pd.DataFrame({"order_id": range(50), "amount": [float(i) for i in range(50)]})
    outside = tmp_path / "elsewhere" / "secret.csv"
    outside.parent.mkdir()
    frame.to_csv(outside, index=False)
    dataset = ParquetSink(str(Path(stack.home) / "datasets" / "landing"))
    before = len(dataset.read())
    emit_file_landed(outside)

    refused = _finished(str(outside.resolve()), 420)
    assert refused.state.is_failed(), refused.state
    assert "not inside the watched landing directory" in (refused.state.message or "")
    assert len(dataset.read()) == before, "nothing from outside the landing directory was loaded"

    landing = Path(stack.home) / "landing"
    landing.mkdir(exist_ok=True)
    inside = landing / "orders-confined.csv"
    frame.to_csv(inside, index=False)
    emit_file_landed(inside)
    loaded = _finished(str(inside.resolve()), 420)
    assert loaded.state.is_completed(), loaded.state
    assert len(dataset.read()) == before + 50, "only the file inside the landing directory was loaded"
