"""Exactly once: a rerun adds nothing, and a process killed (SIGKILL) mid-write leaves the previous
output intact while the next run completes the load. Files and PostgreSQL, with real processes."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from aicml.data.connectors import FileConnector
from aicml.data.integration import IngestJob, run_ingest
from aicml.data.parallel import ClusterOptions
from aicml.data.safety import UnsafeIdentifierError
from aicml.data.sinks import ParquetSink, SqlSink
from aicml.data.state import IngestState
from aicml.data.transforms import TransformSpec
from aicml.errors import AicError

REPO = Path(__file__).resolve().parents[3]
BIG = 200_000


def write_rows(path: Path, start: int, count: int) -> None:
    rng = np.random.default_rng(start)
    pd.DataFrame(
        {"id": np.arange(start, start + count), "score": rng.uniform(0, 100, count).round(3), "tag": "t"}
    ).to_csv(path, index=False)


def job_for(src: Path, sink: ParquetSink | SqlSink, work: Path, incremental: bool = False) -> IngestJob:
    return IngestJob(
        "orders",
        FileConnector(str(src / "*.csv")),
        sink,
        str(work),
        transform=TransformSpec(key=("id",)),
        cluster=ClusterOptions(kind="sync"),
        incremental=incremental,
    )


CHILD = textwrap.dedent(
    """
    import sys, time
    from pathlib import Path
    from aicml.data.connectors import FileConnector
    from aicml.data.integration import IngestJob, run_ingest
    from aicml.data.parallel import ClusterOptions
    from aicml.data.sinks import ParquetSink, SqlSink
    from aicml.data.transforms import TransformSpec

    def pause(number):
        print("progress", number, flush=True)
        if number == 2:
            print("MID-WRITE", flush=True)
            time.sleep(120)

    kind, src, work, target = sys.argv[1:5]
    if kind == "files":
        sink = ParquetSink(target, row_group_rows=10_000, on_row_group=pause)
    else:
        sink = SqlSink(target, "orders", key=("id",), copy_chunk_bytes=64 * 1024, on_chunk=pause)
    job = IngestJob("orders", FileConnector(src + "/*.csv"), sink, work,
                    transform=TransformSpec(key=("id",)), cluster=ClusterOptions(kind="sync"))
    run_ingest(job)
    print("DONE", flush=True)
    """
)


def kill_mid_write(kind: str, src: Path, work: Path, target: str) -> None:
    """Run the load in a child process and SIGKILL it once it is inside the write."""
    proc = subprocess.Popen(
        [sys.executable, "-c", CHILD, kind, str(src), str(work), target],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        cwd=REPO,
    )
    try:
        deadline = time.monotonic() + 120
        assert proc.stdout is not None
        seen = []
        for line in proc.stdout:
            seen.append(line)
            if line.startswith("MID-WRITE"):
                os.kill(proc.pid, signal.SIGKILL)
                break
            assert time.monotonic() < deadline, "child never reached the write"
        else:
            pytest.fail("child ended without reaching the write: " + "".join(seen[-20:]))
        assert proc.wait(timeout=30) == -signal.SIGKILL
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_parquet_rerun_adds_nothing_and_sigkill_mid_write_loses_nothing(tmp_path: Path) -> None:
    src, work, out = tmp_path / "src", tmp_path / "work", tmp_path / "out"
    src.mkdir()
    write_rows(src / "a.csv", 0, 1000)
    sink = ParquetSink(str(out))
    first = run_ingest(job_for(src, sink, work))
    assert first.committed_rows == 1000

    write_rows(src / "b.csv", 1000, BIG)
    kill_mid_write("files", src, work, str(out))
    assert len(sink.read()) == 1000  # the previous output, intact
    assert list((work / "orders" / "staging").glob("*/data/.tmp-*")), "the kill did not land mid-write"

    second = run_ingest(job_for(src, sink, work))
    assert second.committed_rows == BIG and second.skipped == 1
    data = sink.read()
    assert len(data) == 1000 + BIG and data["id"].is_unique

    third = run_ingest(job_for(src, sink, work))
    assert third.committed_rows == 0 and third.partitions == 0
    assert len(sink.read()) == 1000 + BIG


def test_postgres_copy_upsert_is_one_transaction_per_batch(tmp_path: Path, pg_url: str) -> None:
    src, work = tmp_path / "src", tmp_path / "work"
    src.mkdir()
    write_rows(src / "a.csv", 0, 1000)
    sink = SqlSink(pg_url, "orders", key=("id",))
    assert run_ingest(job_for(src, sink, work)).committed_rows == 1000

    write_rows(src / "b.csv", 1000, BIG)
    kill_mid_write("sql", src, work, pg_url)
    assert sink.count() == 1000  # the killed transaction left nothing behind

    state = IngestState(f"sqlite:///{tmp_path / 'state.db'}")
    report = run_ingest(job_for(src, sink, work, incremental=True), state)
    assert sink.count() == 1000 + BIG
    assert report.committed_rows == 1000 + BIG  # a new batch: a.csv is upserted, not duplicated
    again = run_ingest(job_for(src, sink, work, incremental=True), state)
    assert again.partitions == 0 and sink.count() == 1000 + BIG

    # The same batch id again (a rerun after a crash between commit and state): the ledger skips it.
    rerun = run_ingest(job_for(src, sink, work))
    assert rerun.committed_rows == 0 and sink.count() == 1000 + BIG


def test_upsert_replaces_rows_with_the_same_key(tmp_path: Path, pg_url: str) -> None:
    src, work = tmp_path / "src", tmp_path / "work"
    src.mkdir()
    pd.DataFrame({"id": [1, 2], "score": [1.0, 2.0], "tag": ["a", "b"]}).to_csv(src / "a.csv", index=False)
    sink = SqlSink(pg_url, "orders", key=("id",))
    run_ingest(job_for(src, sink, work))
    pd.DataFrame({"id": [2, 3], "score": [20.0, 3.0], "tag": ["B", "c"]}).to_csv(src / "b.csv", index=False)
    (src / "a.csv").unlink()
    run_ingest(job_for(src, sink, work))
    import sqlalchemy as sa

    engine = sa.create_engine(pg_url)
    with engine.connect() as conn:
        rows = conn.execute(sa.text("SELECT id, score, tag FROM orders ORDER BY id")).all()
    engine.dispose()
    assert [tuple(r) for r in rows] == [(1, 1.0, "a"), (2, 20.0, "B"), (3, 3.0, "c")]


def test_sqlite_sink_upserts_too(tmp_path: Path) -> None:
    src, work = tmp_path / "src", tmp_path / "work"
    src.mkdir()
    write_rows(src / "a.csv", 0, 500)
    sink = SqlSink(f"sqlite:///{tmp_path / 'out.db'}", "orders", key=("id",))
    run_ingest(job_for(src, sink, work))
    run_ingest(job_for(src, sink, work))
    assert sink.count() == 500


QUARANTINE_SUITE = {
    "name": "orders",
    "expectations": [
        {
            "type": "expect_column_values_to_be_between",
            "kwargs": {"column": "score", "min_value": 0, "max_value": 100},
        },
    ],
    "meta": {"aicml": {"numeric_columns": ["id", "score"]}},
}


def quarantine_job(src: Path, sink: SqlSink, work: Path, load: str = "orders") -> IngestJob:
    return IngestJob(
        load,
        FileConnector(str(src / "*.csv")),
        sink,
        str(work),
        suite=QUARANTINE_SUITE,
        transform=TransformSpec(key=("id",)),
        cluster=ClusterOptions(kind="sync"),
    )


def test_postgres_sink_quarantines_rows_with_reasons_in_the_batch_transaction(
    tmp_path: Path, pg_url: str
) -> None:
    import sqlalchemy as sa

    src, work = tmp_path / "src", tmp_path / "work"
    src.mkdir()
    (src / "a.csv").write_text("id,score,tag\n1,10.5,a\n2,250,b\n3,7,c\n3,8,d\n4,1,e,EXTRA\n5,99,f\n")
    sink = SqlSink(pg_url, "orders", key=("id",))
    report = run_ingest(quarantine_job(src, sink, work))
    assert report.accepted == 3 and report.quarantined == 3
    assert report.quarantine_table == "orders_quarantine"
    engine = sa.create_engine(pg_url)
    try:
        with engine.connect() as conn:
            kept = conn.execute(sa.text("SELECT id, score FROM orders ORDER BY id")).all()
            rows = conn.execute(
                sa.text(
                    "SELECT batch_id, source_row, reason, record, raw_line FROM orders_quarantine ORDER BY source_row"
                )
            ).all()
        assert [tuple(r) for r in kept] == [(1, 10.5), (3, 8.0), (5, 99.0)]
        assert {r.batch_id for r in rows} == {report.batch_id}
        by_row = {r.source_row: r for r in rows}
        assert set(by_row) == {2, 3, 5}
        assert "expect_column_values_to_be_between" in by_row[2].reason and "250" in by_row[2].reason
        assert by_row[2].record == {"id": "2", "score": "250.0", "tag": "b"}
        assert "duplicate key on ['id']: 3 " in by_row[3].reason and by_row[3].record["tag"] == "c"
        assert (
            "4 fields" in by_row[5].reason
            and by_row[5].raw_line == "4,1,e,EXTRA"
            and by_row[5].record is None
        )

        # A rerun of the same batch adds nothing to either table.
        assert run_ingest(quarantine_job(src, sink, work)).committed_rows == 0
        with engine.connect() as conn:
            assert conn.execute(sa.text("SELECT count(*) FROM orders_quarantine")).scalar_one() == 3

        # One transaction: when the quarantine insert fails, the batch's rows are not loaded either.
        broken = SqlSink(pg_url, "orders2", key=("id",), quarantine_table="bad_quarantine")
        with engine.begin() as conn:
            conn.execute(sa.text("CREATE TABLE bad_quarantine (id bigint primary key, batch_id integer)"))
        with pytest.raises(AicError):
            run_ingest(quarantine_job(src, broken, tmp_path / "work2", load="orders2"))
        with engine.connect() as conn:
            assert not sa.inspect(conn).has_table("orders2")
            ledger = conn.execute(sa.text("SELECT count(*) FROM aic_ingest_batches")).scalar_one()
        assert ledger == 1
    finally:
        engine.dispose()


def test_quarantine_table_names_are_checked(tmp_path: Path) -> None:
    with pytest.raises(UnsafeIdentifierError):
        SqlSink(f"sqlite:///{tmp_path / 'x.db'}", "orders", quarantine_table='q"; DROP TABLE orders; --')
