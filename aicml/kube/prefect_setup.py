"""Bring a cluster's Prefect server to the platform's state in one call (`register_platform`).

What the platform needs on the server: the Kubernetes work pools with our base job templates, every
deployment of ``prefect.yaml`` on those pools, the ``training-slot`` task concurrency limit and the
crash automation. Each is read first and written only when it differs, so a second call changes
nothing (same ids, nothing re-created).

Deployments are registered by `prefect deploy` itself, from a copy of ``prefect.yaml`` that holds only
the cluster deployments with their image build and push steps left out: on a cluster the image is
already built and pushed (the ``image`` job variable names it). The parameter preset step
(``deployments.presets.preset``) and each deployment's own pull step stay as they are.

The server may run with API auth (``PREFECT_SERVER_API_AUTH_STRING``) and CSRF protection; the client
side sends ``PREFECT_API_AUTH_STRING``. The auth string is passed in, never printed or logged, and
scrubbed from any error text.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any, Literal, cast

import yaml

from aicml.errors import ConfigurationError, StackError
from aicml.stack.prefect_api import api_env, api_settings
from aicml.stack.presets import STEP as PRESET_STEP

Action = Literal["created", "updated", "unchanged"]
_DEPLOY_TIMEOUT_S = 900


@dataclass(frozen=True)
class Applied:
    """One object on the server and what this call did to it."""

    kind: str  # "work pool", "deployment", "concurrency limit", "automation"
    name: str
    id: str
    action: Action


@dataclass(frozen=True)
class SetupReport:
    """Everything `register_platform` brought to the platform's state, in the order it did it."""

    api_url: str
    applied: list[Applied] = field(default_factory=list)
    # Deployments on these pools that prefect.yaml does not declare: reported, left alone.
    unmanaged: list[str] = field(default_factory=list)

    @property
    def changed(self) -> bool:
        return any(a.action != "unchanged" for a in self.applied)

    def of(self, kind: str) -> dict[str, Applied]:
        return {a.name: a for a in self.applied if a.kind == kind}

    def lines(self) -> list[str]:
        lines = [f"{a.kind:<18} {a.name:<28} {a.action:<9} {a.id}" for a in self.applied]
        return lines + [
            f"{'deployment':<18} {name:<28} not in prefect.yaml, left alone" for name in self.unmanaged
        ]


def scrub(text: str, secret: str | None) -> str:
    """``text`` with every occurrence of ``secret`` (and its password half) replaced by ``***``."""
    if not secret:
        return text
    for part in sorted({secret, secret.partition(":")[2]}, key=len, reverse=True):
        if len(part) >= 4:
            text = text.replace(part, "***")
    return text


# --- prefect.yaml ---------------------------------------------------------------------------------------


def kubernetes_pools() -> tuple[str, ...]:
    """The Kubernetes work pools whose base job templates `deployments/` keeps."""
    from aicml.kube.pools import POOLS

    return tuple(POOLS)


def cluster_deployments(project_dir: Path, pools: Sequence[str] | None = None) -> list[dict[str, Any]]:
    """The prefect.yaml deployments on ``pools`` (default: every Kubernetes pool), ready for `prefect deploy`
    without an image build.

    Build steps other than the parameter preset are dropped and push steps removed; each keeps its own
    pull step (a cluster deployment without one would get the deploying machine's directory).
    """
    pools = kubernetes_pools() if pools is None else tuple(pools)
    config = yaml.safe_load((project_dir / "prefect.yaml").read_text()) or {}
    selected = []
    for item in config.get("deployments") or []:
        if (item.get("work_pool") or {}).get("name") not in pools:
            continue
        entry = {k: v for k, v in item.items() if k not in ("build", "push")}
        entry["build"] = [
            s for s in item.get("build") or [] if isinstance(s, dict) and PRESET_STEP in s
        ] or None
        entry["push"] = None
        if not item.get("pull"):
            raise ConfigurationError(
                f"prefect.yaml deployment {item.get('name')!r} on pool {item['work_pool']['name']!r} has no pull "
                "step of its own; a cluster deployment must name its working directory in the image."
            )
        selected.append(entry)
    missing = sorted(set(pools) - {d["work_pool"]["name"] for d in selected})
    if missing:
        raise ConfigurationError(f"prefect.yaml has no deployment on pool(s) {', '.join(missing)}.")
    return selected


def deployment_entries(project_dir: Path, pools: Sequence[str] | None = None) -> dict[str, dict[str, Any]]:
    """`cluster_deployments` keyed by ``flow-name/deployment-name``."""
    from aicml.stack.prefect_yaml import flow_name_of

    return {
        f"{flow_name_of(project_dir, e['entrypoint'])}/{e['name']}": e
        for e in cluster_deployments(project_dir, pools)
    }


def _schedule_key(spec: dict[str, Any]) -> tuple[Any, ...]:
    """A comparable form of one prefect.yaml schedule entry."""
    active = bool(spec.get("active", True))
    if "cron" in spec:
        return ("cron", spec["cron"], spec.get("timezone") or "UTC", active)
    if "interval" in spec:
        return ("interval", float(spec["interval"]), active)
    return ("rrule", spec.get("rrule"), active)


