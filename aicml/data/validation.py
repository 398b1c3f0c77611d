"""The one validation entry: a suite's verdict on a batch, whole frame (the pipeline's quality gate) or
one partition (the ingest engine) alike.

Every expectation with a compiled form runs as vectorised checks (``aicml.data.rules``, whose counts
equal Great Expectations', tested), which also say per row why it broke; Great Expectations itself
runs only the expectations without one.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import pandas as pd

from aicml.data.quality import ExpectationOutcome, ValidationReport, validate_frame
from aicml.data.rules import as_numbers_where_parsable, check_rows, compile_suite


@dataclass
class BatchVerdict:
    """What a suite says about a batch.

    ``outcomes``: one per expectation. ``batch_failures``: what fails the batch as a whole (table-level
    expectations, a ``mostly`` exceeded, an expectation only Great Expectations runs). ``reasons``: per
    row broken by a row-level expectation (index = row positions), the first reason.
    """

    suite_name: str
    rows: int
    outcomes: list[ExpectationOutcome]
    batch_failures: list[str]
    reasons: pd.Series
    numeric_columns: tuple[str, ...]

    def report(self, suite_created: bool = False) -> ValidationReport:
        return ValidationReport(self.suite_name, self.rows, self.outcomes, suite_created=suite_created)


def validate_batch(frame: pd.DataFrame, suite: dict[str, Any]) -> BatchVerdict:
    """``suite``'s verdict on ``frame`` (a whole batch or one partition); never raises for bad data."""
    compiled = compile_suite(suite)
    checked = as_numbers_where_parsable(frame, compiled.numeric_columns)
    verdict = check_rows(checked, compiled)
    outcomes, failures = list(verdict.outcomes), list(verdict.partition_failures)
    if compiled.uncompiled:
        # Expectation types without a compiled form: Great Expectations judges the batch on those.
        report = validate_frame(frame, {**suite, "expectations": list(compiled.uncompiled)})
        outcomes += report.outcomes
        failures += [f.describe() for f in report.failures]
    return BatchVerdict(
        compiled.name, len(frame), outcomes, failures, verdict.reasons, compiled.numeric_columns
    )
