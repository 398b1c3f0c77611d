"""The monitor's HTML report: one self-contained page (plots inlined as PNG) per run, logged to the model
version's MLflow run."""

from __future__ import annotations

import base64
import html
import io
import json
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from aicml.durable import write_durably
from aicml.monitoring.monitor import MonitorReport

PLOTTED_FEATURES = 6  # the most drifted features get a distribution plot each


def _png(figure: Any) -> str:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=90, bbox_inches="tight")
    import matplotlib.pyplot as plt

    plt.close(figure)
    return base64.b64encode(buffer.getvalue()).decode()


def _img(data: str, alt: str) -> str:
    return f'<img alt="{html.escape(alt)}" src="data:image/png;base64,{data}">'


def _drift_bars(report: MonitorReport) -> str | None:
    import matplotlib.pyplot as plt

    rows = report.drift_rows()
    if not rows:
        return None
    rows = sorted(rows, key=lambda r: r["value"])
    figure, axis = plt.subplots(figsize=(7, 0.35 * len(rows) + 1.2))
    colours = ["#c0392b" if r["drifted"] == "YES" else "#2e86c1" for r in rows]
    axis.barh([r["column"] for r in rows], [r["value"] for r in rows], color=colours)
    axis.axvline(report.thresholds.drift, color="#555", linestyle="--", label="threshold")
    axis.set_xlim(0, 1)
    axis.set_xlabel("drift (KS / TVD)")
    axis.legend(loc="lower right")
    return _png(figure)


def _distribution(report: MonitorReport, column: str) -> str | None:
    import matplotlib.pyplot as plt

    if report.live_inputs is None or report.reference_inputs is None:
        return None
    live, ref = report.live_inputs[column], report.reference_inputs[column]
    figure, axis = plt.subplots(figsize=(5, 3))
    if pd.api.types.is_numeric_dtype(ref) and pd.api.types.is_numeric_dtype(live):
        a, b = live.dropna().astype(float), ref.dropna().astype(float)
        both = pd.concat([a, b])
        if both.empty:
            plt.close(figure)
            return None
        bins = np.histogram_bin_edges(both, bins=30).tolist()
        axis.hist(b, bins=bins, alpha=0.5, density=True, label="training")
        axis.hist(a, bins=bins, alpha=0.5, density=True, label="served")
    else:
        shares = pd.DataFrame(
            {
                "training": ref.astype("string").value_counts(normalize=True),
                "served": live.astype("string").value_counts(normalize=True),
            }
        ).fillna(0)
        shares.head(15).plot.bar(ax=axis)
    axis.set_title(column)
    axis.legend()
    return _png(figure)


def _latency(report: MonitorReport) -> str | None:
    import matplotlib.pyplot as plt

    if report.latencies is None or report.latencies.empty:
        return None
    figure, axis = plt.subplots(figsize=(5, 3))
    axis.hist(report.latencies, bins=40, color="#7d3c98")
    axis.set_xlabel("latency (ms)")
    axis.set_title("request latency")
    return _png(figure)


def _table(rows: list[dict[str, Any]]) -> str:
    if not rows:
        return "<p>none</p>"
    head = "".join(f"<th>{html.escape(str(k))}</th>" for k in rows[0])
    body = "".join(
        "<tr>" + "".join(f"<td>{html.escape(str(v))}</td>" for v in row.values()) + "</tr>" for row in rows
    )
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def render_html(report: MonitorReport) -> str:
    """The report as one HTML page."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    verdicts = []
    if report.drift_detected:
        verdicts.append(f"drift on {', '.join(report.drifted_features) or 'the predictions'}")
    if report.degraded:
        verdicts.append(f"{report.metric} dropped by {report.metric_drop:.4f}")
    if report.quality:
        verdicts.append(f"{len(report.quality)} quality expectation(s) failed")
    headline = "; ".join(verdicts) or "nothing crossed a threshold"
    parts = [
        "<!doctype html><html><head><meta charset='utf-8'>",
        f"<title>Monitor: {html.escape(report.model)} v{html.escape(report.version)}</title>",
        "<style>body{font-family:sans-serif;margin:2em;max-width:1100px}table{border-collapse:collapse}"
        "td,th{border:1px solid #ccc;padding:3px 8px;text-align:left}img{margin:6px}</style></head><body>",
        f"<h1>{html.escape(report.model)} version {html.escape(report.version)}</h1>",
        f"<p>Window {report.start.isoformat()} to {report.end.isoformat()}: {report.rows} logged predictions. "
        f"<b>{html.escape(headline)}</b>.</p>",
        "<h2>Summary</h2>",
        _table(report.summary_rows()),
        "<h2>Drift against the training snapshot</h2>",
    ]
    bars = _drift_bars(report)
    parts.append(_img(bars, "drift per feature") if bars else "<p>not judged (too few rows)</p>")
    ranked = sorted(
        (r for r in report.drift_rows() if r["column"] != "prediction"), key=lambda r: -r["value"]
    )[:PLOTTED_FEATURES]
    for row in ranked:
        picture = _distribution(report, row["column"])
        if picture:
            parts.append(_img(picture, f"distribution of {row['column']}"))
    parts.append("<h2>Latency</h2>")
    latency = _latency(report)
    parts.append(_img(latency, "latency") if latency else "<p>no latencies logged</p>")
    parts.append("</body></html>")
    return "\n".join(parts)


def write_html(report: MonitorReport, path: Path) -> Path:
    """The HTML report at ``path``, with its figures beside it as JSON (`write_summary`)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    write_durably(path, render_html(report).encode())
    write_summary(report, summary_path(path))
    return path


def summary_path(report_path: Path) -> Path:
    """Where the figures of the report at ``report_path`` are kept: the same name, ``.json``."""
    return report_path.with_suffix(".json")


def write_summary(report: MonitorReport, path: Path) -> Path:
    """The run's figures (`MonitorReport.summary`) as one JSON file, written whole or not at all: the weekly
    audit reads these (``<home>/monitoring/<model>/report-*.json``) to trace each model over time."""
    path.parent.mkdir(parents=True, exist_ok=True)
    write_durably(path, json.dumps(report.summary(), sort_keys=True, default=str).encode())
    return path