def _server_schedule_key(schedule: Any) -> tuple[Any, ...]:
    inner = schedule.schedule
    if hasattr(inner, "cron"):
        return ("cron", inner.cron, inner.timezone or "UTC", bool(schedule.active))
    if hasattr(inner, "interval"):
        return ("interval", inner.interval.total_seconds(), bool(schedule.active))
    return ("rrule", getattr(inner, "rrule", None), bool(schedule.active))


def _differences(entry: dict[str, Any], deployment: Any) -> list[str]:
    """The fields in which the registered ``deployment`` differs from prefect.yaml's ``entry``."""
    from prefect.utilities.templating import apply_values

    from aicml.stack.presets import deployment_params

    # `prefect deploy` resolves {{ $VAR }} first
    entry = cast(dict[str, Any], apply_values(entry, dict(os.environ), remove_notset=False))
    pool = entry["work_pool"]
    limit = entry.get("concurrency_limit")
    registered_limit = getattr(deployment.global_concurrency_limit, "limit", None)
    wanted: dict[str, tuple[Any, Any]] = {
        "entrypoint": (entry["entrypoint"], deployment.entrypoint),
        "work_pool": (pool["name"], deployment.work_pool_name),
        "job_variables": (pool.get("job_variables") or {}, deployment.job_variables or {}),
        "parameters": ({"params": deployment_params(entry)}, deployment.parameters),
        "pull_steps": (entry["pull"], deployment.pull_steps),
        "description": (entry.get("description"), deployment.description),
        "tags": (sorted(entry.get("tags") or []), sorted(deployment.tags or [])),
        "concurrency_limit": (limit if isinstance(limit, int) else registered_limit, registered_limit),
        "schedules": (
            sorted(map(_schedule_key, entry.get("schedules") or []), key=repr),
            sorted(map(_server_schedule_key, deployment.schedules or []), key=repr),
        ),
    }
    return [name for name, (want, have) in wanted.items() if want != have]


# --- the server -----------------------------------------------------------------------------------------


async def _apply_pools(client: Any, pools: Sequence[str]) -> list[Applied]:
    from prefect.client.schemas.actions import WorkPoolCreate, WorkPoolUpdate
    from prefect.exceptions import ObjectNotFound

    from aicml.kube.pools import base_job_template

    applied = []
    action: Action
    for name in pools:
        template = base_job_template(name)  # type: ignore[arg-type]
        try:
            pool = await client.read_work_pool(name)
        except ObjectNotFound:
            await client.create_work_pool(
                WorkPoolCreate(name=name, type="kubernetes", base_job_template=template)
            )
            pool, action = await client.read_work_pool(name), "created"
        else:
            if pool.type != "kubernetes":
                raise StackError(f"Work pool {name!r} exists with type {pool.type!r}, not 'kubernetes'.")
            action = "unchanged"
            if pool.base_job_template != template:
                await client.update_work_pool(name, WorkPoolUpdate(base_job_template=template))
                action = "updated"
        applied.append(Applied("work pool", name, str(pool.id), action))
    return applied


async def _stale_deployments(client: Any, named: dict[str, dict[str, Any]]) -> dict[str, Action]:
    """``flow/deployment`` -> "created" or "updated" for each entry the server lacks or holds differently."""
    from prefect.exceptions import ObjectNotFound

    stale: dict[str, Action] = {}
    for name, entry in named.items():
        try:
            deployment = await client.read_deployment_by_name(name)
        except ObjectNotFound:
            stale[name] = "created"
            continue
        if _differences(entry, deployment):
            stale[name] = "updated"
    return stale


def _prefect_deploy(
    api_url: str, auth_string: str | None, project_dir: Path, entries: list[dict[str, Any]]
) -> None:
    """Run `prefect --no-prompt deploy --all` on a prefect.yaml holding exactly ``entries``."""
    source = yaml.safe_load((project_dir / "prefect.yaml").read_text()) or {}
    document = {
        "name": source.get("name", project_dir.name),
        "prefect-version": source.get("prefect-version"),
        "build": None,
        "push": None,
        "pull": None,
        "deployments": entries,
    }
    prefect = Path(sys.executable).with_name("prefect")
    env = api_env(api_url, auth_string)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(project_dir.resolve()), env.get("PYTHONPATH")]))
    with tempfile.TemporaryDirectory(prefix="aic-cluster-deploy-") as tmp:
        prefect_file = Path(tmp) / "prefect.yaml"
        prefect_file.write_text(yaml.safe_dump(document, sort_keys=False))
        command = [str(prefect) if prefect.exists() else "prefect", "--no-prompt", "deploy", "--all"]
        done = subprocess.run(
            [*command, "--prefect-file", str(prefect_file)],
            cwd=project_dir,
            env=env,
            capture_output=True,
            text=True,
            timeout=_DEPLOY_TIMEOUT_S,
        )
    output = scrub(done.stdout + done.stderr, auth_string)
    if done.returncode != 0 or "will not be deployed" in output:
        raise StackError(
            f"`prefect deploy` of the cluster deployments failed ({done.returncode}):\n{output[-4000:]}"
        )


