"""The monitor's verdict on a window, without servers: a regression model's drift, live metric, quality,
latency and error rate, and the HTML report."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pandas as pd

from aicml.data.quality import derive_suite
from aicml.monitoring.monitor import Thresholds, monitor_window
from aicml.monitoring.reference import Reference
from aicml.monitoring.report import write_html

END = datetime(2026, 12, 5, 12, tzinfo=UTC)


def reference(rng: np.random.Generator) -> Reference:
    frame = pd.DataFrame({"size": rng.normal(100, 10, 2000), "city": rng.choice(["a", "b", "c"], 2000)})
    frame["price"] = 3 * frame["size"] + rng.normal(0, 5, 2000)
    return Reference(
        model="price", version="4", run_id="r", experiment_id="0", target="price", problem="regression",
        metric="r2", baseline={"r2": 0.9}, frame=frame, snapshot_path="x.parquet",
        suite=derive_suite(frame, "price", "price"), predictions=3 * frame["size"],
    )  # fmt: skip


def window(rng: np.random.Generator, n: int, shift: float) -> pd.DataFrame:
    size = rng.normal(100 + shift, 10, n)
    return pd.DataFrame(
        {
            "request_id": [f"q{i}" for i in range(n)],
            "row": 0,
            "ts": [pd.Timestamp(END - timedelta(minutes=1 + i % 50)) for i in range(n)],
            "version": "4",
            "latency_ms": np.where(np.arange(n) % 10 == 0, 50.0, 5.0),
            "error": np.arange(n) % 25 == 0,
            "size": size,
            "city": rng.choice(["a", "b", "c"], n),
            "prediction": 3 * size,
        }
    )


def test_a_shift_and_wrong_labels_are_found_and_the_report_renders(tmp_path: Path) -> None:
    rng = np.random.default_rng(3)
    ref = reference(rng)
    served = window(rng, 500, shift=0.0)
    truth = served[["request_id", "row"]].assign(label=served["prediction"] + rng.normal(0, 5, 500))
    calm = monitor_window(served, truth, ref, END - timedelta(hours=1), END, Thresholds())
    assert calm.rows == 500 and calm.failed_rows == 20 and calm.error_rate == 0.04
    assert calm.latency_ms["p50"] == 5.0 and calm.latency_ms["p99"] == 50.0
    assert calm.drifted_features == [] and not calm.drift_detected and calm.quality == []
    assert calm.labelled_rows == 480 and calm.live["r2"] > 0.85 and not calm.degraded

    moved = window(rng, 500, shift=40.0)  # beyond the suite's range too
    wrong = moved[["request_id", "row"]].assign(label=rng.normal(300, 30, 500))
    loud = monitor_window(moved, wrong, ref, END - timedelta(hours=1), END, Thresholds())
    assert (
        loud.drifted_features == ["size"]
        and loud.prediction_drift is not None
        and loud.prediction_drift.drifted
    )
    assert loud.degraded and loud.performance_evidence()["drop"] > 0.5
    assert [f.column for f in loud.quality] == ["size"]
    assert loud.drift_evidence()["features"][0]["column"] == "size"
    page = write_html(loud, tmp_path / "report.html").read_text()
    assert page.count("data:image/png;base64") >= 3 and "drift on size" in page and "r2 dropped" in page

    few = monitor_window(served.head(20), truth, ref, END - timedelta(hours=1), END, Thresholds())
    assert few.drift is None and few.live == {} and any("drift is judged from 100" in n for n in few.notes)
