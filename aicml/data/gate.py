"""The quality gate of the pipeline: enforce (or, on first sight, derive) a dataset's suite.

A failing batch raises DataQualityError and writes nothing downstream; a passing batch is written
once as a validated Parquet file of labelled rows, with the unlabelled rows counted and set aside.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from aicml.data.quality import (
    SuitePolicy,
    ValidationReport,
    coerce_to_suite,
    derive_suite,
    load_suite,
    numeric_columns_of,
    save_suite,
    split_missing_labels,
)
from aicml.data.snapshots import Snapshot, load_snapshot
from aicml.data.validation import validate_batch
from aicml.durable import publishing
from aicml.errors import ConfigurationError, DataQualityError, SchemaError
from aicml.names import check_name


@dataclass(frozen=True)
class GateResult:
    """A reference to the validated rows plus what the gate counted."""

    path: str
    rows: int
    set_aside: int
    report: ValidationReport
    suite_path: str


def suite_location(suites_dir: Path, dataset: str) -> Path:
    try:
        check_name(dataset, "Dataset name")
    except ValueError as exc:
        raise ConfigurationError(
            f"Dataset name {dataset!r} is not allowed: use letters, digits, '.', '_' or '-' (max 128)."
        ) from exc
    return suites_dir / f"{dataset}.json"


def run_quality_gate(
    snapshot: Snapshot,
    target: str,
    dataset: str,
    suites_dir: Path,
    output_dir: Path,
    suite_path: str | None = None,
    policy: SuitePolicy | None = None,
) -> GateResult:
    """Validate ``snapshot`` against its suite; raise DataQualityError listing each failed expectation."""
    frame = load_snapshot(snapshot)
    if target not in frame.columns:
        raise SchemaError(
            f"Label column {target!r} is not in {snapshot.dataset!r}; columns are {list(frame.columns)}."
        )
    if suite_path:
        suite, location = load_suite(Path(suite_path)), Path(suite_path)
        created = False
    else:
        location = suite_location(suites_dir, dataset)
        created = not location.exists()
        if created:
            suite = derive_suite(frame, dataset, target, policy)
            save_suite(suite, location)
        else:
            suite = load_suite(location)
    report = validate_batch(frame, suite).report(suite_created=created)
    if not report.success:
        raise DataQualityError(snapshot.dataset, report.failures, len(frame), report.to_dict())
    labelled, unlabelled = split_missing_labels(frame, target)
    clean = coerce_to_suite(labelled, numeric_columns_of(suite))
    output_dir.mkdir(parents=True, exist_ok=True)
    # Named by the data and the suite that passed it: a rerun of the same batch writes nothing.
    suite_hash = hashlib.sha256(json.dumps(suite, sort_keys=True).encode()).hexdigest()[:12]
    target_path = output_dir / f"{snapshot.dataset}-{snapshot.fingerprint}-{suite_hash}.parquet"
    if not target_path.exists():
        with publishing(target_path) as tmp:  # durable before the result that points at it is returned
            clean.to_parquet(tmp, index=False)
    return GateResult(str(target_path), len(clean), len(unlabelled), report, str(location))


def load_validated(result: GateResult) -> pd.DataFrame:
    return pd.read_parquet(result.path)
