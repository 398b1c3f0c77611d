"""A flow run of a Kubernetes-pool deployment, taken the way a Kubernetes worker takes it, for the rehearsal.

`take_flow_run` creates a run of a deployment already in state Pending (what a worker proposes when it
takes a scheduled run, so a worker polling the pool leaves it alone) and renders its Job manifest with
prefect-kubernetes' own code, as the worker would: the pool's base job template read from the server,
the deployment's and the run's job variables merged over it, then
``KubernetesWorkerJobConfiguration.from_template_and_values`` and ``prepare_for_flow_run`` (which add
``PREFECT__FLOW_RUN_ID``, ``PREFECT_API_URL``, the ``prefect flow-run execute`` command and the labels).
The rehearsal starts the pod spec as a container; `strip_gpu` takes a GPU Job down to what a machine
without a GPU can start and says what it removed; `wait_for_final_state` follows the run to its end.

The manifest never holds the API auth string: a worker passes every Prefect setting set in its own
process to the Job as a literal env value, so this renders as a worker whose settings hold only
``PREFECT_API_URL`` (the address the pod uses; the caller's other settings are dropped and named in
``RenderedJob.dropped_env``), and the pod's credentials come from the base job template (a Secret
reference). Measured with prefect 3.9.1 / prefect-kubernetes 0.8.0: a worker that has
``PREFECT_API_AUTH_STRING`` in its environment writes it into every Job literally, in place of the
template's ``secretKeyRef`` entry of the same name.
"""

from __future__ import annotations

import asyncio
import copy
import json
import re
import time
from dataclasses import dataclass, field
from typing import Any
from uuid import UUID

from aicml.kube.prefect_setup import api_settings, with_client

GPU_RESOURCE = re.compile(r"(^|/)gpu$|\.com/gpu$", re.I)
GPU_WORDS = re.compile(r"gpu|accelerator|nvidia", re.I)
_FINAL_POLL_S = 2.0


@dataclass(frozen=True)
class RenderedJob:
    """The Job a Kubernetes worker would submit for one flow run."""

    flow_run_id: UUID
    deployment: str  # flow-name/deployment-name
    pool: str
    manifest: dict[str, Any]
    # Prefect settings of the rendering process that a worker here would have passed on (names only).
    dropped_env: tuple[str, ...] = ()

    @property
    def pod_spec(self) -> dict[str, Any]:
        spec: dict[str, Any] = self.manifest["spec"]["template"]["spec"]
        return spec

    @property
    def pod_labels(self) -> dict[str, str]:
        labels: dict[str, str] = self.manifest["spec"]["template"].get("metadata", {}).get("labels", {})
        return labels

    @property
    def container(self) -> dict[str, Any]:
        """The flow-run container (prefect-kubernetes runs the flow in the first one)."""
        container: dict[str, Any] = self.pod_spec["containers"][0]
        return container

    def env(self) -> dict[str, Any]:
        """The container's env by name: the literal value, or the ``valueFrom`` reference."""
        return {e["name"]: e.get("value", e.get("valueFrom")) for e in self.container.get("env") or []}


@dataclass(frozen=True)
class GpuRemoval:
    """What `strip_gpu` took out of a Job so that it starts on a machine without a GPU."""

    resources: list[str] = field(default_factory=list)  # "container/requests/nvidia.com/gpu=1"
    node_selector: dict[str, str] = field(default_factory=dict)
    tolerations: list[dict[str, Any]] = field(default_factory=list)
    node_affinity: dict[str, Any] | None = None

    def __bool__(self) -> bool:
        return bool(self.resources or self.node_selector or self.tolerations or self.node_affinity)

    def lines(self) -> list[str]:
        out = [f"removed GPU resource {r}" for r in self.resources]
        out += [f"removed nodeSelector {k}={v}" for k, v in self.node_selector.items()]
        out += [f"removed toleration {json.dumps(t, sort_keys=True)}" for t in self.tolerations]
        if self.node_affinity:
            out.append("removed GPU nodeAffinity")
        return out


