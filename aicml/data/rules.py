"""A Great Expectations suite compiled into vectorised per-row checks, for partitions at speed.

The suite (GE JSON, stored and edited as GE's) stays the source of truth: this module reads the
same expectation types and kwargs and gives, per row, the first expectation it breaks, with the
same null and ``mostly`` semantics as GE. Expectation types it does not know are handed back to
GE itself (``uncompiled``), and a test checks that the counts here equal GE's on the same batch.

Semantics of ``mostly`` (GE judges a whole batch; ingestion also needs a verdict per row):
every row a row-level expectation flags is quarantined with its reason, and the partition as a
whole fails when more rows break an expectation than its ``mostly`` allows. The exception is a
``not_null`` expectation with ``mostly`` below 1: the suite says values may be missing, so a
missing value alone never quarantines a row.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from aicml.data.quality import ExpectationOutcome

NUMERIC_KINDS = {"i", "u", "f", "b"}
_PY_NUMERIC = {"int", "float", "bool", "int64", "float64", "int32", "float32", "Int64", "Float64"}


@dataclass(frozen=True)
class CompiledExpectation:
    """One expectation: a function from frame to a boolean mask of broken rows, or a table check."""

    type: str
    column: str | None
    mostly: float
    kwargs: dict[str, Any]
    check: Callable[[pd.DataFrame], np.ndarray] | None  # None: table-level, see table_check
    table_check: Callable[[pd.DataFrame], str | None] | None = None

    @property
    def row_level(self) -> bool:
        if self.check is None:
            return False
        return not (self.type == "expect_column_values_to_not_be_null" and self.mostly < 1.0)


@dataclass(frozen=True)
class CompiledSuite:
    name: str
    expectations: tuple[CompiledExpectation, ...]
    uncompiled: tuple[dict[str, Any], ...]
    numeric_columns: tuple[str, ...]


class RowReasons:
    """Why rows of a partition were set aside: the first reason per row wins.

    Kept sparse (a flag per row, the reasons only for flagged rows): a column of Python objects
    for millions of rows, nearly all empty, costs passes that hold the GIL, which threads
    processing other partitions wait for. Rows are named by position.
    """

    def __init__(self, rows: int) -> None:
        self.flagged = np.zeros(rows, dtype=bool)
        self._parts: list[pd.Series] = []

    def add(self, reasons: pd.Series) -> None:
        """Reasons for the rows they index; rows that already have one keep it."""
        if reasons.empty:
            return
        fresh = ~self.flagged[reasons.index.to_numpy()]
        if not fresh.all():
            reasons = reasons[fresh]
        if len(reasons):
            self._parts.append(reasons.astype(object))
            self.flagged[reasons.index.to_numpy()] = True

    def every_row(self, reason: str) -> None:
        """One reason for every row, replacing the others (the whole partition is rejected)."""
        self._parts = [pd.Series(reason, index=pd.RangeIndex(len(self.flagged)), dtype=object)]
        self.flagged[:] = True

    def series(self) -> pd.Series:
        """The reasons of the flagged rows, in row order."""
        if not self._parts:
            return pd.Series(dtype=object)
        return pd.concat(self._parts).sort_index()


@dataclass
class RowVerdict:
    """The result of a compiled suite on one partition."""

    broken: np.ndarray  # per row: broken by a row-level expectation
    reasons: pd.Series  # per broken row: the first reason (index = row positions)
    partition_failures: list[str]  # table-level or ``mostly`` verdicts that fail the whole partition
    outcomes: list[ExpectationOutcome]


def _notnull(series: pd.Series) -> np.ndarray:
    return series.notna().to_numpy()


def _type_ok(series: pd.Series, types: list[str]) -> np.ndarray:
    """GE on pandas: a numeric column passes on its dtype; an object column per value type."""
    if series.dtype.kind in NUMERIC_KINDS or str(series.dtype) in ("Int64", "Float64", "boolean"):
        ok = str(series.dtype) in types or (
            series.dtype.kind in {"i", "u", "f"} and bool(set(types) & _PY_NUMERIC)
        )
        return np.full(len(series), ok)
    names = series.map(lambda v: type(v).__name__)
    return names.isin(types).to_numpy() | ~_notnull(series)


def _compile_one(exp: dict[str, Any], numeric: set[str]) -> CompiledExpectation | None:
    kind, kw = exp["type"], dict(exp.get("kwargs", {}))
    column = kw.get("column")
    mostly = float(kw.get("mostly", 1.0) if kw.get("mostly") is not None else 1.0)

    def missing_column(frame: pd.DataFrame) -> bool:
        return column is not None and column not in frame.columns

    if kind == "expect_table_columns_to_match_set":
        wanted = [str(c) for c in kw.get("column_set") or []]
        exact = kw.get("exact_match", True)

        def columns_match(frame: pd.DataFrame) -> str | None:
            have = [str(c) for c in frame.columns]
            missing = sorted(set(wanted) - set(have))
            extra = sorted(set(have) - set(wanted)) if exact else []
            if not missing and not extra:
                return None
            return f"columns differ from the suite: missing {missing}, unexpected {extra}"

        return CompiledExpectation(kind, None, 1.0, kw, None, columns_match)
    if kind == "expect_column_to_exist":

        def exists(frame: pd.DataFrame) -> str | None:
            return None if column in frame.columns else f"column {column!r} is missing"

        return CompiledExpectation(kind, column, 1.0, kw, None, exists)
    if kind == "expect_column_values_to_not_be_null":
        return CompiledExpectation(kind, column, mostly, kw, lambda f: ~_notnull(f[column]))
    if kind == "expect_column_values_to_be_in_type_list":
        types = list(kw.get("type_list") or [])
        return CompiledExpectation(kind, column, mostly, kw, lambda f: ~_type_ok(f[column], types))
    if kind == "expect_column_values_to_be_of_type":
        type_ = str(kw.get("type_"))
        return CompiledExpectation(kind, column, mostly, kw, lambda f: ~_type_ok(f[column], [type_]))
    if kind == "expect_column_values_to_be_between":
        lo, hi = kw.get("min_value"), kw.get("max_value")
        strict_lo, strict_hi = bool(kw.get("strict_min")), bool(kw.get("strict_max"))

        def between(frame: pd.DataFrame) -> np.ndarray:
            series = frame[column]
            if isinstance(series.dtype, np.dtype) and series.dtype.kind in "iuf":
                # Numbers already (no nulls but NaN, which compares false): compared in place.
                values = series.to_numpy()
            else:
                values = pd.to_numeric(series, errors="coerce").to_numpy(dtype="float64", na_value=np.nan)
            bad = np.zeros(len(values), dtype=bool)
            if lo is not None:
                bad |= (values <= lo) if strict_lo else (values < lo)
            if hi is not None:
                bad |= (values >= hi) if strict_hi else (values > hi)
            return bad  # a missing value (NaN) is never out of range: every comparison with it is false

        return CompiledExpectation(kind, column, mostly, kw, between)
    if kind == "expect_column_values_to_be_in_set":
        allowed = list(kw.get("value_set") or [])

        def in_set(frame: pd.DataFrame) -> np.ndarray:
            series = frame[column]
            ok = series.isin(allowed).to_numpy(dtype=bool, copy=True)
            if series.dtype == object:  # mixed values: compare their text too (as GE does on str)
                as_text = series.astype("string").isin([str(v) for v in allowed]).fillna(False)
                ok |= as_text.to_numpy(dtype=bool)
            return ~ok & _notnull(series)

        return CompiledExpectation(kind, column, mostly, kw, in_set)
    if kind == "expect_column_values_to_be_unique":
        return CompiledExpectation(
            kind,
            column,
            mostly,
            kw,
            lambda f: f[column].duplicated(keep=False).to_numpy() & _notnull(f[column]),
        )
    if kind == "expect_column_values_to_match_regex":
        regex = str(kw.get("regex"))

        def matches(frame: pd.DataFrame) -> np.ndarray:
            series = frame[column].astype("string")
            return ~series.str.contains(regex, regex=True).fillna(True).to_numpy()

        return CompiledExpectation(kind, column, mostly, kw, matches)
    del missing_column
    return None


def as_numbers_where_parsable(frame: pd.DataFrame, numeric: Sequence[str]) -> pd.DataFrame:
    """Numeric suite columns that arrived as text: numbers where they parse, the text where not.

    Only columns that need it are converted (a shallow copy), so a clean partition costs nothing.
    """
    out = frame
    for column in numeric:
        if column not in frame.columns or frame[column].dtype.kind in "iufb":
            continue
        if out is frame:
            out = frame.copy(deep=False)
        raw = frame[column].astype(object)
        parsed = pd.to_numeric(raw, errors="coerce")
        out[column] = raw.where(parsed.isna() | raw.isna(), parsed)
    return out


def compile_suite(suite: dict[str, Any]) -> CompiledSuite:
    """Compile what this module knows; the rest is returned for GE to run."""
    numeric = list(suite.get("meta", {}).get("aicml", {}).get("numeric_columns", []))
    compiled, rest = [], []
    for exp in suite.get("expectations", []):
        one = _compile_one(exp, set(numeric))
        if one is None:
            rest.append(exp)
        else:
            compiled.append(one)
    return CompiledSuite(str(suite.get("name", "suite")), tuple(compiled), tuple(rest), tuple(numeric))


def _show(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _reason(exp: CompiledExpectation, values: pd.Series | None) -> pd.Series | str:
    where = f" on {exp.column!r}" if exp.column else ""
    head = f"{exp.type}{where}"
    if values is None:
        return head
    if exp.type == "expect_column_values_to_be_between":
        span = f"[{exp.kwargs.get('min_value')}, {exp.kwargs.get('max_value')}]"
        return head + ": " + values.map(_show) + f" not in {span}"
    if exp.type == "expect_column_values_to_not_be_null":
        return head + ": value is missing"
    return head + ": " + values.map(_show)


def check_rows(frame: pd.DataFrame, compiled: CompiledSuite) -> RowVerdict:
    """Run the compiled suite; never raises for bad data."""
    rows = len(frame)
    reasons = RowReasons(rows)
    nonnull: dict[str, int] = {}
    partition_failures: list[str] = []
    outcomes: list[ExpectationOutcome] = []
    for exp in compiled.expectations:
        if exp.table_check is not None:
            problem = exp.table_check(frame)
            outcomes.append(
                ExpectationOutcome(
                    exp.type, exp.column, problem is None, 0 if problem is None else rows, rows, problem or ""
                )
            )
            if problem:
                partition_failures.append(f"{exp.type}: {problem}")
            continue
        assert exp.check is not None
        if exp.column is not None and exp.column not in frame.columns:
            detail = f"column {exp.column!r} is missing"
            outcomes.append(ExpectationOutcome(exp.type, exp.column, False, rows, rows, detail))
            partition_failures.append(f"{exp.type} on {exp.column!r}: {detail}")
            continue
        bad = np.asarray(exp.check(frame), dtype=bool)
        count = int(bad.sum())
        element_count = rows
        if exp.type == "expect_column_values_to_not_be_null" or not exp.column:
            present = rows
        else:
            if exp.column not in nonnull:
                nonnull[exp.column] = int(_notnull(frame[exp.column]).sum())
            present = nonnull[exp.column]
        share = count / present if present else 0.0
        success = share <= (1.0 - exp.mostly) + 1e-12 if exp.mostly < 1.0 else count == 0
        detail = ""
        if count:
            sample = frame.loc[bad, exp.column].head(3).tolist() if exp.column else []
            detail = "e.g. " + ", ".join(_show(v) for v in sample) if sample else ""
        outcomes.append(ExpectationOutcome(exp.type, exp.column, success, count, element_count, detail))
        if exp.row_level:
            fresh = bad & ~reasons.flagged
            if fresh.any():
                values = frame.loc[fresh, exp.column] if exp.column else None
                reason = _reason(exp, values)
                text = reason.to_numpy() if isinstance(reason, pd.Series) else reason
                reasons.add(pd.Series(text, index=np.flatnonzero(fresh), dtype=object))
        # With mostly = 1 every broken row is already quarantined; the partition itself fails only
        # when more rows break an expectation than its mostly allows.
        if not success and (exp.mostly < 1.0 or not exp.row_level):
            partition_failures.append(
                f"{exp.type} on {exp.column!r}: {count} of {present} rows broke it (mostly={exp.mostly})"
            )
    return RowVerdict(reasons.flagged, reasons.series(), partition_failures, outcomes)
