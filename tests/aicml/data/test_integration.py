"""The partition engine: the Arrow path (a CSV parsed by pyarrow, cut and written without a pandas
round trip) gives the same accepted rows and the same quarantine reasons as the pandas path that
other sources take."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import pyarrow.parquet as pq

from aicml.data.connectors import FileConnector, Partition
from aicml.data.integration import REASON, ROW, PartitionTask, process_partition
from aicml.data.readers import ReadResult
from aicml.data.transforms import TransformSpec

SUITE = {
    "name": "mixed",
    "expectations": [
        {"type": "expect_column_values_to_not_be_null", "kwargs": {"column": "id"}},
        {
            "type": "expect_column_values_to_be_between",
            "kwargs": {"column": "amount", "min_value": 0, "max_value": 100},
        },
        {
            "type": "expect_column_values_to_be_in_set",
            "kwargs": {"column": "region", "value_set": ["n", "s"]},
        },
    ],
    "meta": {"aicml": {"numeric_columns": ["id", "amount", "qty"]}},
}
CSV = (
    "id,region,amount,qty,flag\n"
    "1,n,10.5,2,true\n"
    "2,s,500,1,false\n"  # out of range
    "3,x,1,1,true\n"  # not in the set
    "4,n,NaN,3,false\n"  # NaN amount: kept, written as null
    "5,n,7,2,true\n"
    "5,s,8,4,false\n"  # duplicate key: the later row wins
    "6,s,2,2,true,extra\n"  # ragged
    "7,s,3,5,false\n"
)


@dataclass(frozen=True)
class PandasOnly:
    """The same files, handed over as a pandas frame only (as SQL and HTTP sources do)."""

    inner: FileConnector

    @property
    def name(self) -> str:
        return self.inner.name

    def partitions(self, since: str | None = None) -> list[Partition]:
        return self.inner.partitions(since)

    def read(self, partition: Partition) -> ReadResult:
        read = self.inner.read(partition)
        return ReadResult(frame=read.table.to_pandas(), rejects=read.rejects)


def _run(connector: object, staging: Path) -> tuple[pd.DataFrame, pd.DataFrame, int]:
    task = PartitionTask(
        "mixed",
        connector,  # type: ignore[arg-type]
        connector.partitions()[0],  # type: ignore[attr-defined]
        SUITE,
        "quarantine",
        TransformSpec(
            types={"qty": "float64", "flag": "bool"}, key=("id",), derived={"total": "amount * qty"}
        ),
        str(staging),
    )
    out = process_partition(task)
    assert out.staged is not None and out.quarantine is not None
    data = pq.read_table(out.staged.path).to_pandas()
    quarantine = pq.read_table(out.quarantine.path).to_pandas().sort_values(ROW)
    return data, quarantine, out.accepted


def test_arrow_and_pandas_paths_agree(tmp_path: Path) -> None:
    (tmp_path / "src").mkdir()
    (tmp_path / "src" / "a.csv").write_text(CSV)
    files = FileConnector(str(tmp_path / "src" / "*.csv"))
    assert files.read(files.partitions()[0]).table is not None  # the CSV reader keeps Arrow
    arrow, arrow_bad, accepted = _run(files, tmp_path / "arrow")
    pandas, pandas_bad, _ = _run(PandasOnly(files), tmp_path / "pandas")

    assert accepted == 4 and arrow["id"].tolist() == [1, 4, 5, 7]
    assert arrow.loc[arrow["id"] == 5, "region"].item() == "s"  # the later duplicate won
    assert arrow["amount"].isna().tolist() == [False, True, False, False]
    assert arrow["total"].tolist()[0] == 21.0 and str(arrow["qty"].dtype) == "float64"
    pd.testing.assert_frame_equal(arrow, pandas, check_dtype=False)
    assert arrow_bad[REASON].tolist() == pandas_bad[REASON].tolist()
    assert len(arrow_bad) == 4 and arrow_bad[ROW].tolist() == [2, 3, 5, 7]


def test_partitions_side_by_side_parse_on_one_thread_each(tmp_path: Path) -> None:
    from aicml.data.connectors import SqlConnector
    from aicml.data.integration import _single_threaded

    files = FileConnector(str(tmp_path / "*.csv"))
    assert files.options.threads
    assert not _single_threaded(files).options.threads  # type: ignore[attr-defined]
    sql = SqlConnector("sqlite://", table="t")
    assert _single_threaded(sql) is sql


def test_quarantined_rows_are_counted_by_reason_kind(tmp_path: Path) -> None:
    from aicml.data.integration import merge_counts

    (tmp_path / "src").mkdir()
    (tmp_path / "src" / "a.csv").write_text(CSV)
    files = FileConnector(str(tmp_path / "src" / "*.csv"))
    task = PartitionTask(
        "mixed",
        files,
        files.partitions()[0],
        SUITE,
        "quarantine",
        TransformSpec(key=("id",)),
        str(tmp_path / "staging"),
    )
    counts = process_partition(task).reason_counts
    # The kind leaves out the offending value, so rows broken the same way share one line.
    assert counts["expect_column_values_to_be_between on 'amount'"] == 1
    assert counts["expect_column_values_to_be_in_set on 'region'"] == 1
    assert counts["duplicate key on ['id']"] == 1
    assert sum(counts.values()) == 4 and len(counts) == 4  # and the ragged row's own kind
    merged = merge_counts([counts, {"duplicate key on ['id']": 5}])
    assert next(iter(merged)) == "duplicate key on ['id']" and merged["duplicate key on ['id']"] == 6


def test_high_cardinality_numbers_skip_dictionary_encoding(tmp_path: Path) -> None:
    import numpy as np
    import pyarrow as pa

    from aicml.data.sinks import dictionary_columns, write_parquet_atomic

    rng = np.random.default_rng(0)
    table = pa.table(
        {
            "id": np.arange(50_000),
            "amount": rng.random(50_000),
            "qty": rng.integers(0, 100, 50_000),
            "region": rng.choice(["n", "s", "e"], 50_000),
        }
    )
    assert dictionary_columns(table) == ["qty", "region"]
    path = write_parquet_atomic(table, tmp_path / "t.parquet")
    meta = pq.ParquetFile(path).metadata.row_group(0)
    encodings = {meta.column(i).path_in_schema: meta.column(i).encodings for i in range(meta.num_columns)}
    assert all("DICTIONARY" not in e for e in encodings["amount"] + encodings["id"])
    assert any("DICTIONARY" in e for e in encodings["region"]) and any(
        "DICTIONARY" in e for e in encodings["qty"]
    )
    assert pq.read_table(path).equals(table)