def strip_gpu(manifest: dict[str, Any]) -> tuple[dict[str, Any], GpuRemoval]:
    """A copy of ``manifest`` without GPU requests/limits, GPU node selectors, tolerations and node affinity."""
    job = copy.deepcopy(manifest)
    pod = job["spec"]["template"]["spec"]
    resources: list[str] = []
    for container in [*pod.get("initContainers", []), *pod.get("containers", [])]:
        for kind in ("requests", "limits"):
            amounts = (container.get("resources") or {}).get(kind) or {}
            for name in [n for n in amounts if GPU_RESOURCE.search(n)]:
                resources.append(f"{container.get('name', '?')}/{kind}/{name}={amounts.pop(name)}")
    selector = pod.get("nodeSelector") or {}
    removed_selector = {k: v for k, v in selector.items() if GPU_WORDS.search(f"{k}={v}")}
    for key in removed_selector:
        del selector[key]
    if "nodeSelector" in pod and not selector:
        del pod["nodeSelector"]
    tolerations = pod.get("tolerations") or []
    removed_tolerations = [t for t in tolerations if GPU_WORDS.search(str(t.get("key", "")))]
    pod["tolerations"] = [t for t in tolerations if t not in removed_tolerations]
    if not pod["tolerations"]:
        del pod["tolerations"]
    affinity = pod.get("affinity") or {}
    node_affinity = affinity.get("nodeAffinity")
    removed_affinity = None
    if node_affinity and GPU_WORDS.search(json.dumps(node_affinity)):
        removed_affinity = affinity.pop("nodeAffinity")
        if not affinity:
            del pod["affinity"]
    return job, GpuRemoval(resources, removed_selector, removed_tolerations, removed_affinity)


# --- through the Prefect API ----------------------------------------------------------------------------


def _env_names(env: Any) -> set[str]:
    if isinstance(env, dict):
        return set(env)
    return {e["name"] for e in env or [] if isinstance(e, dict) and "name" in e}


async def _render(client: Any, flow_run: Any, pod_api_url: str) -> RenderedJob:
    """Render ``flow_run``'s Job the way prefect-kubernetes' worker does (`BaseJobConfiguration`)."""
    from prefect.settings import get_current_settings
    from prefect_kubernetes.worker import KubernetesWorkerJobConfiguration

    if flow_run.deployment_id is None:
        raise ValueError(f"Flow run {flow_run.id} has no deployment; only deployment runs go to a work pool.")
    deployment = await client.read_deployment(flow_run.deployment_id)
    flow = await client.read_flow(flow_run.flow_id)
    pool = await client.read_work_pool(deployment.work_pool_name)
    if pool.type != "kubernetes":
        raise ValueError(
            f"Deployment {flow.name}/{deployment.name} is on pool {pool.name!r} of type {pool.type!r}."
        )
    # The worker's merge: deployment job variables, the run's over them (env merged key by key).
    values = copy.deepcopy(deployment.job_variables or {})
    run_values = copy.deepcopy(flow_run.job_variables or {})
    if isinstance(values.get("env"), dict):
        values["env"].update(run_values.pop("env", {}))
    values.update(run_values)
    with api_settings(pod_api_url, None):
        config = await KubernetesWorkerJobConfiguration.from_template_and_values(
            pool.base_job_template, values, client=client
        )
        configured = _env_names(config.env)
        leaked = get_current_settings().to_environment_variables(exclude_unset=True)
        config.prepare_for_flow_run(flow_run=flow_run, deployment=deployment, flow=flow, work_pool=pool)
    manifest: dict[str, Any] = config.job_manifest
    container = manifest["spec"]["template"]["spec"]["containers"][0]
    dropped = []
    kept = []
    for entry in container.get("env") or []:
        name = entry.get("name")
        if (
            name in leaked
            and name != "PREFECT_API_URL"
            and name not in configured
            and entry.get("value") == leaked[name]
        ):
            dropped.append(name)
        else:
            kept.append(entry)
    container["env"] = kept
    return RenderedJob(
        flow_run.id, f"{flow.name}/{deployment.name}", pool.name, manifest, tuple(sorted(dropped))
    )


