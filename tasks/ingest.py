"""Ingest tasks: the pipeline's snapshot of a source, and the ingest flow's parallel, quality-gated batch."""

from __future__ import annotations

import contextvars
import logging
import os
import threading
import time
from pathlib import Path
from typing import Any

from prefect import get_run_logger, task
from prefect.artifacts import create_progress_artifact, update_progress_artifact
from prefect.cache_policies import NO_CACHE

from aicml.data.integration import IngestJob, IngestReport, run_ingest
from aicml.data.snapshots import Snapshot, dataset_name, write_snapshot
from aicml.data.sources import parse_source, read_source
from aicml.data.state import IngestState
from aicml.errors import DataQualityError
from aicml.lineage.events import emits_lineage
from aicml.names import slug
from aicml.observability.metrics import DATA_INTEGRATION_RECORDS
from aicml.redaction import redact
from aicml.usage.tasks import metered
from blocks.settings import AicSettings
from tasks.context import data_dir, settings
from tasks.policies import retry_unless_aic_error

# The deployment of ingest-flow that the `aicml.data.file.landed` trigger starts (prefect.yaml).
LANDED_DEPLOYMENT = "on-file-landed"


def in_deployment() -> bool:
    """Whether this code runs in a flow run of a deployment, whose parameters anyone allowed to
    start runs may have written. When Prefect cannot tell, the answer is yes (confine)."""
    run = _context_flow_run()
    if run is not None:
        return run.deployment_id is not None
    from prefect.runtime import deployment

    try:
        return deployment.id is not None
    except Exception:
        return True


def _context_flow_run() -> Any:
    """The flow run this code runs in, as its engine read it when the run started; None outside a
    flow run, in a task run of another process, or where ``prefect.runtime`` is mocked through its
    environment variables (then it answers).

    ``prefect.runtime.deployment`` reads the flow run from the API on every access, each time with
    a new client and TLS context; the flow run's own context already holds its deployment id.
    """
    if any(os.environ.get(f"PREFECT__RUNTIME__DEPLOYMENT__{field}") for field in ("ID", "NAME")):
        return None
    from prefect.context import FlowRunContext

    context = FlowRunContext.get()
    return getattr(context, "flow_run", None) if context is not None else None


def source_roots(current: AicSettings | None = None) -> tuple[str, ...] | None:
    """The data roots file sources must lie in, or None when they are not confined.

    Confined in flow runs of a deployment (parameters from the API, a schedule or an event) and
    everywhere when ``AIC_CONFINE_SOURCES`` is set; a flow called directly (a notebook, a test) reads
    with its caller's own file access. In the on-file-landed deployment the only root is the watched
    landing directory. Roots are ``AIC_DATA_ROOTS``, else the stack's home and /mnt/data.
    ``current``: the flow's settings (read here when None).
    """
    from aicml.data.landing import landing_directory
    from aicml.data.safety import configured_roots

    current = current or settings()
    if not (current.confine_sources or in_deployment()):
        return None
    if deployment_name() == LANDED_DEPLOYMENT:
        return (str(landing_directory(current)),)
    return configured_roots(current)


def deployment_name() -> str | None:
    run = _context_flow_run()
    if run is not None and run.deployment_id is None:
        return None  # a flow called directly: no deployment, nothing to ask the API
    from prefect.runtime import deployment

    try:
        return deployment.name
    except Exception:
        return None


def check_landed_source(source: str) -> None:
    """In the on-file-landed deployment, the event's path (now ``source``) must be a file in the
    watched landing directory; ConfigurationError otherwise."""
    from aicml.data.landing import check_landed

    if deployment_name() == LANDED_DEPLOYMENT:
        check_landed(source)


def ingest(
    source: str,
    table: str | None = None,
    dataset: str | None = None,
    *,
    snapshots_dir: Path | None = None,
    current: AicSettings | None = None,
) -> Snapshot:
    """The task's body as a plain function (used by the benchmark and tests). ``snapshots_dir`` and
    ``current`` (the flow's settings): read from the settings here when None."""
    spec = parse_source(source, table, roots=source_roots(current))
    frame = read_source(spec)
    name = dataset or dataset_name(spec.table or source)
    snapshot = write_snapshot(frame, name, snapshots_dir or data_dir("snapshots"))
    DATA_INTEGRATION_RECORDS.labels(source=name, outcome="ingested").inc(snapshot.rows)
    return snapshot


