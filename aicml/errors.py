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


class ServiceUnavailableError(StackError):
    """A platform server (MLflow, Prefect, PostgreSQL) did not answer within the clients' bounded retries."""

    def __init__(self, server: str, url: str, doing: str, cause: str, flow_run_id: str | None = None) -> None:
        self.server = server
        self.url = url
        self.doing = doing
        self.cause = cause
        self.flow_run_id = flow_run_id
        then = (
            f"then continue the run with `aicml resume {flow_run_id}`"
            if flow_run_id
            else "then run it again (a deployment run: `aicml resume <flow-run-id>`)"
        )
        super().__init__(
            f"The {server} server at {url} did not answer while {doing}; gave up after the bounded retries "
            f"({cause}). Check it with `aicml status` (start what is down with `aicml up`), {then}: "
            "completed stages are reused, and a half-done model registration is finished, not repeated."
        )

    def __reduce__(self) -> tuple[type[ServiceUnavailableError], tuple[str, str, str, str, str | None]]:
        # Prefect pickles exceptions into failed states; keep the structured fields.
        return (ServiceUnavailableError, (self.server, self.url, self.doing, self.cause, self.flow_run_id))
