"""Late labels joined to logged predictions: every label row is joined to exactly one prediction or set aside
and counted with its reason; a rerun adds nothing."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from aicml.errors import SchemaError
from aicml.monitoring.labels import ingest_labels, read_labels

NOW = datetime.now(UTC).replace(microsecond=0)


def write_log(root: Path, model: str, rows: list[dict], day: datetime) -> None:
    """Logged predictions in the prediction log's layout and columns (``input.<feature>``)."""
    frame = pd.DataFrame(rows)
    folder = root / f"model={model}" / f"date={day.date().isoformat()}"
    folder.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.Table.from_pandas(frame, preserve_index=False), folder / "part-0001.parquet")


def log_rows(n: int, ts: datetime) -> list[dict]:
    return [
        {
            "request_id": f"r{i}",
            "row": 0,
            "ts": pd.Timestamp(ts - timedelta(minutes=i % 50)),
            "model": "churn",
            "version": "3",
            "arm": "champion",
            "latency_ms": 2.0,
            "error": i == 7,  # a failed request: no prediction to label
            "input.customer_id": f"C{i % 18}",  # ids repeat: an ambiguous key
            "input.tenure": float(i),
            "prediction": None if i == 7 else ("yes" if i % 2 else "no"),
        }
        for i in range(20)
    ]


def test_bad_labels_are_counted_and_nothing_is_joined_wrongly(tmp_path: Path) -> None:
    logs, store = tmp_path / "predictions", tmp_path / "labels"
    write_log(logs, "churn", log_rows(20, NOW), NOW)
    labels = pd.DataFrame(
        {
            "request_id": ["r0", "r1", "r2", "r2", "r3", "r3", "nope", None, "r4", "r5", "r7", "r8"],
            "y": ["no", "yes", "yes", "yes", "no", "yes", "no", "yes", None, "maybe", "no", 1],
        }
    )
    source = tmp_path / "labels.csv"
    labels.to_csv(source, index=False)
    report = ingest_labels(
        str(source), "churn", predictions_root=logs, labels_root=store, label_column="y",
        classes=["no", "yes"], now=NOW,
    )  # fmt: skip
    assert report.rows_read == 12
    # r0, r1, r2 (given twice, same label: one kept) join; r8's label 1 is no class of the model.
    assert report.joined == 3, report.summary()
    counts = {k: v for k, v in report.rejected.items() if v}
    assert counts == {
        "duplicate": 1,
        "conflicting_duplicates": 2,
        "unknown_key": 2,  # "nope" and r7 (a failed request has no prediction)
        "missing_key": 1,
        "missing_label": 1,
        "wrong_type": 2,  # "maybe" and 1
    }, counts
    assert report.examples["conflicting_duplicates"] == ["r3", "r3"]
    assert set(report.examples["unknown_key"]) == {"nope", "r7"}
    stored = read_labels(store, "churn")
    assert dict(zip(stored["request_id"], stored["label"], strict=True)) == {
        "r0": "no",
        "r1": "yes",
        "r2": "yes",
    }
    assert set(stored["version"]) == {"3"} and list(stored["row"]) == [0, 0, 0]
    assert {p.parent.name for p in (store / "model=churn").rglob("*.parquet")} == {f"date={NOW.date()}"}

    # The same file again: nothing new; a contradicting label later is refused, never overwrites.
    again = ingest_labels(str(source), "churn", predictions_root=logs, labels_root=store, label_column="y",
                          classes=["no", "yes"], now=NOW)  # fmt: skip
    assert again.joined == 0 and again.rejected["already_labelled"] == 3
    assert len(list((store / "model=churn").rglob("*.parquet"))) == 1
    flip = tmp_path / "flip.jsonl"
    pd.DataFrame({"request_id": ["r0"], "y": ["yes"]}).to_json(flip, orient="records", lines=True)
    later = ingest_labels(
        str(flip), "churn", predictions_root=logs, labels_root=store, label_column="y", now=NOW
    )
    assert later.joined == 0 and later.rejected["conflicts_with_stored"] == 1
    assert read_labels(store, "churn").set_index("request_id").loc["r0", "label"] == "no"


