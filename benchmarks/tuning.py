"""Tuning benchmark: pruning against none, 2 parallel Dask workers against 1, orchestration overhead.

Same search space (the scikit-learn MLP's default space), same data (demo churn rows) and same seed
throughout. The pruning comparison uses seeded random search so both runs see the very same
candidates and only pruning differs. Trials are single-threaded (OpenMP/BLAS limited to 1 thread, as
Dask's nanny does for its workers), so 2 workers can use 2 cores.

Parallel: the tune flow's search phase (each worker one long-lived Prefect task on a Dask
LocalCluster) with 1 worker, then with 2, on the very same candidates (seeded random draws, queued
in both studies). Both sides are timed the same way: from submitting the workers to the last result,
the workers already warm (imports and data loaded by the engine's warm-up, as on a long-running
cluster); the warm-up is reported beside it (``*_cold`` figures include it, on both sides). Other
programs share the cores, so the CPU seconds the workers got and the load average are printed too,
and ``cpu_bound_speedup`` projects the speedup from CPU seconds alone: the 1-worker run's CPU seconds
over the busiest worker's of the 2-worker run, i.e. what 2 dedicated cores would give (a projection,
not a measurement; it leaves out the fixed start of the workers).

Overhead is per trial: the engine (1 warm worker, same timing) against plain ``study.optimize`` on
the same cheap objective and the same kind of storage (SQLite).

Last output line: JSON with pruned_epochs, unpruned_epochs, epoch_ratio, best_pruned, best_unpruned,
best_gap, parallel_speedup, overhead_ms_per_trial (from submitting the worker: its start delay is
included), loop_overhead_ms_per_trial (the worker's claim-evaluate-record loop alone), and the supporting
figures.
"""

from __future__ import annotations

import argparse
import atexit
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("MKL_NUM_THREADS", "1")
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
# Dask's spawned workers import this module again: they inherit the first process's home.
if "PREFECT_HOME" not in os.environ:
    os.environ["PREFECT_HOME"] = tempfile.mkdtemp(prefix="aic-bench-prefect-")
    atexit.register(shutil.rmtree, os.environ["PREFECT_HOME"], ignore_errors=True)
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("DO_NOT_TRACK", "1")
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
BENCH_DIR = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH_DIR))

SEED = 42
STORAGE: str | None = (
    None  # --storage-url: the Dask parts on this storage (e.g. PostgreSQL) instead of SQLite
)
MODEL = "mlp"


def cheap(ctx):  # type: ignore[no-untyped-def]
    """The overhead objective: a few microseconds of arithmetic, so only orchestration is timed."""
    return (float(ctx.params["alpha"]) - 1e-3) ** 2 + float(ctx.params["learning_rate_init"])


def prepare_data(workdir: Path, rows: int) -> object:
    import pandas as pd

    from aicml.data.demo import write_demo_data
    from aicml.tuning.objectives import DataRef

    workdir.mkdir(parents=True, exist_ok=True)
    files = write_demo_data(workdir / "demo", rows=rows, parts=1, seed=7)
    frame = pd.concat(pd.read_csv(p) for p in sorted((workdir / "demo").glob("churn-part-*.csv")))
    path = workdir / "churn.parquet"
    frame.to_parquet(path, index=False)
    del files
    return DataRef(str(path), "churn", "classification", SEED)


def run_pruning(workdir: Path, data: object, n_trials: int, epochs: int) -> dict[str, float]:
    from aicml.tuning.engine import InlineExecutor, TrialJob, drive
    from aicml.tuning.space import Budget, PruningOptions, default_space
    from aicml.tuning.study import make_pruner, make_sampler, open_storage, open_study

    space = default_space(MODEL)
    url = f"sqlite:///{workdir / 'pruning.db'}"
    out: dict[str, float] = {}
    for label, pruner in (("unpruned", "none"), ("pruned", "successive_halving")):
        pruning = PruningOptions(pruner=pruner, min_epochs=2, reduction_factor=3, plateau_patience=None)
        storage = open_storage(url)
        study = open_study(
            label,
            storage,
            "minimize",
            make_sampler("random", space, SEED),
            make_pruner(pruning, epochs),
        )

        def job(trial, study=study, pruning=pruning):  # type: ignore[no-untyped-def]
            return TrialJob(study.study_name, url, trial._trial_id, trial.number, dict(trial.params), MODEL,
                            "minimize", epochs, pruning, data)  # fmt: skip

        started = time.perf_counter()
        result = drive(study, space, Budget(n_trials=n_trials), job, InlineExecutor(), storage=storage)
        out[f"{label}_epochs"] = float(sum(r.epochs for r in result.results))
        out[f"best_{label}"] = float(study.best_value)
        pruned = sum(r.state == "PRUNED" for r in result.results)
        print(
            f"{label}: {out[f'{label}_epochs']:.0f} epochs, best val_loss {study.best_value:.5f}, "
            f"{pruned} pruned, {time.perf_counter() - started:.1f}s",
            flush=True,
        )
    return out


