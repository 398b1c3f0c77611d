"""Helpers of the fault tests: hooks handed to code that runs in other processes (Dask workers pickle them
by name), the source files and ingest job of the ingest drills, and the SIGTERM-under-load harness."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pandas as pd
import pyarrow.parquet as pq

from aicml.data.connectors import FileConnector
from aicml.data.integration import IngestJob
from aicml.data.parallel import ClusterOptions
from aicml.data.transforms import TransformSpec
from tests.services import wait_for


@dataclass(frozen=True)
class HoldInWorker:
    """An ``on_row_group`` hook: the worker process running a partition writes ``<pid>`` under
    ``signals``, then waits until ``signals/release`` exists (at most ``wait_s``)."""

    signals: str
    wait_s: float = 60.0

    def __call__(self, number: int) -> None:
        folder = Path(self.signals)
        (folder / f"in-{os.getpid()}").touch()
        deadline = time.monotonic() + self.wait_s
        while not (folder / "release").exists() and time.monotonic() < deadline:
            time.sleep(0.02)


def write_id_sources(src: Path, files: int, rows: int) -> set[int]:
    """``files`` CSV files of ``rows`` unique ids (0, 1, ...) with a score each; returns the ids."""
    src.mkdir(parents=True)
    for index in range(files):
        ids = np.arange(index * rows, (index + 1) * rows)
        score = np.random.default_rng(index).uniform(0, 100, rows).round(3)
        pd.DataFrame({"id": ids, "score": score}).to_csv(src / f"file-{index}.csv", index=False)
    return set(range(files * rows))


def ingest_job(
    src: Path,
    sink: Any,
    work: Path,
    cluster: ClusterOptions | None = None,
    name: str = "events",
    **options: Any,
) -> IngestJob:
    """The ingest of the fault drills: every CSV file under ``src`` into ``sink``, keyed by ``id``; in this
    process unless ``cluster`` says otherwise; ``options`` go to ``IngestJob`` (``incremental``, ...)."""
    return IngestJob(
        name,
        FileConnector(str(src / "*.csv")),
        sink,
        str(work),
        transform=TransformSpec(key=("id",)),
        cluster=cluster or ClusterOptions(kind="sync"),
        **options,
    )


def check_id_sink(root: Path, expected: set[int] | None, uncommitted: bool = False) -> set[int]:
    """A Parquet sink of ``id`` rows: manifests name only whole files, every visible file is named (with
    ``uncommitted``: or is a ``part-*`` file of a batch not committed yet, never a temporary file), and each
    id is there once (the ids equal ``expected`` when given); returns the ids."""
    from aicml.data.sinks import ParquetSink

    named: set[Path] = set()
    manifests = root / "_manifests"
    for manifest in manifests.glob("*.json") if manifests.is_dir() else []:
        entry = json.loads(manifest.read_text())
        files = {root / f for f in entry["files"]}
        assert sum(pq.ParquetFile(f).metadata.num_rows for f in files) == entry["rows"], manifest
        named |= files
    visible = set(root.rglob("*.parquet"))
    if uncommitted:
        assert visible - named <= set(root.rglob("part-*.parquet")), "a temporary file is left"
    else:
        assert visible == named, "a file outside every manifest is visible"
    frame = ParquetSink(str(root)).read()
    ids = frame["id"].astype(int).tolist() if len(frame) else []
    assert len(ids) == len(set(ids)), f"{len(ids) - len(set(ids))} rows twice"
    if expected is not None:
        assert set(ids) == expected, f"{len(expected - set(ids))} rows lost"
    return set(ids)


# --- SIGTERM under load: clients that never pause and a readiness probe, through the signal ------------------


@dataclass(frozen=True)
class Outcome:
    """One request: when it started and ended, and its status code or the name of its transport error."""

    started: float
    ended: float
    result: int | str
    correct: bool = True  # a 2xx carried the right answer
    body: str = ""

    @property
    def ok(self) -> bool:
        return isinstance(self.result, int) and 200 <= self.result < 300


@dataclass
class Drain:
    """What a SIGTERM under load saw: every request, every readiness answer, the signal and the exit."""

    outcomes: list[Outcome] = field(default_factory=list)
    readiness: list[tuple[float, int | str]] = field(default_factory=list)
    signalled: float = 0.0
    exited: float = 0.0
    code: int | None = None

    def check(self, clients: int, drain_s: float, grace_s: float, log: str = "") -> None:
        """The drain contract: exit 0 within the grace period and not before the drain delay; every answer
        right and a 2xx; until the listener closes everything sent is answered; what was in flight at the
        close is finished; readiness 200 before the signal, 503 within half a second, never 200 again."""
        outcomes, signalled = self.outcomes, self.signalled
        assert self.code == 0, log
        assert drain_s <= self.exited - signalled < grace_s, (self.exited - signalled, log)
        assert all(o.correct for o in outcomes if o.ok), [o.body for o in outcomes if o.ok and not o.correct][
            :3
        ]
        statuses = {o.result for o in outcomes if isinstance(o.result, int)}
        assert statuses == {200}, (statuses, [o.body for o in outcomes if o.result != 200][:3])
        assert sum(o.ok for o in outcomes if o.started < signalled) >= clients, "no load before the signal"
        accepting_until = signalled + drain_s - 0.3
        early_failures = [o for o in outcomes if o.started < accepting_until and not o.ok]
        assert not early_failures, early_failures[:5]
        assert any(o.ok for o in outcomes if signalled < o.started < accepting_until), (
            "not served in the drain"
        )
        refused = [o.ended for o in outcomes if o.result == "ConnectError"]
        assert refused, "no client saw the listener close"
        closed = min(refused)
        assert any(o.ok and o.started < closed < o.ended for o in outcomes), (
            "nothing was in flight at the close"
        )
        # After the close only refusals (or a connection accepted by the kernel but never read).
        late = {o.result for o in outcomes if not o.ok}
        assert late <= {"ConnectError", "RemoteProtocolError", "ReadError"}, late
        before = [r for t, r in self.readiness if t < signalled]
        after = [(t, r) for t, r in self.readiness if t >= signalled]
        assert before and set(before) == {200}, set(before)
        first_503 = next(t for t, r in after if r == 503)
        assert first_503 - signalled < 0.5 and first_503 < self.exited
        assert 200 not in {r for t, r in after if t > first_503}


def sigterm_under_load(
    process: subprocess.Popen[bytes],
    client: Callable[[], httpx.Client],
    call: Callable[[httpx.Client], Outcome],
    ready_url: str,
    clients: int,
    grace_s: float,
    loaded: Callable[[Drain], bool] = lambda drain: True,
) -> Drain:
    """``clients`` threads ``call`` without pause (each on its own ``client()``) and a probe reads
    ``ready_url`` every 50 ms; once every client has been answered and ``loaded`` holds, SIGTERM goes to
    ``process``, which must exit within ``grace_s`` + 5 s. A client stops at its first refused connection."""
    drain = Drain()
    stop = threading.Event()

    def calls() -> None:
        with client() as http:
            while not stop.is_set():
                outcome = call(http)
                drain.outcomes.append(outcome)
                if outcome.result == "ConnectError":
                    return  # refused: the server has stopped accepting

    def probe() -> None:
        with httpx.Client(timeout=5) as http:
            while not stop.is_set():
                try:
                    result: int | str = http.get(ready_url).status_code
                except httpx.TransportError as exc:
                    result = type(exc).__name__
                drain.readiness.append((time.monotonic(), result))
                time.sleep(0.05)

    threads = [threading.Thread(target=calls) for _ in range(clients)] + [threading.Thread(target=probe)]
    for thread in threads:
        thread.start()
    try:
        wait_for(  # under load before the signal
            lambda: sum(o.ok for o in drain.outcomes) >= clients and drain.readiness and loaded(drain),
            60,
            "every client answered before the signal",
        )
        assert process.poll() is None
        drain.signalled = time.monotonic()
        process.send_signal(signal.SIGTERM)
        try:
            drain.code = process.wait(grace_s + 5)
        except subprocess.TimeoutExpired:
            process.kill()
            raise
        drain.exited = time.monotonic()
    finally:
        stop.set()
        for thread in threads:
            thread.join(60)
    return drain
