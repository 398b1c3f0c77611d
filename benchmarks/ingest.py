"""Ingestion benchmark: synthetic CSV -> typed, validated, de-duplicated Parquet through `ingest_flow`,
side by side with pyarrow reading the same CSV and writing Parquet with no validation (the practical
limit), plus a PostgreSQL bulk load (COPY + upsert) through the SQL sink.

    .venv/bin/python benchmarks/ingest.py --rows 10000000 --files 8

Both sides run ``--rounds`` times, alternated (pyarrow, then the flow, each round), and the best
time of each side counts, as ``timeit`` does; ``first_round_ratio`` is the first round alone.

The last output line is a JSON object: rows, records_per_s, pyarrow_records_per_s, ratio,
pg_copy_records_per_s (null when no PostgreSQL answers), and details.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

SUITE = {
    "name": "bench",
    "expectations": [
        {
            "type": "expect_table_columns_to_match_set",
            "kwargs": {"column_set": ["id", "region", "amount", "qty", "flag"]},
        },
        {"type": "expect_column_values_to_not_be_null", "kwargs": {"column": "id"}},
        {
            "type": "expect_column_values_to_be_in_type_list",
            "kwargs": {"column": "amount", "type_list": ["float64", "float", "int64"]},
        },
        {
            "type": "expect_column_values_to_be_between",
            "kwargs": {"column": "amount", "min_value": 0, "max_value": 1000},
        },
        {
            "type": "expect_column_values_to_be_between",
            "kwargs": {"column": "qty", "min_value": 0, "max_value": 100},
        },
        {
            "type": "expect_column_values_to_be_in_set",
            "kwargs": {"column": "region", "value_set": ["north", "south", "east", "west", "central"]},
        },
    ],
    "meta": {"aicml": {"numeric_columns": ["id", "amount", "qty"]}},
}


def generate(directory: Path, rows: int, files: int, seed: int = 1) -> list[Path]:
    """``files`` CSV files of ``rows`` rows in total; 0.1% duplicate ids and 0.1% out-of-range amounts."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.csv as pacsv

    rng = np.random.default_rng(seed)
    regions = np.array(["north", "south", "east", "west", "central"])
    paths = []
    per = -(-rows // files)
    for index in range(files):
        start, count = index * per, min(per, rows - index * per)
        if count <= 0:
            break
        ids = np.arange(start, start + count)
        dup = rng.random(count) < 0.001
        ids[dup] = np.maximum(ids[dup] - 1, start)  # a duplicate of the previous row's key
        amount = rng.gamma(2.0, 50.0, count).round(2)
        amount[rng.random(count) < 0.001] = 5000.0
        table = pa.table(
            {
                "id": ids,
                "region": regions[rng.integers(0, 5, count)],
                "amount": amount,
                "qty": rng.integers(0, 100, count),
                "flag": rng.random(count) < 0.5,
            }
        )
        path = directory / f"part-{index:03d}.csv"
        pacsv.write_csv(table, path)
        paths.append(path)
    return paths


def pyarrow_baseline(paths: list[Path], out: Path) -> tuple[float, float]:
    """Read every CSV with pyarrow (multithreaded) and write Parquet: no validation at all.

    Returns wall seconds and CPU seconds of this process (all its threads; steadier than wall time
    on a shared machine).
    """
    import pyarrow.csv as pacsv
    import pyarrow.parquet as pq

    out.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    cpu = time.process_time()
    for path in paths:
        pq.write_table(pacsv.read_csv(path), out / (path.stem + ".parquet"))
    return time.perf_counter() - started, time.process_time() - cpu


def pg_copy(staged_rows: int, work: Path, url: str | None) -> float | None:
    """Rows per second of the SQL sink (COPY into a temporary table, upsert on the key, one transaction)."""
    if url is None:
        return None
    import numpy as np
    import pandas as pd
    import psycopg
    from psycopg import sql

    from aicml.data.sinks import SqlSink, stage_partition

    admin = url
    name = f"aic_bench_{os.getpid()}"
    try:
        with psycopg.connect(admin, autocommit=True, connect_timeout=3) as conn:
            conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    except psycopg.OperationalError:
        return None
    target = admin.rsplit("/", 1)[0].replace("postgresql://", "postgresql+psycopg://") + f"/{name}"
    try:
        rng = np.random.default_rng(3)
        frame = pd.DataFrame(
            {
                "id": np.arange(staged_rows),
                "region": rng.choice(["north", "south"], staged_rows),
                "amount": rng.random(staged_rows),
                "qty": rng.integers(0, 100, staged_rows),
            }
        )
        staged = stage_partition(frame, work / "pg-stage", "bench")
        started = time.perf_counter()
        SqlSink(target, "bench", key=("id",)).commit([staged], "bench-batch")
        return staged_rows / (time.perf_counter() - started)
    finally:
        with psycopg.connect(admin, autocommit=True) as conn:
            conn.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s AND pid <> pg_backend_pid()",
                (name,),
            )
            conn.execute(sql.SQL("DROP DATABASE IF EXISTS {}").format(sql.Identifier(name)))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rows", type=int, default=10_000_000, help="Synthetic rows in total.")
    parser.add_argument("--files", type=int, default=8, help="CSV files (partitions).")
    parser.add_argument("--workers", type=int, default=2, help="Dask workers of the LocalCluster.")
    parser.add_argument(
        "--cluster", choices=["local", "sync"], default="local", help="Dask LocalCluster, or in-process."
    )
    parser.add_argument(
        "--processes", action="store_true", help="LocalCluster workers as processes (default: threads)."
    )
    parser.add_argument("--pg-rows", type=int, default=1_000_000, help="Rows of the PostgreSQL COPY load.")
    parser.add_argument(
        "--pg-url",
        default=os.environ.get("AIC_BENCH_PG_URL", "postgresql://postgres@127.0.0.1:5432/postgres"),
        help="Admin URL of a PostgreSQL server (a throwaway database is created and dropped); '' to skip.",
    )
    parser.add_argument("--no-data-docs", action="store_true", help="Skip the GE Data Docs site.")
    parser.add_argument(
        "--rounds",
        type=int,
        default=3,
        help="Alternated rounds of pyarrow and the flow; the best of each counts.",
    )
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="aic-bench-ingest-"))
    # Without PREFECT_API_URL the flow runs against Prefect's ephemeral server; give it time to
    # start on a busy 2-core machine.
    (work / "prefect").mkdir()
    os.environ.setdefault("PREFECT_HOME", str(work / "prefect"))
    os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "180")
    os.environ["AIC_HOME"] = str(work / "home")
    os.environ.setdefault("GX_ANALYTICS_ENABLED", "False")
    try:
        src = work / "csv"
        src.mkdir()
        started = time.perf_counter()
        paths = generate(src, args.rows, args.files)
        size = sum(p.stat().st_size for p in paths)
        print(
            f"generated {args.rows} rows in {len(paths)} files ({size / 1e6:.0f} MB) in {time.perf_counter() - started:.1f}s"
        )

        from flows.ingestion import IngestParams, ingest_flow

        suite = work / "suite.json"
        suite.write_text(json.dumps(SUITE))
        params = IngestParams(
            load="bench",
            source=str(src / "*.csv"),
            suite_path=str(suite),
            key=["id"],
            types={"flag": "bool"},
            derived={"total": "amount * qty"},
            output=str(work / "dataset"),
            workers=args.workers,
            cluster=args.cluster,
            processes=args.processes,
            data_docs=not args.no_data_docs,
        )
        # Warm-up on a tiny copy: starts Prefect's ephemeral server and imports everything, which is
        # not per-batch work. Each timed run then includes the Dask cluster's start and the Data Docs.
        tiny = work / "tiny"
        tiny.mkdir()
        generate(tiny, 1000, 1)
        ingest_flow(
            params.model_copy(
                update={
                    "load": "warmup",
                    "source": str(tiny / "*.csv"),
                    "output": str(work / "w"),
                    "cluster": "sync",
                }
            )
        )

        load_before = os.getloadavg()[0]
        flow_runs: list[float] = []
        flow_cpu: list[float] = []
        anchor_runs: list[float] = []
        anchor_cpu: list[float] = []
        result = None
        for round_ in range(args.rounds):
            # Alternated, so a busy moment of the machine hits both sides alike.
            wall, cpu_s = pyarrow_baseline(paths, work / "pyarrow")
            anchor_runs.append(wall)
            anchor_cpu.append(cpu_s)
            shutil.rmtree(work / "pyarrow", ignore_errors=True)
            # A new load and output each round: the same load again would (rightly) skip every
            # partition as already committed.
            # With threaded Dask workers (the default) the whole flow runs in this process.
            started = time.perf_counter()
            cpu = time.process_time()
            result = ingest_flow(
                params.model_copy(
                    update={"load": f"bench-{round_}", "output": str(work / f"dataset-{round_}")}
                )
            )
            flow_runs.append(time.perf_counter() - started)
            flow_cpu.append(time.process_time() - cpu)
            shutil.rmtree(work / f"dataset-{round_}", ignore_errors=True)
            print(
                f"round {round_ + 1}: pyarrow {anchor_runs[-1]:.2f}s, ingest_flow {flow_runs[-1]:.2f}s "
                f"({result.accepted} accepted, {result.quarantined} quarantined, {result.committed_rows} committed)"
            )
        assert result is not None
        pg = pg_copy(min(args.pg_rows, args.rows), work, args.pg_url or None)
        flow_s, baseline_s = min(flow_runs), min(anchor_runs)
        records_per_s = args.rows / flow_s
        pyarrow_per_s = args.rows / baseline_s
        print(
            json.dumps(
                {
                    "rows": args.rows,
                    "records_per_s": round(records_per_s),
                    "pyarrow_records_per_s": round(pyarrow_per_s),
                    "ratio": round(records_per_s / pyarrow_per_s, 3),
                    "pg_copy_records_per_s": round(pg) if pg else None,
                    "pg_rows": min(args.pg_rows, args.rows) if pg else 0,
                    "rounds": args.rounds,
                    # The first round alone: the flow's first big batch in a fresh process also pays
                    # for growing the heap, as a deployment's flow-run process does.
                    "first_round_ratio": round(anchor_runs[0] / flow_runs[0], 3),
                    "flow_s": round(flow_s, 2),
                    "pyarrow_s": round(baseline_s, 2),
                    "flow_runs_s": [round(x, 2) for x in flow_runs],
                    "pyarrow_runs_s": [round(x, 2) for x in anchor_runs],
                    "flow_cpu_s": round(min(flow_cpu), 2),
                    "pyarrow_cpu_s": round(min(anchor_cpu), 2),
                    "cpu_ratio": round(min(anchor_cpu) / min(flow_cpu), 3) if not args.processes else None,
                    "files": len(paths),
                    "workers": args.workers,
                    "cluster": args.cluster,
                    "processes": args.processes,
                    "load_avg_1m": [round(load_before, 2), round(os.getloadavg()[0], 2)],
                    "csv_mb": round(size / 1e6),
                    "accepted": result.accepted,
                    "quarantined": result.quarantined,
                    "records_per_hour": round(records_per_s * 3600),
                }
            )
        )
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    from aicml.compat import install

    install()  # the flows run in this process: install the patches the flow-run command installs
    main()
