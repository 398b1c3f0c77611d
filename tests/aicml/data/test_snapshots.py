"""Snapshots are immutable, named by content, written atomically and only once."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from aicml.data.snapshots import dataset_name, fingerprint_frame, load_snapshot, write_snapshot


def test_same_data_same_snapshot_written_once(tmp_path: Path) -> None:
    frame = pd.DataFrame({"a": [1, 2], "b": ["x", "y"]})
    first = write_snapshot(frame, "ds", tmp_path)
    mtime = Path(first.path).stat().st_mtime_ns
    second = write_snapshot(frame.copy(), "ds", tmp_path)
    assert first == second
    assert Path(second.path).stat().st_mtime_ns == mtime, "a rerun does not rewrite the snapshot"
    assert [p.name for p in (tmp_path / "ds").iterdir()] == [f"{first.fingerprint}.parquet"]
    assert load_snapshot(first).equals(frame)


def test_any_change_changes_the_fingerprint() -> None:
    frame = pd.DataFrame({"a": [1, 2], "b": ["x", "y"]})
    base = fingerprint_frame(frame)
    assert fingerprint_frame(frame.assign(a=[1, 3])) != base
    assert fingerprint_frame(frame.rename(columns={"b": "c"})) != base
    assert fingerprint_frame(frame.astype({"a": "float64"})) != base
    assert fingerprint_frame(frame.iloc[::-1]) != base


def test_dataset_names_are_filesystem_safe() -> None:
    assert dataset_name("/data/churn-part-*.csv") == "data"
    assert dataset_name("/data/Churn 2026.csv") == "churn-2026"
    assert dataset_name("sqlite:///x.db#public.customers") == "public-customers"
