"""One exception hierarchy for the whole library; every message says what was wrong and what to do."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any


class AicError(Exception):
    """Base class of every error aic-ml raises on purpose."""


class ConfigurationError(AicError):
    """A setting, block or parameter is missing or invalid."""


class SourceError(AicError):
    """A data source cannot be read: missing file, unsupported format, unreadable table."""


class SchemaError(AicError):
    """Data does not have the shape a step needs (missing label column, no usable features)."""


@dataclass(frozen=True)
class FailedExpectation:
    """One expectation of a quality suite that a batch broke."""

    expectation: str
    column: str | None
    unexpected_count: int
    detail: str = ""

    def describe(self) -> str:
        where = f" on column {self.column!r}" if self.column else ""
        extra = f" ({self.detail})" if self.detail else ""
        return f"{self.expectation}{where}: {self.unexpected_count} rows broke it{extra}"


class DataQualityError(AicError):
    """A batch violated its quality suite; nothing downstream ran on it."""

    def __init__(
        self,
        dataset: str,
        failures: Sequence[FailedExpectation],
        rows: int,
        report: dict[str, Any] | None = None,
    ) -> None:
        self.dataset = dataset
        self.failures = list(failures)
        self.rows = rows
        self.report = report or {}
        lines = "\n".join(f"  - {failure.describe()}" for failure in self.failures)
        super().__init__(
            f"Batch of dataset {dataset!r} ({rows} rows) failed {len(self.failures)} expectation(s):\n"
            f"{lines}\nFix the data, or pass a suite that accepts it."
        )

    def __reduce__(
        self,
    ) -> tuple[type[DataQualityError], tuple[str, list[FailedExpectation], int, dict[str, Any]]]:
        # Prefect pickles exceptions into failed states; keep the structured fields.
        return (DataQualityError, (self.dataset, self.failures, self.rows, self.report))


class TrainingError(AicError):
    """Training could not produce a model."""


class RegistryError(AicError):
    """The model registry refused an operation or holds no such model or alias."""


class StackError(AicError):
    """A local stack service failed to start, stop or answer."""
