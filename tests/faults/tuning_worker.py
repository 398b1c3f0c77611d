"""One tuning worker process of the fault tests: ``run_worker`` on a shared study (what each of the
flow's ``parallel`` Dask workers runs), started on a signal so that the workers really overlap.

usage: tuning_worker.py URL STUDY N_TRIALS SIGNALS_DIR INDEX
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

from aicml.tuning.engine import TrialJob, WorkerJob, run_worker
from aicml.tuning.space import Budget, FloatParam, PruningOptions
from aicml.tuning.study import open_storage, open_study

HEARTBEAT_S = 1
GRACE_S = 4


def main(url: str, study_name: str, n_trials: int, signals: Path, index: int) -> None:
    open_study(study_name, open_storage(url, HEARTBEAT_S, GRACE_S), "minimize")
    (signals / f"ready-{index}").touch()
    deadline = time.monotonic() + 120
    while not (signals / "go").exists() and time.monotonic() < deadline:
        time.sleep(0.02)
    space = {"x": FloatParam(low=-4.0, high=6.0), "y": FloatParam(low=-5.0, high=5.0)}
    template = TrialJob(
        study_name, url, -1, -1, {}, "toy_objectives:quadratic", "minimize", 1,
        PruningOptions(pruner="none", plateau_patience=None), heartbeat_s=HEARTBEAT_S, grace_s=GRACE_S,
    )  # fmt: skip
    report = run_worker(WorkerJob(index, space, "random", 7, Budget(n_trials=n_trials), template, n_trials))
    print(f"worker {index}: {len(report.results)} trials, stopped: {report.stop_reason}")


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], int(sys.argv[3]), Path(sys.argv[4]), int(sys.argv[5]))
