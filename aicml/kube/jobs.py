"""`aicml plan`: render the final Kubernetes Job of every deployment and lint it before anything runs.

The Job is the pool's base job template merged with the deployment's job variables, rendered by
prefect-kubernetes's own job-configuration code, then checked against rules a reviewer would apply (the
secret names and credential URLs are those of `aicml.kube.policy`).
A finding is a `Violation` whose ``ref`` is the deployment (``flow/deployment``).
"""

from __future__ import annotations

import asyncio
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from aicml.kube.findings import Violation
from aicml.kube.policy import GPU_RESOURCE as GPU
from aicml.kube.policy import SECRET_ENV_NAME, URL_CREDENTIAL
from aicml.kube.pools import POOLS, base_job_template, unreferenced_variables


def render_job(template: dict[str, Any], job_variables: dict[str, Any]) -> dict[str, Any]:
    """The Job manifest a Kubernetes worker would submit for these job variables."""
    from prefect.client.schemas.objects import FlowRun
    from prefect_kubernetes.worker import KubernetesWorkerJobConfiguration

    config = asyncio.run(KubernetesWorkerJobConfiguration.from_template_and_values(template, job_variables))
    config.prepare_for_flow_run(FlowRun(flow_id=uuid.uuid4(), name="aicml-plan"))
    manifest: dict[str, Any] = config.job_manifest
    return manifest


def lint_job(name: str, manifest: dict[str, Any], template: dict[str, Any] | None = None) -> list[Violation]:
    """Every rule that ``manifest`` (and the template it came from) breaks."""
    findings: list[Violation] = []

    def flag(rule: str, detail: str) -> None:
        findings.append(Violation(rule, name, detail))

    if template is not None:
        for variable in sorted(unreferenced_variables(template)):
            flag(
                "unreferenced-variable", f"template variable {variable!r} is never used in job_configuration"
            )
    pod = manifest.get("spec", {}).get("template", {}).get("spec", {})
    containers = [*pod.get("initContainers", []), *pod.get("containers", [])]
    wants_gpu = False
    for container in containers:
        cname = container.get("name", "?")
        image = str(container.get("image", ""))
        tag = image.rsplit("/", 1)[-1]
        if "@sha256:" not in image and (":" not in tag or tag.endswith(":latest")):
            flag("latest-image", f"container {cname!r} uses {image!r}: pin a version tag or digest")
        resources = container.get("resources") or {}
        requests, limits = resources.get("requests") or {}, resources.get("limits") or {}
        for kind in ("cpu", "memory"):
            if kind not in limits:
                flag("missing-limits", f"container {cname!r} has no {kind} limit")
        if GPU in requests or GPU in limits:
            wants_gpu = True
            if str(requests.get(GPU)) != str(limits.get(GPU)):
                flag(
                    "gpu-requests-limits",
                    f"container {cname!r} requests {requests.get(GPU)} GPU but limits {limits.get(GPU)}",
                )
        for env in container.get("env") or []:
            value = env.get("value")
            if value is None:
                continue
            if SECRET_ENV_NAME.search(str(env.get("name", ""))) or URL_CREDENTIAL.search(str(value)):
                flag(
                    "secret-in-env",
                    f"container {cname!r} env {env.get('name')!r} holds a literal secret; use valueFrom.secretKeyRef",
                )
    if wants_gpu:
        tolerations = pod.get("tolerations") or []
        if not any(t.get("key") == GPU for t in tolerations):
            flag("gpu-toleration", f"requests {GPU} without a toleration for {GPU}")
        if not pod.get("nodeSelector") and not pod.get("affinity"):
            flag("gpu-node-selector", f"requests {GPU} without a node selector or affinity")
    return findings


@dataclass(frozen=True)
class PlannedJob:
    deployment: str
    pool: str
    manifest: dict[str, Any]
    findings: list[Violation]


def plan(project_dir: Path) -> list[PlannedJob]:
    """Render and lint the Job of every deployment of prefect.yaml that runs on a Kubernetes pool."""
    from aicml.stack.prefect_yaml import flow_name_of

    config = yaml.safe_load((project_dir / "prefect.yaml").read_text())
    planned = []
    for item in config.get("deployments", []):
        pool = item.get("work_pool", {}).get("name")
        if pool not in POOLS:
            continue
        name = f"{flow_name_of(project_dir, item['entrypoint'])}/{item['name']}"
        template = base_job_template(pool)
        manifest = render_job(template, dict(item["work_pool"].get("job_variables") or {}))
        planned.append(PlannedJob(name, pool, manifest, lint_job(name, manifest, template)))
    return planned
