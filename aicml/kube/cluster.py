"""`aicml k8s apply` and `verify`: the platform's deploy and verify steps against a live cluster, through kubectl.

The pure parts (which Secrets are missing, what a rollout status means) are separate functions so they
can be tested without a cluster; everything that calls kubectl needs one.
"""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import yaml

from aicml.kube.errors import KubeError
from aicml.kube.render import NAMESPACE, KubeObject, kubectl_binary
from aicml.kube.secrets import SECRET_SPECS, SecretSpec, resolve_values, secret_manifests

FIELD_MANAGER = "aicml"


def kubectl(args: Sequence[str], *, stdin: str | None = None, context: str | None = None) -> str:
    command = [kubectl_binary(), *(["--context", context] if context else []), *args]
    completed = subprocess.run(command, input=stdin, capture_output=True, text=True, check=False)
    if completed.returncode != 0:
        # stdin may hold Secret values: never echo it, only kubectl's own message.
        raise KubeError(f"`kubectl {' '.join(args)}` failed: {completed.stderr.strip()}")
    return completed.stdout


def missing_secrets(existing: set[str], specs: Sequence[SecretSpec] = SECRET_SPECS) -> list[SecretSpec]:
    return [spec for spec in specs if spec.name not in existing]


def ensure_secrets(
    context: str | None = None, environ: Mapping[str, str] | None = None, namespace: str = NAMESPACE
) -> list[str]:
    """Create the declared Secrets that do not exist yet; return their names. Existing ones are kept."""
    listed = json.loads(kubectl(["get", "secrets", "-n", namespace, "-o", "json"], context=context))
    existing = {str(item["metadata"]["name"]) for item in listed.get("items", [])}
    missing = missing_secrets(existing)
    if not missing:
        return []
    values = resolve_values(missing, os.environ if environ is None else environ)
    manifests = secret_manifests(values, namespace)
    kubectl(["create", "-f", "-"], stdin=yaml.safe_dump_all(manifests), context=context)
    return [spec.name for spec in missing]


def apply_manifest(manifest: str, objects: list[KubeObject], context: str | None = None) -> str:
    """Server-side apply: the namespace first (Secrets need it), then Secrets, then everything else."""
    namespaces = [obj for obj in objects if obj.get("kind") == "Namespace"]
    output = ""
    if namespaces:
        output += kubectl(
            ["apply", "--server-side", f"--field-manager={FIELD_MANAGER}", "-f", "-"],
            stdin=yaml.safe_dump_all(namespaces),
            context=context,
        )
    created = ensure_secrets(context=context)
    if created:
        output += "".join(f"secret/{name} created\n" for name in created)
    output += kubectl(
        ["apply", "--server-side", f"--field-manager={FIELD_MANAGER}", "-f", "-"],
        stdin=manifest,
        context=context,
    )
    return output


@dataclass(frozen=True)
class WorkloadStatus:
    ref: str
    ready: bool
    detail: str


def deployment_status(obj: Mapping[str, Any]) -> WorkloadStatus:
    """Ready when the observed generation is current and every wanted replica is updated and available."""
    meta, spec, status = obj.get("metadata") or {}, obj.get("spec") or {}, obj.get("status") or {}
    wanted = int(spec.get("replicas", 1))
    available = int(status.get("availableReplicas") or 0)
    updated = int(status.get("updatedReplicas") or 0)
    current = int(status.get("observedGeneration") or 0) >= int(meta.get("generation") or 0)
    ready = current and available >= wanted and updated >= wanted
    return WorkloadStatus(
        f"deployment/{meta.get('name')}", ready, f"{available}/{wanted} available, {updated} updated"
    )


def claim_status(obj: Mapping[str, Any]) -> WorkloadStatus:
    meta, status = obj.get("metadata") or {}, obj.get("status") or {}
    phase = str(status.get("phase") or "Unknown")
    # Pending is normal for a WaitForFirstConsumer class until a pod mounts the claim
    # (pipeline-execution-pvc waits for the first flow-run Job); Lost is not.
    return WorkloadStatus(f"persistentvolumeclaim/{meta.get('name')}", phase in {"Bound", "Pending"}, phase)


def job_status(obj: Mapping[str, Any]) -> WorkloadStatus:
    meta, status = obj.get("metadata") or {}, obj.get("status") or {}
    succeeded = int(status.get("succeeded") or 0)
    return WorkloadStatus(f"job/{meta.get('name')}", succeeded > 0, f"{succeeded} succeeded")


def verify(context: str | None = None, namespace: str = NAMESPACE) -> list[WorkloadStatus]:
    """The state of every Deployment, claim and the database init Job in the namespace."""
    items: list[WorkloadStatus] = []
    for resource, judge in (("deployments", deployment_status), ("pvc", claim_status), ("jobs", job_status)):
        listed = json.loads(kubectl(["get", resource, "-n", namespace, "-o", "json"], context=context))
        items.extend(judge(item) for item in listed.get("items", []))
    return items


PREFECT_AUTH_SECRET = ("prefect-api-auth", "auth-string")


def read_secret_value(name: str, key: str, context: str | None = None, namespace: str = NAMESPACE) -> str:
    """One key of a Secret, decoded (kept in memory, never printed)."""
    import base64

    encoded = kubectl(
        ["get", "secret", name, "-n", namespace, "-o", f"jsonpath={{.data.{key}}}"], context=context
    ).strip()
    if not encoded:
        raise KubeError(f"Secret {name} in {namespace} has no key {key!r}.")
    return base64.b64decode(encoded).decode()


def register_prefect(
    project_dir: Any, context: str | None = None, namespace: str = NAMESPACE, timeout_s: int = 600
) -> list[str]:
    """The cluster's Prefect server brought to the platform's state: pools with their base job templates,
    prefect.yaml's cluster deployments, the `training-slot` limit and the crash automation.

    Waits for the server's rollout, reaches it through `kubectl port-forward` (so it works from a laptop
    outside the cluster network) with the API auth string read from its Secret, and returns one line per
    object (created, updated or unchanged).
    """
    import time

    from aicml.kube.prefect_setup import register_platform
    from aicml.stack.ports import free_port
    from aicml.stack.processes import healthy

    kubectl(
        ["rollout", "status", "deployment/prefect-server", "-n", namespace, f"--timeout={timeout_s}s"],
        context=context,
    )
    auth = read_secret_value(*PREFECT_AUTH_SECRET, context=context, namespace=namespace)
    port = free_port()
    command = [kubectl_binary(), *(["--context", context] if context else [])]
    command += ["port-forward", "-n", namespace, "service/prefect-server", f"{port}:4200"]
    forward = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    api_url = f"http://127.0.0.1:{port}/api"
    try:
        deadline = time.monotonic() + 60
        while not healthy(f"{api_url}/health"):
            if forward.poll() is not None or time.monotonic() > deadline:
                detail = (
                    forward.stderr.read() if forward.stderr and forward.poll() is not None else "timed out"
                )
                raise KubeError(f"`kubectl port-forward service/prefect-server` failed: {detail}")
            time.sleep(0.5)
        report = register_platform(api_url, auth_string=auth, project_dir=project_dir)
        return report.lines()
    finally:
        forward.terminate()
        forward.wait(timeout=10)
