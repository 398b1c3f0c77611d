"""Ingestion benchmark: synthetic CSV -> typed, validated, de-duplicated Parquet through `ingest_flow`,
side by side with pyarrow reading the same CSV and writing Parquet with no validation (the practical
limit), DuckDB and Polars doing the flow's work (typed read, the suite's checks, quarantine with
reasons, de-duplication on the key, the derived column, Parquet partitioned by source file), plus a
PostgreSQL bulk load (COPY + upsert) through the SQL sink.

    .venv/bin/python benchmarks/ingest.py --rows 10000000 --files 8

Each engine runs in a process of its own (spawned, so its peak RSS, VmHWM, is its own), warmed up
on a tiny file first. Rounds alternate the engines (pyarrow, the flow, DuckDB, Polars, then again),
and the best time of each counts, as ``timeit`` does; ``first_round_ratio`` is the first round alone.
DuckDB and Polars must accept and quarantine exactly the rows the flow does (asserted).

The last output line is a JSON object: rows, records_per_s, pyarrow_records_per_s, ratio,
duckdb_records_per_s, polars_records_per_s, peak_rss_mb (the flow's process), pyarrow_peak_rss_mb,
duckdb_peak_rss_mb, polars_peak_rss_mb, pg_copy_records_per_s (null when no PostgreSQL answers),
the goals and details.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path
from typing import Any, ClassVar

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


KEY = ("id",)
TYPES = {"flag": "bool"}
DERIVED = {"total": "amount * qty"}  # arithmetic that reads the same in the flow, SQL and Polars
# The extra columns of a quarantine file: the reason and the partition (the flow's names).
REASON, PARTITION = "_aic_reason", "_aic_partition"
PARQUET_CODEC = "snappy"  # the flow's and pyarrow's (and DuckDB's default); Polars' default is zstd


def peak_rss_mb(pid: int | str = "self") -> float:
    """The high-water mark of a process's resident memory (VmHWM: its own address space only)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return round(int(line.split()[1]) / 1024, 1)
    return 0.0


