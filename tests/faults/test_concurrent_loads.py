"""Concurrent runs of one load (the `incremental` schedule and the `on-file-landed` trigger both run
load `landing`) committing the same partition at the same moment: nothing lost, nothing twice.

The interleaving is forced, not left to timing: every run is held at the sink's commit point (its
files already renamed into the dataset, no manifest written yet) until all runs are there, then they
are let through in a fixed order. The sink is then read back row by row and every manifest checked
against the files it names.
"""

from __future__ import annotations

import dataclasses
import json
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest

from aicml.data.connectors import FileConnector
from aicml.data.integration import IngestJob, IngestReport, run_ingest
from aicml.data.parallel import ClusterOptions
from aicml.data.sinks import ParquetSink
from aicml.data.state import IngestState
from aicml.data.transforms import TransformSpec

LOAD = "landing"
SUITE = {
    "name": LOAD,
    "expectations": [
        {
            "type": "expect_column_values_to_be_between",
            "kwargs": {"column": "score", "min_value": 0, "max_value": 100},
        }
    ],
}
WAIT_S = 60


def write_sources(src: Path, files: int = 3, rows: int = 300) -> tuple[set[int], set[int]]:
    """CSV files of unique ids over four regions (the partition column), a few scores out of range.
    Returns the ids that must land and the ids that must be quarantined."""
    src.mkdir(parents=True, exist_ok=True)
    good: set[int] = set()
    bad: set[int] = set()
    for index in range(files):
        ids = np.arange(index * rows, (index + 1) * rows)
        rng = np.random.default_rng(index)
        score = rng.uniform(0, 100, rows).round(3)
        score[::50] = 500.0  # quarantined
        regions = np.array(["north", "south", "east", "west"])[ids % 4]
        pd.DataFrame({"id": ids, "region": regions, "score": score}).to_csv(
            src / f"file-{index}.csv", index=False
        )
        good |= {int(i) for i, s in zip(ids, score, strict=True) if s <= 100}
        bad |= {int(i) for i, s in zip(ids, score, strict=True) if s > 100}
    return good, bad


class CommitPoint:
    """Holds runs at the commit point of each partition until every run that has the partition is
    there, then lets the run ``first`` through alone and the rest only once its manifest exists."""

    def __init__(self, root: Path, parties: Callable[[str], int], first: int) -> None:
        self.root, self.parties, self.first = root, parties, first
        self.cond = threading.Condition()
        self.arrived: dict[str, list[int]] = {}
        self.claims: list[tuple[str, int]] = []

    def hook(self, run: int) -> Callable[[str], None]:
        def at_commit_point(identity: str) -> None:
            deadline = time.monotonic() + WAIT_S
            with self.cond:
                here = self.arrived.setdefault(identity, [])
                here.append(run)
                self.cond.notify_all()
                while len(here) < self.parties(identity):
                    assert self.cond.wait(deadline - time.monotonic()), f"runs never met at {identity}"
                # Every run has its files in the dataset and none has a manifest: the widest window.
                assert not (self.root / "_manifests" / f"{identity}.json").exists()
            if run != self.first and self.parties(identity) > 1:
                while not (self.root / "_manifests" / f"{identity}.json").exists():
                    assert time.monotonic() < deadline, f"run {self.first} never committed {identity}"
                    time.sleep(0.005)
            with self.cond:
                self.claims.append((identity, run))

        return at_commit_point


def job_for(src: str, sink: ParquetSink, work: Path, incremental: bool = False) -> IngestJob:
    return IngestJob(
        LOAD,
        FileConnector(src),
        sink,
        str(work),
        suite=SUITE,
        policy="quarantine",
        transform=TransformSpec(key=("id",)),
        cluster=ClusterOptions(kind="sync"),
        incremental=incremental,
    )


