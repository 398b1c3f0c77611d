"""Render a kustomize overlay of `k8s/` to plain objects with `kubectl kustomize` (offline, no cluster)."""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Literal

import yaml

from aicml.kube.errors import KubeError

Overlay = Literal["dev", "prod"]
OVERLAYS: tuple[Overlay, ...] = ("dev", "prod")
NAMESPACE = "aic-ai-ml"
K8S_DIR_ENV = "AIC_K8S_DIR"

KubeObject = dict[str, Any]


def default_k8s_dir() -> Path:
    """`$AIC_K8S_DIR`, else `k8s/` of the source checkout this package lives in, else `./k8s`."""
    configured = os.environ.get(K8S_DIR_ENV)
    if configured:
        return Path(configured)
    checkout = Path(__file__).resolve().parents[2] / "k8s"
    return checkout if checkout.is_dir() else Path("k8s")


def overlay_dir(overlay: str, k8s_dir: Path | None = None) -> Path:
    root = k8s_dir or default_k8s_dir()
    path = root / "overlays" / overlay
    if not (path / "kustomization.yaml").is_file():
        known = sorted(p.name for p in (root / "overlays").glob("*") if p.is_dir())
        raise KubeError(
            f"No overlay {overlay!r} under {root / 'overlays'} (found: {', '.join(known) or 'none'}). "
            f"Pass --overlay with one of those, or point {K8S_DIR_ENV} at the k8s/ directory."
        )
    return path


def kubectl_binary() -> str:
    found = shutil.which("kubectl")
    if found is None:
        raise KubeError("kubectl is not on PATH; install it (it bundles kustomize) to render the manifests.")
    return found


def render_text(overlay: str, k8s_dir: Path | None = None) -> str:
    """The overlay as one multi-document YAML string, exactly as `kubectl kustomize` prints it."""
    path = overlay_dir(overlay, k8s_dir)
    completed = subprocess.run(
        [kubectl_binary(), "kustomize", str(path)], capture_output=True, text=True, check=False
    )
    if completed.returncode != 0:
        raise KubeError(f"kubectl kustomize {path} failed:\n{completed.stderr.strip()}")
    return completed.stdout


def parse_objects(text: str) -> list[KubeObject]:
    return [doc for doc in yaml.safe_load_all(text) if doc]


def render_overlay(overlay: str, k8s_dir: Path | None = None) -> list[KubeObject]:
    """The overlay's objects as dictionaries, in kustomize's order."""
    return parse_objects(render_text(overlay, k8s_dir))


def object_ref(obj: KubeObject) -> str:
    """`Kind/namespace/name`, the way findings name an object."""
    meta = obj.get("metadata") or {}
    namespace = meta.get("namespace")
    where = f"{namespace}/" if namespace else ""
    return f"{obj.get('kind')}/{where}{meta.get('name')}"


def find(objects: list[KubeObject], kind: str, name: str) -> KubeObject:
    for obj in objects:
        if obj.get("kind") == kind and (obj.get("metadata") or {}).get("name") == name:
            return obj
    raise KubeError(f"The rendered manifests hold no {kind} named {name!r}.")


def pod_spec(obj: KubeObject) -> dict[str, Any] | None:
    """The pod spec inside a workload (Pod, Deployment, StatefulSet, DaemonSet, Job, CronJob), else None."""
    kind = obj.get("kind")
    spec = obj.get("spec") or {}
    if kind == "Pod":
        return spec
    if kind in {"Deployment", "StatefulSet", "DaemonSet", "ReplicaSet", "Job"}:
        return (spec.get("template") or {}).get("spec")
    if kind == "CronJob":
        return (((spec.get("jobTemplate") or {}).get("spec") or {}).get("template") or {}).get("spec")
    return None


def pod_template_labels(obj: KubeObject) -> dict[str, str]:
    kind = obj.get("kind")
    spec = obj.get("spec") or {}
    if kind == "Pod":
        return dict((obj.get("metadata") or {}).get("labels") or {})
    if kind == "CronJob":
        spec = (spec.get("jobTemplate") or {}).get("spec") or {}
    return dict(((spec.get("template") or {}).get("metadata") or {}).get("labels") or {})


def containers(spec: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """Every container of a pod spec, init and ephemeral containers included."""
    for key in ("initContainers", "containers", "ephemeralContainers"):
        yield from spec.get(key) or []
