"""Run one function over many partitions on Dask: a LocalCluster by default, a dask-kubernetes
cluster when configured, or in-process for tiny inputs.

The Kubernetes cluster is described by a DaskCluster resource rendered with dask-kubernetes' own
``make_cluster_spec`` and checked offline against the operator's CustomResourceDefinition schema.
"""

from __future__ import annotations

import gc
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, TypeVar

from aicml import IMAGE
from aicml.errors import ConfigurationError, SourceError

T = TypeVar("T")
R = TypeVar("R")


@dataclass(frozen=True)
class ClusterOptions:
    """Where partitions run. ``kind='kubernetes'`` needs the dask-kubernetes operator in the cluster."""

    kind: Literal["local", "kubernetes", "sync"] = "local"
    workers: int = 2
    threads_per_worker: int = 1
    # Threads, not processes, by default: the partition hot path is Arrow (CSV parsing, compute
    # kernels, Parquet encoding), which releases the GIL, so in-process workers use every core
    # without spawning interpreters (about 2-3 s on a 2-core machine, each re-importing pandas,
    # pyarrow and the engine) or pickling tasks and outcomes between processes. Set True for
    # loads dominated by pure-Python work (JSON records with mixed-type columns).
    processes: bool = False
    # Dask's dashboard (bokeh, on a random port) for a LocalCluster that lives one batch: off unless
    # someone will watch it; its periodic plot updates run in this process.
    dashboard: bool = False
    memory_limit: str = "auto"
    # The platform's image: workers unpickle and run aicml's partition code, so they must import aicml.
    image: str = IMAGE
    namespace: str = "aic-ai-ml"
    cluster_name: str = "aic-ingest"
    worker_cpu: str = "1"
    worker_memory: str = "4Gi"
    env: dict[str, str] = field(default_factory=dict)


DASK_POD_LABELS = {"app.kubernetes.io/part-of": "aic-ml", "aic.io/dask": "true"}


def render_kubernetes_spec(options: ClusterOptions) -> dict[str, Any]:
    """The DaskCluster resource for ``options`` (requests = limits, so workers are not evicted)."""
    from dask_kubernetes.operator import make_cluster_spec

    resources = {
        "requests": {"cpu": options.worker_cpu, "memory": options.worker_memory},
        "limits": {"cpu": options.worker_cpu, "memory": options.worker_memory},
    }
    spec: dict[str, Any] = make_cluster_spec(
        name=options.cluster_name,
        image=options.image,
        n_workers=options.workers,
        resources=resources,
        env=[{"name": k, "value": v} for k, v in sorted(options.env.items())],
    )
    spec["metadata"]["namespace"] = options.namespace
    spec["metadata"].setdefault("labels", {}).update(DASK_POD_LABELS)
    for role in ("worker", "scheduler"):
        # The operator copies these labels to the pods: the NetworkPolicy `dask-within-namespace` keeps
        # everything outside the namespace (and in it, everything but the ingest runs) away from them.
        spec["spec"][role].setdefault("metadata", {}).setdefault("labels", {}).update(DASK_POD_LABELS)
        pod = spec["spec"][role]["spec"]
        # Pod Security `restricted`, as every pod of the namespace.
        pod["securityContext"] = {
            "runAsNonRoot": True,
            "runAsUser": 10001,
            "runAsGroup": 10001,
            "seccompProfile": {"type": "RuntimeDefault"},
        }
        pod["automountServiceAccountToken"] = False
        for container in pod["containers"]:
            if container.get("env") is None:
                container["env"] = []
            container["env"].append({"name": "HOME", "value": "/tmp"})
            if container.get("resources") is None:
                container["resources"] = resources
            container["securityContext"] = {
                "allowPrivilegeEscalation": False,
                "runAsNonRoot": True,
                "capabilities": {"drop": ["ALL"]},
            }
    return spec


def _crd_schema() -> dict[str, Any]:
    import dask_kubernetes
    import yaml

    path = (
        Path(dask_kubernetes.__file__).parent
        / "operator/deployment/helm/dask-kubernetes-operator/crds/daskcluster.yaml"
    )
    crd = yaml.safe_load(path.read_text())
    version = next(v for v in crd["spec"]["versions"] if v["name"] == "v1")
    return dict(version["schema"]["openAPIV3Schema"])


