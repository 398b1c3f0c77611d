"""The prediction log's queue, writer and reader in-process: bounds, retries, schema, configuration."""

from __future__ import annotations

import datetime as dt
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.parquet as pq
import pytest

from aicml.errors import ConfigurationError
from aicml.serving.predlog import (
    ParquetSink,
    PredictionLog,
    PredictionLogConfig,
    SummaryStore,
    read_predictions,
)

WINDOW = ("2000-01-01", "2100-01-01")


class GatedSink(ParquetSink):
    """The real sink, held at a gate (storage that hangs) or failing a number of times first."""

    def __init__(self, root: str, fail_first: int = 0) -> None:
        super().__init__(root)
        self.gate = threading.Event()
        self.entered = threading.Event()
        self.fail_first = fail_first

    def write(self, table: Any, model: str, day: dt.date, batch_id: str) -> str:
        self.entered.set()
        if self.fail_first:
            self.fail_first -= 1
            raise OSError("storage unavailable")
        self.gate.wait(30)
        return super().write(table, model, day, batch_id)


def config(tmp_path: Path, **kwargs: Any) -> PredictionLogConfig:
    return PredictionLogConfig(root=str(tmp_path / "log"), database_url=None, poll_seconds=0.01, **kwargs)


def record(log: PredictionLog, i: int, **kwargs: Any) -> bool:
    return log.record(
        f"r{i}", "3", "champion", 0.002, {"x": np.array([float(i)])}, 1, np.array([i % 2]), **kwargs
    )


def test_a_hung_store_drops_and_counts_and_never_blocks(tmp_path: Path) -> None:
    sink = GatedSink(str(tmp_path / "log"))
    log = PredictionLog("m", config(tmp_path, max_queue_rows=100, flush_seconds=0.01), sink=sink)
    log.start()
    record(log, 0)
    assert sink.entered.wait(10)  # the writer holds the first record and hangs in the store
    started = time.perf_counter()
    accepted = [record(log, i) for i in range(1, 1001)]
    assert time.perf_counter() - started < 1.0  # 1000 records with the writer stuck: no waiting
    assert sum(accepted) == 100 and log.dropped == 900
    assert log.queued_rows == 100
    sink.gate.set()
    log.close(10)
    counts = log.counts()
    assert counts["offered"] == 1001 == counts["written"] + counts["dropped"]
    assert counts["failed"] == 0 and counts["queued_rows"] == 0
    assert len(read_predictions(str(tmp_path / "log"), "m", *WINDOW)) == 101


def test_a_failed_write_is_retried_and_nothing_lost(tmp_path: Path) -> None:
    sink = GatedSink(str(tmp_path / "log"), fail_first=2)
    sink.gate.set()
    log = PredictionLog("m", config(tmp_path, flush_seconds=0.01), sink=sink)
    log.start()
    for i in range(50):
        record(log, i)
    deadline = time.monotonic() + 10
    while log.written < 50 and time.monotonic() < deadline:
        time.sleep(0.01)
    log.close(5)
    assert log.counts()["written"] == 50 and log.failed == 0
    assert "storage unavailable" in (log.last_error or "")
    frame = read_predictions(str(tmp_path / "log"), "m", *WINDOW)
    assert sorted(frame["request_id"]) == sorted(f"r{i}" for i in range(50))


