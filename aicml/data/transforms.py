"""Transformations written once and applied per partition: type coercion to the suite's schema,
de-duplication on a key, and derived columns from arithmetic expressions.

Each returns the rows it could not keep with a reason, so the engine quarantines them.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from aicml.data.expressions import evaluate, parse_expression
from aicml.data.safety import check_identifier
from aicml.errors import ConfigurationError

TYPES = {"float64", "int64", "string", "bool", "datetime"}


@dataclass(frozen=True)
class TransformSpec:
    """What every partition goes through after validation."""

    types: dict[str, str] = field(default_factory=dict)
    key: tuple[str, ...] = ()
    derived: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for column, kind in self.types.items():
            check_identifier(column, "column name")
            if kind not in TYPES:
                raise ConfigurationError(f"Type {kind!r} of column {column!r} is not one of {sorted(TYPES)}.")
        for column in self.key:
            check_identifier(column, "key column")
        for column, expression in self.derived.items():
            check_identifier(column, "derived column")
            # Derived columns are arithmetic on columns and numbers (aicml.data.expressions): an
            # expression from a deployment parameter can never run code or touch a file.
            parse_expression(expression, column)


def coerce_types(frame: pd.DataFrame, types: dict[str, str]) -> tuple[pd.DataFrame, pd.Series]:
    """Cast columns; rows where a present value does not convert get a reason (and keep NaN)."""
    # Only converted columns are replaced; copy-on-write keeps the caller's frame as it was.
    out = frame.copy(deep=False) if types else frame
    reasons = pd.Series(pd.NA, index=frame.index, dtype=object)
    for column, kind in types.items():
        if column not in out.columns:
            continue
        series = out[column]
        if _already(series, kind):
            continue  # the parser already produced the type: nothing to convert or check
        present = series.notna()
        if kind in ("float64", "int64"):
            converted = pd.to_numeric(series, errors="coerce")
            if kind == "int64":
                whole = converted.isna() | (np.floor(converted) == converted)
                converted = converted.where(whole)
                converted = converted.astype("Int64") if converted.isna().any() else converted.astype("int64")
            else:
                converted = converted.astype("float64")
        elif kind == "datetime":
            converted = pd.to_datetime(series, errors="coerce", utc=False)
        elif kind == "bool":
            lowered = series.astype("string").str.strip().str.lower()
            converted = lowered.map(
                {"true": True, "1": True, "yes": True, "false": False, "0": False, "no": False}
            )
            converted = converted.astype("boolean")
        else:
            converted = series.astype("string")
        failed = present & converted.isna()
        if failed.any():
            fresh = failed & reasons.isna()
            reasons.loc[fresh] = f"column {column!r}: cannot convert to {kind}: " + series.loc[fresh].astype(
                str
            ).str.slice(0, 60)
        out[column] = converted
    return out, reasons.dropna()


def pending_coercions(frame: pd.DataFrame, types: dict[str, str]) -> dict[str, str]:
    """The part of ``types`` that changes something: present columns not already of their type."""
    return {c: k for c, k in types.items() if c in frame.columns and not _already(frame[c], k)}


def _already(series: pd.Series, kind: str) -> bool:
    if kind == "bool":
        return pd.api.types.is_bool_dtype(series)
    if kind == "float64":
        return series.dtype == np.float64
    if kind == "int64":
        return series.dtype == np.int64
    if kind == "datetime":
        return pd.api.types.is_datetime64_any_dtype(series)
    return False


def deduplicate(frame: pd.DataFrame, key: Sequence[str]) -> tuple[pd.DataFrame, pd.Series]:
    """Keep the last row per key (the latest wins, as in an upsert); the others get a reason."""
    dropped, reasons = _duplicates(frame, key)
    return (frame if dropped is None else frame.loc[~dropped]), reasons


def duplicate_reasons(frame: pd.DataFrame, key: Sequence[str]) -> pd.Series:
    """``deduplicate``'s reasons alone (index: the labels of the rows a later row replaces)."""
    return _duplicates(frame, key)[1]


def _duplicates(frame: pd.DataFrame, key: Sequence[str]) -> tuple[np.ndarray | None, pd.Series]:
    if not key or frame.empty:
        return None, pd.Series(dtype=object)
    missing = [k for k in key if k not in frame.columns]
    if missing:
        raise ConfigurationError(
            f"Key column(s) {missing} are not in the data; columns are {list(frame.columns)}."
        )
    dropped = _replaced_rows(frame, key)
    if not dropped.any():
        return None, pd.Series(dtype=object)
    if len(key) == 1:  # vectorised; the row-wise join below costs seconds on millions of rows
        shown = frame.loc[dropped, key[0]].astype(str)
    else:
        shown = frame.loc[dropped, list(key)].astype(str).agg("/".join, axis=1)
    # "kind: detail", like every quarantine reason: the text before the first colon groups them.
    return dropped, f"duplicate key on {list(key)}: " + shown + " (a later row with the same key was kept)"


def _replaced_rows(frame: pd.DataFrame, key: Sequence[str]) -> np.ndarray:
    """Per row: whether a later row has the same key (``duplicated(keep="last")``)."""
    dtype = frame[key[0]].dtype if len(key) == 1 else None
    if isinstance(dtype, np.dtype) and dtype.kind in "iu" and len(frame) > 1:
        values = frame[key[0]].to_numpy()  # numpy integers: no nulls
        if (values[1:] >= values[:-1]).all():
            # Ascending keys (ids, sequence numbers, as loads usually arrive): rows with the same key
            # are neighbours, so a row is replaced when the next one has its key. One comparison
            # per row instead of hashing every key (a twentieth of the time).
            dropped = np.zeros(len(values), dtype=bool)
            np.equal(values[:-1], values[1:], out=dropped[:-1])
            return dropped
    return frame.duplicated(subset=list(key), keep="last").to_numpy()


_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


def referenced_columns(derived: dict[str, str], columns: Sequence[str]) -> list[str]:
    """The columns of ``columns`` that the derived expressions name, in column order."""
    named = {m for expression in derived.values() for m in _NAME.findall(expression)}
    return [c for c in columns if c in named]


def add_derived(frame: pd.DataFrame, derived: dict[str, str]) -> pd.DataFrame:
    if not derived or frame.empty:
        return frame
    out = frame.copy(deep=False)  # new columns only: the existing ones are shared, not copied
    for column, expression in derived.items():
        tree = parse_expression(expression, column)
        try:
            columns = {str(c): out[c] for c in out.columns}
            out[column] = evaluate(tree, columns, column)
        except ConfigurationError:
            raise
        except Exception as exc:  # numpy and pandas raise many types for a bad operand
            raise ConfigurationError(f"Derived column {column!r} = {expression!r} failed: {exc}") from exc
    return out