def validate_kubernetes_spec(spec: dict[str, Any]) -> list[str]:
    """Problems with a rendered DaskCluster (empty when valid), checked offline against the CRD."""
    import jsonschema

    problems = []
    if spec.get("apiVersion") != "kubernetes.dask.org/v1" or spec.get("kind") != "DaskCluster":
        problems.append("not a kubernetes.dask.org/v1 DaskCluster")
    validator = jsonschema.Draft7Validator(_crd_schema())
    problems += [
        f"{'/'.join(map(str, e.path)) or '<root>'}: {e.message}" for e in validator.iter_errors(spec)
    ]
    for role in ("worker", "scheduler"):
        for container in spec.get("spec", {}).get(role, {}).get("spec", {}).get("containers", []):
            image = str(container.get("image", ""))
            if image.endswith(":latest") or ":" not in image:
                problems.append(f"{role} image {image!r} is not pinned to a version")
            if role == "worker" and not (container.get("resources") or {}).get("limits"):
                problems.append("worker container has no resource limits")
    return problems


@contextmanager
def settled_heap() -> Iterator[None]:
    """Keep Python's collector off the objects that exist now, for the duration of the block.

    A worker process holds a few hundred thousand long-lived objects (Prefect, Great Expectations,
    pandas and their modules). A full collection walks all of them with the GIL held, stopping every
    partition thread for about 0.3 s, and a batch allocates enough to trigger one. Freezing moves
    the objects alive at the start out of the collector's sight (young objects are still collected
    as usual); unfreezing at the end hands them back, so a long-lived process keeps collecting them.
    """
    already = gc.get_freeze_count()
    gc.freeze()
    try:
        yield
    finally:
        if not already:  # an outer block (or the application) froze first: leave that to it
            gc.unfreeze()


def run_partitions(fn: Callable[[T], R], items: Sequence[T], options: ClusterOptions) -> list[R]:
    """``[fn(item) for item in items]``, in parallel on the configured cluster, in input order.

    Exceptions raised by ``fn`` propagate unchanged (Dask re-raises the worker's exception).
    """
    if not items:
        return []
    with settled_heap():
        return _run_partitions(fn, items, options)


def _run_partitions(fn: Callable[[T], R], items: Sequence[T], options: ClusterOptions) -> list[R]:
    if options.kind == "sync" or len(items) == 1:
        return [fn(item) for item in items]
    from distributed import Client

    if options.kind == "local":
        import dask
        from distributed import LocalCluster

        # The workers share this process: Dask's sampling profiler (every 10 ms) and GIL monitor
        # would take the GIL from the partitions they observe.
        quiet = dask.config.set(
            {
                "distributed.worker.profile.enabled": False,
                "distributed.admin.system-monitor.gil.enabled": False,
            }
        )
        with quiet:
            cluster: Any = LocalCluster(
                n_workers=min(options.workers, len(items)),
                threads_per_worker=options.threads_per_worker,
                memory_limit=options.memory_limit,
                processes=options.processes,
                dashboard_address=":0" if options.dashboard else None,
                # In-process workers talk over inproc://, which takes no host.
                **({"host": "127.0.0.1"} if options.processes else {}),
            )
    elif options.kind == "kubernetes":
        from dask_kubernetes.operator import KubeCluster

        spec = render_kubernetes_spec(options)
        problems = validate_kubernetes_spec(spec)
        if problems:
            raise ConfigurationError("The Dask cluster spec is invalid: " + "; ".join(problems))
        cluster = KubeCluster(custom_cluster_spec=spec, namespace=options.namespace)
    else:
        raise ConfigurationError(f"Unknown cluster kind {options.kind!r}: use local, kubernetes or sync.")
    from distributed import KilledWorker

    try:
        with Client(cluster) as client:
            futures = client.map(fn, list(items), pure=False)
            return list(client.gather(futures))
    except KilledWorker as exc:
        # A partition whose workers kept dying (killed, out of memory): Dask gave it up. Nothing of
        # the batch was committed; a rerun stages every partition again and commits each once.
        last = getattr(exc, "last_worker", None)
        raise SourceError(
            f"Lost Dask worker {getattr(last, 'address', last) or '?'} (and others before it) while "
            f"running partition task {exc.task!r}; Dask gave the partition up after "
            f"{dask_allowed_failures()} workers died running it. Nothing of this batch was committed: "
            "check the workers' memory (memory_limit) and logs, then run the load again."
        ) from exc
    finally:
        cluster.close()


def dask_allowed_failures() -> int:
    import dask

    return int(dask.config.get("distributed.scheduler.allowed-failures"))
