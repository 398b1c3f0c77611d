"""OpenLineage run events (START, COMPLETE, FAIL) of the pipeline's steps, sent with ``openlineage-python``.

Where events go (read at the first event of a process, ``LineageConfig.from_env``):

- ``AIC_LINEAGE_TRANSPORT``: ``file`` (default: one JSON line per event appended to ``AIC_LINEAGE_URL``, by
  default ``<AIC_HOME>/lineage/events.jsonl``), ``http`` (an OpenLineage endpoint such as Marquez at
  ``AIC_LINEAGE_URL``, bearer ``AIC_LINEAGE_API_KEY``), ``console`` (the process log) or ``off``.
  Unset, a user's own ``OPENLINEAGE_URL`` means ``http`` to it, and ``OPENLINEAGE_DISABLED=true`` means off.
- ``AIC_LINEAGE_NAMESPACE`` (else ``OPENLINEAGE_NAMESPACE``, else ``aic-ml``): the jobs' namespace.

An event never fails the step it describes: any error is logged as a warning and the step goes on.
"""

from __future__ import annotations

import functools
import inspect
import logging
import os
import traceback
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar, cast

import aicml
from aicml.errors import ConfigurationError
from aicml.redaction import redact

if TYPE_CHECKING:
    from aicml.lineage.datasets import DatasetFacts

log = logging.getLogger(__name__)

TRANSPORTS = ("file", "http", "console", "off")
DEFAULT_NAMESPACE = "aic-ml"
REPO_URL = "https://github.com/aic/aic-ml"
PRODUCER = f"{REPO_URL}/tree/v{aicml.__version__}"
# Our own facets' JSON schemas ship in aicml/lineage/schemas; their URLs name the file at this release.
FACET_SCHEMA_BASE = "https://github.com/aic/aic-ml/blob/main/aicml/lineage/schemas/"
SCHEMA_DIR = Path(__file__).parent / "schemas"


@dataclass(frozen=True)
class LineageConfig:
    """Where OpenLineage events go; see the module docstring for the variables."""

    transport: str = "file"
    location: str | None = None
    namespace: str = DEFAULT_NAMESPACE
    api_key: str | None = field(default=None, repr=False)
    timeout_s: float = 5.0

    def __post_init__(self) -> None:
        if self.transport not in TRANSPORTS:
            raise ConfigurationError(
                f"AIC_LINEAGE_TRANSPORT={self.transport!r} is not one of {', '.join(TRANSPORTS)}."
            )
        if self.transport == "http" and not (self.location or "").startswith(("http://", "https://")):
            raise ConfigurationError(
                "AIC_LINEAGE_TRANSPORT=http needs AIC_LINEAGE_URL (or OPENLINEAGE_URL) set to an http(s) URL "
                f"of an OpenLineage endpoint; it is {self.location!r}."
            )

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, home: Path | None = None) -> LineageConfig:
        env = os.environ if environ is None else environ
        transport = (env.get("AIC_LINEAGE_TRANSPORT") or "").strip().lower()
        location = env.get("AIC_LINEAGE_URL") or None
        if not transport:
            if (env.get("OPENLINEAGE_DISABLED") or "").lower() in ("1", "true", "yes"):
                transport = "off"
            elif env.get("OPENLINEAGE_URL"):
                transport, location = "http", location or env["OPENLINEAGE_URL"]
            else:
                transport = "file"
        if transport == "file" and location is None:
            location = str(lineage_home(home, env) / "events.jsonl")
        namespace = env.get("AIC_LINEAGE_NAMESPACE") or env.get("OPENLINEAGE_NAMESPACE") or DEFAULT_NAMESPACE
        api_key = env.get("AIC_LINEAGE_API_KEY") or env.get("OPENLINEAGE_API_KEY") or None
        return cls(transport=transport, location=location, namespace=namespace, api_key=api_key)


