"""The weekly performance audit of every model with a registry alias: its live metric over time and drift
(from the figures each monitor run keeps, ``<home>/monitoring/<model>/report-*.json``), the data volume it
served (the prediction log's summary rows), its last retrain (the latest registered version and the rollout
decisions of the audit log) and the alerts its last monitor run left open, as one markdown report."""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pandas as pd

from aicml.errors import ConfigurationError
from aicml.monitoring.predictions import check_model_name, utc

CHAMPION = "champion"
DECISIONS_SHOWN = 5
FEATURES_SHOWN = 12
RETRAIN_LOG = "retraining"  # <home>/audit/retraining.jsonl, written by the retrain-model flow
DECISION_COLUMNS = ("at", "log", "action", "version", "reason", "actor")
ALERT_COLUMNS = ("alert", "subject", "value", "threshold")


@dataclass
class ModelAudit:
    """What one model did over the audited period."""

    model: str
    start: datetime
    end: datetime
    aliases: dict[str, str]  # alias -> version
    latest_version: str | None = None
    latest_created: datetime | None = None
    runs: list[dict[str, Any]] = field(default_factory=list)  # monitor-run summaries, oldest first
    volume: pd.DataFrame | None = None  # prediction log summary rows of the period; None: no summary store
    decisions: list[dict[str, Any]] = field(default_factory=list)  # audit-log records of the model
    notes: list[str] = field(default_factory=list)

    @property
    def champion(self) -> str | None:
        return self.aliases.get(CHAMPION)

    @property
    def last_run(self) -> dict[str, Any] | None:
        return self.runs[-1] if self.runs else None

    @property
    def open_alerts(self) -> list[dict[str, Any]]:
        return list(self.last_run.get("alerts", [])) if self.last_run else []

    @property
    def metric(self) -> str:
        return next((str(r["metric"]) for r in reversed(self.runs) if r.get("metric")), "")

    def live_series(self) -> list[tuple[str, float]]:
        """(window end, live value of the primary metric) of the runs that had enough labels."""
        return [
            (str(r["window_end"]), float(r["live"][self.metric]))
            for r in self.runs
            if self.metric in (r.get("live") or {})
        ]

    @property
    def logged_predictions(self) -> int | None:
        return None if self.volume is None else int(self.volume["count"].sum())

    def drifted_counts(self) -> dict[str, int]:
        """Feature (or ``prediction``) -> monitor runs of the period that found it drifted."""
        counts: dict[str, int] = {}
        for run in self.runs:
            names = list(run.get("drifted_features") or [])
            if run.get("prediction_drifted"):
                names.append("prediction")
            for name in names:
                counts[name] = counts.get(name, 0) + 1
        return dict(sorted(counts.items(), key=lambda item: (-item[1], item[0])))

    def overview_row(self) -> dict[str, Any]:
        series = self.live_series()
        drifted = self.drifted_counts()
        return {
            "model": self.model,
            "aliases": ", ".join(f"{a} v{v}" for a, v in sorted(self.aliases.items())),
            "monitor runs": len(self.runs),
            "live metric (last)": f"{self.metric} {series[-1][1]:.4f}" if series else "no labels",
            "drifted": ", ".join(f"{n} ({c})" for n, c in drifted.items()) or "none",
            "logged predictions": "no summary"
            if self.logged_predictions is None
            else self.logged_predictions,
            "last retrain": _when(self.latest_created, f"v{self.latest_version}")
            if self.latest_version
            else "",
            "open alerts": len(self.open_alerts),
        }

    def markdown(self) -> str:
        """The model's section of the report (also logged alone to its champion's MLflow run)."""
        lines = [f"## {self.model}", ""]
        lines.append(
            f"Audited {self.start:%Y-%m-%d %H:%M} to {self.end:%Y-%m-%d %H:%M} UTC. Aliases: "
            + (", ".join(f"`{a}` → version {v}" for a, v in sorted(self.aliases.items())) or "none")
            + "."
        )
        lines += [
            "",
            _table(
                [
                    {"figure": k, "value": v}
                    for k, v in self.overview_row().items()
                    if k not in ("model", "aliases")
                ]
            ),
        ]
        lines += ["", "### Live metric over time", ""]
        lines.append(_table(self.daily_rows()) if self.runs else "No monitor run in the period.")
        series = self.live_series()
        if series:
            baseline = next(
                (
                    r["baseline"][self.metric]
                    for r in reversed(self.runs)
                    if self.metric in (r.get("baseline") or {})
                ),
                None,
            )
            trend = f"{self.metric}: first {series[0][1]:.4f}, last {series[-1][1]:.4f}"
            if baseline is not None:
                trend += f", at training {float(baseline):.4f}"
            lines += ["", trend + "."]
        lines += ["", "### Drift", ""]
        last = self.last_run
        if last and last.get("drift_scores"):
            drifted = set(last.get("drifted_features") or [])
            if last.get("prediction_drifted"):
                drifted.add("prediction")
            ranked = sorted(last["drift_scores"].items(), key=lambda item: -float(item[1]))[:FEATURES_SHOWN]
            lines.append(f"Last monitor run (window ending {last['window_end']}), highest first:")
            lines += [
                "",
                _table(
                    [
                        {"feature": name, "drift": round(float(value), 4),
                         "threshold": (last.get("thresholds") or {}).get(
                             "prediction_drift" if name == "prediction" else "drift", ""),
                         "drifted": "YES" if name in drifted else "no"}
                        for name, value in ranked
                    ]
                ),
            ]  # fmt: skip
        else:
            lines.append("Not judged in the period (no monitor run with enough logged predictions).")
        counts = self.drifted_counts()
        if counts:
            lines += [
                "",
                "Drifted in the period: "
                + ", ".join(f"{n} in {c} of {len(self.runs)} runs" for n, c in counts.items())
                + ".",
            ]
        lines += ["", "### Data volume", ""]
        lines.append(self._volume_markdown())
        lines += ["", "### Last retrain", ""]
        if self.latest_version:
            lines.append(f"Latest registered version: {self.latest_version}, {_when(self.latest_created)}.")
        else:
            lines.append("No registered version found.")
        retrain = next((d for d in self.decisions if d.get("log") == RETRAIN_LOG), None)
        if retrain:
            lines.append(
                f"Last retraining decision: {retrain.get('action')} at {retrain.get('at')} ({retrain.get('reason')})."
            )
        if self.decisions:
            lines += [
                "",
                "Decisions in the audit log (retraining, promotion, rollout, trust), newest first:",
                "",
                _table(
                    [{k: d.get(k, "") for k in DECISION_COLUMNS} for d in self.decisions[:DECISIONS_SHOWN]]
                ),
            ]
        lines += ["", "### Open alerts", ""]
        if last is None:
            lines.append("Unknown: no monitor run in the period.")
        elif self.open_alerts:
            lines.append(f"Thresholds crossed by the last monitor run (window ending {last['window_end']}):")
            shown = [{k: _rounded(a.get(k, "")) for k in ALERT_COLUMNS} for a in self.open_alerts]
            lines += ["", _table(shown)]
        else:
            lines.append(
                f"None: the last monitor run (window ending {last['window_end']}) crossed no threshold."
            )
        if self.notes:
            lines += ["", "Notes: " + "; ".join(self.notes) + "."]
        return "\n".join(lines) + "\n"

    def daily_rows(self) -> list[dict[str, Any]]:
        """One row per UTC day: monitor runs, predictions judged, labels, mean live metric, worst drift."""
        by_day: dict[str, list[dict[str, Any]]] = {}
        for run in self.runs:
            by_day.setdefault(str(run["window_end"])[:10], []).append(run)
        rows = []
        for day, runs in sorted(by_day.items()):
            live = [float(r["live"][self.metric]) for r in runs if self.metric in (r.get("live") or {})]
            scores = [float(v) for r in runs for v in (r.get("drift_scores") or {}).values()]
            drifted = sorted({f for r in runs for f in r.get("drifted_features") or []})
            rows.append(
                {"day": day, "monitor runs": len(runs), "predictions judged": sum(int(r.get("rows", 0)) for r in runs),
                 "labelled": sum(int(r.get("labelled_rows", 0)) for r in runs),
                 f"live {self.metric or 'metric'}": round(sum(live) / len(live), 4) if live else "",
                 "worst drift": round(max(scores), 4) if scores else "", "drifted": ", ".join(drifted)}
            )  # fmt: skip
        return rows

    def _volume_markdown(self) -> str:
        if self.volume is None:
            return "No prediction log summaries here (the model server's AIC_PREDICTION_LOG_DB)."
        if self.volume.empty:
            return "No predictions logged in the period."
        frame = self.volume.copy()
        frame["day"] = pd.to_datetime(frame["window_start"], utc=True).dt.strftime("%Y-%m-%d")
        daily = frame.groupby("day", sort=True).agg(
            predictions=("count", "sum"), requests=("requests", "sum"), errors=("errors", "sum"),
            p95_ms=("latency_p95_ms", "max"),
        )  # fmt: skip
        rows = [
            {"day": day, "logged predictions": int(r.predictions), "requests": int(r.requests),
             "failed rows": int(r.errors), "worst p95 latency (ms)": round(float(r.p95_ms), 2)}
            for day, r in daily.iterrows()
        ]  # fmt: skip
        arms = frame.groupby(["version", "arm"], sort=True)["count"].sum()
        split = ", ".join(f"v{key[0]} {key[1]}: {int(n)}" for key, n in zip(arms.index, arms, strict=True))
        sample = sorted({float(s) for s in frame["sample"]})
        text = _table(rows) + f"\n\nBy version and arm: {split}."
        if sample != [1.0]:
            text += f" Sampling fraction(s): {', '.join(map(str, sample))} (counts are of logged rows)."
        return text