def rss_mb() -> float:
    """This process's resident memory now (VmRSS)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return round(int(line.split()[1]) / 1024, 1)
    return 0.0


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


def _expectations(kind: str) -> list[dict[str, Any]]:
    return [e["kwargs"] for e in SUITE["expectations"] if e["type"] == kind]


def _duplicate_reason(value: str) -> str:
    return f"duplicate key on {list(KEY)}: {value} (a later row with the same key was kept)"


def table_failures(columns: dict[str, str], type_names: dict[str, set[str]]) -> list[str]:
    """The suite's table-level checks on a schema (column -> engine type name): the column set and
    the type lists. ``type_names`` maps the suite's type names to the engine's."""
    failures = []
    for kwargs in _expectations("expect_table_columns_to_match_set"):
        wanted, have = set(kwargs["column_set"]), set(columns)
        if wanted != have:
            failures.append(
                f"expect_table_columns_to_match_set: columns differ from the suite: missing "
                f"{sorted(wanted - have)}, unexpected {sorted(have - wanted)}"
            )
    for kwargs in _expectations("expect_column_values_to_be_in_type_list"):
        allowed = set().union(*(type_names.get(t, set()) for t in kwargs["type_list"]))
        if columns.get(kwargs["column"]) not in allowed:
            failures.append(
                f"expect_column_values_to_be_in_type_list on {kwargs['column']!r}: "
                f"{columns.get(kwargs['column'])} is not in {kwargs['type_list']}"
            )
    return failures


def _parquet_rows(files: Any) -> int:
    import pyarrow.parquet as pq

    return sum(pq.ParquetFile(f).metadata.num_rows for f in files)


class PyarrowEngine:
    """The ceiling: pyarrow CSV -> Parquet, no validation."""

    def __init__(self, config: dict[str, Any]) -> None:
        import pyarrow.csv
        import pyarrow.parquet

        del pyarrow  # imported before the rounds, as the other engines' modules are

    def run(self, round_: int, paths: list[Path], out: Path) -> None:
        pyarrow_baseline(paths, out)

    def counted(self, out: Path) -> tuple[int, int]:
        return _parquet_rows(out.glob("*.parquet")), 0


class AicmlEngine:
    """``ingest_flow`` in this process (threaded Dask workers run in it too)."""

    def __init__(self, config: dict[str, Any]) -> None:
        from aicml.compat import install

        install()  # the flows run in this process: install the patches the flow-run command installs
        from flows.ingestion import IngestParams, ingest_flow

        self.flow = ingest_flow
        suite = Path.cwd() / "suite.json"  # the engine's own directory
        suite.write_text(json.dumps(SUITE))
        self.params = IngestParams(
            load="bench",
            source=str(Path(config["source"]) / "*.csv"),
            suite_path=str(suite),
            key=list(KEY),
            types=dict(TYPES),
            derived=dict(DERIVED),
            output=str(Path(config["work"]) / "dataset"),
            workers=config["workers"],
            cluster=config["cluster"],
            processes=config["processes"],
            data_docs=config["data_docs"],
        )
        self.result: Any = None

    def run(self, round_: int, paths: list[Path], out: Path) -> tuple[int, int]:
        # A new load and output each round: the same load again would (rightly) skip every
        # partition as already committed. The warm-up (round -1) reads a tiny copy in-process: it
        # starts Prefect's ephemeral server and imports everything, which is not per-batch work.
        update: dict[str, Any] = {"load": f"bench-{round_}", "output": str(out)}
        if round_ < 0:
            update.update(load="warmup", source=str(paths[0].parent / "*.csv"), cluster="sync")
        result = self.flow(self.params.model_copy(update=update))
        assert result.committed_rows == result.accepted, result
        self.result = result
        return result.accepted, result.quarantined


class DuckdbEngine:
    """The flow's work in DuckDB SQL: a typed read into a table with each row's first failed check
    (the suite as CASE predicates), the duplicates of the key within a partition (the last row is
    kept, as the flow does), then two COPYs: accepted rows with the derived column as Parquet
    partitioned by source file, and quarantined rows as text with their reason."""

    TYPE_NAMES: ClassVar[dict[str, set[str]]] = {
        "float64": {"DOUBLE"},
        "float": {"DOUBLE", "FLOAT"},
        "int64": {"BIGINT"},
        "int": {"BIGINT", "INTEGER"},
    }

    def __init__(self, config: dict[str, Any]) -> None:
        import duckdb

        self.duckdb = duckdb

    @staticmethod
    def quote(text: str) -> str:
        return "'" + text.replace("'", "''") + "'"

    @staticmethod
    def ident(name: str) -> str:
        return '"' + name.replace('"', '""') + '"'

    def reason(self, failures: list[str]) -> str:
        q, i = self.quote, self.ident
        if failures:
            return q("partition rejected: " + "; ".join(failures))
        whens = []
        for e in SUITE["expectations"]:
            kind, kw = e["type"], e["kwargs"]
            head = f"{kind} on {kw.get('column')!r}"
            if kind == "expect_column_values_to_not_be_null":
                whens.append(f"WHEN {i(kw['column'])} IS NULL THEN {q(head + ': value is missing')}")
            elif kind == "expect_column_values_to_be_between":
                col = i(kw["column"])
                span = f" not in [{kw['min_value']}, {kw['max_value']}]"
                whens.append(
                    f"WHEN {col} < {kw['min_value']} OR {col} > {kw['max_value']} "
                    f"THEN {q(head + ': ')} || CAST({col} AS VARCHAR) || {q(span)}"
                )
            elif kind == "expect_column_values_to_be_in_set":
                col = i(kw["column"])
                allowed = ", ".join(q(str(v)) for v in kw["value_set"])
                whens.append(
                    f"WHEN {col} NOT IN ({allowed}) THEN {q(head + ': ')} || {q(chr(39))} || {col} || {q(chr(39))}"
                )
        return "CASE " + " ".join(whens) + " END"

    def run(self, round_: int, paths: list[Path], out: Path) -> tuple[int, int]:
        out.mkdir(parents=True, exist_ok=True)
        con = self.duckdb.connect()  # in memory, default threads (one per core)
        try:
            return self._run(con, paths, out)
        finally:
            con.close()

    def _run(self, con: Any, paths: list[Path], out: Path) -> tuple[int, int]:
        q, i = self.quote, self.ident
        types = ", ".join(f"{q(c)}: 'BOOLEAN'" for c, t in TYPES.items() if t == "bool")
        source = (
            f"read_csv([{', '.join(q(str(p)) for p in paths)}], header = true, filename = true, "
            f"types = {{{types}}})"
        )
        schema = dict(
            (row[0], row[1])
            for row in con.execute(f"DESCRIBE SELECT * EXCLUDE (filename) FROM {source}").fetchall()
        )
        columns = list(schema)
        con.execute(
            f"CREATE TEMP TABLE batch AS SELECT * EXCLUDE (filename), parse_filename(filename, true) AS "
            f"{i(PARTITION)}, {self.reason(table_failures(schema, self.TYPE_NAMES))} AS {i(REASON)} "
            f"FROM {source}"
        )
        keys = ", ".join(i(k) for k in (PARTITION, *KEY))
        # Duplicates among the rows that passed: every row of a key but its last (the flow keeps the last).
        con.execute(
            f"CREATE TEMP TABLE dropped AS SELECT b.rowid AS r FROM batch b JOIN ("
            f"SELECT {keys}, max(rowid) AS last FROM batch WHERE {i(REASON)} IS NULL "
            f"GROUP BY ALL HAVING count(*) > 1) d USING ({keys}) "
            f"WHERE b.{i(REASON)} IS NULL AND b.rowid <> d.last"
        )
        plain = ", ".join(i(c) for c in columns)
        derived = ", ".join(f"{expression} AS {i(name)}" for name, expression in DERIVED.items())
        accepted = con.execute(
            f"COPY (SELECT {plain}, {derived}, {i(PARTITION)} FROM batch WHERE {i(REASON)} IS NULL "
            f"AND rowid NOT IN (SELECT r FROM dropped)) TO {q(str(out / 'data'))} "
            f"(FORMAT parquet, PARTITION_BY ({i(PARTITION)}))"
        ).fetchone()[0]
        text = ", ".join(f"CAST({i(c)} AS VARCHAR) AS {i(c)}" for c in columns)
        key_text = " || '/' || ".join(f"CAST({i(k)} AS VARCHAR)" for k in KEY)
        head, tail = _duplicate_reason("\x00").split("\x00")
        quarantined = con.execute(
            f"COPY (SELECT {text}, {i(REASON)}, {i(PARTITION)} FROM batch WHERE {i(REASON)} IS NOT NULL "
            f"UNION ALL SELECT {text}, {q(head)} || {key_text} || {q(tail)}, {i(PARTITION)} FROM batch "
            f"WHERE rowid IN (SELECT r FROM dropped)) TO {q(str(out / 'quarantine.parquet'))} (FORMAT parquet)"
        ).fetchone()[0]
        return int(accepted), int(quarantined)


class PolarsEngine:
    """The flow's work in Polars' lazy API: one scan per source file (its partition a literal
    column), each row's first failed check as a when/then chain, the last row of each key within
    a partition kept, then both sinks (accepted rows partitioned by source file, quarantined rows
    as text with their reason) collected together, so the CSV is parsed once."""

    def __init__(self, config: dict[str, Any]) -> None:
        import polars

        self.pl = polars
        self.type_names = {
            "float64": {"Float64"},
            "float": {"Float64", "Float32"},
            "int64": {"Int64"},
            "int": {"Int64", "Int32"},
        }

    def reason(self, failures: list[str]) -> Any:
        pl = self.pl
        if failures:
            return pl.lit("partition rejected: " + "; ".join(failures))
        chain: Any = None
        for e in SUITE["expectations"]:
            kind, kw = e["type"], e["kwargs"]
            head = f"{kind} on {kw.get('column')!r}"
            if kind == "expect_column_values_to_not_be_null":
                test, text = pl.col(kw["column"]).is_null(), pl.lit(head + ": value is missing")
            elif kind == "expect_column_values_to_be_between":
                col = pl.col(kw["column"])
                test = (col < kw["min_value"]) | (col > kw["max_value"])
                text = pl.format(
                    head.replace("{", "{{") + ": {} not in [" + f"{kw['min_value']}, {kw['max_value']}]", col
                )
            elif kind == "expect_column_values_to_be_in_set":
                col = pl.col(kw["column"])
                test = ~col.is_in(list(kw["value_set"]))
                text = pl.format(head + ": '{}'", col)
            else:
                continue
            chain = pl.when(test).then(text) if chain is None else chain.when(test).then(text)
        return chain.otherwise(None) if chain is not None else pl.lit(None, pl.String)

    def run(self, round_: int, paths: list[Path], out: Path) -> None:
        pl = self.pl
        overrides = {c: pl.Boolean for c, t in TYPES.items() if t == "bool"}
        scans = [
            pl.scan_csv(p, schema_overrides=overrides).with_columns(pl.lit(p.stem).alias(PARTITION))
            for p in paths
        ]
        schema = {n: str(t) for n, t in scans[0].collect_schema().items() if n != PARTITION}
        columns = list(schema)
        checked = pl.concat(scans).with_columns(
            self.reason(table_failures(schema, self.type_names)).alias(REASON)
        )
        passed = checked.filter(pl.col(REASON).is_null())
        last = pl.struct(PARTITION, *KEY).is_last_distinct()
        accepted = passed.filter(last).select(
            *columns, *(pl.sql_expr(e).alias(n) for n, e in DERIVED.items()), PARTITION
        )
        key_text = pl.concat_str([pl.col(k).cast(pl.String) for k in KEY], separator="/")
        head, tail = _duplicate_reason("\x00").split("\x00")
        duplicates = passed.filter(~last).with_columns(
            pl.concat_str([pl.lit(head), key_text, pl.lit(tail)]).alias(REASON)
        )
        quarantine = pl.concat([checked.filter(pl.col(REASON).is_not_null()), duplicates]).select(
            *(pl.col(c).cast(pl.String) for c in columns), REASON, PARTITION
        )
        out.mkdir(parents=True, exist_ok=True)
        pl.collect_all(
            [
                accepted.sink_parquet(
                    pl.PartitionBy(out / "data", key=PARTITION, include_key=False),
                    compression=PARQUET_CODEC,
                    lazy=True,
                    mkdir=True,
                ),
                quarantine.sink_parquet(out / "quarantine.parquet", compression=PARQUET_CODEC, lazy=True),
            ]
        )

    def counted(self, out: Path) -> tuple[int, int]:
        return _parquet_rows((out / "data").rglob("*.parquet")), _parquet_rows([out / "quarantine.parquet"])


ENGINES = {"pyarrow": PyarrowEngine, "aicml": AicmlEngine, "duckdb": DuckdbEngine, "polars": PolarsEngine}


def serve_engine(name: str, conn: Any, config: dict[str, Any]) -> None:
    """A spawned engine process: warm up on the tiny file, then one batch per round it is sent."""
    try:
        own = Path(config["work"]) / "engines" / name.replace("@", "-")
        own.mkdir(parents=True)
        os.chdir(own)  # where relative defaults land (MLflow's local artifact root)
        for variable, leaf in config["private"].items():
            if variable == "MLFLOW_TRACKING_URI":
                os.environ[variable] = f"sqlite:///{own / leaf}"
            else:
                (own / leaf).mkdir()
                os.environ[variable] = str(own / leaf)
        kind, _, rev = name.partition("@")
        if rev:  # the flow as an earlier commit had it: its code first on the path
            sys.path.insert(0, config["code"][rev])
        engine = ENGINES[kind](config)
        paths = [Path(p) for p in config["paths"]]
        work = Path(config["work"])
        engine.run(-1, [Path(p) for p in config["tiny"]], work / f"{name}-warmup")
        conn.send(("ready", {"pid": os.getpid(), "rss_mb": rss_mb()}))
        while (round_ := conn.recv()) is not None:
            out = work / f"{name}-{round_}"
            started, cpu = time.perf_counter(), time.process_time()
            counts = engine.run(round_, paths, out)
            wall, cpu = time.perf_counter() - started, time.process_time() - cpu
            # Engines that do not report their counts are counted from their files, untimed.
            accepted, quarantined = counts if counts is not None else engine.counted(out)
            shutil.rmtree(out, ignore_errors=True)
            conn.send(("round", {"wall": wall, "cpu": cpu, "accepted": accepted, "quarantined": quarantined}))
        children = 0.0
        try:
            import psutil

            children = sum(c.memory_info().rss for c in psutil.Process().children(recursive=True)) / 1024**2
        except Exception:
            pass
        conn.send(("done", {"peak_rss_mb": peak_rss_mb(), "children_rss_mb": round(children, 1)}))
    except BaseException:
        conn.send(("error", traceback.format_exc()))
        raise


class Engine:
    """The parent's handle on a spawned engine process."""

    def __init__(self, name: str, config: dict[str, Any]) -> None:
        context = multiprocessing.get_context("spawn")
        self.name = name
        self.conn, child = context.Pipe()
        self.process = context.Process(target=serve_engine, args=(name, child, config), name=f"bench-{name}")
        self.process.start()
        self.runs: list[float] = []
        self.cpu: list[float] = []
        self.counts: list[tuple[int, int]] = []
        self.final: dict[str, Any] = {}
        self.ready: dict[str, Any] = {}

    def receive(self, expected: str) -> dict[str, Any]:
        kind, payload = self.conn.recv()
        if kind == "error":
            raise RuntimeError(f"engine {self.name} failed:\n{payload}")
        assert kind == expected, (kind, expected)
        return dict(payload)

    def round(self, round_: int) -> None:
        self.conn.send(round_)
        got = self.receive("round")
        self.runs.append(got["wall"])
        self.cpu.append(got["cpu"])
        self.counts.append((got["accepted"], got["quarantined"]))

    def finish(self) -> None:
        self.conn.send(None)
        self.final = self.receive("done")
        self.process.join(60)

    def stop(self) -> None:
        if self.process.is_alive():
            self.process.kill()
            self.process.join(10)


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
        help="Alternated rounds of the engines; the best of each counts.",
    )
    parser.add_argument(
        "--engines",
        default="pyarrow,aicml,duckdb,polars",
        help="Comma-separated engines to run (pyarrow and aicml always run); DuckDB and Polars come "
        "with `make bench-deps`.",
    )
    parser.add_argument(
        "--profile",
        default=None,
        help="Directory for a py-spy profile of the flow's process over the rounds (collapsed stacks, "
        "idle samples left out); needs `make bench-deps`.",
    )
    parser.add_argument(
        "--compare-with",
        default="",
        help="Comma-separated git revisions whose flow (aicml, tasks, flows, blocks as committed there) "
        "runs as one more engine each, in the same rounds: what the changes since bought.",
    )
    args = parser.parse_args()
    revisions = [r.strip() for r in args.compare_with.split(",") if r.strip()]
    names = ["pyarrow", "aicml"] + [
        n for n in ("duckdb", "polars") if n in {e.strip() for e in args.engines.split(",")}
    ]

    work = Path(tempfile.mkdtemp(prefix="aic-bench-ingest-"))
    # Without PREFECT_API_URL the flow runs against Prefect's ephemeral server; give it time to
    # start on a busy 2-core machine. The engine processes inherit this environment.
    # Each engine process gets its own Prefect home (its own ephemeral server), stack home and MLflow
    # store, under the work directory, unless the caller named them.
    private = {
        name: value
        for name, value in {
            "PREFECT_HOME": "prefect",
            "AIC_HOME": "home",
            # The flow uploads its Data Docs to MLflow: to a local SQLite store (its artifacts beside it,
            # in the engine's working directory) unless a tracking server is named, never to whatever
            # answers on the local stack's port (and minutes of retries when nothing does).
            "MLFLOW_TRACKING_URI": "mlflow.db",
        }.items()
        if name == "AIC_HOME" or name not in os.environ
    }
    os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "180")
    os.environ.setdefault("GX_ANALYTICS_ENABLED", "False")
    os.environ.setdefault("AIC_MLFLOW_UI_URL", "http://127.0.0.1:5000")  # only written into links
    engines: dict[str, Engine] = {}
    try:
        src = work / "csv"
        src.mkdir()
        started = time.perf_counter()
        paths = generate(src, args.rows, args.files)
        size = sum(p.stat().st_size for p in paths)
        print(
            f"generated {args.rows} rows in {len(paths)} files ({size / 1e6:.0f} MB) in {time.perf_counter() - started:.1f}s"
        )
        tiny = work / "tiny"
        tiny.mkdir()
        config = {
            "work": str(work),
            "source": str(src),
            "paths": [str(p) for p in paths],
            "tiny": [str(p) for p in generate(tiny, 1000, 1)],
            "workers": args.workers,
            "cluster": args.cluster,
            "processes": args.processes,
            "data_docs": not args.no_data_docs,
            "private": private,
        }
        config["code"] = {rev: str(checkout(rev, work / "code" / rev)) for rev in revisions}
        names += [f"aicml@{rev}" for rev in revisions]
        engines = {name: Engine(name, config) for name in names}
        for engine in engines.values():
            engine.ready = engine.receive("ready")

        spy = profile(engines["aicml"], Path(args.profile)) if args.profile else None
        load_before = os.getloadavg()[0]
        for round_ in range(args.rounds):
            # Alternated, so a busy moment of the machine hits every engine alike.
            for engine in engines.values():
                engine.round(round_)
            line = ", ".join(f"{n} {e.runs[-1]:.2f}s" for n, e in engines.items())
            accepted, quarantined = engines["aicml"].counts[-1]
            print(f"round {round_ + 1}: {line} ({accepted} accepted, {quarantined} quarantined)")
        load_after = os.getloadavg()[0]
        if spy is not None:
            spy.send_signal(signal.SIGINT)
            spy.wait(120)
        for engine in engines.values():
            engine.finish()
        flow, anchor = engines["aicml"], engines["pyarrow"]
        # Same data, same suite: every engine accepts and quarantines the same rows in every round.
        for name, engine in engines.items():
            if name != "pyarrow":
                assert engine.counts == flow.counts, (name, engine.counts, "aicml", flow.counts)
        assert all(c == (args.rows, 0) for c in anchor.counts), anchor.counts
        accepted, quarantined = flow.counts[-1]
        assert accepted + quarantined == args.rows, (accepted, quarantined)

        pg = pg_copy(min(args.pg_rows, args.rows), work, args.pg_url or None)
        flow_s, baseline_s = min(flow.runs), min(anchor.runs)
        records_per_s = args.rows / flow_s
        pyarrow_per_s = args.rows / baseline_s
        peer = {n: args.rows / min(e.runs) for n, e in engines.items() if n in ("duckdb", "polars")}
        rss = {n: e.final["peak_rss_mb"] for n, e in engines.items()}
        ratio = records_per_s / pyarrow_per_s
        goals: dict[str, bool | None] = {
            "ratio >= 0.75": ratio >= 0.75,
            "records_per_s >= 2 * duckdb_records_per_s": (
                records_per_s >= 2 * peer["duckdb"] if "duckdb" in peer else None
            ),
            "peak_rss_mb <= 1.5 * pyarrow_peak_rss_mb": rss["aicml"] <= 1.5 * rss["pyarrow"],
        }
        figures: dict[str, Any] = {
            "rows": args.rows,
            "records_per_s": round(records_per_s),
            "pyarrow_records_per_s": round(pyarrow_per_s),
            "ratio": round(ratio, 3),
            "duckdb_records_per_s": round(peer["duckdb"]) if "duckdb" in peer else None,
            "polars_records_per_s": round(peer["polars"]) if "polars" in peer else None,
            "peak_rss_mb": rss["aicml"],
            "pyarrow_peak_rss_mb": rss["pyarrow"],
            "duckdb_peak_rss_mb": rss.get("duckdb"),
            "polars_peak_rss_mb": rss.get("polars"),
            # Each process's resident memory after its imports and warm-up, before the rounds: what
            # its peak holds besides the batch.
            "warm_rss_mb": {n: e.ready["rss_mb"] for n, e in engines.items()},
            # Prefect's ephemeral API server is a child process of the flow's: not in peak_rss_mb.
            "prefect_server_rss_mb": flow.final["children_rss_mb"],
            "goals": goals,
            "pg_copy_records_per_s": round(pg) if pg else None,
            "pg_rows": min(args.pg_rows, args.rows) if pg else 0,
            "rounds": args.rounds,
            # The first round alone: the flow's first big batch in a fresh process also pays
            # for growing the heap, as a deployment's flow-run process does.
            "first_round_ratio": round(anchor.runs[0] / flow.runs[0], 3),
            "flow_s": round(flow_s, 2),
            "pyarrow_s": round(baseline_s, 2),
            "flow_runs_s": [round(x, 2) for x in flow.runs],
            "pyarrow_runs_s": [round(x, 2) for x in anchor.runs],
            "flow_cpu_s": round(min(flow.cpu), 2),
            "pyarrow_cpu_s": round(min(anchor.cpu), 2),
            "cpu_ratio": round(min(anchor.cpu) / min(flow.cpu), 3) if not args.processes else None,
        }
        figures["compare"] = {
            rev: {
                "records_per_s": round(args.rows / min(engines[f"aicml@{rev}"].runs)),
                "runs_s": [round(x, 2) for x in engines[f"aicml@{rev}"].runs],
                "cpu_s": round(min(engines[f"aicml@{rev}"].cpu), 2),
                "peak_rss_mb": engines[f"aicml@{rev}"].final["peak_rss_mb"],
            }
            for rev in revisions
        }
        for name in ("duckdb", "polars"):
            if name in engines:
                figures[f"{name}_runs_s"] = [round(x, 2) for x in engines[name].runs]
                figures[f"{name}_cpu_s"] = round(min(engines[name].cpu), 2)
        figures.update(
            {
                "files": len(paths),
                "workers": args.workers,
                "cluster": args.cluster,
                "processes": args.processes,
                "load_avg_1m": [round(load_before, 2), round(load_after, 2)],
                "csv_mb": round(size / 1e6),
                "accepted": accepted,
                "quarantined": quarantined,
                "records_per_hour": round(records_per_s * 3600),
                "versions": versions(names),
            }
        )
        print(json.dumps(figures))
    finally:
        for engine in engines.values():
            engine.stop()
        shutil.rmtree(work, ignore_errors=True)


def profile(engine: Engine, directory: Path) -> subprocess.Popen[bytes]:
    """py-spy sampling ``engine``'s process (every thread, native frames) until interrupted."""
    directory.mkdir(parents=True, exist_ok=True)
    spy = subprocess.Popen(
        [
            str(Path(sys.executable).parent / "py-spy"),
            "record",
            "--pid",
            str(engine.process.pid),
            "--rate",
            "200",
            "--nonblocking",
            "--format",
            "raw",
            "--output",
            str(directory / "aicml.txt"),
        ]
    )
    time.sleep(2)  # attached before the first round
    return spy


def checkout(rev: str, into: Path) -> Path:
    """The Python packages of the flow as committed at ``rev`` (git archive; the working tree is untouched)."""
    into.mkdir(parents=True)
    archive = subprocess.run(
        ["git", "-C", str(REPO), "archive", rev, "aicml", "tasks", "flows", "blocks"],
        check=True,
        capture_output=True,
    ).stdout
    subprocess.run(["tar", "-x", "-C", str(into)], input=archive, check=True)
    return into


def versions(names: list[str]) -> dict[str, str]:
    from importlib.metadata import version

    return {n: version(n) for n in names if not n.startswith("aicml")}


if __name__ == "__main__":
    main()