def lineage_home(home: Path | None = None, environ: Mapping[str, str] | None = None) -> Path:
    """``<home>/lineage``: the stack's home from the settings (``AIC_HOME``) when ``home`` is None."""
    if home is None:
        from blocks.settings import AicSettings

        home = AicSettings().root
    return home / "lineage"


@functools.lru_cache(maxsize=4)
def _client(config: LineageConfig) -> Any:
    from openlineage.client import OpenLineageClient

    transport: Any
    if config.transport == "file":
        from openlineage.client.transport.file import FileConfig, FileTransport

        Path(str(config.location)).parent.mkdir(parents=True, exist_ok=True)
        transport = FileTransport(FileConfig(log_file_path=str(config.location), append=True))
    elif config.transport == "http":
        from openlineage.client.transport.http import HttpConfig, HttpTransport

        auth = {"type": "api_key", "apiKey": config.api_key} if config.api_key else None
        # A lineage server that is down costs the step a second or two, never minutes of retries.
        retry = {"total": 2, "backoff_factor": 0.2, "connect": 2, "read": 2}
        params: dict[str, Any] = {"url": config.location, "timeout": config.timeout_s, "retry": retry}
        if auth:
            params["auth"] = auth
        transport = HttpTransport(HttpConfig.from_dict(params))
    else:
        from openlineage.client.transport.console import ConsoleConfig, ConsoleTransport

        transport = ConsoleTransport(ConsoleConfig())
    return OpenLineageClient(transport=transport)


@dataclass(frozen=True)
class LineageDataset:
    """A dataset a step read or wrote: a file or table (with its facts), or a model in the registry."""

    namespace: str
    name: str
    facts: DatasetFacts | None = None
    assertions: tuple[Mapping[str, Any], ...] = ()
    properties: Mapping[str, str] = field(default_factory=dict)


def location_of(uri: str) -> tuple[str, str]:
    """(namespace, name) of a file path or URL by OpenLineage's naming: ``file`` and the absolute path for a
    local file, ``<scheme>://<host>`` and the path (``#table`` kept) otherwise; credentials dropped."""
    if "://" not in uri:
        return "file", str(Path(uri).resolve())
    scheme, rest = uri.split("://", 1)
    authority, _, path = rest.partition("/")
    authority = authority.rsplit("@", 1)[-1]
    if scheme == "file":
        return "file", "/" + path
    return f"{scheme}://{authority}", "/" + path


def facts_dataset(facts: DatasetFacts, assertions: tuple[Mapping[str, Any], ...] = ()) -> LineageDataset:
    namespace, name = location_of(facts.uri)
    return LineageDataset(namespace, name, facts=facts, assertions=assertions)


def model_dataset(tracking_uri: str, model_uri: str, **properties: str) -> LineageDataset:
    """A model as a dataset: namespace the MLflow server, name its URI (``models:/churn/3``, ``runs:/...``)."""
    namespace, _ = location_of(tracking_uri) if "://" in tracking_uri else ("file", tracking_uri)
    return LineageDataset(namespace, model_uri, properties=properties)


def _facet_classes() -> dict[str, Any]:
    """Our own facets (attrs classes over the client's bases), built on first use: the client is imported
    only when an event is sent."""
    import attr
    from openlineage.client.generated.base import DatasetFacet, JobFacet, RunFacet

    @attr.define
    class AicmlImageJobFacet(JobFacet):
        """The container image and release of aic-ml that ran the step."""

        image: str
        version: str

        @staticmethod
        def _get_schema() -> str:
            return FACET_SCHEMA_BASE + "AicmlImageJobFacet.json#/$defs/AicmlImageJobFacet"

    @attr.define
    class AicmlPrefectRunFacet(RunFacet):
        """The Prefect flow run (and its UI page) and task run of this step."""

        flowRunId: str | None = attr.field(default=None)
        flowRunUrl: str | None = attr.field(default=None)
        taskRunId: str | None = attr.field(default=None)
        deployment: str | None = attr.field(default=None)

        @staticmethod
        def _get_schema() -> str:
            return FACET_SCHEMA_BASE + "AicmlPrefectRunFacet.json#/$defs/AicmlPrefectRunFacet"

    @attr.define
    class AicmlDatasetFacet(DatasetFacet):
        """What aic-ml knows of a dataset: its kind, snapshot fingerprint, rows, suite and its verdict."""

        kind: str
        fingerprint: str | None = attr.field(default=None)
        rows: int | None = attr.field(default=None)
        suite: str | None = attr.field(default=None)
        suiteDigest: str | None = attr.field(default=None)
        quality: dict[str, Any] | None = attr.field(default=None)
        properties: dict[str, str] | None = attr.field(default=None)

        @staticmethod
        def _get_schema() -> str:
            return FACET_SCHEMA_BASE + "AicmlDatasetFacet.json#/$defs/AicmlDatasetFacet"

    return {"image": AicmlImageJobFacet, "prefect": AicmlPrefectRunFacet, "dataset": AicmlDatasetFacet}


