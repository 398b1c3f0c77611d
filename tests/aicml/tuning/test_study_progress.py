"""A worker reports the study's progress (trials finished of the budget, best value) as trials finish."""

from __future__ import annotations

from pathlib import Path

from aicml.tuning.engine import TrialJob, WorkerJob, run_worker
from aicml.tuning.reporting import study_html
from aicml.tuning.space import Budget, FloatParam, PruningOptions
from aicml.tuning.study import open_storage, open_study


def test_progress_hook_counts_up_to_the_budget_and_the_plots_render_as_html(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'optuna.db'}"
    space = {"x": FloatParam(low=-4.0, high=6.0)}
    study = open_study("progress", open_storage(url, 5), "minimize")
    template = TrialJob("progress", url, -1, -1, {}, "toy_objectives:quadratic", "minimize", 2,
                        PruningOptions(pruner="none", plateau_patience=None), heartbeat_s=5)  # fmt: skip
    calls: list[tuple[int, int, float | None]] = []
    run_worker(
        WorkerJob(0, space, "random", 1, Budget(n_trials=6), template),
        on_progress=lambda done, total, best: calls.append((done, total, best)),
        progress_every_s=0.0,
    )
    assert [done for done, _, _ in calls] == sorted(done for done, _, _ in calls)
    assert calls[-1][:2] == (6, 6) and len(calls) >= 6
    assert calls[-1][2] == min(t.value for t in study.trials if t.value is not None)

    page = study_html(study)
    assert page is not None and page.count("<section>") >= 3 and "Plotly.newPlot" in page
    assert page.count("plotly.js v") == 1, "plotly.js is inlined once, not per plot"
