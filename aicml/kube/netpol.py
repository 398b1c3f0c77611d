"""The NetworkPolicies evaluated by a real policy analyser: network-config-analyzer (`nca`, np-guard).

`nca --connectivity` computes, from the rendered NetworkPolicies and pod templates, every connection the
policies allow between pods (and IP ranges). This module gives it the render (each pod template as one
pod), the flow-run Jobs and `deploy-model`'s serving objects, plus probe pods for what lives outside
the namespace (Prometheus in `monitoring`, PostgreSQL and another workload in `aic-platform`, a pod of
an unrelated namespace), parses its answer, and checks the paths that must be open and those that must
stay closed. nca lives in its own virtual environment (its pins clash with checkov's and torch's);
`$AIC_NCA` names its executable.
"""

from __future__ import annotations

import copy
import os
import re
import shutil
import subprocess
import tempfile
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from aicml.kube.errors import KubeError
from aicml.kube.findings import Violation
from aicml.kube.render import NAMESPACE, KubeObject, containers, object_ref, pod_spec, pod_template_labels
from aicml.kube.secrets import SECRET_SPECS
from aicml.kube.wiring import (
    NAME_LABEL,
    container_port,
    is_flow_run,
    named,
    pod_references,
    selected_pods,
    selects,
    worker_pool,
    workloads,
)

NCA_ENV = "AIC_NCA"
NCA_TIMEOUT_S = 300
POSTGRES_HOST = ("aic-platform", "postgresql")
POSTGRES_PORT = 5432
OBJECT_STORAGE_PORT = 443
PREFECT_API_SERVICE = "prefect-server"
MLFLOW_SERVICE = "mlflow-service"
MONITORING_NAMESPACE = "monitoring"
PROMETHEUS = (MONITORING_NAMESPACE, "prometheus")
# Pods outside the namespace that must not reach its Prefect API, Dask or PostgreSQL.
OUTSIDERS = (("aic-platform", "platform-workload"), ("other-tenant", "outsider"), PROMETHEUS)
DATABASE_SECRETS = frozenset(
    {spec.name for spec in SECRET_SPECS if "database" in spec.key_names} | {"postgresql-admin"}
)
# Object-storage keys: MLflow's artifact store, the model servers' prediction log (write-only prefix).
OBJECT_STORAGE_SECRETS = frozenset({"mlflow-s3", "model-serving-s3"})
MLFLOW_CLIENT_ENV = frozenset({"MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_TOKEN"})
SERVING_NAMES = frozenset({"model-serving"})
SERVING_COMPONENT = "model-server"
# Destination of a required path that no rendered pod serves.
UNSERVED = "?"
# `SRC => DST : All connections`, or `... : {protocols:TCP,dst_ports:443,6443}` (nca's txt_no_fw_rules).
LINE = re.compile(r"^(?P<src>\S+) => (?P<dst>\S+) : (?P<conn>.+)$")


def nca_binary() -> str:
    """`$AIC_NCA`, else `.tools/nca/bin/nca` of the checkout (`make tools`), else `nca` on PATH."""
    configured = os.environ.get(NCA_ENV)
    if configured:
        return configured
    checkout = Path(__file__).resolve().parents[2] / ".tools" / "nca" / "bin" / "nca"
    if checkout.is_file():
        return str(checkout)
    found = shutil.which("nca")
    if found is None:
        raise KubeError(
            f"network-config-analyzer (nca) is not installed; run `make tools` or point {NCA_ENV} at its executable."
        )
    return found


# --- what nca analyses ------------------------------------------------------------------------------


def _namespace_object(name: str) -> KubeObject:
    labels = {"kubernetes.io/metadata.name": name}
    return {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name, "labels": labels}}


def _probe(namespace: str, name: str, ports: Iterable[int] = ()) -> KubeObject:
    container = {
        "name": name,
        "image": "probe",
        "ports": [{"containerPort": p, "protocol": "TCP"} for p in ports],
    }
    labels = {NAME_LABEL: name}
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "namespace": namespace, "labels": labels},
        "spec": {"containers": [container]},
    }


def peer(obj: KubeObject) -> str:
    """The name nca gives the (first) pod of a workload: `namespace/name-1`, or `namespace/name` for a Pod."""
    meta = obj.get("metadata") or {}
    suffix = "" if obj.get("kind") == "Pod" else "-1"
    return f"{meta.get('namespace') or NAMESPACE}/{meta.get('name')}{suffix}"


