"""Train candidate models on one dataset and track each in MLflow; the pipeline's train stage.

Split deterministically by seed into train/validation/test, fit the preprocessor on train only,
fit every trainer, score on test, log parameters, per-epoch metrics, plot and model. ``train_candidates``
is the one entry of this kind of job (the pipeline's candidates, here or on another work pool, and the final
model of a tuning study); one resumable model is ``aicml.models.jobs``.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import pandas as pd

from aicml.errors import SchemaError, TrainingError
from aicml.models.evaluation import PRIMARY_METRIC, evaluate_candidate, score
from aicml.models.features import LabelCodec, Problem, TabularPreprocessor, infer_problem
from aicml.models.trainers import PreparedData, Trainer
from aicml.registry.tracking import Tracking

ProgressHook = Callable[[str, int, int, dict[str, float]], None]


@dataclass(frozen=True)
class Candidate:
    """One trained model: its MLflow run, model URI and test metrics."""

    name: str
    run_id: str
    model_uri: str
    metrics: dict[str, float]
    seconds: float


@dataclass(frozen=True)
class TrainingOutcome:
    """All candidates, the best one, and where the held-out test rows were written."""

    problem: Problem
    primary_metric: str
    candidates: list[Candidate]
    test_path: str
    features: dict[str, Any] = field(default_factory=dict)

    @property
    def best(self) -> Candidate:
        return max(self.candidates, key=lambda c: c.metrics[self.primary_metric])


def split_frame(
    frame: pd.DataFrame,
    target: str,
    problem: Problem,
    seed: int,
    test_size: float = 0.15,
    val_size: float = 0.15,
) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """Deterministic train/validation/test split by ``seed``; stratified when every class allows it."""
    from sklearn.model_selection import train_test_split

    if len(frame) < 20:
        raise SchemaError(f"Only {len(frame)} labelled rows: need at least 20 to train, validate and test.")

    def strata(part: pd.DataFrame) -> pd.Series | None:
        if problem != "classification":
            return None
        counts = part[target].value_counts()
        return part[target] if counts.min() >= 3 else None

    rest, test = train_test_split(frame, test_size=test_size, random_state=seed, stratify=strata(frame))
    relative = val_size / (1.0 - test_size)
    train, val = train_test_split(rest, test_size=relative, random_state=seed, stratify=strata(rest))
    return train.reset_index(drop=True), val.reset_index(drop=True), test.reset_index(drop=True)


def prepare(
    frame: pd.DataFrame, target: str, problem: Problem | None, seed: int
) -> tuple[PreparedData, pd.DataFrame, Problem]:
    if target not in frame.columns:
        raise SchemaError(f"Label column {target!r} is not in the data; columns are {list(frame.columns)}.")
    resolved: Problem = problem or infer_problem(frame[target])
    train, val, test = split_frame(frame, target, resolved, seed)
    features = [c for c in frame.columns if c != target]
    preprocessor = TabularPreprocessor().fit(train[features])
    codec = LabelCodec(resolved).fit(train[target])
    val = val[val[target].isin(codec.classes)] if resolved == "classification" else val
    data = PreparedData(
        preprocessor=preprocessor,
        codec=codec,
        x_train=preprocessor.transform(train[features]),
        y_train=codec.encode(train[target]),
        x_val=preprocessor.transform(val[features]),
        y_val=codec.encode(val[target]),
        raw_train=train[features],
        seed=seed,
    )
    return data, test, resolved


def train_candidates(
    frame: pd.DataFrame,
    target: str,
    problem: Problem | None,
    trainers: Sequence[Trainer],
    seed: int,
    test_dir: Path,
    tags: dict[str, str] | None = None,
    progress: ProgressHook | None = None,
    *,
    tracking: Tracking | None = None,
    parent_run_id: str | None = None,
) -> TrainingOutcome:
    """Fit every trainer as a nested MLflow run; return their test metrics.

    With ``tracking``, the runs nest under run ``parent_run_id`` (a pipeline's or a study's; a new run
    named `training` in ``tracking``'s experiment when None) on that server. Without, they nest under the
    caller's active run, on the server the caller made current.
    """
    import mlflow

    if tracking is not None:
        tracking.experiment_id()  # the fluent runs log to this server and experiment
        parent = (
            mlflow.start_run(run_id=parent_run_id) if parent_run_id else mlflow.start_run(run_name="training")
        )
        with parent:
            return train_candidates(frame, target, problem, trainers, seed, test_dir, tags, progress)

    data, test, resolved = prepare(frame, target, problem, seed)
    primary = PRIMARY_METRIC[resolved]
    features = [c for c in frame.columns if c != target]
    example = test[features].head(5)
    test_dir.mkdir(parents=True, exist_ok=True)
    test_path = test_dir / f"test-{seed}-{len(frame)}.parquet"
    test.to_parquet(test_path, index=False)
    candidates: list[Candidate] = []
    for trainer in trainers:
        started = time.perf_counter()
        with mlflow.start_run(run_name=trainer.name, nested=True, tags=tags) as run:
            mlflow.log_params(
                {
                    **trainer.params(),
                    "seed": seed,
                    "problem": resolved,
                    "target": target,
                    "rows_train": len(data.x_train),
                    "rows_val": len(data.x_val),
                    "rows_test": len(test),
                    "n_features": data.x_train.shape[1],
                }
            )
            run_id = run.info.run_id
            store_artifacts(
                "features.json",
                run_id,
                partial(mlflow.log_dict, data.preprocessor.describe(), "features.json"),
            )

            # Trainers without epochs (scikit-learn) never call it.
            def hook(epoch: int, total: int, metrics: dict[str, float], _name: str = trainer.name) -> None:
                mlflow.log_metrics(metrics, step=epoch)
                if progress is not None:
                    progress(_name, epoch + 1, total, metrics)

            try:
                fitted = trainer.fit(data, on_epoch=hook)
            except Exception as exc:
                raise TrainingError(f"Trainer {trainer.name!r} failed: {exc}") from exc
            predictions = fitted.predict(test[features])
            metrics = {
                f"test_{k}": v for k, v in score(resolved, test[target].to_numpy(), predictions).items()
            }
            mlflow.log_metrics(metrics)
            log_evaluation(resolved, fitted, test, target, trainer.name, seed, run_id)
            model_uri = store_artifacts("the model", run_id, partial(fitted.log_to_mlflow, "model", example))
            elapsed = time.perf_counter() - started
            mlflow.log_metric("train_seconds", elapsed)
            candidates.append(
                Candidate(
                    name=trainer.name,
                    run_id=run_id,
                    model_uri=model_uri,
                    metrics={k.removeprefix("test_"): v for k, v in metrics.items()},
                    seconds=elapsed,
                )
            )
            if progress is not None:
                progress(trainer.name, -1, -1, metrics)
    if not candidates:
        raise TrainingError("No trainer was given.")
    for candidate in candidates:
        if not np.isfinite(candidate.metrics[primary]):
            raise TrainingError(
                f"Candidate {candidate.name!r} scored {primary}={candidate.metrics[primary]}."
            )
    return TrainingOutcome(
        problem=resolved,
        primary_metric=primary,
        candidates=candidates,
        test_path=str(test_path),
        features=data.preprocessor.describe(),
    )


# MLflow's client giving up on a PUT of one artifact file, and what the server did to it.
_ARTIFACT_URL = re.compile(
    r"API request to ((\S+?)/(?:ajax-)?api/2\.0/mlflow-artifacts/artifacts/\S+) failed"
)
_SERVER_ERROR = re.compile(r"too many (5\d\d) error responses|\b(5\d\d) Server Error")
T = TypeVar("T")


def store_artifacts(what: str, run_id: str, write: Callable[[], T]) -> T:
    """Run ``write`` (an upload of ``what`` to run ``run_id``); a file the artifact store refuses is a
    ``TrainingError`` that names the store and the likely full disk.

    The MLflow server answers a failed artifact write (its disk full: "No space left on device") with a
    bare 500, or, for a file larger than a few KiB, closes the connection mid-upload. The client retries
    and then reports "too many 500 error responses" or "Connection reset by peer", which reads like a
    server that is down. A model whose files did not all arrive is left failed by MLflow, never ready.
    """
    refused: tuple[str, str] | None = None
    try:
        return write()
    except Exception as exc:
        refused = _refused_upload(exc)
        if refused is None:
            raise
    # Raised outside the handler: the transport error in the chain would make aicml.retry report a
    # server that did not answer, and this one does.
    url, how = refused
    raise TrainingError(
        f"Storing {what} of MLflow run {run_id} failed: the MLflow artifact store refused to store {url} "
        f"({how}; the client had retried). The server does so when it cannot write the file, most "
        "often because the disk of its artifact store is full (its log then says 'No space left on "
        "device'). Free space where the server keeps artifacts (its --artifacts-destination; on the "
        "local stack <AIC_HOME>/mlartifacts, its log in <AIC_HOME>/logs) and run the training again. "
        "This run is marked failed and its model was not completed."
    )


def _refused_upload(exc: BaseException) -> tuple[str, str] | None:
    """(URL, what the server did) when ``exc`` is MLflow's client giving up on an artifact upload that the
    server answered with a 5xx status, or cut off while the server itself still answers."""
    texts: list[str] = []
    current: BaseException | None = exc
    while current is not None and len(texts) < 12:
        texts.append(str(current))
        current = current.__cause__ or current.__context__
    text = "\n".join(texts)
    url = _ARTIFACT_URL.search(text)
    if url is None:
        return None
    status = _SERVER_ERROR.search(text)
    if status is not None:
        return url[1], f"HTTP {status[1] or status[2]}"
    if _answers(f"{url[2]}/health"):
        return url[1], "the server cut the upload off, yet answers a health check"
    return None  # the server is down: aicml.retry reports that


def _answers(url: str) -> bool:
    """Whether the server answers ``url`` within 5 s with a status below 500 (a 401 is an answer)."""
    import urllib.error
    import urllib.request

    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return int(response.status) < 500
    except urllib.error.HTTPError as exc:
        return exc.code < 500
    except OSError:
        return False


def log_evaluation(
    problem: Problem, fitted: Any, test: pd.DataFrame, target: str, title: str, seed: int, run_id: str
) -> list[str]:
    """The candidate's evaluation on the held-out test split, logged to its (active) run ``run_id``:
    the plots under ``plots/`` (ROC, precision-recall, confusion matrix, calibration, feature importance;
    residuals and predicted against actual for regression), ``evaluation/feature_importance.json`` and the
    extra test metrics (``test_roc_auc``). Returns the artifact paths of the plots."""
    import mlflow

    evaluation = evaluate_candidate(problem, fitted, test, target, title, seed)
    try:
        for path, figure in evaluation.figures.items():
            store_artifacts(f"the plot {path}", run_id, partial(mlflow.log_figure, figure, path))
    finally:
        evaluation.close()
    if evaluation.importance:
        store_artifacts(
            "the feature importance",
            run_id,
            partial(mlflow.log_dict, evaluation.importance, "evaluation/feature_importance.json"),
        )
    if evaluation.metrics:
        mlflow.log_metrics({f"test_{k}": v for k, v in evaluation.metrics.items()})
    return list(evaluation.figures)
