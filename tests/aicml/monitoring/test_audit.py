"""The audit's engine without servers: each monitor run keeps its figures beside its HTML report; the audit
reads them back over a period with the prediction log's summary rows and the audit log, and says what
crossed a threshold."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pandas as pd

from aicml.monitoring.audit import (
    ModelAudit,
    read_decisions,
    read_monitor_summaries,
    read_volume,
    render_audit,
    summary_database_url,
)
from aicml.monitoring.monitor import Thresholds, monitor_window
from aicml.monitoring.report import write_html
from aicml.rollout.audit import AuditRecord, append_audit
from aicml.serving.predlog import SummaryStore
from tests.aicml.monitoring.test_monitor import END, reference, window


def summary_row(model: str, batch: str, start: datetime, count: int, version: str = "4") -> dict[str, object]:
    return {
        "batch_id": batch, "version": version, "arm": "champion", "model": model, "window_start": start,
        "window_end": start + timedelta(minutes=1), "count": count, "requests": count // 2, "errors": 1,
        "latency_p50_ms": 4.0, "latency_p95_ms": 9.5, "latency_p99_ms": 20.0, "sample": 1.0,
        "path": f"/log/{batch}.parquet", "written_at": start,
    }  # fmt: skip


def test_monitor_runs_are_kept_and_audited_over_the_week(tmp_path: Path) -> None:
    rng = np.random.default_rng(5)
    ref = reference(rng)
    monitoring = tmp_path / "monitoring"
    # Two calm days, then a shifted window whose labels are wrong: drift on `size`, r2 collapses.
    for days_ago, shift in ((3, 0.0), (2, 0.0), (1, 40.0)):
        end = END - timedelta(days=days_ago)
        served = window(rng, 400, shift)
        noise = rng.normal(0, 5, 400) if shift == 0 else rng.normal(0, 200, 400)
        labels = served[["request_id", "row"]].assign(label=served["prediction"] + noise)
        report = monitor_window(served, labels, ref, end - timedelta(hours=1), end, Thresholds())
        html = write_html(report, monitoring / "price" / f"report-{end:%Y%m%dT%H%M%SZ}.html")
        kept = json.loads(html.with_suffix(".json").read_text())
        assert kept["rows"] == 400 and kept["window_end"] == end.isoformat()
        assert kept["drifted_features"] == (["size"] if shift else [])
    old = monitor_window(window(rng, 400, 0.0), pd.DataFrame(), ref, END - timedelta(days=9, hours=1),
                         END - timedelta(days=9), Thresholds())  # fmt: skip
    write_html(old, monitoring / "price" / "report-old.html")  # outside the week
    (monitoring / "price" / "report-broken.json").write_text("{not json")

    runs, notes = read_monitor_summaries(monitoring, "price", END - timedelta(days=7), END)
    assert [r["window_end"][:10] for r in runs] == ["2026-12-02", "2026-12-03", "2026-12-04"]
    assert notes == ["monitor summary report-broken.json unreadable (JSONDecodeError)"]
    assert runs[0]["alerts"] == [] and runs[0]["live"]["r2"] > 0.85
    last_alerts = {a["alert"]: a for a in runs[-1]["alerts"]}
    assert set(last_alerts) == {
        "feature drift",
        "prediction drift",
        "live metric degraded",
        "data quality failed",
    }
    assert last_alerts["feature drift"]["subject"] == "size"

    db = tmp_path / "deployment.db"
    assert summary_database_url(tmp_path, {}) is None  # no summary database written: none created
    store = SummaryStore(f"sqlite:///{db}")
    store.insert([summary_row("price", "a", END - timedelta(days=2), 300),
                  summary_row("price", "b", END - timedelta(days=1), 500, version="5"),
                  summary_row("price", "c", END - timedelta(days=20), 999),
                  summary_row("other", "d", END - timedelta(days=1), 7)])  # fmt: skip
    store.close()
    url = summary_database_url(tmp_path, {})
    assert url == f"sqlite:///{db}"
    assert summary_database_url(tmp_path, {"AIC_PREDICTION_LOG_DB": "off"}) is None
    volume = read_volume(url, "price", END - timedelta(days=7), END)
    assert volume is not None and sorted(volume["count"]) == [300, 500]

    append_audit(tmp_path / "audit" / "deployments.jsonl",
                 AuditRecord("price", "5", "promote", "better r2", "ml-pipeline", {}, "4", "5",
                             at="2026-12-03T10:00:00+00:00"))  # fmt: skip
    append_audit(tmp_path / "audit" / "deployments.jsonl",
                 AuditRecord("other", "1", "promote", "first", "ml-pipeline", {}, None, "1"))  # fmt: skip
    append_audit(tmp_path / "audit" / "retraining.jsonl",
                 AuditRecord("price", "4", "started", "drift on size", "retrain-model", {}, "4", None,
                             at="2026-12-04T13:00:00+00:00"))  # fmt: skip
    decisions = read_decisions(tmp_path / "audit", "price")
    assert [(d["log"], d["action"]) for d in decisions] == [
        ("retraining", "started"),
        ("deployments", "promote"),
    ]

    audit = ModelAudit(
        model="price", start=END - timedelta(days=7), end=END, aliases={"champion": "4", "challenger": "5"},
        latest_version="5", latest_created=datetime(2026, 12, 3, 10, tzinfo=UTC), runs=runs, volume=volume,
        decisions=decisions, notes=notes,
    )  # fmt: skip
    assert audit.logged_predictions == 800 and audit.drifted_counts() == {"prediction": 1, "size": 1}
    page = render_audit([audit], END - timedelta(days=7), END)
    assert page.startswith("# Model audit, 2026-11-28 to 2026-12-05")
    section = audit.markdown()
    assert section in page
    assert (
        "`champion` → version 4" in section
        and "Latest registered version: 5, 2026-12-03 10:00 UTC" in section
    )
    assert "| 2026-12-04 | 1 | 400 |" in section  # the shifted day's monitor run
    assert "size in 1 of 3 runs" in section and "| size |" in section and "YES" in section
    assert "| 2026-12-03 | 300 |" in section and "v5 champion: 500" in section
    assert (
        "| live metric degraded | r2 |" in section and "| deployments | promote | 5 | better r2 |" in section
    )
    assert "Last retraining decision: started at 2026-12-04T13:00:00+00:00 (drift on size)." in section
    first, last = audit.live_series()[0][1], audit.live_series()[-1][1]
    assert f"r2: first {first:.4f}, last {last:.4f}, at training 0.9000" in section and last < 0.5 < first

    quiet = ModelAudit(model="idle", start=END - timedelta(days=7), end=END, aliases={"staging": "1"})
    assert "Unknown: no monitor run in the period." in quiet.markdown()
    assert "No prediction log summaries here" in quiet.markdown()
    assert "No registered model has an alias" in render_audit([], END - timedelta(days=7), END)