def run_side_by_side(jobs: list[IngestJob], state: IngestState | None = None) -> list[IngestReport]:
    """Each job in its own thread; every error is raised here."""
    reports: list[Any] = [None] * len(jobs)

    def one(index: int) -> None:
        try:
            reports[index] = run_ingest(jobs[index], state)
        except BaseException as exc:
            reports[index] = exc

    threads = [threading.Thread(target=one, args=(i,), name=f"run-{i}") for i in range(len(jobs))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(WAIT_S * 4)
    assert not any(t.is_alive() for t in threads), "a run hung"
    for outcome in reports:
        if isinstance(outcome, BaseException):
            raise outcome
    return reports


def check_sink(root: Path, expected: set[int], partition_by: tuple[str, ...] = ()) -> dict[str, int]:
    """Every manifest names files that exist and hold its rows; no file is outside a manifest; the rows
    read back are exactly ``expected``, each once. Returns rows per identity."""
    named: set[Path] = set()
    per_identity = {}
    for manifest_path in sorted((root / "_manifests").glob("*.json")):
        manifest = json.loads(manifest_path.read_text())
        files = [root / f for f in manifest["files"]]
        missing = [f for f in files if not f.exists()]
        assert not missing, f"manifest {manifest_path.name} names missing files {missing}"
        assert sum(pq.ParquetFile(f).metadata.num_rows for f in files) == manifest["rows"], manifest
        assert manifest["rows"] == 0 or files, f"{manifest_path.name}: {manifest['rows']} rows, no files"
        named |= set(files)
        per_identity[manifest["identity"]] = manifest["rows"]
    on_disk = set(root.rglob("*.parquet"))
    assert on_disk == named, f"files no manifest names: {sorted(on_disk - named)}"
    data = ParquetSink(str(root), partition_by=partition_by).read()
    ids = data["id"].astype(int).tolist() if len(data) else []
    duplicated = len(ids) - len(set(ids))
    lost = expected - set(ids)
    assert duplicated == 0 and not lost and set(ids) == expected, (
        f"{duplicated} rows twice, {len(lost)} lost, {len(set(ids) - expected)} unexpected"
    )
    return per_identity


def quarantined_ids(work: Path) -> list[int]:
    frame = ParquetSink(str(work / LOAD / "quarantine")).read()
    return sorted(int(i) for i in frame["id"]) if len(frame) else []


@pytest.mark.parametrize("runs", [2, 4])
@pytest.mark.parametrize("winner", ["first", "last"])
def test_runs_of_one_load_committing_the_same_partitions_at_once(
    tmp_path: Path, runs: int, winner: str
) -> None:
    src, work, out = tmp_path / "landing", tmp_path / "work", tmp_path / "out"
    good, bad = write_sources(src)
    first = 0 if winner == "first" else runs - 1
    point = CommitPoint(out, lambda _identity: runs, first)
    jobs = [
        job_for(
            str(src / "*.csv"),
            ParquetSink(str(out), partition_by=("region",), on_commit_point=point.hook(r)),
            work,
        )
        for r in range(runs)
    ]
    reports = run_side_by_side(jobs)

    per_identity = check_sink(out, good, ("region",))
    assert len(per_identity) == 3
    # Each partition committed by exactly one run (the one let through first); the rest added nothing.
    assert sorted(point.claims) == sorted((i, r) for i in per_identity for r in range(runs))
    assert [r.committed_rows for r in reports] == [len(good) if r == first else 0 for r in range(runs)]
    assert sum(r.committed_rows for r in reports) == sum(per_identity.values()) == len(good)
    assert quarantined_ids(work) == sorted(bad)
    assert not list((work / LOAD / "staging").iterdir()), "a run left its staging behind"
    # A rerun adds nothing.
    again = run_ingest(job_for(str(src / "*.csv"), ParquetSink(str(out), partition_by=("region",)), work))
    assert again.partitions == 0 and again.committed_rows == 0
    check_sink(out, good, ("region",))


def test_overlapping_batches_commit_each_partition_once(tmp_path: Path) -> None:
    """The schedule lists every file; the trigger, only the file that landed (the middle one)."""
    src, work, out = tmp_path / "landing", tmp_path / "work", tmp_path / "out"
    good, bad = write_sources(src)
    landed = FileConnector(str(src / "file-1.csv")).partitions()[0].identity
    point = CommitPoint(out, lambda identity: 2 if identity == landed else 1, first=1)
    scheduled = job_for(
        str(src / "*.csv"), ParquetSink(str(out), ("region",), on_commit_point=point.hook(0)), work
    )
    triggered = job_for(
        str(src / "file-1.csv"), ParquetSink(str(out), ("region",), on_commit_point=point.hook(1)), work
    )
    reports = run_side_by_side([scheduled, triggered])

    per_identity = check_sink(out, good, ("region",))
    assert [r.committed_rows for r in reports] == [
        sum(n for i, n in per_identity.items() if i != landed),
        per_identity[landed],
    ]
    assert quarantined_ids(work) == sorted(bad)


def test_a_crashed_commit_leaves_files_the_next_commit_removes(tmp_path: Path) -> None:
    """A run that died between renaming its files in and writing the manifest: the files are read by
    no one, and the run that commits the partition next removes them."""
    src, work, out = tmp_path / "landing", tmp_path / "work", tmp_path / "out"
    good, _ = write_sources(src, files=1)

    def crash(_identity: str) -> None:
        raise KeyboardInterrupt("power cut before the manifest")

    with pytest.raises(KeyboardInterrupt):
        run_ingest(
            job_for(str(src / "*.csv"), ParquetSink(str(out), ("region",), on_commit_point=crash), work)
        )
    assert list(out.rglob("*.parquet")) and not list((out / "_manifests").glob("*.json"))
    assert ParquetSink(str(out), ("region",)).read().empty

    report = run_ingest(job_for(str(src / "*.csv"), ParquetSink(str(out), ("region",)), work))
    assert report.committed_rows == len(good)
    check_sink(out, good, ("region",))


# PostgreSQL: the incremental load's ledger (partitions and watermark) in the stack's database.


@pytest.mark.parametrize("runs", [2, 4])
def test_concurrent_incremental_runs_record_the_ledger_once_on_postgres(
    tmp_path: Path, pg_url: str, runs: int
) -> None:
    """Every run is held at the sink's commit point, then every run's ledger insert is held by a lock
    until all of them have read the ledger and are waiting to write it: the losers' inserts conflict
    with the winner's, and each run still finishes, recording each partition once."""
    import sqlalchemy as sa

    from aicml.data.state import PARTITIONS

    src, work, out = tmp_path / "landing", tmp_path / "work", tmp_path / "out"
    good, bad = write_sources(src)
    state = IngestState(pg_url)
    state.committed(LOAD)  # creates the ledger tables
    point = CommitPoint(out, lambda _identity: runs, first=0)
    jobs = [
        job_for(
            str(src / "*.csv"),
            ParquetSink(str(out), ("region",), on_commit_point=point.hook(r)),
            work,
            incremental=True,
        )
        for r in range(runs)
    ]
    engine = sa.create_engine(pg_url)
    try:
        with engine.connect() as holder:
            blocker = holder.begin()
            # Reads of the ledger go on; inserts into it wait for this transaction.
            holder.execute(sa.text(f"LOCK TABLE {PARTITIONS} IN SHARE ROW EXCLUSIVE MODE"))
            result: list[Any] = []
            runner = threading.Thread(target=lambda: result.append(_catch(run_side_by_side, jobs, state)))
            runner.start()
            deadline = time.monotonic() + WAIT_S * 2
            while _waiting_on_locks(engine) < runs:
                assert time.monotonic() < deadline, "the runs never all reached the ledger"
                assert runner.is_alive(), f"runs ended before the ledger: {result}"
                time.sleep(0.05)
            blocker.rollback()
            runner.join(WAIT_S * 4)
        assert not runner.is_alive()
        reports = result[0]
        if isinstance(reports, BaseException):
            raise reports

        per_identity = check_sink(out, good, ("region",))
        assert sum(r.committed_rows for r in reports) == len(good)
        assert quarantined_ids(work) == sorted(bad)
        with engine.connect() as conn:
            ledger = conn.execute(
                sa.text(f"SELECT identity, rows FROM {PARTITIONS} WHERE load = :l"), {"l": LOAD}
            )
            recorded = {identity: rows for identity, rows in ledger}
        assert recorded == per_identity  # once each, with the rows that landed
    finally:
        engine.dispose()
    again = run_ingest(jobs[0], state)
    assert again.partitions == 0 and again.committed_rows == 0


def _catch(function: Callable[..., Any], *args: Any) -> Any:
    try:
        return function(*args)
    except BaseException as exc:
        return exc


def _waiting_on_locks(engine: Any) -> int:
    """Sessions of this database waiting for a lock (a fresh transaction: activity is a snapshot per
    transaction)."""
    import sqlalchemy as sa

    with engine.connect() as conn:
        return int(
            conn.execute(
                sa.text(
                    "SELECT count(*) FROM pg_stat_activity "
                    "WHERE datname = current_database() AND wait_event_type = 'Lock'"
                )
            ).scalar_one()
        )


def test_concurrent_runs_of_one_batch_into_a_postgres_table_load_it_once(tmp_path: Path, pg_url: str) -> None:
    """The SQL sink's ledger row is claimed first in the batch's transaction: a second run of the batch
    waits on it while the first is mid-COPY, then adds nothing (no key: a second load would duplicate)."""
    from aicml.data.sinks import SqlSink

    src, work = tmp_path / "landing", tmp_path / "work"
    good, _ = write_sources(src)
    inside, release = threading.Event(), threading.Event()

    def hold(number: int) -> None:
        if number == 0:
            inside.set()
            assert release.wait(WAIT_S)

    def job(sink: SqlSink) -> IngestJob:
        return dataclasses.replace(
            job_for(str(src / "*.csv"), ParquetSink(str(tmp_path / "unused")), work), sink=sink
        )

    held = SqlSink(pg_url, "landing", copy_chunk_bytes=4096, on_chunk=hold, quarantine=False)
    result: list[Any] = []
    first = threading.Thread(target=lambda: result.append(_catch(run_ingest, job(held))))
    first.start()
    assert inside.wait(WAIT_S), "the first run never reached its COPY"
    second_result: list[Any] = []
    second = threading.Thread(
        target=lambda: second_result.append(
            _catch(run_ingest, job(SqlSink(pg_url, "landing", quarantine=False)))
        )
    )
    second.start()
    import sqlalchemy as sa

    engine = sa.create_engine(pg_url)
    try:
        deadline = time.monotonic() + WAIT_S
        while _waiting_on_locks(engine) < 1:  # the second run's claim waits on the first's
            assert time.monotonic() < deadline and second.is_alive(), (
                f"second run did not wait: {second_result}"
            )
            time.sleep(0.05)
        release.set()
        first.join(WAIT_S)
        second.join(WAIT_S)
        reports = [result[0], second_result[0]]
        for report in reports:
            if isinstance(report, BaseException):
                raise report
        assert [r.committed_rows for r in reports] == [len(good), 0]
        with engine.connect() as conn:
            ids = [row[0] for row in conn.execute(sa.text("SELECT id FROM landing"))]
        assert len(ids) == len(set(ids)) and set(ids) == good
    finally:
        release.set()
        engine.dispose()