_FACETS: dict[str, Any] = {}


def facet(kind: str) -> Any:
    if not _FACETS:
        _FACETS.update(_facet_classes())
    return _FACETS[kind]


def _dataset_facets(item: LineageDataset, output: bool) -> tuple[dict[str, Any], dict[str, Any]]:
    """(dataset facets, input or output facets) of ``item``."""
    from openlineage.client.generated import (
        data_quality_assertions_dataset as dq,
    )
    from openlineage.client.generated import (
        dataset_version_dataset,
        output_statistics_output_dataset,
        schema_dataset,
    )

    facets: dict[str, Any] = {}
    io: dict[str, Any] = {}
    facts = item.facts
    if facts is not None:
        if facts.schema:
            facets["schema"] = schema_dataset.SchemaDatasetFacet(
                fields=[schema_dataset.SchemaDatasetFacetFields(name=n, type=t) for n, t in facts.schema]
            )
        facets["version"] = dataset_version_dataset.DatasetVersionDatasetFacet(datasetVersion=facts.digest)
        facets["aicml"] = facet("dataset")(
            kind=facts.kind, fingerprint=facts.fingerprint, rows=facts.rows, suite=facts.suite,
            suiteDigest=facts.suite_digest, quality=dict(facts.quality) if facts.quality else None,
        )  # fmt: skip
        if output and facts.rows is not None:
            io["outputStatistics"] = output_statistics_output_dataset.OutputStatisticsOutputDatasetFacet(
                rowCount=facts.rows
            )
    elif item.properties:
        facets["aicml"] = facet("dataset")(kind="model", properties=dict(item.properties))
    if item.assertions and not output:
        io["dataQualityAssertions"] = dq.DataQualityAssertionsDatasetFacet(
            assertions=[
                dq.Assertion(
                    assertion=str(o.get("expectation")),
                    success=bool(o.get("success")),
                    column=o.get("column") or None,
                    actual=None if o.get("unexpected_count") is None else str(o.get("unexpected_count")),
                    description=str(o.get("detail") or "") or None,
                )
                for o in item.assertions
            ]
        )
    return facets, io