def aliased_models(client: Any, names: list[str] | None = None) -> dict[str, dict[str, str]]:
    """Registered model -> {alias: version} of every model that has an alias (only ``names`` when given)."""
    found: dict[str, dict[str, str]] = {}
    token = None
    while True:
        page = client.search_registered_models(max_results=200, page_token=token)
        for model in page:
            aliases = dict(getattr(model, "aliases", None) or {})
            if aliases and (not names or model.name in names):
                found[model.name] = {str(a): str(v) for a, v in aliases.items()}
        token = getattr(page, "token", None)
        if not token:
            break
    return dict(sorted(found.items()))


def latest_version(client: Any, model: str) -> tuple[str | None, datetime | None, str | None]:
    """(number, creation time, run id) of the model's newest registered version."""
    versions = list(client.search_model_versions(f"name = '{model}'"))
    if not versions:
        return None, None, None
    newest = max(versions, key=lambda v: int(v.version))
    created = datetime.fromtimestamp(int(newest.creation_timestamp) / 1000, UTC)
    return str(newest.version), created, newest.run_id


def read_monitor_summaries(
    monitoring_dir: Path, model: str, start: datetime, end: datetime
) -> tuple[list[dict[str, Any]], list[str]]:
    """The kept figures of ``model``'s monitor runs whose window ended in (start, end], oldest first; and a
    note per file that could not be read."""
    folder = Path(monitoring_dir) / check_model_name(model)
    runs, notes = [], []
    for path in sorted(folder.glob("report-*.json")) if folder.is_dir() else []:
        try:
            run = json.loads(path.read_text())
            ended = utc(datetime.fromisoformat(str(run["window_end"])))
        except (OSError, ValueError, KeyError, TypeError) as exc:
            notes.append(f"monitor summary {path.name} unreadable ({type(exc).__name__})")
            continue
        if utc(start) < ended <= utc(end):
            runs.append(run)
    runs.sort(key=lambda r: str(r["window_end"]))
    return runs, notes


