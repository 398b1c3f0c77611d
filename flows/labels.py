"""The `ingest-labels` flow: late ground truth from any source the ingest flow reads, joined to a served
model's logged predictions by request id (or a key column) and stored beside the logs, with a table
artifact of what was joined and what was set aside, and why (`aicml labels ingest` through Prefect)."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path
from typing import Annotated, Any, Literal

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_table_artifact
from prefect.cache_policies import NO_CACHE
from pydantic import AfterValidator, BaseModel, ConfigDict, Field

from aicml.errors import ConfigurationError
from aicml.monitoring.labels import LabelIngestReport
from aicml.monitoring.labels import ingest_labels as join_label_source
from aicml.monitoring.predictions import prediction_log_root
from aicml.monitoring.reference import load_reference
from aicml.names import ResourceName, slug
from aicml.redaction import refuse_password
from aicml.registry.tracking import Tracking
from aicml.stack.overrides import resolve_params
from aicml.usage.tasks import metered
from blocks.data import BlockLookupError, sql_url_from_block
from tasks.context import data_dir, settings, tracking_of
from tasks.ingest import source_roots


class LabelsParams(BaseModel):
    """Parameters of `ingest-labels`; Prefect builds the deployment form from these."""

    # A refused value may hold a secret: errors name the field, never echo the input.
    model_config = ConfigDict(hide_input_in_errors=True)

    source: Annotated[str, AfterValidator(refuse_password)] = Field(
        description=(
            "The labels: path, glob or URL of CSV / Parquet / JSON-lines files, an http(s) JSON API, or a "
            "SQLAlchemy URL with the table after '#' (credentials in source_block, never here)."
        )
    )
    model_name: ResourceName = Field(description="The served model (registry name) the labels are for.")
    key: str = Field(
        default="request_id",
        min_length=1,
        description="Column naming the prediction: request_id, or an input column such as customer_id.",
    )
    label_column: str = Field(default="label", min_length=1, description="Column holding the true label.")
    lookback_days: int = Field(
        default=30, ge=1, le=366, description="Join to predictions logged in this many past days."
    )
    problem: Literal["classification", "regression"] | None = Field(
        default=None, description="Kind of model; read from the aliased version's run when empty."
    )
    alias: str = Field(
        default="champion",
        description="The registry alias whose version the labels' classes are checked against.",
    )
    source_block: str | None = Field(
        default=None,
        description=(
            "Name of an SQLAlchemy Connector block (prefect-sqlalchemy) whose URL, password included, replaces "
            "a SQL source's; the table stays after '#'."
        ),
    )


class LabelsResult(BaseModel):
    """What one label batch did."""

    model_name: str
    rows_read: int
    joined: int
    rejected: dict[str, int]
    bad_rows: int
    examples: dict[str, list[str]]
    files: list[str]
    checked_against: str | None


@metered
@task(name="model-facts", retries=1, cache_policy=NO_CACHE, persist_result=False, timeout_seconds=600)
def model_facts(
    model: str, alias: str, tracking: Tracking
) -> tuple[str | None, list[str] | None, str | None]:
    """(problem, classes, version) of the aliased version, to check labels against; Nones when the registry
    cannot say (labels are then joined unchecked, which the log says)."""
    try:
        reference = load_reference(tracking.client(), model, alias=alias, suites_dir=None, rows=20_000)
    except Exception as exc:  # no such alias yet, or a model not trained by the pipeline
        get_run_logger().warning("Label classes of %s not checked: %s", model, exc)
        return None, None, None
    return reference.problem, reference.classes, reference.version


@metered
@task(name="join-labels", cache_policy=NO_CACHE, persist_result=False, timeout_seconds=1800)
def join_and_store(
    source: str,
    params: LabelsParams,
    problem: str | None,
    classes: list[str] | None,
    roots: tuple[str, ...] | None,
    home: Path,
) -> LabelIngestReport:
    """Read the labels, join them to the logged predictions, store the joined rows under ``<home>/labels``."""
    root, storage = prediction_log_root(home)
    return join_label_source(
        source, params.model_name, predictions_root=root, labels_root=data_dir("labels", home),
        storage_options=storage, key=params.key, label_column=params.label_column,
        problem=problem,  # type: ignore[arg-type]
        classes=classes, lookback=timedelta(days=params.lookback_days), roots=roots,
    )  # fmt: skip


# The function is named like the flow: `prefect deploy --name ingest-labels/local` matches on it.
@flow(name="ingest-labels", log_prints=False, persist_result=True)
def ingest_labels(params: LabelsParams, overrides: dict[str, Any] | None = None) -> LabelsResult:
    """Join late labels to a served model's logged predictions; a table artifact counts them by outcome.

    Args:
        params: The batch's parameters (a deployment fills them from its preset).
        overrides: Fields of `params` to change for this run, by dotted path, e.g.
            {"source": "/data/labels/2026-12-05.csv"}; every other field keeps its value. The result
            is validated as a whole: a key that names no field, or a value of the wrong type, fails the
            run with an error naming it.
    """
    params = resolve_params(params, overrides, LabelsParams)
    logger = get_run_logger()
    s = settings()
    source = params.source
    if params.source_block:
        try:
            url = sql_url_from_block(params.source_block)
        except BlockLookupError as exc:
            raise ConfigurationError(str(exc)) from exc
        table = source.partition("#")[2]
        if not table:
            raise ConfigurationError("source_block needs the table in source, after '#' (e.g. '#outcomes').")
        source = f"{url}#{table}"
    # Parameters are data: in a deployment's runs, files stay inside the operator's data roots.
    roots = source_roots(s)
    found, classes, version = model_facts(params.model_name, params.alias, tracking_of(s))
    problem = params.problem or found
    report = join_and_store(source, params, problem, classes, roots, s.root)
    create_table_artifact(
        table=report.to_rows(),
        key=slug(f"labels-{params.model_name}"),
        description=report.summary(),
    )
    if report.bad_rows:
        logger.warning("%s", report.summary())
    else:
        logger.info("%s", report.summary())
    return LabelsResult(
        model_name=params.model_name,
        rows_read=report.rows_read,
        joined=report.joined,
        rejected={k: v for k, v in report.rejected.items() if v},
        bad_rows=report.bad_rows,
        examples=report.examples,
        files=report.files,
        checked_against=f"{params.model_name} version {version}" if version else None,
    )