def build_event(
    step: str,
    state: str,
    run_id: str,
    inputs: list[LineageDataset],
    outputs: list[LineageDataset],
    config: LineageConfig,
    error: BaseException | None = None,
    source_path: str | None = None,
) -> Any:
    """One OpenLineage ``RunEvent`` of ``step`` (job ``<flow>.<step>``) with its facets."""
    import prefect
    from openlineage.client.event_v2 import InputDataset, Job, OutputDataset, Run, RunEvent, RunState
    from openlineage.client.generated import (
        error_message_run,
        job_type_job,
        parent_run,
        processing_engine_run,
        source_code_location_job,
    )
    from openlineage.client.generated.base import set_producer

    from aicml.lineage.runtime import PACKAGE_ROOT, code_version, prefect_context

    set_producer(PRODUCER)  # the facets' `_producer`: this code made them, not the client library
    code, context = code_version(), prefect_context()
    job_name = f"{context.flow_name}.{step}" if context.flow_name and context.flow_name != step else step
    job_facets: dict[str, Any] = {
        "jobType": job_type_job.JobTypeJobFacet(
            processingType="BATCH", integration="AIC-ML", jobType="TASK" if context.task_run_id else "FLOW"
        ),
        "aicml_image": facet("image")(image=code.image, version=aicml.__version__),
    }
    if code.repo_url or code.commit:
        relative = None
        if source_path:
            try:
                relative = str(Path(source_path).resolve().relative_to(PACKAGE_ROOT))
            except ValueError:
                relative = source_path
        job_facets["sourceCodeLocation"] = source_code_location_job.SourceCodeLocationJobFacet(
            type="git",
            url=code.repo_url or REPO_URL,
            repoUrl=code.repo_url,
            path=relative,
            version=code.commit,
        )
    run_facets: dict[str, Any] = {
        "processing_engine": processing_engine_run.ProcessingEngineRunFacet(
            version=prefect.__version__, name="prefect", openlineageAdapterVersion=aicml.__version__
        ),
        "aicml_prefect": facet("prefect")(
            flowRunId=context.flow_run_id,
            flowRunUrl=context.flow_run_url,
            taskRunId=context.task_run_id,
            deployment=context.deployment,
        ),
    }
    if context.flow_run_id and context.flow_name and context.flow_run_id != run_id:
        run_facets["parent"] = parent_run.ParentRunFacet(
            run=parent_run.Run(runId=context.flow_run_id),
            job=parent_run.Job(namespace=config.namespace, name=context.flow_name),
        )
    if error is not None:
        run_facets["errorMessage"] = error_message_run.ErrorMessageRunFacet(
            # An error may quote a URL with its password: redacted like every log line.
            message=redact(f"{type(error).__name__}: {error}")[:4000],
            programmingLanguage="python",
            stackTrace=redact("".join(traceback.format_exception(error)))[-8000:],
        )

    def input_of(item: LineageDataset) -> Any:
        facets, io = _dataset_facets(item, output=False)
        return InputDataset(namespace=item.namespace, name=item.name, facets=facets, inputFacets=io)

    def output_of(item: LineageDataset) -> Any:
        facets, io = _dataset_facets(item, output=True)
        return OutputDataset(namespace=item.namespace, name=item.name, facets=facets, outputFacets=io)

    return RunEvent(
        eventType=getattr(RunState, state),
        eventTime=datetime.now(UTC).isoformat(),
        run=Run(runId=run_id, facets=run_facets),
        job=Job(namespace=config.namespace, name=job_name, facets=job_facets),
        inputs=[input_of(i) for i in inputs],
        outputs=[output_of(o) for o in outputs],
        producer=PRODUCER,
    )


def emit_event(event: Any, config: LineageConfig) -> bool:
    if config.transport == "off":
        return False
    _client(config).emit(event)
    return True


def new_run_id() -> str:
    """A run id: the Prefect task run's (or flow run's) when there is one, so that events and runs join."""
    from aicml.lineage.runtime import prefect_context

    context = prefect_context()
    candidate = context.task_run_id or context.flow_run_id
    try:
        return str(uuid.UUID(candidate)) if candidate else _uuid7()
    except ValueError:
        return _uuid7()


def _uuid7() -> str:
    from openlineage.client.uuid import generate_new_uuid

    return str(generate_new_uuid())


F = TypeVar("F", bound=Callable[..., Any])