# The source may change between runs, so the snapshot is never served from a cache;
# the snapshot itself is immutable and named by its content.
@metered
@task(
    name="ingest",
    retries=2,
    retry_delay_seconds=[2, 10],
    retry_jitter_factor=0.5,
    retry_condition_fn=retry_unless_aic_error,
    cache_policy=NO_CACHE,
    persist_result=False,
    timeout_seconds=3600,
)
@emits_lineage("ingest")
def ingest_source(
    source: str,
    table: str | None = None,
    dataset: str | None = None,
    *,
    snapshots_dir: Path | None = None,
) -> Snapshot:
    """Read ``source`` (files or SQL table) and snapshot it as Parquet named by its fingerprint
    (under ``snapshots_dir``, by default ``<home>/snapshots``)."""
    snapshot = ingest(source, table, dataset, snapshots_dir=snapshots_dir)
    get_run_logger().info(
        "Ingested %d rows, %d columns from %s -> %s (fingerprint %s)",
        snapshot.rows,
        len(snapshot.columns),
        redact(source),
        snapshot.path,
        snapshot.fingerprint,
    )
    return snapshot


def ingest_state_url(current: AicSettings | None = None) -> str:
    """Where incremental state (ledger, watermarks) lives: a database of its own, never Prefect's
    (``AicSettings.ingest_state_url``). ``current``: the flow's settings (read here when None)."""
    return (current or settings()).ingest_state_url()


def record_metrics(report: IngestReport) -> None:
    DATA_INTEGRATION_RECORDS.labels(source=report.load, outcome="accepted").inc(report.accepted)
    DATA_INTEGRATION_RECORDS.labels(source=report.load, outcome="quarantined").inc(report.quarantined)


class IngestProgressArtifact:
    """The Prefect progress artifact of one ingest batch: partitions processed (up to 90 %), then the
    commit (100 %). Updated from the partitions' threads, at most every ``every_s`` seconds (and always
    at the commit), in the Prefect context of the task that created it; a failed update is logged only.
    """

    COMMIT_SHARE = 10.0  # percent left for the commit after the last partition

    def __init__(self, load: str, artifact_id: Any, every_s: float = 0.5):
        self.load, self.artifact_id, self.every_s = load, artifact_id, every_s
        self.context = contextvars.copy_context()
        self.lock = threading.Lock()
        self.last, self.seen = 0.0, 0

    @classmethod
    def create(cls, load: str) -> IngestProgressArtifact | None:
        """The artifact (key ``ingest-progress-<load>``) at 0 %; None when Prefect did not take it."""
        try:
            artifact_id = create_progress_artifact(
                progress=0.0,
                key="ingest-progress-" + slug(load, limit=100),
                description=f"Load {load}: listing partitions",
            )
        except Exception as exc:
            get_run_logger().warning("No progress artifact for load %s: %s", load, exc)
            return None
        return cls(load, artifact_id)

    def __call__(self, stage: str, done: int, total: int) -> None:
        if stage == "committed":
            self._update(100.0, f"Load {self.load}: {total} partitions committed")
            return
        share = 100.0 - self.COMMIT_SHARE
        percent = share * done / total if total else share
        # Under the lock: the values reach Prefect in order, never 60 % then 50 %.
        with self.lock:
            now = time.monotonic()
            if done < self.seen or (done not in (0, total) and now - self.last < self.every_s):
                return
            self.last, self.seen = now, done
            self._update(round(percent, 1), f"Load {self.load}: {done} of {total} partitions processed")

    def finish(self, description: str) -> None:
        self._update(100.0, description)

    def _update(self, percent: float, description: str) -> None:
        try:
            self.context.copy().run(
                update_progress_artifact,
                artifact_id=self.artifact_id,
                progress=percent,
                description=description,
            )
        except Exception as exc:
            logging.getLogger(__name__).warning("Progress of load %s not updated: %s", self.load, exc)


# A batch is idempotent (outputs named by partition identity, SQL batches in a ledger), so an
# infrastructure failure is retried; bad data and bad settings (our own errors) are not.
@metered
@task(
    name="ingest-batch",
    retries=2,
    retry_delay_seconds=[5, 30],
    retry_condition_fn=retry_unless_aic_error,
    cache_policy=NO_CACHE,
    persist_result=False,
    timeout_seconds=6 * 3600,
)
def ingest_batch(job: IngestJob, state_url: str | None = None) -> IngestReport:
    """Run one batch of ``job`` (parallel partitions, quarantine, commit, then state)."""
    logger = get_run_logger()
    progress = IngestProgressArtifact.create(job.load)
    try:
        report = run_ingest(job, IngestState(state_url) if state_url else None, progress=progress)
    except DataQualityError as exc:
        DATA_INTEGRATION_RECORDS.labels(source=job.load, outcome="rejected").inc(exc.rows)
        logger.error("%s", exc)
        raise
    record_metrics(report)
    if progress is not None:
        progress.finish(
            f"Load {job.load}: {report.partitions} partitions ({report.skipped} already loaded), "
            f"{report.accepted} rows accepted, {report.quarantined} quarantined"
        )
    logger.info(
        "Load %s: %d partitions (%d already loaded), %d rows in, %d accepted, %d quarantined, "
        "%d committed to %s in %.1fs",
        report.load,
        report.partitions,
        report.skipped,
        report.rows_in,
        report.accepted,
        report.quarantined,
        report.committed_rows,
        redact(report.output),
        report.seconds,
    )
    return report