def test_schema_outputs_and_summaries(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'deployment.db'}"
    log = PredictionLog("churn", config(tmp_path, flush_seconds=60, sample=1.0))
    log.summary = SummaryStore(url)
    log.record(
        "one", "1", "champion", 0.001, {"x": np.array([1.5]), "model": np.array(["a"])}, 1, np.array([7])
    )
    log.record(
        "two", "2", "challenger", 0.004, {"x": np.array([2.5, 3.5])}, 2, np.array([[0.2, 0.8], [0.6, 0.4]])
    )
    log.record("bad", "2", "challenger", 0.009, {"x": np.array([9.0])}, 1, None, error=True)
    log.close()  # never started: close writes what is queued
    frame = read_predictions(str(tmp_path / "log"), "churn", *WINDOW)
    assert list(frame.columns) == [
        "request_id", "row", "ts", "model", "version", "arm", "latency_ms", "error",
        "x", "input.model", "prediction",
    ]  # fmt: skip
    assert frame["request_id"].tolist() == ["one", "two", "two", "bad"]
    assert frame["row"].tolist() == [0, 0, 1, 0]
    assert frame["x"].tolist() == [1.5, 2.5, 3.5, 9.0]
    # One number per row stays a number; anything else is JSON text per row; a failure has none.
    assert frame["prediction"].tolist()[:3] == ["7", "[0.2,0.8]", "[0.6,0.4]"]
    assert frame["prediction"].isna().tolist() == [False, False, False, True]
    assert frame["error"].tolist() == [False, False, False, True]
    assert str(frame["ts"].dtype) == "datetime64[us, UTC]"
    files = list((tmp_path / "log").glob("model=churn/date=*/part-*.parquet"))
    assert len(files) == 1 and files[0].parent.name == f"date={dt.datetime.now(dt.UTC).date().isoformat()}"
    assert pq.read_schema(files[0]).field("input.x").type == "double"
    summary = SummaryStore(url).read("churn")
    by_arm = summary.set_index("arm")
    assert by_arm.loc["champion", "count"] == 1 and by_arm.loc["challenger", "count"] == 3
    assert by_arm.loc["challenger", "errors"] == 1 and by_arm.loc["challenger", "requests"] == 2
    assert by_arm.loc["challenger", "latency_p99_ms"] > by_arm.loc["challenger", "latency_p50_ms"]


def test_window_and_sampling(tmp_path: Path) -> None:
    log = PredictionLog("m", config(tmp_path, sample=0.25))
    offered = sum(record(log, i) for i in range(4000))
    log.close()
    assert 800 < offered < 1200 and log.offered == offered  # Binomial(4000, 0.25): sd 27
    now = dt.datetime.now(dt.UTC)
    assert len(read_predictions(str(tmp_path / "log"), "m", now - dt.timedelta(minutes=5), now)) == offered
    assert read_predictions(
        str(tmp_path / "log"), "m", now + dt.timedelta(minutes=5), now + dt.timedelta(days=2)
    ).empty
    with pytest.raises(ConfigurationError, match="before it starts"):
        read_predictions(str(tmp_path / "log"), "m", now, now - dt.timedelta(days=1))
    with pytest.raises(ConfigurationError, match="not an ISO date"):
        read_predictions(str(tmp_path / "log"), "m", "yesterday", now)


def test_configuration_from_the_environment(tmp_path: Path) -> None:
    assert PredictionLogConfig.from_env({}, home=tmp_path) is None
    assert PredictionLogConfig.from_env({"AIC_PREDICTION_LOG": "off"}, home=tmp_path) is None
    on = PredictionLogConfig.from_env({"AIC_PREDICTION_LOG": "on"}, home=tmp_path)
    assert on is not None and on.root == str(tmp_path / "predictions")
    assert on.database_url == f"sqlite:///{tmp_path / 'deployment.db'}" and on.sample == 1.0
    s3 = PredictionLogConfig.from_env(
        {
            "AIC_PREDICTION_LOG": "s3://bucket/predictions",
            "AIC_PREDICTION_LOG_SAMPLE": "0.1",
            "AIC_PREDICTION_LOG_DB": "off",
        },
        home=tmp_path,
    )
    assert s3 is not None and (s3.root, s3.sample, s3.database_url) == ("s3://bucket/predictions", 0.1, None)
    with pytest.raises(ConfigurationError, match="AIC_PREDICTION_LOG_SAMPLE"):
        PredictionLogConfig.from_env(
            {"AIC_PREDICTION_LOG": "on", "AIC_PREDICTION_LOG_SAMPLE": "2"}, home=tmp_path
        )
    with pytest.raises(ConfigurationError, match="AIC_PREDICTION_LOG_MAX_QUEUE='many' is not a number"):
        PredictionLogConfig.from_env(
            {"AIC_PREDICTION_LOG": "on", "AIC_PREDICTION_LOG_MAX_QUEUE": "many"}, home=tmp_path
        )