class StepRun:
    """The OpenLineage run of one step: ``start``, then ``complete`` or ``fail``; every call logs a warning
    instead of raising."""

    def __init__(self, step: str, source_path: str | None = None) -> None:
        self.step, self.source_path = step, source_path
        self.config: LineageConfig | None = None
        self.run_id = ""
        self.inputs: list[LineageDataset] = []

    def _send(self, state: str, outputs: list[LineageDataset], error: BaseException | None = None) -> bool:
        try:
            if self.config is None:
                self.config = LineageConfig.from_env()
                self.run_id = new_run_id()
            if self.config.transport == "off":
                return False
            event = build_event(
                self.step, state, self.run_id, self.inputs, outputs, self.config, error, self.source_path
            )
            return emit_event(event, self.config)
        except Exception as exc:
            log.warning("Lineage: the %s event of step %r was not sent: %s", state, self.step, exc)
            return False

    def start(self, inputs: list[LineageDataset]) -> bool:
        self.inputs = inputs
        return self._send("START", [])

    def complete(self, outputs: list[LineageDataset]) -> bool:
        return self._send("COMPLETE", outputs)

    def fail(self, error: BaseException) -> bool:
        return self._send("FAIL", [], error)


def _safely(what: str, step: str, describe: Callable[[], list[LineageDataset]]) -> list[LineageDataset]:
    try:
        return describe()
    except Exception as exc:
        log.warning("Lineage: the %s of step %r could not be described: %s", what, step, exc)
        return []


def _safely_pair(
    step: str, describe: Callable[[], tuple[list[LineageDataset] | None, list[LineageDataset]]]
) -> tuple[list[LineageDataset] | None, list[LineageDataset]]:
    try:
        return describe()
    except Exception as exc:
        log.warning("Lineage: the outputs of step %r could not be described: %s", step, exc)
        return None, []


def emits_lineage(step: str) -> Callable[[F], F]:
    """Decorate a step's function so that each call sends START, then COMPLETE or FAIL (the exception is
    re-raised unchanged). What the step read and wrote comes from ``aicml.lineage.steps.STEPS[step]``,
    which sees the call's arguments by name and its result (or error)."""
    from aicml.lineage.steps import STEPS

    describer = STEPS[step]

    def decorate(fn: F) -> F:
        signature = inspect.signature(fn)
        try:
            source_path = inspect.getsourcefile(fn)
        except TypeError:
            source_path = None

        @functools.wraps(fn)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            arguments: Mapping[str, Any] = {}
            try:
                bound = signature.bind(*args, **kwargs)
                bound.apply_defaults()
                arguments = bound.arguments
            except TypeError:
                pass  # the call itself will say what is wrong
            run = StepRun(step, source_path)
            run.start(_safely("inputs", step, lambda: describer.inputs(arguments)))
            try:
                result = fn(*args, **kwargs)
            except BaseException as exc:
                run.inputs = _safely(
                    "inputs", step, functools.partial(describer.failed_inputs, arguments, exc)
                )
                run.fail(exc)
                raise
            done = _safely_pair(step, lambda: describer.completed(arguments, result))
            if done[0] is not None:
                run.inputs = done[0]
            run.complete(done[1])
            return result

        _resolve_annotations(wrapper, fn, signature)
        return cast(F, wrapper)

    return decorate


def _resolve_annotations(wrapper: Any, fn: Callable[..., Any], signature: inspect.Signature) -> None:
    """Give the wrapper ``fn``'s annotations as types, not strings: a flow validates its parameters with
    pydantic, which would resolve the strings in this module's namespace, where ``DeployParams`` is not."""
    import typing

    try:
        hints = typing.get_type_hints(fn)
    except Exception:  # a name only imported under TYPE_CHECKING: the strings stay (tasks do not validate)
        return
    wrapper.__annotations__ = hints
    wrapper.__signature__ = signature.replace(
        parameters=[
            p.replace(annotation=hints.get(p.name, p.annotation)) for p in signature.parameters.values()
        ],
        return_annotation=hints.get("return", signature.return_annotation),
    )


def read_events(path: Path) -> list[dict[str, Any]]:
    """The events of a file transport's log, oldest first (a torn last line is skipped)."""
    import json

    if not path.exists():
        return []
    events = []
    for line in path.read_text().splitlines():
        if line.strip():
            try:
                events.append(json.loads(line))
            except ValueError:
                continue
    return events
