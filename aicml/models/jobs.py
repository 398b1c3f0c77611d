"""One training job: data, trainer, per-epoch checkpoints, resume, and exactly one MLflow run.

A job is named by ``job_id``; its directory ``<checkpoint_root>/<job_id>`` holds the checkpoints and
the id of its MLflow run, so a job that was killed (SIGKILL, OOM, a preempted node) and is started
again resumes from its last epoch and keeps logging to the same run. ``python -m aicml.models.jobs
SPEC RESULT`` runs a job in its own process: that is the process the training task supervises,
and the command Lightning's DDP launcher starts once per extra rank.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Literal

import numpy as np
from pydantic import BaseModel, Field

from aicml.durable import publish, write_durably
from aicml.errors import ConfigurationError, TrainingError
from aicml.models.features import Problem
from aicml.models.options import TrainerOptions
from aicml.names import ResourceName
from aicml.registry.tracking import Tracking

Family = Literal["tabular", "digits"]
Framework = Literal["lightning", "sklearn", "keras"]
_COMPLETED = "COMPLETED"
_STATE = "job.json"


class TrainingInterrupted(TrainingError):
    """The training process died from a signal (killed, out of memory); a rerun of the job resumes."""


class TrainingJobSpec(BaseModel):
    """Everything a training process needs; written to JSON for the child process."""

    job_id: ResourceName = Field(description="Names the checkpoint directory and the run.")
    family: Family = Field(description="`tabular` (a table with a label column) or `digits` (8x8 images).")
    framework: Framework = Field(default="lightning", description="Which trainer fits the model.")
    source: str | None = Field(default=None, description="Tabular data: file path/glob or SQL URL.")
    target: str | None = Field(default=None, description="Tabular data: the label column.")
    problem: Problem | None = Field(default=None, description="Tabular data: inferred when empty.")
    options: TrainerOptions = Field(default_factory=TrainerOptions, description="Trainer options.")
    seed: int = Field(default=42, description="Seed of the split and the model.")
    checkpoint_root: str = Field(description="Persistent directory holding one sub-directory per job.")
    tracking_uri: str = Field(description="MLflow tracking server.")
    experiment: str = Field(default="aic-ml", description="MLflow experiment.")
    run_name: str | None = Field(default=None, description="MLflow run name; the job id when empty.")
    tags: dict[str, str] = Field(default_factory=dict, description="Extra MLflow run tags.")
    system_metrics: bool = Field(default=True, description="Log MLflow system metrics (CPU, memory, GPU).")
    system_metrics_interval: float = Field(default=10.0, gt=0, description="Seconds between samples.")

    @property
    def tracking(self) -> Tracking:
        """The MLflow server and experiment the job logs to."""
        return Tracking(uri=self.tracking_uri, experiment=self.experiment)


class TrainingJobResult(BaseModel):
    """What a finished job produced: references, not the model itself."""

    job_id: str
    run_id: str
    model_uri: str
    primary_metric: str
    metrics: dict[str, float]
    epochs: int
    resumed_from_epoch: int | None
    best_checkpoint_artifact: str | None
    checkpoint_dir: str
    # Checkpoints that did not load when the job started (named, with why), set aside as <name>.corrupt.
    discarded_checkpoints: list[str] = Field(default_factory=list)


def derive_job_id(prefix: str, **parts: Any) -> str:
    """A stable job id from what defines the job, so a retry or rerun of the same job finds its checkpoints."""
    digest = hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:16]
    return f"{prefix}-{digest}"


def job_directory(spec: TrainingJobSpec) -> Path:
    return Path(spec.checkpoint_root) / spec.job_id


def is_global_zero() -> bool:
    """True in the process that owns the job (rank 0); DDP launchers set RANK or LOCAL_RANK/NODE_RANK."""
    if "RANK" in os.environ:
        return os.environ["RANK"] == "0"
    return os.environ.get("LOCAL_RANK", "0") == "0" and os.environ.get("NODE_RANK", "0") == "0"


def make_trainer(spec: TrainingJobSpec) -> Any:
    """The trainer of the spec's framework and data family (every one follows ``Trainer``)."""
    from aicml.models.trainers import LightningImageTrainer, LightningTabularTrainer, SklearnTrainer

    if spec.framework == "lightning":
        if spec.family == "digits":
            return LightningImageTrainer(spec.options)
        return LightningTabularTrainer(spec.options)
    if spec.framework == "sklearn":
        return SklearnTrainer()
    from aicml.models.keras_trainer import KerasTrainer

    return KerasTrainer(spec.options)