def summary_database_url(home: Path, environ: Mapping[str, str]) -> str | None:
    """The database of the prediction log's summary rows, as the model server resolves it
    (``AIC_PREDICTION_LOG_DB``, else deployment_db on Kubernetes, else ``<home>/deployment.db``); None when
    there is none to read (a default SQLite file that was never written is not created here)."""
    configured = environ.get("AIC_PREDICTION_LOG_DB", "").strip()
    if configured.lower() in ("off", "none", "false", "0"):
        return None
    if configured:
        return configured
    from blocks.settings import service_database_url

    url = service_database_url("MODEL_DEPLOYMENT")
    if url:
        return url
    local = Path(home) / "deployment.db"
    return f"sqlite:///{local}" if local.is_file() else None


def read_volume(database_url: str | None, model: str, start: datetime, end: datetime) -> pd.DataFrame | None:
    """The prediction log's summary rows of ``model`` whose window started in [start, end)."""
    if database_url is None:
        return None
    from aicml.serving.predlog import SummaryStore

    store = SummaryStore(database_url)
    try:
        frame = store.read(model)
    finally:
        store.close()
    if frame.empty:
        return frame
    began = pd.to_datetime(frame["window_start"], utc=True)
    return frame[(began >= pd.Timestamp(utc(start))) & (began < pd.Timestamp(utc(end)))].reset_index(
        drop=True
    )


