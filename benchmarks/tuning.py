"""Tuning benchmark: pruning against none, 2 parallel Dask workers against 1, orchestration overhead.

Same search space (the scikit-learn MLP's default space), same data (demo churn rows) and same seed
throughout. The pruning comparison uses seeded random search so both runs see the very same
candidates and only pruning differs. Trials are single-threaded (OpenMP/BLAS limited to 1 thread, as
Dask's nanny does for its workers), so 2 workers can use 2 cores. Overhead is per trial: the engine
with each trial a Prefect task on a 1-worker Dask cluster, against plain ``study.optimize`` on the
same cheap objective and the same kind of storage (SQLite).

Last output line: JSON with pruned_epochs, unpruned_epochs, epoch_ratio, best_pruned, best_unpruned,
best_gap, parallel_speedup, overhead_ms_per_trial.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("MKL_NUM_THREADS", "1")
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
os.environ.setdefault("PREFECT_HOME", tempfile.mkdtemp(prefix="aic-bench-prefect-"))
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
        study = open_study(
            label,
            open_storage(url),
            "minimize",
            make_sampler("random", space, SEED),
            make_pruner(pruning, epochs),
        )

        def job(trial, study=study, pruning=pruning):  # type: ignore[no-untyped-def]
            return TrialJob(study.study_name, url, trial._trial_id, trial.number, dict(trial.params), MODEL,
                            "minimize", epochs, pruning, data)  # fmt: skip

        started = time.perf_counter()
        result = drive(study, space, Budget(n_trials=n_trials), job, InlineExecutor())
        out[f"{label}_epochs"] = float(sum(r.epochs for r in result.results))
        out[f"best_{label}"] = float(study.best_value)
        pruned = sum(r.state == "PRUNED" for r in result.results)
        print(
            f"{label}: {out[f'{label}_epochs']:.0f} epochs, best val_loss {study.best_value:.5f}, "
            f"{pruned} pruned, {time.perf_counter() - started:.1f}s",
            flush=True,
        )
    return out


def run_on_dask(workdir: Path, data: object, name: str, objective: str, workers: int, n_trials: int,
                epochs: int) -> float:  # fmt: skip
    """Wall time of driving the trials in the tune flow's search phase (Prefect tasks on a started Dask cluster)."""
    from flows.tuning import SearchOptions, run_search
    from tasks.tune import StudyRef

    url = STORAGE or f"sqlite:///{workdir / 'dask.db'}"
    options = SearchOptions(
        model=MODEL, objective=objective if objective != MODEL else None, sampler="random", seed=SEED,
        pruning={"pruner": "none", "plateau_patience": None}, budget={"n_trials": n_trials},
        max_epochs=epochs, parallel=workers, study_name=name, storage_url=url,
    )  # fmt: skip
    from aicml.tuning.study import open_storage, open_study

    open_study(name, open_storage(url), "minimize")
    ref = StudyRef(name, url, "minimize", "", "", "", False, 0)
    return run_search(options, ref, data).seconds


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
    parser.add_argument("--parallel-rows", type=int, default=16000)
    parser.add_argument("--trials", type=int, default=24)
    parser.add_argument("--epochs", type=int, default=18)
    parser.add_argument("--parallel-trials", type=int, default=8)
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
        one = run_on_dask(workdir, big, "w1", MODEL, 1, args.parallel_trials, args.epochs)
        two = run_on_dask(workdir, big, "w2", MODEL, 2, args.parallel_trials, args.epochs)
        print(f"{args.parallel_trials} trials: 1 worker {one:.1f}s, 2 workers {two:.1f}s", flush=True)

        plain = plain_optimize(workdir, args.overhead_trials)
        engine = run_on_dask(workdir, data, "overhead", "tuning:cheap", 1, args.overhead_trials, 1)
        print(f"{args.overhead_trials} cheap trials: plain optimize {plain:.2f}s, engine {engine:.2f}s",
              flush=True)  # fmt: skip
    print("load after:", os.getloadavg(), flush=True)
    result = {
        "pruned_epochs": figures["pruned_epochs"],
        "unpruned_epochs": figures["unpruned_epochs"],
        "epoch_ratio": round(figures["pruned_epochs"] / figures["unpruned_epochs"], 4),
        "best_pruned": round(figures["best_pruned"], 6),
        "best_unpruned": round(figures["best_unpruned"], 6),
        "best_gap": round(
            abs(figures["best_pruned"] - figures["best_unpruned"]) / abs(figures["best_unpruned"]), 6
        ),
        "parallel_speedup": round(one / two, 3),
        "overhead_ms_per_trial": round(1000 * (engine - plain) / args.overhead_trials, 1),
    }
    print(json.dumps(result))


if __name__ == "__main__":
    main()
