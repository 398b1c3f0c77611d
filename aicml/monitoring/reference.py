"""What a served model is compared with: its training snapshot, quality suite, problem and test metric, found
from the registered version and the MLflow runs the pipeline logged.

The pipeline tags each candidate run with ``aicml.validated`` (the validated training rows, Parquet) and
logs ``target`` and ``problem`` as its parameters; the candidate's parent run carries ``aicml.dataset``,
which names the quality suite (``<home>/suites/<dataset>.json``); the version carries the primary metric
it was registered with (and the run its ``test_<metric>`` values).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from aicml.errors import ConfigurationError, RegistryError
from aicml.models.evaluation import PRIMARY_METRIC

SECONDARY_METRICS = {"classification": ("accuracy",), "regression": ("rmse", "mae")}
VALIDATED_TAG = "aicml.validated"
DATASET_TAG = "aicml.dataset"
REFERENCE_ROWS = 5000  # rows of the training snapshot the window is compared with


@dataclass
class Reference:
    """The champion a window of traffic is judged against."""

    model: str
    version: str
    run_id: str
    experiment_id: str
    target: str
    problem: str
    metric: str
    baseline: dict[str, float]  # test metrics recorded at training (primary and secondary)
    frame: pd.DataFrame  # a sample of the training snapshot, target included
    snapshot_path: str
    suite: dict[str, Any] | None = None
    suite_path: str | None = None
    classes: list[str] | None = None
    predictions: pd.Series | None = field(default=None)  # the champion's predictions on ``frame``

    @property
    def features(self) -> list[str]:
        return [c for c in self.frame.columns if c != self.target]


def resolve_version(client: Any, model: str, alias: str = "champion", version: str | None = None) -> Any:
    """The registered version (``version``, else the one ``alias`` points at)."""
    try:
        if version:
            return client.get_model_version(model, version)
        return client.get_model_version_by_alias(model, alias)
    except Exception as exc:  # MlflowException: no such model / alias
        if (
            "RESOURCE_DOES_NOT_EXIST" in str(exc)
            or "not found" in str(exc).lower()
            or "does not exist" in str(exc)
        ):
            what = f"version {version}" if version else f"alias {alias!r}"
            raise RegistryError(
                f"Model {model!r} has no {what} in the registry: train and promote it first."
            ) from exc
        raise


def load_reference(
    client: Any,
    model: str,
    *,
    suites_dir: Path | None,
    alias: str = "champion",
    version: str | None = None,
    snapshot_path: str | None = None,
    suite_path: str | None = None,
    rows: int = REFERENCE_ROWS,
    seed: int = 0,
) -> Reference:
    """The champion's reference; ``snapshot_path`` / ``suite_path`` replace what the runs recorded."""
    found = resolve_version(client, model, alias, version)
    run = client.get_run(found.run_id)
    params, tags, metrics = run.data.params, run.data.tags, run.data.metrics
    path = snapshot_path or tags.get(VALIDATED_TAG)
    if not path:
        raise ConfigurationError(
            f"{model!r} version {found.version}: its run {found.run_id} records no training snapshot "
            f"(tag {VALIDATED_TAG}): only models trained by ml-pipeline (or given snapshot_path) can be monitored."
        )
    if not Path(path).is_file():
        raise ConfigurationError(
            f"{model!r} version {found.version}: training snapshot {path!r} is not there (a different "
            "machine's home?): monitor where the pipeline ran, or pass snapshot_path."
        )
    target = params.get("target") or (found.tags or {}).get("target")
    if not target:
        raise ConfigurationError(f"{model!r} version {found.version}: its run logs no 'target' parameter.")
    frame = pd.read_parquet(path)
    if target not in frame.columns:
        raise ConfigurationError(f"Training snapshot {path!r} has no label column {target!r}.")
    problem = params.get("problem") or (found.tags or {}).get("problem") or "classification"
    metric = PRIMARY_METRIC.get(problem, "f1_macro")
    baseline = {
        name: float(metrics[f"test_{name}"])
        for name in (metric, *SECONDARY_METRICS.get(problem, ()))
        if f"test_{name}" in metrics
    }
    if metric not in baseline and metric in (found.tags or {}):
        baseline[metric] = float(found.tags[metric])
    if len(frame) > rows:
        frame = frame.sample(rows, random_state=seed)
    frame = frame.reset_index(drop=True)
    classes = None
    if problem == "classification":
        from aicml.monitoring.labels import as_class

        classes = sorted(as_class(frame[target]).dropna().unique().tolist())
    suite, location = _suite(client, run, suites_dir, suite_path)
    return Reference(
        model=model,
        version=str(found.version),
        run_id=str(found.run_id),
        experiment_id=str(run.info.experiment_id),
        target=str(target),
        problem=str(problem),
        metric=metric,
        baseline=baseline,
        frame=frame,
        snapshot_path=str(path),
        suite=suite,
        suite_path=location,
        classes=classes,
    )


def _suite(
    client: Any, run: Any, suites_dir: Path | None, suite_path: str | None
) -> tuple[dict[str, Any] | None, str | None]:
    from aicml.data.gate import suite_location
    from aicml.data.quality import load_suite

    if suite_path:
        return load_suite(Path(suite_path)), suite_path
    parent = run.data.tags.get("mlflow.parentRunId")
    dataset = run.data.tags.get(DATASET_TAG)
    if not dataset and parent:
        dataset = client.get_run(parent).data.tags.get(DATASET_TAG)
    if not dataset or suites_dir is None:
        return None, None
    location = suite_location(suites_dir, dataset)
    return (load_suite(location), str(location)) if location.is_file() else (None, None)


def serving_suite(suite: dict[str, Any], target: str) -> dict[str, Any]:
    """The training suite as it applies to served inputs: no expectation on the label, which requests lack."""
    expectations = []
    for expectation in suite.get("expectations", []):
        kwargs = expectation.get("kwargs", {})
        if kwargs.get("column") == target:
            continue
        if expectation.get("type") == "expect_table_columns_to_match_set":
            columns = [c for c in kwargs.get("column_set", []) if c != target]
            expectation = {**expectation, "kwargs": {**kwargs, "column_set": columns}}
        expectations.append(expectation)
    meta = dict(suite.get("meta", {}))
    return {
        **suite,
        "name": f"{suite.get('name', 'suite')}-serving",
        "expectations": expectations,
        "meta": meta,
    }
