"""Drift of a batch against the last accepted batch of the same load.

Numeric columns: the two-sample Kolmogorov-Smirnov statistic (largest gap between the empirical
distribution functions, 0..1). Categorical columns: total variation distance between the category
shares (half the L1 distance, 0..1). Both are compared with one threshold; the reference is a
sample of the last accepted batch, stored as Parquet and replaced once a batch is accepted.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from aicml.data.sinks import write_parquet_atomic

MAX_CATEGORIES = 200


@dataclass(frozen=True)
class ColumnDrift:
    column: str
    kind: str  # numeric | categorical
    statistic: str  # ks | tvd
    value: float
    threshold: float

    @property
    def drifted(self) -> bool:
        return self.value > self.threshold


@dataclass(frozen=True)
class DriftReport:
    reference_rows: int
    current_rows: int
    columns: list[ColumnDrift]

    @property
    def drifted(self) -> list[ColumnDrift]:
        return [c for c in self.columns if c.drifted]

    def to_rows(self) -> list[dict[str, Any]]:
        return [{**asdict(c), "drifted": "YES" if c.drifted else "no"} for c in self.columns]


def ks_statistic(a: np.ndarray, b: np.ndarray) -> float:
    a, b = np.sort(a), np.sort(b)
    if not len(a) or not len(b):
        return 0.0
    grid = np.concatenate([a, b])
    cdf_a = np.searchsorted(a, grid, side="right") / len(a)
    cdf_b = np.searchsorted(b, grid, side="right") / len(b)
    return float(np.max(np.abs(cdf_a - cdf_b)))


def tvd(a: pd.Series, b: pd.Series) -> float:
    pa = a.astype("string").fillna("<null>").value_counts(normalize=True)
    pb = b.astype("string").fillna("<null>").value_counts(normalize=True)
    index = pa.index.union(pb.index)
    return float(0.5 * np.abs(pa.reindex(index, fill_value=0) - pb.reindex(index, fill_value=0)).sum())


def compare(current: pd.DataFrame, reference: pd.DataFrame, threshold: float) -> DriftReport:
    """Drift per shared column; columns with too many categories (ids, free text) are skipped."""
    columns = []
    for column in [c for c in current.columns if c in reference.columns]:
        cur, ref = current[column], reference[column]
        if (
            pd.api.types.is_numeric_dtype(cur)
            and pd.api.types.is_numeric_dtype(ref)
            and not pd.api.types.is_bool_dtype(cur)
        ):
            a = pd.to_numeric(cur, errors="coerce").to_numpy(dtype="float64", na_value=np.nan)
            b = pd.to_numeric(ref, errors="coerce").to_numpy(dtype="float64", na_value=np.nan)
            value = ks_statistic(a[np.isfinite(a)], b[np.isfinite(b)])
            columns.append(ColumnDrift(str(column), "numeric", "ks", round(value, 6), threshold))
        elif cur.nunique(dropna=True) <= MAX_CATEGORIES and ref.nunique(dropna=True) <= MAX_CATEGORIES:
            columns.append(ColumnDrift(str(column), "categorical", "tvd", round(tvd(cur, ref), 6), threshold))
    return DriftReport(len(reference), len(current), columns)


def check_and_roll(sample: pd.DataFrame, reference_path: Path, threshold: float) -> DriftReport | None:
    """Compare ``sample`` with the stored reference (None on a first batch), then make it the reference."""
    report = None
    if reference_path.exists():
        report = compare(sample, pd.read_parquet(reference_path), threshold)
    write_parquet_atomic(sample.reset_index(drop=True), reference_path)
    return report