def read_decisions(audit_dir: Path, model: str) -> list[dict[str, Any]]:
    """The audit log's records about ``model`` (every ``<audit_dir>/*.jsonl``), newest first."""
    from aicml.rollout.audit import read_audit

    records: list[dict[str, Any]] = []
    for path in sorted(Path(audit_dir).glob("*.jsonl")) if Path(audit_dir).is_dir() else []:
        try:
            records += [{**r, "log": path.stem} for r in read_audit(path) if r.get("model") == model]
        except (OSError, ValueError):
            continue
    return sorted(records, key=lambda r: str(r.get("at", "")), reverse=True)


def audit_model(
    client: Any,
    model: str,
    aliases: dict[str, str],
    start: datetime,
    end: datetime,
    *,
    monitoring_dir: Path,
    audit_dir: Path,
    database_url: str | None,
) -> ModelAudit:
    """Everything the report says about ``model`` over [start, end)."""
    audit = ModelAudit(model=model, start=utc(start), end=utc(end), aliases=aliases)
    audit.latest_version, audit.latest_created, _ = latest_version(client, model)
    try:
        audit.runs, audit.notes = read_monitor_summaries(monitoring_dir, model, start, end)
    except ConfigurationError as exc:  # a registry name no directory may have: it was never monitored here
        audit.notes.append(str(exc))
    try:
        audit.volume = read_volume(database_url, model, start, end)
    except Exception as exc:  # an unreachable summary database leaves the rest of the audit standing
        audit.notes.append(f"prediction log summaries unreadable ({type(exc).__name__})")
    audit.decisions = read_decisions(audit_dir, model)
    return audit


def render_audit(audits: list[ModelAudit], start: datetime, end: datetime) -> str:
    """The whole report: one overview row per model, then each model's section."""
    lines = [
        f"# Model audit, {utc(start):%Y-%m-%d} to {utc(end):%Y-%m-%d}",
        "",
        f"{len(audits)} registered model(s) with an alias; generated {utc(end):%Y-%m-%d %H:%M} UTC.",
        "",
    ]
    if audits:
        lines += [_table([a.overview_row() for a in audits]), ""]
        lines += [a.markdown() for a in audits]
    else:
        lines.append("No registered model has an alias: nothing is served, nothing to audit.")
    return "\n".join(lines).rstrip() + "\n"


def _when(moment: datetime | None, prefix: str = "") -> str:
    if moment is None:
        return prefix
    text = f"{utc(moment):%Y-%m-%d %H:%M} UTC"
    return f"{prefix} {text}".strip()


def _rounded(value: Any) -> Any:
    return round(value, 4) if isinstance(value, float) else value


def _cell(value: Any) -> str:
    return str(value).replace("|", "\\|").replace("\n", " ")


def _table(rows: list[dict[str, Any]]) -> str:
    if not rows:
        return "none"
    head = list(rows[0])
    lines = ["| " + " | ".join(map(_cell, head)) + " |", "|" + "---|" * len(head)]
    lines += ["| " + " | ".join(_cell(row.get(k, "")) for k in head) + " |" for row in rows]
    return "\n".join(lines)