async def _unmanaged(client: Any, pools: Sequence[str], known: Sequence[str]) -> list[str]:
    from prefect.client.schemas.filters import WorkPoolFilter, WorkPoolFilterName

    pool_filter = WorkPoolFilter(name=WorkPoolFilterName(any_=list(pools)))
    flow_names: dict[Any, str] = {}
    names = []
    for deployment in await client.read_deployments(work_pool_filter=pool_filter):
        if deployment.flow_id not in flow_names:
            flow_names[deployment.flow_id] = (await client.read_flow(deployment.flow_id)).name
        names.append(f"{flow_names[deployment.flow_id]}/{deployment.name}")
    return sorted(set(names) - set(known))


async def _deployment_ids(client: Any, names: Sequence[str]) -> dict[str, str]:
    return {name: str((await client.read_deployment_by_name(name)).id) for name in names}


async def _concurrency_limit(client: Any, tag: str) -> Any:
    from prefect.exceptions import ObjectNotFound

    with contextlib.suppress(ObjectNotFound):
        return await client.read_concurrency_limit_by_tag(tag)
    return None


async def _crash_automations(client: Any) -> list[Any]:
    from aicml.stack.automations import CRASH_AUTOMATION

    return list(await client.read_automations_by_name(CRASH_AUTOMATION))


def _is_current_crash_automation(automation: Any) -> bool:
    from aicml.stack.automations import HEARTBEAT_SECONDS

    trigger, actions = automation.trigger, automation.actions
    return (
        bool(automation.enabled)
        and getattr(trigger, "posture", None) == "Proactive"
        and getattr(trigger, "within", None) == timedelta(seconds=3 * HEARTBEAT_SECONDS)
        and "prefect.flow-run.heartbeat" in (getattr(trigger, "after", None) or set())
        and [a.type for a in actions] == ["change-flow-run-state"]
    )


def with_client(coroutine_fn: Any, *args: Any) -> Any:
    """Run ``await coroutine_fn(client, *args)`` with a Prefect client of the current settings."""
    from prefect.client.orchestration import get_client

    async def main() -> Any:
        async with get_client() as client:
            return await coroutine_fn(client, *args)

    return asyncio.run(main())


def register_platform(
    api_url: str,
    *,
    auth_string: str | None = None,
    project_dir: Path,
    pools: Sequence[str] | None = None,
    limits: dict[str, int] | None = None,
    force: bool = False,
) -> SetupReport:
    """Bring the Prefect server at ``api_url`` to the platform's state; idempotent.

    Creates or updates the work pools ``pools`` (default: every pool `deployments/` keeps a base job
    template for; type kubernetes, our templates), registers every
    prefect.yaml deployment on them without building an image (only those missing or different, all with
    ``force``), sets the task concurrency limits (default ``training-slot``) and the crash automation.
    """
    from aicml.stack.automations import CRASH_AUTOMATION, ensure_crash_automation
    from aicml.stack.limits import DEFAULT_LIMITS, ensure_concurrency_limits

    pools = kubernetes_pools() if pools is None else tuple(pools)
    report = SetupReport(api_url)
    with api_settings(api_url, auth_string):
        report.applied.extend(with_client(_apply_pools, list(pools)))

        named = deployment_entries(project_dir, pools)
        stale: dict[str, Action] = with_client(_stale_deployments, named)
        if force:
            stale = {**dict.fromkeys(named, "updated"), **stale}
        if stale:
            _prefect_deploy(api_url, auth_string, project_dir, [named[n] for n in named if n in stale])
        for name, deployment_id in with_client(_deployment_ids, list(named)).items():
            report.applied.append(Applied("deployment", name, deployment_id, stale.get(name, "unchanged")))
        report.unmanaged.extend(with_client(_unmanaged, pools, list(named)))

        for tag, limit in (limits or DEFAULT_LIMITS).items():
            before = with_client(_concurrency_limit, tag)
            if before is None or before.concurrency_limit != limit:
                ensure_concurrency_limits(api_url, {tag: limit})
            after = with_client(_concurrency_limit, tag)
            action: Action = "created" if before is None else "unchanged"
            if before is not None and before.concurrency_limit != limit:
                action = "updated"
            report.applied.append(Applied("concurrency limit", tag, str(after.id), action))

        existing = with_client(_crash_automations)
        if len(existing) == 1 and _is_current_crash_automation(existing[0]):
            report.applied.append(Applied("automation", CRASH_AUTOMATION, str(existing[0].id), "unchanged"))
        else:
            for stale_automation in existing[1:]:  # duplicates from an earlier race; the helper replaces one
                with_client(_delete_automation, stale_automation.id)
            created = ensure_crash_automation()
            report.applied.append(
                Applied("automation", CRASH_AUTOMATION, str(created), "updated" if existing else "created")
            )
    return report


async def _delete_automation(client: Any, automation_id: Any) -> None:
    await client.delete_automation(automation_id)