def analysis_objects(objects: list[KubeObject]) -> list[KubeObject]:
    """Namespaces, probe pods, one pod per pod template (replicas and parallelism set to 1: a template
    scaled to zero still has to be reachable when scaled up) and the NetworkPolicies."""
    namespaces = {NAMESPACE, "kube-system", *(ns for ns, _ in OUTSIDERS), POSTGRES_HOST[0]}
    analysed: list[KubeObject] = [_namespace_object(ns) for ns in sorted(namespaces)]
    analysed += [_probe(*POSTGRES_HOST, [POSTGRES_PORT]), *(_probe(ns, name) for ns, name in OUTSIDERS)]
    for obj in objects:
        if obj.get("kind") == "NetworkPolicy":
            analysed.append(obj)
        elif pod_spec(obj) is not None and obj.get("kind") != "Pod":
            workload = copy.deepcopy(obj)
            spec = workload.setdefault("spec", {})
            if "replicas" in spec:
                spec["replicas"] = 1
            if workload.get("kind") == "Job":
                spec["parallelism"] = 1
            analysed.append(workload)
    return analysed


# --- nca's answer -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Allowed:
    """One allowed connection set: protocols None means any protocol, ports None any port."""

    protocols: frozenset[str] | None
    ports: tuple[tuple[int, int], ...] | None

    def permits(self, protocol: str, port: int) -> bool:
        if self.protocols is not None and protocol not in self.protocols:
            return False
        return self.ports is None or any(low <= port <= high for low, high in self.ports)


def parse_connection(text: str) -> Allowed:
    """`All connections` or `{protocols:TCP,dst_ports:443,8000-8080}`."""
    text = text.strip()
    if text == "All connections":
        return Allowed(None, None)
    match = re.fullmatch(r"\{(.*)\}", text)
    if match is None:
        raise KubeError(f"Cannot read nca's connection {text!r}.")
    fields: dict[str, list[str]] = {}
    current = ""
    for part in match.group(1).split(","):
        if ":" in part:
            current, _, part = part.partition(":")
        fields.setdefault(current, []).append(part)
    unknown = set(fields) - {"protocols", "dst_ports"}
    if unknown:
        raise KubeError(
            f"nca's connection {text!r} has fields {sorted(unknown)} this reader does not handle."
        )
    protocols = frozenset(fields["protocols"]) if "protocols" in fields else None
    ports = None
    if "dst_ports" in fields:
        ranges = [item.split("-", 1) for item in fields["dst_ports"]]
        ports = tuple((int(r[0]), int(r[-1])) for r in ranges)
    return Allowed(protocols, ports)


@dataclass
class Connectivity:
    """Every connection nca found allowed, by (source peer, destination peer)."""

    allowed: dict[tuple[str, str], list[Allowed]] = field(default_factory=dict)

    def permits(self, source: str, destination: str, port: int, protocol: str = "TCP") -> bool:
        return any(a.permits(protocol, port) for a in self.allowed.get((source, destination), []))

    def permits_external(self, source: str, port: int, protocol: str = "TCP") -> bool:
        """Some IP range outside the cluster's pods (nca prints it as `a.b.c.d-e.f.g.h`) is reachable."""
        return any(
            a.permits(protocol, port)
            for (src, dst), conns in self.allowed.items()
            if src == source and "/" not in dst
            for a in conns
        )


def parse_connectivity(text: str) -> Connectivity:
    result = Connectivity()
    for line in text.splitlines():
        match = LINE.match(line.strip())
        if match:
            key = (match.group("src"), match.group("dst"))
            result.allowed.setdefault(key, []).append(parse_connection(match.group("conn")))
    return result


def run_nca(objects: list[KubeObject], binary: str | None = None) -> Connectivity:
    """`nca --connectivity` over `analysis_objects(objects)`, one connection per line, per pod."""
    command = binary or nca_binary()
    with tempfile.TemporaryDirectory(prefix="aicml-nca-") as tmp:
        resources = Path(tmp) / "resources.yaml"
        resources.write_text(yaml.safe_dump_all(analysis_objects(objects), sort_keys=False))
        args = [command, "--connectivity", "-r", str(resources), "-o", "txt_no_fw_rules"]
        args += ["--output_endpoints", "pods"]
        try:
            completed = subprocess.run(
                args, capture_output=True, text=True, timeout=NCA_TIMEOUT_S, check=False
            )
        except (OSError, subprocess.TimeoutExpired) as error:
            raise KubeError(f"Cannot run nca ({command}): {error}. Run `make tools`.") from error
    if completed.returncode >= 4 or not any(LINE.match(line) for line in completed.stdout.splitlines()):
        raise KubeError(
            f"nca --connectivity failed (exit {completed.returncode}):\n{completed.stderr.strip()[-2000:]}"
        )
    return parse_connectivity(completed.stdout)