def candidates(n: int) -> list[dict[str, object]]:
    """The first ``n`` draws of the seeded random sampler over the space: both parallel runs evaluate these."""
    import optuna

    from aicml.tuning.space import default_space
    from aicml.tuning.study import distributions, make_sampler

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    space = default_space(MODEL)
    study = optuna.create_study(sampler=make_sampler("random", space, SEED))
    return [study.ask(distributions(space)).params for _ in range(n)]


def run_on_dask(workdir: Path, data: object, name: str, objective: str, workers: int, n_trials: int,
                epochs: int, queued: list[dict[str, object]] | None = None) -> object:  # fmt: skip
    """The tune flow's search phase (long-lived Prefect task per Dask worker); its SearchOutcome."""
    from flows.tuning import SearchOptions, run_search
    from tasks.tune import StudyRef

    url = STORAGE or f"sqlite:///{workdir / 'dask.db'}"
    options = SearchOptions(
        model=MODEL, objective=objective if objective != MODEL else None, sampler="random", seed=SEED,
        pruning={"pruner": "none", "plateau_patience": None}, budget={"n_trials": n_trials},
        max_epochs=epochs, parallel=workers, study_name=name, storage_url=url,
    )  # fmt: skip
    from pydantic import SecretStr

    from aicml.tuning.study import open_storage, open_study

    study = open_study(name, open_storage(url), "minimize")
    for params in queued or []:
        study.enqueue_trial(params)
    # No MLflow (tracking None): the trials are recorded in the study only.
    ref = StudyRef(
        study_name=name, storage_url=SecretStr(url), direction="minimize", experiment_id="",
        parent_run_id="", tracking=None, resumed=False, finished_before=0,
    )  # fmt: skip
    load = os.getloadavg()[0]
    outcome = run_search(options, ref, data)
    print(
        f"  {name}: {workers} worker(s), {outcome.trials} trials in {outcome.seconds:.2f}s "
        f"(+{outcome.warmup_seconds:.1f}s warm-up); workers' CPU {outcome.worker_cpu_seconds:.1f}s = "
        f"{outcome.worker_cpu_seconds / outcome.seconds:.2f} cores; start delays "
        f"{[round(d, 2) for d in outcome.start_delays]}s; by phase {outcome.timings}; "
        f"load {load:.2f} -> {os.getloadavg()[0]:.2f}",
        flush=True,
    )
    return outcome


