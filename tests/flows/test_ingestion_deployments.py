"""A file landing triggers `ingest-flow/on-file-landed` through a Prefect event, the process worker runs
it, and its validated rows appear in the dataset; the latency is measured and printed."""

from __future__ import annotations

import time
import uuid
from pathlib import Path
from typing import Any

import pandas as pd

from aicml.data.landing import emit_file_landed
from aicml.data.sinks import ParquetSink
from tests.runs import local_deployments

REPO = Path(__file__).resolve().parents[2]


def test_landed_file_is_loaded_by_the_event_triggered_deployment(stack: Any, tmp_path: Path) -> None:
    names = local_deployments(stack)
    assert {"ingest-flow/full", "ingest-flow/incremental", "ingest-flow/on-file-landed"} <= set(names)
    # The watched landing directory (AIC_LANDING_DIR, default <home>/landing): the trigger loads only
    # files inside it.
    landing = Path(stack.home) / "landing"
    landing.mkdir(exist_ok=True)
    path = landing / f"orders-{uuid.uuid4().hex[:6]}.csv"
    pd.DataFrame({"order_id": range(500), "amount": [float(i % 50) for i in range(500)]}).to_csv(
        path, index=False
    )
    # Other tests on the session's stack may have landed files into the same dataset before.
    dataset = ParquetSink(str(Path(stack.home) / "datasets" / "landing"))
    before = len(dataset.read())
    landed_at = time.monotonic()
    emit_file_landed(path)

    deadline = landed_at + 420
    rows = before
    while time.monotonic() < deadline:
        rows = len(dataset.read())
        if rows > before:
            break
        time.sleep(1)
    latency = time.monotonic() - landed_at
    print(f"\nfile landed -> validated output committed: {latency:.1f}s")
    assert rows - before == 500, f"{rows - before} rows committed after {latency:.0f}s (500 landed)"
