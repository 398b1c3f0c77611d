"""PostgreSQL restarted (``pg_ctl restart -m fast``) in the middle of real work, on a throwaway cluster.

(a) An ingest into the SQL sink is held inside its batch's COPY, the server restarts, the run is
released: the batch's transaction is gone, and the run reconnects and loads the batch again (or fails
naming the lost connection, and a rerun loads it). The table then equals the source row by row, and
the ledger names the batch once with the rows that landed.

(b) Four tuning worker processes share one study on the cluster; it restarts while they run: every
trial number is used once, nothing is left RUNNING, and the study reaches its budget (at once, or
when the workers are started again).
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
import uuid
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from aicml.data.integration import IngestJob, run_ingest
from aicml.data.sinks import LEDGER_TABLE, SqlSink
from aicml.data.state import PARTITIONS, IngestState
from aicml.errors import ServiceUnavailableError
from tests.faults.fault_helpers import ingest_job

HERE = Path(__file__).parent
REPO = HERE.parents[1]
WAIT_S = 60
LOAD = "orders"


def write_sources(src: Path, files: int = 4, rows: int = 2_000) -> pd.DataFrame:
    src.mkdir(parents=True, exist_ok=True)
    frames = []
    for index in range(files):
        rng = np.random.default_rng(index)
        frame = pd.DataFrame(
            {
                "id": np.arange(index * rows, (index + 1) * rows),
                "score": rng.uniform(0, 100, rows).round(3),
                "tag": [f"t{i % 7}" for i in range(rows)],
            }
        )
        frame.to_csv(src / f"part-{index}.csv", index=False)
        frames.append(frame)
    return pd.concat(frames, ignore_index=True)


def sql_ingest_job(src: Path, sink: SqlSink, work: Path) -> IngestJob:
    return ingest_job(src, sink, work, name=LOAD, incremental=True)


def test_restart_during_a_sql_ingest_loses_and_duplicates_nothing(
    throwaway_postgres: Any, tmp_path: Path
) -> None:
    import sqlalchemy as sa

    pg = throwaway_postgres
    url = pg.url(pg.create_database("aic_restart_ingest"))
    source = write_sources(tmp_path / "landing")
    state = IngestState(url)
    held, release = threading.Event(), threading.Event()
    chunks: list[int] = []

    def hold_at_third_chunk(number: int) -> None:
        chunks.append(number)
        if number == 2 and not held.is_set():
            held.set()
            assert release.wait(WAIT_S), "the test never released the run"

    sink = SqlSink(url, "orders", key=("id",), copy_chunk_bytes=4096, on_chunk=hold_at_third_chunk)
    outcome: list[Any] = []

    def run() -> None:
        try:
            outcome.append(run_ingest(sql_ingest_job(tmp_path / "landing", sink, tmp_path / "work"), state))
        except BaseException as exc:
            outcome.append(exc)

    runner = threading.Thread(target=run, name="ingest")
    runner.start()
    try:
        assert held.wait(WAIT_S), f"the run never reached its COPY: {outcome}"
        pg.restart()  # the run's session is terminated mid-COPY; its transaction rolls back
    finally:
        release.set()
        runner.join(WAIT_S * 2)
    assert not runner.is_alive(), "the run hung after the restart"
    result = outcome[0]
    if isinstance(result, BaseException):
        # Accepted too: an error that names the fault, then a rerun completes the load.
        assert isinstance(result, ServiceUnavailableError) and "PostgreSQL" in str(result), result
        result = run_ingest(
            sql_ingest_job(tmp_path / "landing", SqlSink(url, "orders", key=("id",)), tmp_path / "work"),
            state,
        )
    else:
        # It reconnected: the COPY ran again from its first chunk in a new transaction.
        assert chunks.count(0) >= 2, f"the batch did not start again after the restart: {chunks}"
    assert result.committed_rows == len(source)

    engine = sa.create_engine(url)
    try:
        with engine.connect() as conn:
            loaded = pd.read_sql(sa.text("SELECT id, score, tag FROM orders ORDER BY id"), conn)
            ledger = conn.execute(sa.text(f"SELECT batch_id, target, rows FROM {LEDGER_TABLE}")).all()
            recorded = conn.execute(
                sa.text(f"SELECT identity, rows FROM {PARTITIONS} WHERE load = :l"), {"l": LOAD}
            ).all()
    finally:
        engine.dispose()
    # Row by row what the files hold: none lost, none twice, none altered.
    pd.testing.assert_frame_equal(loaded, source.sort_values("id").reset_index(drop=True), check_dtype=False)
    assert [(r.target, r.rows) for r in ledger] == [("orders", len(source))], ledger
    assert ledger[0].batch_id == result.batch_id
    assert len(recorded) == 4 and sum(r.rows for r in recorded) == len(source)
    # A rerun adds nothing.
    again = run_ingest(
        sql_ingest_job(tmp_path / "landing", SqlSink(url, "orders", key=("id",)), tmp_path / "work"), state
    )
    assert again.partitions == 0 and again.committed_rows == 0


# (b) A tuning study on the cluster, four worker processes.

WORKERS = 4
N_TRIALS = 60


def _start_workers(
    url: str, study: str, signals: Path, ledger: Path, round_: int
) -> list[subprocess.Popen[bytes]]:
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(HERE), str(REPO / "tests" / "aicml" / "tuning"), str(REPO)]),
        "TOY_LEDGER": str(ledger),
        "TOY_SLEEP": "0.1",
    }
    command = [sys.executable, str(HERE / "tuning_worker.py"), url, study, str(N_TRIALS), str(signals)]
    return [
        subprocess.Popen(
            [*command, str(i)],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=(signals / f"stderr-{round_}-{i}.txt").open("wb"),
        )
        for i in range(WORKERS)
    ]


def _wait_all(processes: list[subprocess.Popen[bytes]], timeout: float) -> list[int]:
    deadline = time.monotonic() + timeout
    codes = []
    for process in processes:
        codes.append(process.wait(timeout=max(1.0, deadline - time.monotonic())))
    return codes


def test_restart_during_a_tuning_study_runs_every_trial_once(throwaway_postgres: Any, tmp_path: Path) -> None:
    import optuna
    from optuna.trial import TrialState

    from aicml.tuning.engine import SURPLUS_ATTR
    from aicml.tuning.study import open_storage

    pg = throwaway_postgres
    url = pg.url(pg.create_database("aic_restart_tuning"))
    study_name = f"restart-{uuid.uuid4().hex[:6]}"
    ledger = tmp_path / "ledger.txt"
    processes = _start_workers(url, study_name, tmp_path, ledger, 0)
    try:
        deadline = time.monotonic() + 120
        while len(list(tmp_path.glob("ready-*"))) < WORKERS:
            assert time.monotonic() < deadline, "the workers never got ready"
            assert all(p.poll() is None for p in processes), [p.poll() for p in processes]
            time.sleep(0.1)
        (tmp_path / "go").touch()
        # Restart once a quarter of the budget ran: every worker is mid-loop (claiming, evaluating, telling).
        while not ledger.exists() or len(ledger.read_text().splitlines()) < N_TRIALS // 4:
            assert time.monotonic() < deadline, "the workers never ran a trial"
            time.sleep(0.05)
        pg.restart()
        codes = _wait_all(processes, 180)
        errors = [(tmp_path / f"stderr-0-{i}.txt").read_text()[-3000:] for i in range(WORKERS)]
        if codes != [0] * WORKERS:
            # Accepted: the workers that failed name the lost storage, and a new round resumes the study.
            for code, error in zip(codes, errors, strict=True):
                assert code == 0 or "study storage" in error, error
            (tmp_path / "go").unlink()
            for ready in tmp_path.glob("ready-*"):
                ready.unlink()
            processes = _start_workers(url, study_name, tmp_path, ledger, 1)
            (tmp_path / "go").touch()
            print("tuning across a restart: the first round failed, a second round resumed the study")
            codes = _wait_all(processes, 180)
            errors = [(tmp_path / f"stderr-1-{i}.txt").read_text()[-3000:] for i in range(WORKERS)]
        assert codes == [0] * WORKERS, errors

        study = optuna.load_study(study_name=study_name, storage=open_storage(url))
        trials = study.get_trials(deepcopy=False)
        states = Counter(t.state.name for t in trials)
        numbers = [t.number for t in trials]
        assert len(set(numbers)) == len(numbers) == len({t._trial_id for t in trials}), "a trial number twice"
        assert sorted(numbers) == list(range(len(trials)))
        assert states["COMPLETE"] == N_TRIALS, states
        assert not states["RUNNING"] and not states["WAITING"], f"trials left unfinished: {states}"
        # Besides the budget: claims released after a lost race, and trials of a lost session failed
        # by their heartbeat (each re-queued once with its parameters, as a new trial number). Optuna's retry
        # callback names the failed trial by its number (``failed_trial``), not by its storage id.
        retried = {t.system_attrs.get("failed_trial") for t in trials}
        lost = [t.number for t in trials if t.state == TrialState.FAIL and not t.user_attrs.get(SURPLUS_ATTR)]
        assert all(number in retried for number in lost), f"failed, never retried: {set(lost) - retried}"
        evaluated = Counter(int(line.split()[1]) for line in ledger.read_text().splitlines())
        twice = [n for n, count in evaluated.items() if count > 1]
        assert not twice, f"trial numbers evaluated twice: {twice}"
        complete = {t.number for t in trials if t.state == TrialState.COMPLETE}
        assert complete <= set(evaluated), "a trial completed that never ran"
        print(
            f"tuning across a restart: worker exit codes {codes}, trials {dict(states)}, lost then retried {lost}"
        )
    finally:
        for process in processes:
            if process.poll() is None:
                process.kill()
                process.wait()
