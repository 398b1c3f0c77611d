"""MLflow kinds: runs (soft delete, then purge: artifacts through the artifact repository, then the run) and
registered model versions. The only module of the retention engine that imports mlflow."""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from aicml.compat import Fence
from aicml.retention.engine import Item
from aicml.retention.policy import Kind

log = logging.getLogger(__name__)

DELETED_AT_TAG = "aicml.retention.deleted_at"
# The run tables of these MLflow versions are what `_hard_delete_run` was read against (see hard_delete_run).
HARD_DELETE = Fence("mlflow", ">=3.17,<3.18")


def _ms(value: int | None) -> datetime:
    return datetime.fromtimestamp((value or 0) / 1000, UTC)


def _missing(exc: Exception) -> bool:
    return getattr(exc, "error_code", "") == "RESOURCE_DOES_NOT_EXIST"


def _pages(fetch: Callable[..., Any], *args: Any, **kwargs: Any) -> Iterator[Any]:
    """Every item of a paged MLflow search."""
    token: str | None = None
    while True:
        page = fetch(*args, max_results=1000, page_token=token, **kwargs)
        yield from page
        token = getattr(page, "token", None)
        if not token:
            return


def version_runs(client: Any) -> dict[str, str]:
    """run id -> "name/version" of every registered model version that came from a run."""
    found: dict[str, str] = {}
    for version in _pages(client.search_model_versions):
        if version.run_id:
            found.setdefault(version.run_id, f"{version.name}/{version.version}")
    return found


def hard_delete_run(backend_store_uri: str, run_id: str) -> bool:
    """Delete a soft-deleted run's rows from MLflow's backend store (what `mlflow gc` does for one run,
    without gc's sweep over every deleted experiment and logged model). MLflow has no public API for it:
    this calls the store's ``_hard_delete_run``, fenced to the MLflow versions it was read against; outside
    the fence (or on a store without it) it does nothing and returns False (the run stays soft-deleted)."""
    patch = "mlflow tracking store _hard_delete_run"
    if not HARD_DELETE.admits(patch):
        return False
    store = _store(backend_store_uri)
    delete = getattr(store, "_hard_delete_run", None)
    if delete is None:
        log.warning(
            "%s: %s has no _hard_delete_run; run %s stays soft-deleted", patch, type(store).__name__, run_id
        )
        return False
    try:
        delete(run_id)
    except Exception as exc:
        if not _missing(exc):
            raise
    return True


@functools.cache
def _store(backend_store_uri: str) -> Any:
    """One store per backend in a process (opening one checks the schema: seconds)."""
    if backend_store_uri.startswith(("sqlite:", "postgresql", "mysql", "mssql")):
        from mlflow.store.tracking.sqlalchemy_store import SqlAlchemyStore

        return SqlAlchemyStore(backend_store_uri, None)
    from mlflow.store.tracking.file_store import FileStore

    return FileStore(backend_store_uri.removeprefix("file://"))


def logged_model_id(version: Any) -> str:
    """The id of the logged model (MLflow 3's ``m-...``) a version was registered from: its ``model_id``, or
    read off its ``models:/m-...`` source (the registry leaves ``model_id`` empty); empty for older sources."""
    import re

    if getattr(version, "model_id", None):
        return str(version.model_id)
    match = re.fullmatch(r"models:/(m-[0-9a-f]+)/?", str(getattr(version, "source", "") or ""))
    return match.group(1) if match else ""


@dataclass
class ModelVersions:
    """Registered model versions, grouped by model. Kept whatever the rule: a version an alias points at,
    and the newest ``min_versions`` of its model."""

    client: Any
    min_versions: int
    hold_tag: str
    models: tuple[str, ...] | None = None  # only these registered models (None: all)
    kind: Kind = "model_versions"
    # (model, logged model id) -> the versions backed by it, as items() last saw them: deleting a version
    # takes it out, so the last one of several to go takes the logged model with it.
    _backing: dict[tuple[str, str], set[str]] = field(default_factory=dict, init=False, repr=False)

    def items(self, now: datetime) -> list[Item]:
        found: list[Item] = []
        self._backing.clear()
        for model in _pages(self.client.search_registered_models):
            if self.models is not None and model.name not in self.models:
                continue
            aliases: dict[str, list[str]] = {}
            for alias, version in (getattr(model, "aliases", None) or {}).items():
                aliases.setdefault(str(version), []).append(alias)
            model_held = self.hold_tag in (model.tags or {})
            versions = sorted(
                _pages(
                    self.client.search_model_versions, "name = '{}'".format(model.name.replace("'", "\\'"))
                ),
                key=lambda v: int(v.version),
                reverse=True,
            )
            for position, version in enumerate(versions):
                number = str(version.version)
                if model_id := logged_model_id(version):
                    self._backing.setdefault((model.name, model_id), set()).add(number)
                protected = None
                if number in aliases:
                    protected = f"alias {', '.join('@' + a for a in sorted(aliases[number]))} points at it"
                elif position < self.min_versions:
                    protected = f"one of the newest {self.min_versions} versions of {model.name}"
                found.append(
                    Item(
                        kind=self.kind, id=f"{model.name}/{number}", group=model.name,
                        created=_ms(version.creation_timestamp), location=str(version.source or ""),
                        refs=frozenset({f"models:/{model.name}/{number}", f"{model.name}/{number}"}),
                        protected=protected, held=model_held or self.hold_tag in (version.tags or {}),
                        handle=(model.name, number, logged_model_id(version)),
                    )
                )  # fmt: skip
        return found

    def delete(self, item: Item, step: Callable[[str], None]) -> None:
        """The version's logged model (MLflow 3's ``models/m-...``: artifacts, then the model) when no other
        version of its registered model is backed by it, then the version. Killed in between, the version is
        still listed and the next run finishes the job."""
        name, version, model_id = item.handle
        if model_id and not self._shared(name, version, model_id):
            self._delete_logged_model(model_id)
        step("logged-model-deleted")
        try:
            self.client.delete_model_version(name, version)
        except Exception as exc:
            if not _missing(exc):
                raise
        self._backing.get((name, model_id), set()).discard(version)

    def _shared(self, name: str, version: str, model_id: str) -> bool:
        backing = self._backing.get((name, model_id))
        if backing is not None and version in backing:
            return bool(backing - {version})
        others = _pages(self.client.search_model_versions, "name = '{}'".format(name.replace("'", "\\'")))
        return any(logged_model_id(v) == model_id and str(v.version) != version for v in others)

    def _delete_logged_model(self, model_id: str) -> None:
        from mlflow.store.artifact.artifact_repository_registry import get_artifact_repository

        try:
            logged = self.client.get_logged_model(model_id)
        except Exception as exc:
            if _missing(exc):
                return  # deleted by an earlier, interrupted run
            raise
        if logged.artifact_location:
            get_artifact_repository(str(logged.artifact_location)).delete_artifacts()
        try:
            self.client.delete_logged_model(model_id)
        except Exception as exc:
            if not _missing(exc):
                raise


