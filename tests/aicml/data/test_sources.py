"""Sources: files of every supported format, SQL tables, and clear errors for bad sources."""

from __future__ import annotations

import gzip
from pathlib import Path

import pandas as pd
import pytest
import sqlalchemy as sa

from aicml.data.sources import parse_source, read_source, redact
from aicml.errors import SourceError

FRAME = pd.DataFrame({"a": [1, 2, 3], "b": ["x", "y", None]})


def test_reads_csv_parquet_jsonl_and_gzip(tmp_path: Path) -> None:
    FRAME.to_csv(tmp_path / "one.csv", index=False)
    FRAME.to_parquet(tmp_path / "two.parquet", index=False)
    FRAME.to_json(tmp_path / "three.jsonl", orient="records", lines=True)
    with gzip.open(tmp_path / "four.csv.gz", "wt") as handle:
        FRAME.to_csv(handle, index=False)
    for name in ("one.csv", "two.parquet", "three.jsonl", "four.csv.gz"):
        frame = read_source(parse_source(str(tmp_path / name)))
        assert frame["a"].tolist() == [1, 2, 3], name
        assert frame["b"].isna().sum() == 1, name


def test_glob_and_directory_concatenate_in_order(tmp_path: Path) -> None:
    for i in range(3):
        FRAME.assign(part=i).to_csv(tmp_path / f"p-{i}.csv", index=False)
    by_glob = read_source(parse_source(str(tmp_path / "p-*.csv")))
    by_dir = read_source(parse_source(str(tmp_path)))
    assert len(by_glob) == 9 and by_glob["part"].tolist() == [0, 0, 0, 1, 1, 1, 2, 2, 2]
    assert by_dir.equals(by_glob)


def test_sql_table_by_url_fragment(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'x.db'}"
    engine = sa.create_engine(url)
    FRAME.to_sql("items", engine, index=False)
    engine.dispose()
    spec = parse_source(f"{url}#items")
    assert spec.is_sql and spec.table == "items"
    assert read_source(spec)["a"].tolist() == [1, 2, 3]
    with pytest.raises(SourceError, match="Table 'nope' does not exist"):
        read_source(parse_source(f"{url}#nope"))
    with pytest.raises(SourceError, match="does not exist"):
        read_source(parse_source(f"{url}#items; DROP TABLE items"))
    assert read_source(parse_source(f"{url}#items"))["a"].tolist() == [1, 2, 3], "nothing was dropped"


@pytest.mark.parametrize(
    ("source", "message"),
    [
        ("", "empty"),
        ("/no/such/file.csv", "does not exist"),
        ("sqlite:///x.db", "names no table"),
    ],
)
def test_bad_sources_get_clear_errors(source: str, message: str) -> None:
    with pytest.raises(SourceError, match=message):
        parse_source(source)


def test_unknown_format_no_match_and_mismatched_files(tmp_path: Path) -> None:
    (tmp_path / "data.xlsx").write_text("x")
    with pytest.raises(SourceError, match="Cannot tell the format"):
        parse_source(str(tmp_path / "data.xlsx"))
    with pytest.raises(SourceError, match="matched no files"):
        parse_source(str(tmp_path / "*.csv"))
    FRAME.to_csv(tmp_path / "a.csv", index=False)
    FRAME.rename(columns={"b": "c"}).to_csv(tmp_path / "b.csv", index=False)
    with pytest.raises(SourceError, match="must share their columns"):
        read_source(parse_source(str(tmp_path / "*.csv")))
    (tmp_path / "broken.parquet").write_bytes(b"not parquet")
    with pytest.raises(SourceError, match="Cannot read parquet file"):
        read_source(parse_source(str(tmp_path / "broken.parquet")))


def test_redact_hides_passwords_only() -> None:
    assert redact("postgresql://me:s3cret@db:5432/x#t") == "postgresql://me:***@db:5432/x#t"
    assert redact("/data/file.csv") == "/data/file.csv"
    assert "s3cret" not in redact("postgresql+psycopg://me:s3cret@db/x")
