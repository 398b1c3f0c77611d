"""Where the running code comes from and runs in: git commit, image, Prefect flow and task run.

Read once per process (the commit) or at the call (the Prefect context); nothing here raises: a fact that
cannot be found is None.
"""

from __future__ import annotations

import functools
import os
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aicml

# The repository this package was loaded from (the worker runs a checkout on the local stack).
PACKAGE_ROOT = Path(aicml.__file__).resolve().parent.parent


@dataclass(frozen=True)
class CodeVersion:
    """The code that ran: commit (``AIC_GIT_COMMIT`` in an image, else ``git`` in the checkout), whether the
    checkout had uncommitted changes, the repository URL, and the image it is built into."""

    commit: str | None
    dirty: bool | None
    repo_url: str | None
    image: str

    def as_tags(self) -> dict[str, str]:
        tags = {"aicml.lineage.image": self.image}
        if self.commit:
            tags["aicml.lineage.git_commit"] = self.commit
        if self.dirty is not None:
            tags["aicml.lineage.git_dirty"] = str(self.dirty).lower()
        if self.repo_url:
            tags["aicml.lineage.git_repo"] = self.repo_url
        return tags


def _git(*args: str) -> str | None:
    try:
        done = subprocess.run(
            ["git", "-C", str(PACKAGE_ROOT), *args], capture_output=True, text=True, timeout=10, check=False
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return done.stdout.strip() if done.returncode == 0 else None


@functools.lru_cache(maxsize=1)
def code_version() -> CodeVersion:
    """The commit and image of this process's code (cached: it does not change while a process runs)."""
    commit = os.environ.get("AIC_GIT_COMMIT") or None
    dirty: bool | None = None
    repo = os.environ.get("AIC_GIT_REPO") or None
    if commit is None and (PACKAGE_ROOT / ".git").exists():
        commit = _git("rev-parse", "HEAD")
        if commit is not None:
            status = _git("status", "--porcelain", "--untracked-files=no")
            dirty = None if status is None else bool(status)
        repo = repo or _git("config", "--get", "remote.origin.url") or f"file://{PACKAGE_ROOT}"
    return CodeVersion(commit=commit, dirty=dirty, repo_url=_public_url(repo), image=aicml.IMAGE)


def _public_url(url: str | None) -> str | None:
    """A repository URL as a URI without credentials: ``https://user:token@host/...`` keeps only the host,
    a clone from a local path becomes ``file:///...`` and scp-like ``git@host:org/repo`` ``ssh://git@host/...``
    (OpenLineage's source-code facet needs a URI; a user name is never a secret)."""
    if not url:
        return url
    if "://" not in url:
        head, sep, tail = url.partition(":")
        if sep and "/" not in head and not Path(url).exists():
            return f"ssh://{head}/{tail.lstrip('/')}"
        return Path(url).resolve().as_uri()
    scheme, rest = url.split("://", 1)
    authority, _, path = rest.partition("/")
    return f"{scheme}://{authority.rsplit('@', 1)[-1]}/{path}"


@dataclass(frozen=True)
class PrefectContext:
    """The Prefect flow run and task run this code runs in (all None outside Prefect)."""

    flow_name: str | None = None
    flow_run_id: str | None = None
    flow_run_url: str | None = None
    task_run_id: str | None = None
    deployment: str | None = None


def prefect_context() -> PrefectContext:
    """The current flow run, task run and deployment; an empty context outside a run or without Prefect."""
    try:
        from prefect.context import FlowRunContext, TaskRunContext
    except ImportError:  # pragma: no cover - Prefect is a dependency
        return PrefectContext()
    flow_ctx = FlowRunContext.get()
    task_ctx = TaskRunContext.get()
    flow_run = getattr(flow_ctx, "flow_run", None)
    flow_run_id = str(flow_run.id) if flow_run is not None else None
    if flow_run_id is None and task_ctx is not None and task_ctx.task_run.flow_run_id is not None:
        flow_run_id = str(task_ctx.task_run.flow_run_id)
    flow = getattr(flow_ctx, "flow", None)
    return PrefectContext(
        flow_name=getattr(flow, "name", None),
        flow_run_id=flow_run_id,
        flow_run_url=_flow_run_url(flow_run_id),
        task_run_id=str(task_ctx.task_run.id) if task_ctx is not None else None,
        deployment=_deployment_name(flow_run),
    )


def _flow_run_url(flow_run_id: str | None) -> str | None:
    if flow_run_id is None:
        return None
    try:
        from prefect.settings import get_current_settings

        base = get_current_settings().ui_url
    except Exception:
        return None
    return f"{str(base).rstrip('/')}/runs/flow-run/{flow_run_id}" if base else None


# Deployment id -> name: Prefect's runtime reads the flow run back from the API at every ask when the run has
# no deployment, and the deployment at every ask when it has one (17 asks, 0.58 s of a pipeline run).
_deployment_names: dict[str, str | None] = {}


def _deployment_name(flow_run: Any = None) -> str | None:
    """The deployment of ``flow_run`` (the context's flow run; None: ask Prefect's runtime)."""
    deployment_id = getattr(flow_run, "deployment_id", None)
    if flow_run is not None and deployment_id is None:
        return None  # a flow called directly: its run was created without a deployment
    if deployment_id is not None and str(deployment_id) in _deployment_names:
        return _deployment_names[str(deployment_id)]
    try:
        from prefect.runtime import deployment

        name = deployment.name
    except Exception:
        return None
    found = str(name) if name else None
    if deployment_id is not None and len(_deployment_names) < 1_000:
        _deployment_names[str(deployment_id)] = found
    return found
