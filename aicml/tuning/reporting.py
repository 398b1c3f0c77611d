"""Study reporting: a nested MLflow run per trial, plots of the study, and a leaderboard.

Uses MlflowClient with explicit run ids (never the fluent active run), so trials logged from
worker processes land under the study's parent run.
"""

from __future__ import annotations

import dataclasses
import html
import logging
import math
import time
import warnings
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import optuna
from optuna.trial import TrialState

from aicml.tuning.engine import SURPLUS_ATTR, TrackingRef, TrialResult

if TYPE_CHECKING:
    from mlflow import MlflowClient

log = logging.getLogger(__name__)

STUDY_RUN_ATTR = "mlflow_parent_run_id"


def log_trial_run(tracking: TrackingRef, result: TrialResult) -> TrialResult:
    """One nested run: parameters, the per-epoch values, the final value and whether it was pruned."""
    from mlflow import MlflowClient
    from mlflow.entities import Metric, Param, RunTag

    client = MlflowClient(tracking.tracking_uri)
    tags = {
        "mlflow.parentRunId": tracking.parent_run_id,
        "optuna.trial_number": str(result.number),
        "optuna.state": result.state,
        "optuna.pruned": str(result.state == "PRUNED").lower(),
        "optuna.stopped_on_plateau": str(result.stopped_on_plateau).lower(),
        "aicml.worker": result.worker,
    }
    run = client.create_run(tracking.experiment_id, run_name=f"trial-{result.number}", tags=tags)
    now = int(time.time() * 1000)
    metrics = [Metric("val_loss", v, now, step) for step, v in sorted(result.intermediate.items())]
    metrics.append(Metric("epochs", float(result.epochs), now, 0))
    metrics.append(Metric("trial_seconds", result.seconds, now, 0))
    if result.value is not None and math.isfinite(result.value):
        metrics.append(Metric("objective", result.value, now, 0))
    params = [Param(k, str(v)) for k, v in sorted(result.params.items())]
    extra = [RunTag("optuna.error", result.error[:4000])] if result.error else []
    client.log_batch(run.info.run_id, metrics=metrics, params=params, tags=extra)
    client.set_terminated(run.info.run_id, status="FAILED" if result.state == "FAIL" else "FINISHED")
    return dataclasses.replace(result, mlflow_run_id=run.info.run_id)


def leaderboard(study: optuna.Study, top: int = 20) -> list[dict[str, Any]]:
    """Finished trials, best first: number, state, value, epochs and parameters."""
    trials = [
        t
        for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED))
        if t.value is not None or t.intermediate_values
    ]

    def value_of(t: optuna.trial.FrozenTrial) -> float:
        if t.value is not None:
            return float(t.value)
        return float(t.intermediate_values[max(t.intermediate_values)])

    minimize = study.direction == optuna.study.StudyDirection.MINIMIZE
    # Complete trials rank above pruned ones: a pruned trial's last value is not a finished result.
    trials.sort(key=lambda t: (t.state != TrialState.COMPLETE, value_of(t) if minimize else -value_of(t)))
    rows = []
    for rank, t in enumerate(trials[:top], start=1):
        rows.append(
            {
                "rank": rank,
                "trial": t.number,
                "state": t.state.name,
                "value": round(value_of(t), 6),
                "epochs": len(t.intermediate_values),
                **{k: (round(v, 6) if isinstance(v, float) else v) for k, v in t.params.items()},
            }
        )
    return rows


def study_counts(study: optuna.Study) -> dict[str, int]:
    counts: dict[str, int] = {}
    for t in study.get_trials(deepcopy=False):
        key = "SURPLUS" if t.user_attrs.get(SURPLUS_ATTR) else t.state.name
        counts[key] = counts.get(key, 0) + 1
    return counts


def log_study_plots(study: optuna.Study, client: MlflowClient, run_id: str) -> list[str]:
    """Optimisation history, parameter importances and parallel coordinates as PNG artifacts of ``run_id``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from optuna.visualization import matplotlib as ovm

    plots: dict[str, Callable[[optuna.Study], Any]] = {
        "plots/optimization_history.png": ovm.plot_optimization_history,
        "plots/param_importances.png": ovm.plot_param_importances,
        "plots/parallel_coordinate.png": ovm.plot_parallel_coordinate,
    }
    logged = []
    for path, plot in plots.items():
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                axes = plot(study)
            figure = axes.figure if hasattr(axes, "figure") else axes.flat[0].figure
            figure.set_size_inches(8, 5)
            client.log_figure(run_id, figure, path)
            plt.close(figure)
            logged.append(path)
        except Exception as exc:  # e.g. importances need two finished trials and a varying parameter
            log.warning("Skipped %s: %s", path, exc)
    return logged


STUDY_HTML = "plots/study.html"


def study_html(study: optuna.Study) -> str | None:
    """Optuna's interactive plots of ``study`` (plotly) as one self-contained HTML page, or None when
    no plot could be drawn.

    History, intermediate values, parameter importances, parallel coordinates and slices, in that order.
    plotly.js is inlined once (about 4.6 MB): the page opens offline, in the MLflow UI's artifact view
    (which shows an HTML artifact in a sandboxed frame with no base URL) and from a downloaded file alike.
    """
    from optuna import visualization as ov

    plots: dict[str, Callable[[optuna.Study], Any]] = {
        "Optimization history": ov.plot_optimization_history,
        "Intermediate values (per epoch)": ov.plot_intermediate_values,
        "Parameter importances": ov.plot_param_importances,
        "Parallel coordinates": ov.plot_parallel_coordinate,
        "Slices": ov.plot_slice,
    }
    parts: list[str] = []
    for title, plot in plots.items():
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                figure = plot(study)
        except Exception as exc:  # e.g. importances need two finished trials and a varying parameter
            log.warning("Skipped the %s plot: %s", title, exc)
            continue
        figure.update_layout(title=f"{study.study_name}: {title}", height=480)
        parts.append(figure.to_html(full_html=False, include_plotlyjs=not parts))
    if not parts:
        return None
    body = "\n".join(f"<section>{part}</section>" for part in parts)
    return (
        '<!DOCTYPE html>\n<html><head><meta charset="utf-8">'
        f"<title>Study {html.escape(study.study_name)}</title></head>"
        f'<body style="font-family: sans-serif">{body}</body></html>\n'
    )


def log_study_html(study: optuna.Study, client: MlflowClient, run_id: str) -> str | None:
    """``study_html`` as the artifact ``plots/study.html`` of ``run_id``; its path, or None when empty."""
    page = study_html(study)
    if page is None:
        return None
    client.log_text(run_id, page, STUDY_HTML)
    return STUDY_HTML