# --- the paths --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class NetPath:
    """A connection that must be open (or closed): source workload, destination, TCP port, and why."""

    source: str  # nca peer
    source_ref: str
    destination: str  # nca peer, or "" for object storage outside the cluster
    port: int
    what: str


def _needs(obj: KubeObject, spec: dict[str, Any]) -> set[str]:
    """What a pod talks to, from what it is: flow runs need everything; Prefect workers the API; pods
    with database credentials PostgreSQL; MLflow clients and model servers MLflow; holders of the bucket
    credentials object storage."""
    if is_flow_run(obj):
        return {"prefect", "mlflow", "postgresql", "object-storage"}
    needs: set[str] = set()
    labels = pod_template_labels(obj)
    secrets = {ref.name for ref in pod_references(spec) if ref.kind == "Secret"}
    env_names = {str(e.get("name")) for c in containers(spec) for e in c.get("env") or []}
    commands = [[*(c.get("command") or []), *(c.get("args") or [])] for c in containers(spec)]
    if any(worker_pool(c) for c in containers(spec)):
        needs.add("prefect")
    if secrets & DATABASE_SECRETS:
        needs.add("postgresql")
    if secrets & OBJECT_STORAGE_SECRETS:
        needs.add("object-storage")
    serving = (
        labels.get(NAME_LABEL) in SERVING_NAMES
        or labels.get("app.kubernetes.io/component") == SERVING_COMPONENT
    )
    if serving or env_names & MLFLOW_CLIENT_ENV or any("--tracking-uri" in cmd for cmd in commands):
        needs.add("mlflow")
    return needs


def service_targets(objects: list[KubeObject], service_name: str) -> list[tuple[KubeObject, int]]:
    """(pod template, container port) for every port of every pod template the Service selects."""
    service = named(objects, "Service").get((NAMESPACE, service_name))
    if service is None:
        return []
    targets = []
    for obj, spec in selected_pods(service, objects):
        for port in (service.get("spec") or {}).get("ports") or []:
            number = container_port(spec, port.get("targetPort", port.get("port")))
            if number is not None:
                targets.append((obj, number))
    return targets


def required_paths(objects: list[KubeObject]) -> list[NetPath]:
    """The connections that must be open."""
    prefect = [(peer(obj), port) for obj, port in service_targets(objects, PREFECT_API_SERVICE)]
    mlflow = [(peer(obj), port) for obj, port in service_targets(objects, MLFLOW_SERVICE)]
    postgres = [(f"{POSTGRES_HOST[0]}/{POSTGRES_HOST[1]}", POSTGRES_PORT)]
    storage = [("", OBJECT_STORAGE_PORT)]
    targets = {"prefect": ("the Prefect API", prefect), "mlflow": ("MLflow", mlflow)}
    targets |= {"postgresql": ("PostgreSQL", postgres), "object-storage": ("object storage (HTTPS)", storage)}
    paths: list[NetPath] = []
    for obj, spec in workloads(objects):
        for need in sorted(_needs(obj, spec)):
            what, where = targets[need]
            dst, port = where[0] if where else (UNSERVED, 0)
            paths.append(NetPath(peer(obj), object_ref(obj), dst, port, what))
    prometheus = f"{PROMETHEUS[0]}/{PROMETHEUS[1]}"
    for obj, port in metrics_ports(objects):
        paths.append(
            NetPath(
                prometheus,
                "Prometheus (namespace monitoring)",
                peer(obj),
                port,
                f"metrics of {object_ref(obj)}",
            )
        )
    return paths


