"""The monitor's verdict on one window of served traffic against the champion's reference: per-feature and
prediction drift (the ingest drift statistics: KS for numbers, TVD for categories), the live metric where
labels have arrived, the training suite's verdict on the served inputs, latency and error rate."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import numpy as np
import pandas as pd

from aicml.data.drift import ColumnDrift, DriftReport, compare
from aicml.monitoring.labels import as_class
from aicml.monitoring.predictions import failed_mask, input_columns
from aicml.monitoring.reference import Reference, serving_suite

PREDICTION = "prediction"  # the drift row of the model's output, beside the features


@dataclass(frozen=True)
class Thresholds:
    """When the monitor speaks up (set per model in the monitor-model deployment's preset)."""

    drift: float = 0.2
    prediction_drift: float = 0.2
    metric_drop: float = 0.05
    min_rows: int = 100
    min_labelled: int = 50


@dataclass
class QualityFinding:
    expectation: str
    column: str | None
    unexpected: int
    detail: str


@dataclass
class MonitorReport:
    """Everything one monitor run found; the flow turns it into artifacts, metrics and events."""

    model: str
    version: str
    start: datetime
    end: datetime
    thresholds: Thresholds
    rows: int = 0
    failed_rows: int = 0
    latency_ms: dict[str, float] = field(default_factory=dict)
    drift: DriftReport | None = None
    prediction_drift: ColumnDrift | None = None
    metric: str = ""
    baseline: dict[str, float] = field(default_factory=dict)
    live: dict[str, float] = field(default_factory=dict)
    labelled_rows: int = 0
    quality: list[QualityFinding] = field(default_factory=list)
    quality_checked: bool = False
    notes: list[str] = field(default_factory=list)
    # Kept for the HTML report's plots, not for the artifacts.
    live_inputs: pd.DataFrame | None = None
    reference_inputs: pd.DataFrame | None = None
    latencies: pd.Series | None = None

    @property
    def error_rate(self) -> float:
        return self.failed_rows / self.rows if self.rows else 0.0

    @property
    def drifted_features(self) -> list[str]:
        return [c.column for c in self.drift.drifted] if self.drift else []

    @property
    def drift_detected(self) -> bool:
        return bool(self.drifted_features) or bool(self.prediction_drift and self.prediction_drift.drifted)

    @property
    def metric_drop(self) -> float | None:
        if self.metric in self.live and self.metric in self.baseline:
            return self.baseline[self.metric] - self.live[self.metric]
        return None

    @property
    def degraded(self) -> bool:
        drop = self.metric_drop
        return drop is not None and drop > self.thresholds.metric_drop

    def drift_scores(self) -> dict[str, float]:
        """Feature (and ``prediction``) -> drift statistic, for the gauges."""
        scores = {c.column: c.value for c in self.drift.columns} if self.drift else {}
        if self.prediction_drift is not None:
            scores[PREDICTION] = self.prediction_drift.value
        return scores

    def drift_rows(self) -> list[dict[str, Any]]:
        rows = self.drift.to_rows() if self.drift else []
        if self.prediction_drift is not None:
            c = self.prediction_drift
            rows.append(
                {"column": PREDICTION, "kind": c.kind, "statistic": c.statistic, "value": c.value,
                 "threshold": c.threshold, "drifted": "YES" if c.drifted else "no"}
            )  # fmt: skip
        return rows

    def summary_rows(self) -> list[dict[str, Any]]:
        """The table artifact: one row per check, with its value, threshold and verdict."""
        rows: list[dict[str, Any]] = [
            {"check": "predictions", "value": self.rows, "threshold": "", "verdict": ""},
            {"check": "error rate", "value": round(self.error_rate, 4), "threshold": "", "verdict": ""},
        ]
        for name, value in self.latency_ms.items():
            rows.append(
                {"check": f"latency {name} (ms)", "value": round(value, 2), "threshold": "", "verdict": ""}
            )
        for r in self.drift_rows():
            rows.append(
                {"check": f"drift {r['column']} ({r['statistic']})", "value": r["value"],
                 "threshold": r["threshold"], "verdict": "DRIFT" if r["drifted"] == "YES" else "ok"}
            )  # fmt: skip
        rows.append(
            {"check": "labelled predictions", "value": self.labelled_rows, "threshold": "", "verdict": ""}
        )
        for name, value in self.live.items():
            base = self.baseline.get(name)
            verdict = ""
            if name == self.metric and base is not None:
                verdict = "DEGRADED" if self.degraded else "ok"
            rows.append(
                {"check": f"live {name} (training {base:.4f})" if base is not None else f"live {name}",
                 "value": round(value, 4),
                 "threshold": f"drop > {self.thresholds.metric_drop}" if name == self.metric else "",
                 "verdict": verdict}
            )  # fmt: skip
        if self.quality_checked:
            rows.append(
                {"check": "data quality (training suite)", "value": len(self.quality), "threshold": "0 failed",
                 "verdict": "FAILED" if self.quality else "ok"}
            )  # fmt: skip
        for finding in self.quality:
            rows.append(
                {"check": f"quality {finding.expectation} {finding.column or ''}".strip(),
                 "value": finding.unexpected, "threshold": "", "verdict": "FAILED"}
            )  # fmt: skip
        rows += [{"check": "note", "value": note, "threshold": "", "verdict": ""} for note in self.notes]
        return rows

    def alerts(self) -> list[dict[str, Any]]:
        """The thresholds this window crossed, one row each (what a person has to look at)."""
        found: list[dict[str, Any]] = []
        for row in self.drift_rows():
            if row["drifted"] == "YES":
                found.append(
                    {"alert": "prediction drift" if row["column"] == PREDICTION else "feature drift",
                     "subject": row["column"], "value": float(row["value"]), "threshold": row["threshold"]}
                )  # fmt: skip
        if self.degraded:
            found.append(
                {"alert": "live metric degraded", "subject": self.metric, "value": float(self.live[self.metric]),
                 "threshold": f"drop > {self.thresholds.metric_drop}"}
            )  # fmt: skip
        if self.quality:
            found.append(
                {"alert": "data quality failed", "subject": ", ".join(f.expectation for f in self.quality),
                 "value": len(self.quality), "threshold": "0 failed"}
            )  # fmt: skip
        return found

    def _window(self) -> dict[str, Any]:
        """The fields every record of this run starts with: which model version, which window."""
        return {
            "model": self.model,
            "version": self.version,
            "window_start": self.start.isoformat(),
            "window_end": self.end.isoformat(),
        }

    def summary(self) -> dict[str, Any]:
        """The run's figures as plain JSON values, kept per run so the weekly audit can trace them over time."""
        return {
            **self._window(),
            "rows": self.rows,
            "failed_rows": self.failed_rows,
            "error_rate": self.error_rate,
            "latency_ms": dict(self.latency_ms),
            "metric": self.metric,
            "live": dict(self.live),
            "baseline": dict(self.baseline),
            "labelled_rows": self.labelled_rows,
            "drift_scores": self.drift_scores(),
            "drifted_features": self.drifted_features,
            "prediction_drifted": bool(self.prediction_drift and self.prediction_drift.drifted),
            "degraded": bool(self.degraded),
            "quality_failures": len(self.quality),
            "thresholds": {
                "drift": self.thresholds.drift,
                "prediction_drift": self.thresholds.prediction_drift,
                "metric_drop": self.thresholds.metric_drop,
            },
            "alerts": self.alerts(),
            "notes": list(self.notes),
        }

    def drift_evidence(self) -> dict[str, Any]:
        return {
            **self._window(),
            "rows": self.rows,
            "reference_rows": self.drift.reference_rows if self.drift else 0,
            "threshold": self.thresholds.drift,
            "features": [r for r in self.drift_rows() if r["drifted"] == "YES" and r["column"] != PREDICTION],
            "prediction": next((r for r in self.drift_rows() if r["column"] == PREDICTION), None),
        }

    def performance_evidence(self) -> dict[str, Any]:
        return {
            **self._window(),
            "metric": self.metric,
            "live": self.live.get(self.metric),
            "training": self.baseline.get(self.metric),
            "drop": self.metric_drop,
            "threshold": self.thresholds.metric_drop,
            "labelled_rows": self.labelled_rows,
            "live_metrics": self.live,
        }


def monitor_window(
    window: pd.DataFrame,
    labels: pd.DataFrame,
    reference: Reference,
    start: datetime,
    end: datetime,
    thresholds: Thresholds | None = None,
) -> MonitorReport:
    """Judge ``window`` (logged predictions) and ``labels`` (stored labels of its requests) against ``reference``."""
    from aicml.models.evaluation import score

    thresholds = thresholds or Thresholds()
    report = MonitorReport(
        reference.model, reference.version, start, end, thresholds, metric=reference.metric
    )
    report.baseline = dict(reference.baseline)
    report.rows = len(window)
    if window.empty:
        report.notes.append("no logged predictions in the window")
        return report
    failed = failed_mask(window)
    report.failed_rows = int(failed.sum())
    if "latency_ms" in window.columns:
        latency = pd.to_numeric(window["latency_ms"], errors="coerce").dropna()
        if not latency.empty:
            report.latencies = latency
            report.latency_ms = {
                "mean": float(latency.mean()),
                "p50": float(latency.quantile(0.5)),
                "p95": float(latency.quantile(0.95)),
                "p99": float(latency.quantile(0.99)),
            }
    served = window[~failed].reset_index(drop=True)
    features = [f for f in reference.features if f in served.columns]
    missing = [f for f in reference.features if f not in served.columns]
    if missing:
        report.notes.append(f"inputs never logged: {', '.join(missing)}")
    live = _like_reference(served[features], reference.frame[features])
    report.live_inputs, report.reference_inputs = live, reference.frame[features]

    if len(served) < thresholds.min_rows:
        report.notes.append(f"{len(served)} served rows: drift is judged from {thresholds.min_rows}")
    else:
        report.drift = compare(live, reference.frame[features], thresholds.drift)
        if reference.predictions is not None and PREDICTION in served.columns:
            report.prediction_drift = _prediction_drift(served[PREDICTION], reference, thresholds)

    if reference.suite is not None:
        from aicml.data.validation import validate_batch

        verdict = validate_batch(
            served[input_columns(served)], serving_suite(reference.suite, reference.target)
        )
        report.quality_checked = True
        report.quality = [
            QualityFinding(o.expectation, o.column, o.unexpected_count, o.detail)
            for o in verdict.outcomes
            if not o.success
        ]

    if not labels.empty and PREDICTION in served.columns:
        on = ["request_id", "row"] if "row" in served.columns and "row" in labels.columns else ["request_id"]
        truth_rows = labels[[*on, "label"]].astype({"request_id": "string"}).drop_duplicates(on)
        if "row" in on:
            truth_rows["row"] = truth_rows["row"].astype("int64")
            served = served.astype({"row": "int64"})
        joined = served[[*on, PREDICTION]].merge(truth_rows, on=on, how="inner")
        report.labelled_rows = len(joined)
        if len(joined) >= thresholds.min_labelled:
            truth, predicted = joined["label"], joined[PREDICTION]
            if reference.problem == "classification":
                truth, predicted = as_class(truth), as_class(predicted)
            report.live = score(reference.problem, truth.to_numpy(), predicted.to_numpy())
        else:
            report.notes.append(
                f"{len(joined)} labelled predictions: the live metric is computed from {thresholds.min_labelled}"
            )
    return report


def _like_reference(live: pd.DataFrame, reference: pd.DataFrame) -> pd.DataFrame:
    """Served inputs with the reference's numeric columns as numbers (JSON may have sent them as text)."""
    out = live.copy()
    for column in out.columns:
        if pd.api.types.is_numeric_dtype(reference[column]) and not pd.api.types.is_numeric_dtype(
            out[column]
        ):
            out[column] = pd.to_numeric(out[column], errors="coerce")
    return out


def _prediction_drift(served: pd.Series, reference: Reference, thresholds: Thresholds) -> ColumnDrift | None:
    assert reference.predictions is not None
    if reference.problem == "classification":
        current, base = as_class(served), as_class(reference.predictions)
    else:
        current = pd.to_numeric(served, errors="coerce")
        base = pd.to_numeric(reference.predictions, errors="coerce")
    found = compare(
        pd.DataFrame({PREDICTION: current}), pd.DataFrame({PREDICTION: base}), thresholds.prediction_drift
    )
    return found.columns[0] if found.columns else None


def reference_predictions(model_uri: str, reference: Reference) -> pd.Series:
    """The champion's predictions on the reference rows (what its outputs looked like on training data)."""
    from aicml.serving.smoke import predict_rows

    return pd.Series(predict_rows(model_uri, reference.frame[reference.features]), name=PREDICTION)


def percent(value: float) -> str:
    return f"{100 * value:.1f}%" if np.isfinite(value) else "n/a"