def _client_call(api_url: str, auth_string: str | None, fn: Any, *args: Any) -> Any:
    """Run ``fn(client, *args)`` with a client of the server at ``api_url``."""
    with api_settings(api_url, auth_string):
        return with_client(fn, *args)


async def _take(
    client: Any,
    deployment_name: str,
    parameters: dict[str, Any] | None,
    job_variables: dict[str, Any] | None,
    pod_api_url: str,
) -> RenderedJob:
    from prefect.states import Pending

    deployment = await client.read_deployment_by_name(deployment_name)
    flow_run = await client.create_flow_run_from_deployment(
        deployment.id, parameters=parameters, job_variables=job_variables, state=Pending()
    )
    return await _render(client, flow_run, pod_api_url)


def take_flow_run(
    api_url: str,
    deployment_name: str,
    *,
    auth_string: str | None = None,
    parameters: dict[str, Any] | None = None,
    job_variables: dict[str, Any] | None = None,
    pod_api_url: str | None = None,
) -> RenderedJob:
    """Create a Pending run of ``deployment_name`` (``flow/deployment``) and render its Job manifest.

    ``parameters`` override the deployment's, ``job_variables`` the deployment's job variables (as
    ``prefect deployment run --job-variable`` would); ``pod_api_url`` is the Prefect API address as the
    pod sees it (default ``api_url``).
    """
    return _client_call(  # type: ignore[no-any-return]
        api_url, auth_string, _take, deployment_name, parameters, job_variables, pod_api_url or api_url
    )


async def _render_existing(client: Any, flow_run_id: UUID, pod_api_url: str) -> RenderedJob:
    return await _render(client, await client.read_flow_run(flow_run_id), pod_api_url)


def render_flow_run_job(
    api_url: str, flow_run_id: UUID | str, *, auth_string: str | None = None, pod_api_url: str | None = None
) -> RenderedJob:
    """The Job manifest of an existing deployment run, rendered as `take_flow_run` renders it."""
    return _client_call(  # type: ignore[no-any-return]
        api_url, auth_string, _render_existing, UUID(str(flow_run_id)), pod_api_url or api_url
    )


def wait_for_final_state(
    api_url: str,
    flow_run_id: UUID | str,
    *,
    auth_string: str | None = None,
    timeout: float = 900.0,
    poll: float = _FINAL_POLL_S,
) -> Any:
    """Poll the API until the flow run is in a final state; return the flow run (raise TimeoutError)."""

    async def wait(client: Any, run_id: UUID) -> Any:
        deadline = time.monotonic() + timeout
        while True:
            flow_run = await client.read_flow_run(run_id)
            if flow_run.state is not None and flow_run.state.is_final():
                return flow_run
            if time.monotonic() >= deadline:
                state = flow_run.state.name if flow_run.state else "no state"
                raise TimeoutError(f"Flow run {run_id} is still {state} after {timeout:.0f}s.")
            await asyncio.sleep(poll)

    return _client_call(api_url, auth_string, wait, UUID(str(flow_run_id)))


def report_exit(
    api_url: str, flow_run_id: UUID | str, exit_code: int, *, auth_string: str | None = None
) -> str:
    """What the worker does when the Job's container ends: a non-zero exit proposes Crashed; the run's state name.

    A run already in a final state keeps it (the server refuses to leave a final state), as with a worker.
    """

    async def report(client: Any, run_id: UUID) -> str:
        from prefect.states import Crashed

        if exit_code != 0:
            message = f"Flow run infrastructure exited with non-zero status code {exit_code}."
            await client.set_flow_run_state(run_id, Crashed(message=message))
        flow_run = await client.read_flow_run(run_id)
        return str(flow_run.state.name) if flow_run.state else "no state"

    return _client_call(api_url, auth_string, report, UUID(str(flow_run_id)))  # type: ignore[no-any-return]