def test_labels_by_a_key_column_refuse_keys_several_predictions_share(tmp_path: Path) -> None:
    logs, store = tmp_path / "predictions", tmp_path / "labels"
    write_log(logs, "churn", log_rows(20, NOW), NOW)
    source = tmp_path / "labels.parquet"
    # customer_id C0 and C1 were predicted twice (requests r0/r18, r1/r19): which one a label is for is unknown.
    pd.DataFrame({"customer_id": ["C0", "C1", "C2", "C3"], "churned": ["no", "no", "yes", "yes"]}).to_parquet(
        source
    )
    report = ingest_labels(str(source), "churn", predictions_root=logs, labels_root=store, key="customer_id",
                           label_column="churned", now=NOW)  # fmt: skip
    assert report.joined == 2 and report.rejected["ambiguous_key"] == 2
    stored = read_labels(store, "churn")
    assert dict(zip(stored["request_id"], stored["label"], strict=True)) == {"r2": "yes", "r3": "yes"}


def test_a_regression_label_must_be_a_number_and_missing_columns_are_named(tmp_path: Path) -> None:
    logs, store = tmp_path / "predictions", tmp_path / "labels"
    rows = log_rows(6, NOW)
    for i, row in enumerate(rows):
        row["prediction"] = 1.5 * i + 0.25
        row["error"] = False
    write_log(logs, "price", [{**r, "model": "price"} for r in rows], NOW)
    source = tmp_path / "labels.csv"
    pd.DataFrame({"request_id": ["r0", "r1", "r2"], "y": ["1.5", "cheap", "2"]}).to_csv(source, index=False)
    report = ingest_labels(
        str(source), "price", predictions_root=logs, labels_root=store, label_column="y", now=NOW
    )
    assert (
        report.joined == 2 and report.rejected["wrong_type"] == 1 and report.examples["wrong_type"] == ["r1"]
    )
    assert sorted(read_labels(store, "price")["label"]) == [1.5, 2.0]
    with pytest.raises(SchemaError, match="no column 'label'"):
        ingest_labels(str(source), "price", predictions_root=logs, labels_root=store, now=NOW)


def test_a_request_of_several_rows_needs_the_row_of_each_label(tmp_path: Path) -> None:
    """The prediction log's own files: a request of 3 rows logs 3 predictions under one request id."""
    import numpy as np

    from aicml.serving.predlog import PredictionLog, PredictionLogConfig

    logs, store = tmp_path / "predictions", tmp_path / "labels"
    log = PredictionLog("churn", PredictionLogConfig(root=str(logs), database_url=None, flush_seconds=0.1))
    log.start()
    for i in range(2):
        outputs = np.array(["yes", "no", "yes"], dtype=object)
        assert log.record(f"q{i}", "1", "champion", 0.001, {"tenure": np.array([1.0, 2.0, 3.0])}, 3, outputs)
    log.close()
    by_request = tmp_path / "by-request.csv"
    pd.DataFrame({"request_id": ["q0"], "y": ["yes"]}).to_csv(by_request, index=False)
    report = ingest_labels(
        str(by_request), "churn", predictions_root=logs, labels_root=store, label_column="y"
    )
    assert report.joined == 0 and report.rejected["ambiguous_key"] == 1
    by_row = tmp_path / "by-row.csv"
    pd.DataFrame({"request_id": ["q0", "q0", "q1"], "row": [0, 2, 1], "y": ["yes", "no", "no"]}).to_csv(
        by_row, index=False
    )
    report = ingest_labels(str(by_row), "churn", predictions_root=logs, labels_root=store, label_column="y")
    assert report.joined == 3, report.summary()
    stored = read_labels(store, "churn").sort_values(["request_id", "row"])
    assert list(zip(stored["request_id"], stored["row"], stored["label"], stored["prediction"], strict=True)) == [
        ("q0", 0, "yes", "yes"), ("q0", 2, "no", "yes"), ("q1", 1, "no", "no"),
    ]  # fmt: skip