def load_job_data(spec: TrainingJobSpec) -> tuple[Any, Any, np.ndarray, Any, Problem]:
    """(training data, raw test inputs, test labels, input example, problem) of the spec's dataset."""
    if spec.family == "digits":
        from aicml.models.digits import load_digits_split

        data, test_x, test_y = load_digits_split(spec.seed)
        return data, test_x, test_y, test_x[:5], "classification"
    if not spec.source or not spec.target:
        raise ConfigurationError("A tabular training job needs `source` and `target`; set both.")
    from aicml.data.sources import parse_source, read_source
    from aicml.models.training import prepare

    frame = read_source(parse_source(spec.source))
    prepared, test, resolved = prepare(frame, spec.target, spec.problem, spec.seed)
    features = [c for c in frame.columns if c != spec.target]
    return prepared, test[features], test[spec.target].to_numpy(), test[features].head(5), resolved


def _open_state(directory: Path) -> dict[str, Any]:
    state_path = directory / _STATE
    if (directory / _COMPLETED).exists():
        # A finished job run again trains anew; its checkpoints were logged to its run.
        shutil.rmtree(directory)
    directory.mkdir(parents=True, exist_ok=True)
    return json.loads(state_path.read_text()) if state_path.exists() else {}


def _readable_checkpoint(path: Path) -> str | None:
    """None when ``path`` loads as a checkpoint (tensors and plain values only), else why not."""
    import torch

    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
        if not isinstance(state, dict) or "epoch" not in state or "state_dict" not in state:
            return "not a Lightning checkpoint (no epoch or state_dict)"
    except Exception as exc:  # truncated, zeroed, not a zip archive: torch raises several kinds
        return f"{type(exc).__name__}: {str(exc).strip().splitlines()[0] if str(exc).strip() else ''}"
    return None


def _checkpoint_epoch(path: Path) -> int:
    import torch

    return int(torch.load(path, map_location="cpu", weights_only=True)["epoch"])


def discard_bad_checkpoints(directory: Path) -> list[str]:
    """Set aside every checkpoint under ``directory`` that does not load (cut short by a full disk or a
    crash mid-copy, damaged on the volume), so that a resume starts from a good one.

    A bad ``last.ckpt`` is replaced by the newest good checkpoint left (the best epoch's), or the job
    starts from epoch 0 when none is left. Bad files are renamed ``<name>.corrupt``, kept to inspect and
    never loaded again. Returns one line per file set aside, naming it and why.
    """
    if not directory.is_dir():
        return []
    discarded = []
    for path in sorted(directory.glob("*.ckpt")):
        why = _readable_checkpoint(path)
        if why is not None:
            os.replace(path, path.with_name(path.name + ".corrupt"))
            discarded.append(f"{path} ({why})")
    last = directory / "last.ckpt"
    if discarded and not last.exists():
        good = sorted(directory.glob("*.ckpt"), key=_checkpoint_epoch)
        if good:
            shutil.copyfile(good[-1], directory / ".last.ckpt.tmp")
            publish(directory / ".last.ckpt.tmp", last)
    return discarded