def plain_optimize(workdir: Path, n_trials: int) -> float:
    import optuna

    from aicml.tuning.space import default_space
    from aicml.tuning.study import make_sampler, open_storage

    space = default_space(MODEL)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(
        study_name="plain", storage=open_storage(f"sqlite:///{workdir / 'plain.db'}"),
        sampler=make_sampler("random", space, SEED),
    )  # fmt: skip

    def objective(trial: optuna.Trial) -> float:
        alpha = trial.suggest_float("alpha", 1e-6, 1e-2, log=True)
        lr = trial.suggest_float("learning_rate_init", 1e-4, 3e-2, log=True)
        trial.suggest_int("hidden_width", 8, 128, log=True)
        return (alpha - 1e-3) ** 2 + lr

    started = time.perf_counter()
    study.optimize(objective, n_trials=n_trials)
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rows", type=int, default=4000)
    parser.add_argument("--parallel-rows", type=int, default=100000)
    parser.add_argument("--trials", type=int, default=24)
    parser.add_argument("--epochs", type=int, default=18)
    parser.add_argument("--parallel-trials", type=int, default=16)
    parser.add_argument("--overhead-trials", type=int, default=40)
    parser.add_argument(
        "--storage-url", default=None, help="Optuna storage of the Dask runs (default SQLite)."
    )
    parser.add_argument("--skip-pruning", action="store_true", help="Only the parallel and overhead parts.")
    args = parser.parse_args()
    global STORAGE
    STORAGE = args.storage_url
    print("load before:", os.getloadavg(), flush=True)
    with tempfile.TemporaryDirectory(prefix="aic-bench-tuning-") as tmp:
        workdir = Path(tmp)
        data = prepare_data(workdir, args.rows)
        figures = (
            run_pruning(workdir, data, args.trials, args.epochs)
            if not args.skip_pruning
            else {"pruned_epochs": 1.0, "unpruned_epochs": 1.0, "best_pruned": 1.0, "best_unpruned": 1.0}
        )

        # Longer trials for the parallel comparison, so that the work, not the per-trial overhead, is timed.
        big = prepare_data(workdir / "big", args.parallel_rows)
        queued = candidates(args.parallel_trials)
        one = run_on_dask(workdir, big, "w1", MODEL, 1, args.parallel_trials, args.epochs, queued)
        two = run_on_dask(workdir, big, "w2", MODEL, 2, args.parallel_trials, args.epochs, queued)
        print(f"{args.parallel_trials} trials: 1 worker {one.seconds:.1f}s, 2 workers {two.seconds:.1f}s "
              f"(with warm-up {one.seconds + one.warmup_seconds:.1f}s, "
              f"{two.seconds + two.warmup_seconds:.1f}s)", flush=True)  # fmt: skip

        plain = plain_optimize(workdir, args.overhead_trials)
        engine = run_on_dask(workdir, data, "overhead", "tuning:cheap", 1, args.overhead_trials, 1)
        print(f"{args.overhead_trials} cheap trials: plain optimize {plain:.2f}s, engine {engine.seconds:.2f}s",
              flush=True)  # fmt: skip
    print("load after:", os.getloadavg(), flush=True)
    per_trial = {k: round(1000 * v / args.overhead_trials, 2) for k, v in engine.timings.items()}
    result = {
        "pruned_epochs": figures["pruned_epochs"],
        "unpruned_epochs": figures["unpruned_epochs"],
        "epoch_ratio": round(figures["pruned_epochs"] / figures["unpruned_epochs"], 4),
        "best_pruned": round(figures["best_pruned"], 6),
        "best_unpruned": round(figures["best_unpruned"], 6),
        "best_gap": round(
            abs(figures["best_pruned"] - figures["best_unpruned"]) / abs(figures["best_unpruned"]), 6
        ),
        "parallel_speedup": round(one.seconds / two.seconds, 3),
        "overhead_ms_per_trial": round(1000 * (engine.seconds - plain) / args.overhead_trials, 1),
        # Supporting figures: the same comparison with the warm-up counted on both sides, the cores
        # the workers really got (CPU seconds / wall seconds; other programs share the machine),
        # and the engine's per-trial milliseconds by phase on the cheap objective.
        "parallel_speedup_cold": round(
            (one.seconds + one.warmup_seconds) / (two.seconds + two.warmup_seconds), 3
        ),
        "seconds_1_worker": round(one.seconds, 2),
        "seconds_2_workers": round(two.seconds, 2),
        "warmup_s_1_worker": round(one.warmup_seconds, 2),
        "warmup_s_2_workers": round(two.warmup_seconds, 2),
        "cores_used_1_worker": round(one.worker_cpu_seconds / one.seconds, 2),
        "cores_used_2_workers": round(two.worker_cpu_seconds / two.seconds, 2),
        "cpu_s_1_worker": round(one.worker_cpu_seconds, 2),
        "cpu_s_2_workers": round(two.worker_cpu_seconds, 2),
        "cpu_bound_speedup": round(one.worker_cpu_seconds / max(two.cpu_seconds_by_worker), 3),
        "overhead_ms_by_phase": per_trial,
        # The worker's own loop (claim, evaluate, record: the phases above) against plain optimize, per trial:
        # overhead_ms_per_trial less the worker's one start delay, which is paid once per study, not per trial.
        "loop_overhead_ms_per_trial": round(
            1000
            * (sum(v for k, v in engine.timings.items() if k != "tracking") - plain)
            / args.overhead_trials,
            1,
        ),
        "worker_start_delay_s": round(max(engine.start_delays), 3),
        "load_average": [round(x, 2) for x in os.getloadavg()],
        "cpus": os.cpu_count(),
    }
    print(json.dumps(result))


if __name__ == "__main__":
    main()