@dataclass
class MlflowRuns:
    """Runs of every active experiment, grouped by experiment. A run that backs a registered model version,
    or is still running, is kept. An old run is soft-deleted (tagged with when, then deleted: restorable
    with `mlflow runs restore`); a run soft-deleted ``purge_after_days`` ago is purged: its artifacts
    through its artifact repository (local, mlflow-artifacts proxy, S3...), then its rows."""

    client: Any
    backend_store_uri: str | None
    purge_after_days: float
    hold_tag: str
    experiments: tuple[str, ...] | None = None  # only these experiments, by name (None: all active)
    kind: Kind = "mlflow_runs"
    backing: dict[str, str] = field(default_factory=dict)

    def items(self, now: datetime) -> list[Item]:
        from mlflow.entities import ViewType

        self.backing = version_runs(self.client)
        experiments = list(_pages(self.client.search_experiments))
        found: list[Item] = []
        for experiment in experiments:
            if self.experiments is not None and experiment.name not in self.experiments:
                continue
            runs = _pages(self.client.search_runs, [experiment.experiment_id], run_view_type=ViewType.ALL)
            for run in runs:
                info, tags = run.info, run.data.tags
                deleted = info.lifecycle_stage == "deleted"
                protected = None
                if info.run_id in self.backing:
                    protected = f"backs model version {self.backing[info.run_id]}"
                elif info.status == "RUNNING" and not deleted:
                    protected = "still running"
                created = _ms(info.end_time or info.start_time)
                deleted_at = None
                if deleted:
                    try:
                        deleted_at = datetime.fromisoformat(tags[DELETED_AT_TAG])
                    except (KeyError, ValueError):
                        deleted_at = created  # soft-deleted by someone else: counted from its end
                found.append(
                    Item(
                        kind=self.kind, id=info.run_id, group=f"experiment {experiment.name}",
                        created=created, location=str(info.artifact_uri or ""),
                        refs=frozenset({info.run_id, f"runs:/{info.run_id}"}), protected=protected,
                        held=self.hold_tag in tags, action="purge" if deleted else "soft-delete",
                        ranked=not deleted, age_from=deleted_at,
                        age_days=self.purge_after_days if deleted else None, handle=info.artifact_uri,
                    )
                )  # fmt: skip
        return found

    def delete(self, item: Item, step: Callable[[str], None]) -> None:
        if item.action == "soft-delete":
            try:
                self.client.set_tag(item.id, DELETED_AT_TAG, datetime.now(UTC).isoformat())
                step("marked")
                self.client.delete_run(item.id)
            except Exception as exc:
                if not _missing(exc):
                    raise
            return
        if self.backend_store_uri is None:
            raise RuntimeError(
                "no MLflow backend store URI to purge from (set AIC_DATABASE_URL, or run where the stack's "
                "home holds mlflow.db); the run stays soft-deleted"
            )
        from mlflow.store.artifact.artifact_repository_registry import get_artifact_repository

        if item.handle:
            get_artifact_repository(str(item.handle)).delete_artifacts()
        step("artifacts-deleted")
        if not hard_delete_run(self.backend_store_uri, item.id):
            raise RuntimeError("artifacts deleted; the run's rows could not be deleted (see warnings)")


def client_for(tracking_uri: str | None, registry_uri: str | None = None) -> Any:
    from mlflow import MlflowClient

    return MlflowClient(tracking_uri=tracking_uri, registry_uri=registry_uri or tracking_uri)
