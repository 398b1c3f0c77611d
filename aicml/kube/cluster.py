"""`aicml k8s apply` and `verify`: the seed's deploy and verify steps against a live cluster, through kubectl.

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