def metrics_ports(objects: list[KubeObject]) -> list[tuple[KubeObject, int]]:
    """(pod template, port) for every port a ServiceMonitor or PodMonitor scrapes, and every container
    port named `metrics`."""
    found: set[tuple[int, int]] = set()
    pods = list(workloads(objects))
    by_id = {id(obj): obj for obj, _ in pods}
    services = [obj for obj in objects if obj.get("kind") == "Service"]
    for monitor in objects:
        spec = monitor.get("spec") or {}
        if monitor.get("kind") == "ServiceMonitor":
            for service in services:
                if not selects(spec.get("selector"), (service.get("metadata") or {}).get("labels") or {}):
                    continue
                for endpoint in spec.get("endpoints") or []:
                    for port in (service.get("spec") or {}).get("ports") or []:
                        if endpoint.get("port") in (port.get("name"), port.get("port")):
                            target = port.get("targetPort", port.get("port"))
                            for obj, pod in selected_pods(service, objects):
                                number = container_port(pod, target)
                                if number is not None:
                                    found.add((id(obj), number))
        if monitor.get("kind") == "PodMonitor":
            for obj, pod in pods:
                if selects(spec.get("selector"), pod_template_labels(obj)):
                    for endpoint in spec.get("podMetricsEndpoints") or []:
                        number = container_port(pod, endpoint.get("port"))
                        if number is not None:
                            found.add((id(obj), number))
    for obj, pod in pods:
        number = container_port(pod, "metrics")
        if number is not None:
            found.add((id(obj), number))
    return sorted(((by_id[i], port) for i, port in found), key=lambda item: (peer(item[0]), item[1]))


def _listening(objects: list[KubeObject], command_words: tuple[str, str]) -> Iterator[tuple[KubeObject, int]]:
    for obj, spec in workloads(objects):
        for container in containers(spec):
            if all(
                word in (container.get("command") or []) + (container.get("args") or [])
                for word in command_words
            ):
                for port in container.get("ports") or []:
                    yield obj, int(port["containerPort"])


def forbidden_paths(objects: list[KubeObject]) -> list[NetPath]:
    """The connections that must stay closed: pods outside the namespace to the Prefect API and Dask
    (Prometheus only to metrics ports), and pods of the namespace without database credentials to
    PostgreSQL."""
    scraped = {(peer(obj), port) for obj, port in metrics_ports(objects)}
    api = [*service_targets(objects, PREFECT_API_SERVICE), *_listening(objects, ("prefect", "server"))]
    closed = [(obj, port, "the Prefect API") for obj, port in {(id(o), p): (o, p) for o, p in api}.values()]
    closed += [(obj, port, "Dask") for obj, port in _listening(objects, ("dask", "scheduler"))]
    closed += [(obj, port, "Dask") for obj, port in _listening(objects, ("dask", "worker"))]
    paths = []
    for namespace, name in OUTSIDERS:
        for obj, port, what in closed:
            if (namespace, name) == PROMETHEUS and (peer(obj), port) in scraped:
                continue
            source = f"{namespace}/{name}"
            paths.append(
                NetPath(
                    source,
                    f"pod {source} (outside the namespace)",
                    peer(obj),
                    port,
                    f"{what} ({object_ref(obj)})",
                )
            )
    postgres = f"{POSTGRES_HOST[0]}/{POSTGRES_HOST[1]}"
    for obj, spec in workloads(objects):
        if "postgresql" not in _needs(obj, spec):
            paths.append(NetPath(peer(obj), object_ref(obj), postgres, POSTGRES_PORT, "PostgreSQL"))
    return paths


def check_network_policies(
    objects: list[KubeObject], connectivity: Connectivity | None = None
) -> list[Violation]:
    """Required paths the policies deny and closed paths they allow, as nca evaluates them."""
    result = connectivity if connectivity is not None else run_nca(objects)
    found = []
    for path in required_paths(objects):
        ok = (
            result.permits_external(path.source, path.port)
            if not path.destination
            else result.permits(path.source, path.destination, path.port)
        )
        if path.destination == UNSERVED:
            message = f"cannot reach {path.what}: no rendered Service of it selects a pod"
            found.append(Violation("netpol-required", path.source_ref, message))
        elif not ok:
            target = path.destination or "outside the cluster"
            message = f"cannot reach {path.what} ({target}, TCP {path.port}): the NetworkPolicies deny it"
            found.append(Violation("netpol-required", path.source_ref, message))
    for path in forbidden_paths(objects):
        if result.permits(path.source, path.destination, path.port):
            message = (
                f"reaches {path.what} at {path.destination} TCP {path.port}, which must stay closed to it"
            )
            found.append(Violation("netpol-closed", path.source_ref, message))
    return found