@contextlib.contextmanager
def temporary_files_beside(directory: Path) -> Iterator[None]:
    """Temporary files of this process go under ``directory/.tmp`` while the block runs.

    Lightning saves a checkpoint to a temporary file (fsspec's ``mkstemp()``, in $TMPDIR) and moves it
    into place; from another filesystem that move is a copy straight onto ``last.ckpt``, which a full
    disk or a kill cuts short. On the checkpoints' own filesystem it is a rename: whole or absent.
    """
    scratch = directory / ".tmp"
    shutil.rmtree(scratch, ignore_errors=True)  # left by a process that died mid-save
    scratch.mkdir(parents=True, exist_ok=True)
    saved = tempfile.tempdir
    tempfile.tempdir = str(scratch)
    try:
        yield
    finally:
        tempfile.tempdir = saved
        shutil.rmtree(scratch, ignore_errors=True)


def _no_space(exc: BaseException) -> bool:
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if (isinstance(current, OSError) and current.errno == errno.ENOSPC) or os.strerror(
            errno.ENOSPC
        ) in str(current):
            return True
        current = current.__cause__ or current.__context__
    return False


def _fit(spec: TrainingJobSpec, trainer: Any, data: Any, on_epoch: Any, checkpoints: Any) -> Any:
    """``trainer.fit`` with checkpoints written beside themselves; a full disk is named with its path."""
    try:
        with temporary_files_beside(checkpoints.directory):
            return trainer.fit(data, on_epoch=on_epoch, checkpoints=checkpoints)
    except Exception as exc:
        if not _no_space(exc):
            raise
        raise TrainingError(
            f"Training job {spec.job_id!r} could not write its checkpoint under {checkpoints.directory}: "
            f"{os.strerror(errno.ENOSPC)} ({exc}). The last complete checkpoint is kept; free space "
            "there (or set another checkpoint_root), then rerun the job: it resumes from that checkpoint."
        ) from exc


def run_training_job(spec: TrainingJobSpec) -> TrainingJobResult | None:
    """Train, resuming from the job's last checkpoint; on rank 0 log one MLflow run and return its result.

    Other DDP ranks train and return None.
    """
    from aicml.models.evaluation import PRIMARY_METRIC, score
    from aicml.models.trainers import Checkpointing

    directory = job_directory(spec)
    data, test_x, test_y, example, problem = load_job_data(spec)
    trainer = make_trainer(spec)
    checkpoints = Checkpointing(directory / "checkpoints")
    if not is_global_zero():
        _fit(spec, trainer, data, None, checkpoints)
        return None
    discarded = discard_bad_checkpoints(checkpoints.directory)
    for line in discarded:
        print(f"aicml: checkpoint {line} does not load; set aside, resuming without it", file=sys.stderr)

    import mlflow

    state = _open_state(directory)
    spec.tracking.experiment_id()  # the fluent API below logs to the job's server and experiment
    if spec.system_metrics:
        mlflow.set_system_metrics_sampling_interval(spec.system_metrics_interval)
        mlflow.set_system_metrics_samples_before_logging(1)
    run_kwargs: dict[str, Any] = {"log_system_metrics": spec.system_metrics}
    if state.get("run_id"):
        run_kwargs["run_id"] = state["run_id"]
    else:
        run_kwargs["run_name"] = spec.run_name or spec.job_id
        run_kwargs["tags"] = {"aicml.job_id": spec.job_id, **spec.tags}
    started = time.perf_counter()
    with mlflow.start_run(**run_kwargs) as run:
        if not state.get("run_id"):
            state["run_id"] = run.info.run_id
            write_durably(directory / _STATE, json.dumps(state).encode())
            mlflow.log_params(
                {
                    **trainer.params(),
                    "family": spec.family,
                    "seed": spec.seed,
                    "problem": problem,
                    "rows_train": len(data.x_train),
                    "rows_val": len(data.x_val),
                    "rows_test": len(test_y),
                }
            )

        def on_epoch(epoch: int, total: int, metrics: dict[str, float]) -> None:
            mlflow.log_metrics(metrics, step=epoch)

        if discarded:
            mlflow.set_tag("aicml.discarded_checkpoints", "; ".join(discarded)[:5000])
        try:
            fitted = _fit(spec, trainer, data, on_epoch, checkpoints)
        except TrainingError:
            raise
        except Exception as exc:
            raise TrainingError(f"Training job {spec.job_id!r} failed: {exc}") from exc
        report = fitted.report
        mlflow.set_tag("aicml.resumed_from_epoch", str(report.resumed_from_epoch))
        if report.resumed_from_epoch is not None:
            mlflow.log_metric("resumed_from_epoch", report.resumed_from_epoch)
        predictions = fitted.predict(test_x)
        metrics = score(problem, test_y, predictions)
        mlflow.log_metrics({f"test_{k}": v for k, v in metrics.items()})
        model_uri = fitted.log_to_mlflow("model", example)
        best_artifact = None
        if report.best_checkpoint:
            mlflow.log_artifact(report.best_checkpoint, artifact_path="checkpoints")
            best_artifact = f"checkpoints/{Path(report.best_checkpoint).name}"
            mlflow.set_tag("aicml.best_checkpoint", best_artifact)
        mlflow.log_metric("train_seconds", time.perf_counter() - started)
        run_id = run.info.run_id
    write_durably(directory / _COMPLETED, run_id.encode())
    return TrainingJobResult(
        job_id=spec.job_id,
        run_id=run_id,
        model_uri=model_uri,
        primary_metric=PRIMARY_METRIC[problem],
        metrics=metrics,
        epochs=report.epochs,
        resumed_from_epoch=report.resumed_from_epoch,
        best_checkpoint_artifact=best_artifact,
        checkpoint_dir=str(directory),
        discarded_checkpoints=discarded,
    )


