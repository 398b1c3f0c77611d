"""One tuning worker process for the concurrency test: waits for a start signal, then drives the study."""

from __future__ import annotations

import sys
import time
from pathlib import Path

from tuning_helpers import run_inline

from aicml.tuning.space import Budget, FloatParam


def main(url: str, study: str, n_trials: int, signals: str) -> None:
    folder = Path(signals)
    (folder / f"ready-{sys.argv[-1]}").touch()
    # All workers start together, so their claims really race.
    deadline = time.monotonic() + 120
    while not (folder / "go").exists() and time.monotonic() < deadline:
        time.sleep(0.02)
    space = {"x": FloatParam(low=-4.0, high=6.0), "y": FloatParam(low=-5.0, high=5.0)}
    run_inline(url, study, space, "toy_objectives:quadratic", Budget(n_trials=n_trials), sampler="tpe")


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4])
