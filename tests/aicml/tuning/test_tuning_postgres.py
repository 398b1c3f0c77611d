"""Four tuning processes share one Optuna study on the real PostgreSQL: no duplicate, no lost trial."""

from __future__ import annotations

import os
import subprocess
import sys
import time
import uuid
from collections import Counter
from pathlib import Path

import optuna
from optuna.trial import TrialState

from aicml.tuning.engine import SURPLUS_ATTR
from aicml.tuning.study import open_storage

HERE = Path(__file__).parent
REPO = HERE.parents[2]
WORKERS = 4
N_TRIALS = 40


def test_four_processes_finish_exactly_the_budget_on_postgres(postgres, tmp_path: Path) -> None:
    database = postgres.create_database("aic_tuning")
    url = postgres.url(database)
    study_name = f"race-{uuid.uuid4().hex[:6]}"
    ledger = tmp_path / "ledger.txt"
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(HERE), str(REPO / "tests"), str(REPO)]),
        "TOY_LEDGER": str(ledger),
        "TOY_SLEEP": "0.05",
    }
    command = [sys.executable, str(HERE / "pg_worker.py"), url, study_name, str(N_TRIALS), str(tmp_path)]
    processes = [
        subprocess.Popen([*command, str(i)], env=env, stderr=(tmp_path / f"stderr-{i}.txt").open("wb"))
        for i in range(WORKERS)
    ]
    try:
        deadline = time.monotonic() + 180
        while len(list(tmp_path.glob("ready-*"))) < WORKERS and time.monotonic() < deadline:
            time.sleep(0.1)
        (tmp_path / "go").touch()
        codes = [p.wait(timeout=300) for p in processes]
        errors = [(tmp_path / f"stderr-{i}.txt").read_text()[-6000:] for i in range(WORKERS)]
        assert codes == [0] * WORKERS, errors

        study = optuna.load_study(study_name=study_name, storage=open_storage(url))
        trials = study.get_trials(deepcopy=False)
        complete = [t for t in trials if t.state == TrialState.COMPLETE]
        others = [t for t in trials if t.state != TrialState.COMPLETE]
        numbers = [t.number for t in trials]
        assert len(complete) == N_TRIALS, Counter(t.state.name for t in trials)
        assert len(set(numbers)) == len(numbers) == len({t._trial_id for t in trials}), "no duplicate trial"
        assert sorted(numbers) == list(range(len(trials)))
        # The only extra trials are claims released after losing a race: never evaluated.
        assert all(t.state == TrialState.FAIL and t.user_attrs.get(SURPLUS_ATTR) for t in others)

        lines = ledger.read_text().splitlines()
        evaluated = [int(line.split()[1]) for line in lines]
        assert len(evaluated) == N_TRIALS and sorted(evaluated) == sorted(t.number for t in complete), (
            "every finished trial ran exactly once, and nothing ran that the study lost"
        )
        pids = Counter(line.split()[0] for line in lines)
        assert len(pids) >= 3, f"the workers really ran concurrently: {pids}"
    finally:
        for process in processes:
            if process.poll() is None:
                process.kill()
                process.wait()
        postgres.drop_database(database)