def training_command(spec_path: Path, result_path: Path) -> list[str]:
    return [sys.executable, "-m", "aicml.models.jobs", str(spec_path), str(result_path)]


def run_training_process(
    spec: TrainingJobSpec, workdir: Path, timeout: float | None = None, env: dict[str, str] | None = None
) -> TrainingJobResult:
    """Run the job in a child process and return its result.

    A child killed by a signal raises ``TrainingInterrupted`` (rerun the job to resume); any other
    failure raises ``TrainingError`` with the end of the child's output.
    """
    workdir.mkdir(parents=True, exist_ok=True)
    spec_path, result_path = workdir / f"{spec.job_id}.spec.json", workdir / f"{spec.job_id}.result.json"
    result_path.unlink(missing_ok=True)
    spec_path.write_text(spec.model_dump_json())
    log_path = workdir / f"{spec.job_id}.log"
    with log_path.open("ab") as log:
        try:
            done = subprocess.run(
                training_command(spec_path, result_path),
                stdout=log,
                stderr=subprocess.STDOUT,
                timeout=timeout,
                env={**os.environ, **(env or {})},
                check=False,
            )
        except subprocess.TimeoutExpired as exc:
            raise TrainingInterrupted(
                f"Training job {spec.job_id!r} ran past {timeout}s and was stopped; rerun it to resume."
            ) from exc
    tail = log_path.read_text(errors="replace")[-3000:]
    if done.returncode < 0:
        raise TrainingInterrupted(
            f"Training process of job {spec.job_id!r} was killed by signal {-done.returncode}; "
            f"rerunning the job resumes from its last checkpoint. Output:\n{tail}"
        )
    if done.returncode != 0 or not result_path.exists():
        raise TrainingError(f"Training job {spec.job_id!r} failed (exit {done.returncode}):\n{tail}")
    return TrainingJobResult.model_validate_json(result_path.read_text())


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 2:
        print("usage: python -m aicml.models.jobs SPEC.json RESULT.json", file=sys.stderr)
        return 2
    spec = TrainingJobSpec.model_validate_json(Path(args[0]).read_text())
    result = run_training_job(spec)
    if result is not None:
        write_durably(Path(args[1]), result.model_dump_json().encode())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
