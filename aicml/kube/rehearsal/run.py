"""`aicml k8s rehearse` / `make k8s-rehearsal`: the dev overlay run as podman containers on this machine.

Order, as in a cluster after `aicml k8s apply`: the external parts (PostgreSQL as
`postgresql-service.aic-platform`, moto's S3-compatible server for the artifact bucket), the database init
Job (the overlay's own script, its `postgres` image replaced by the externals image, which has psql), every
Deployment with replicas > 0 at once (scaled-to-zero ones are reported as skipped), Prometheus with a scrape
configuration generated from the rendered ServiceMonitors and PodMonitors, then the backup CronJob's pod
once. One table at the end; exit status 1 when anything did not come up or complete.

Replaced for the rehearsal, and said so in the output: the images (all `ghcr.io/aic/aic-ml` images are the
image built from docker/Dockerfile, `postgres` is the externals image), and the ConfigMap key
`MLFLOW_S3_ENDPOINT_URL` (AWS's endpoint in the render) points at the moto container.
"""

from __future__ import annotations

import base64
import json
import os
import secrets as token_source
import shutil
import signal
import subprocess
import tempfile
import time
import urllib.request
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import Any

import yaml

from aicml.kube.errors import KubeError
from aicml.kube.rehearsal.images import APP_IMAGE, EXTERNALS_IMAGE, build_images, podman
from aicml.kube.rehearsal.pods import (
    NAMESPACE,
    Pod,
    PodContext,
    container_env,
    pvc_path,
    remove_leftovers,
    remove_run,
    run_to_completion,
    start_pod,
)
from aicml.kube.render import KubeObject, pod_spec, pod_template_labels, render_overlay
from aicml.kube.secrets import SECRET_SPECS, resolve_values

CACHE_DIR = Path(os.environ.get("AIC_REHEARSAL_CACHE", "/var/tmp/aic-rehearsal"))
PG_ALIAS = "postgresql-service.aic-platform.svc.cluster.local"
S3_ALIAS = "s3-rehearsal.aic-platform.svc.cluster.local"
S3_PORT = 9000
APP_REPOSITORIES = ("ghcr.io/aic/aic-ml", "ghcr.io/aic/aic-ml-gpu")
Say = Callable[[str], None]
CRASH_LOOP_RESTARTS = 3  # the kubelet's CrashLoopBackOff, for the wait: restarts after 10, 20 and 40 s


def service_aliases(service: str, namespace: str = NAMESPACE) -> list[str]:
    return [
        service,
        f"{service}.{namespace}",
        f"{service}.{namespace}.svc",
        f"{service}.{namespace}.svc.cluster.local",
    ]


def selects(selector: Mapping[str, str], labels: Mapping[str, str]) -> bool:
    return bool(selector) and all(labels.get(key) == value for key, value in selector.items())


def aliases_for(labels: Mapping[str, str], services: Iterable[KubeObject]) -> list[str]:
    """Every DNS name of every Service whose selector matches the pod's labels."""
    out: list[str] = []
    for service in services:
        if selects((service.get("spec") or {}).get("selector") or {}, labels):
            out += service_aliases(str(service["metadata"]["name"]))
    return out


def of_kind(objects: Iterable[KubeObject], kind: str) -> list[KubeObject]:
    return [obj for obj in objects if obj.get("kind") == kind]


def name_of(obj: KubeObject) -> str:
    return str(obj["metadata"]["name"])


def rendered_data(objects: list[KubeObject]) -> tuple[dict[str, dict[str, str]], dict[str, dict[str, str]]]:
    """ConfigMaps' data and rendered Secrets' data (base64 decoded), by name."""
    configmaps = {name_of(o): dict(o.get("data") or {}) for o in of_kind(objects, "ConfigMap")}
    secrets: dict[str, dict[str, str]] = {}
    for obj in of_kind(objects, "Secret"):
        data = {k: base64.b64decode(v).decode() for k, v in (obj.get("data") or {}).items()}
        secrets[name_of(obj)] = {**data, **(obj.get("stringData") or {})}
    return configmaps, secrets


def rehearsal_secrets(environ: Mapping[str, str]) -> dict[str, dict[str, str]]:
    """The Secrets `aicml k8s apply` would create, resolved from SECRET_SPECS with rehearsal values for the
    variables a cluster's operator sets (the PostgreSQL admin password, the S3 keys, which moto accepts)."""
    env = dict(environ)
    env.setdefault("AIC_K8S_POSTGRES_ADMIN_PASSWORD", token_source.token_hex(16))
    env.setdefault("AIC_K8S_S3_ACCESS_KEY_ID", "rehearsal")
    env.setdefault("AIC_K8S_S3_SECRET_ACCESS_KEY", token_source.token_hex(16))
    # The model servers' own key (prediction logs under predictions/); moto accepts any key.
    env.setdefault("AIC_K8S_SERVING_S3_ACCESS_KEY_ID", "rehearsal-serving")
    env.setdefault("AIC_K8S_SERVING_S3_SECRET_ACCESS_KEY", token_source.token_hex(16))
    return resolve_values(SECRET_SPECS, env)


def _port_of(container_ports: Iterable[Mapping[str, Any]], port: Any) -> int | None:
    for declared in container_ports:
        if declared.get("name") == port or declared.get("containerPort") == port:
            return int(declared["containerPort"])
    return int(port) if str(port).isdigit() else None


def pod_ports(spec: Mapping[str, Any]) -> list[dict[str, Any]]:
    return [port for c in spec.get("containers") or [] for port in c.get("ports") or []]


@dataclass(frozen=True)
class RunningPod:
    """What scrape targets need of a started pod: its DNS name (the infra container), labels, ports."""

    host: str
    labels: Mapping[str, str]
    ports: list[dict[str, Any]]


def scrape_config(objects: list[KubeObject], pods: Iterable[RunningPod]) -> dict[str, Any]:
    """A Prometheus configuration with one job per ServiceMonitor/PodMonitor endpoint, the way the
    Prometheus operator resolves them (Service selector -> endpoint port -> the pods' container port)."""
    pods = list(pods)
    jobs: list[dict[str, Any]] = []
    services = of_kind(objects, "Service")
    for monitor in of_kind(objects, "ServiceMonitor"):
        selector = ((monitor.get("spec") or {}).get("selector") or {}).get("matchLabels") or {}
        for index, endpoint in enumerate(monitor["spec"].get("endpoints") or []):
            targets = []
            for service in services:
                if not selects(selector, service["metadata"].get("labels") or {}):
                    continue
                for sport in service["spec"].get("ports") or []:
                    if endpoint.get("port") not in (sport.get("name"), sport.get("port")):
                        continue
                    for pod in pods:
                        if selects(service["spec"].get("selector") or {}, pod.labels):
                            port = _port_of(pod.ports, sport.get("targetPort", sport.get("port")))
                            if port:
                                targets.append(f"{pod.host}:{port}")
            jobs.append(_job(f"serviceMonitor/{NAMESPACE}/{name_of(monitor)}/{index}", endpoint, targets))
    for monitor in of_kind(objects, "PodMonitor"):
        selector = ((monitor.get("spec") or {}).get("selector") or {}).get("matchLabels") or {}
        for index, endpoint in enumerate(monitor["spec"].get("podMetricsEndpoints") or []):
            targets = [
                f"{pod.host}:{port}"
                for pod in pods
                if selects(selector, pod.labels) and (port := _port_of(pod.ports, endpoint.get("port")))
            ]
            jobs.append(_job(f"podMonitor/{NAMESPACE}/{name_of(monitor)}/{index}", endpoint, targets))
    return {"global": {"scrape_interval": "15s"}, "scrape_configs": jobs}


def _job(name: str, endpoint: Mapping[str, Any], targets: list[str]) -> dict[str, Any]:
    return {
        "job_name": name,
        "metrics_path": endpoint.get("path", "/metrics"),
        "scrape_interval": endpoint.get("interval", "30s"),
        "scheme": endpoint.get("scheme", "http"),
        "static_configs": [{"targets": sorted(set(targets))}],
    }


# --- the external parts, as pod specs run by the same start_pod ------------------------------------------

_NON_ROOT = {"runAsUser": 10001, "runAsGroup": 10001, "fsGroup": 10001, "runAsNonRoot": True}
_LOCKED = {
    "readOnlyRootFilesystem": True,
    "allowPrivilegeEscalation": False,
    "capabilities": {"drop": ["ALL"]},
}
_POSTGRES_SCRIPT = """set -eu
export PGDATA=/var/lib/postgresql/rehearsal/data
if [ ! -s "$PGDATA/PG_VERSION" ]; then
  printf '%s' "$POSTGRES_PASSWORD" > /tmp/pw
  initdb --username=postgres --pwfile=/tmp/pw --encoding=UTF8 --locale=C.UTF-8 --auth-local=trust \
    --auth-host=scram-sha-256 >/dev/null
  rm -f /tmp/pw
  echo "host all all 0.0.0.0/0 scram-sha-256" >> "$PGDATA/pg_hba.conf"
fi
exec postgres -c listen_addresses='*' -c unix_socket_directories=/tmp
"""


def external_pod(
    name: str,
    command: list[str],
    port: tuple[str, int],
    probe: dict[str, Any],
    *,
    env: list[dict[str, Any]] | None = None,
    mounts: dict[str, str] | None = None,
    volumes: dict[str, dict[str, Any]] | None = None,
) -> dict[str, Any]:
    """A pod spec for an external part: the externals image, non-root, read-only root, one port and probe."""
    mounts = {"/tmp": "tmp", **(mounts or {})}
    volumes = {"tmp": {"emptyDir": {}}, **(volumes or {})}
    container = {
        "name": name, "image": EXTERNALS_IMAGE, "command": command,
        "env": [{"name": "HOME", "value": "/tmp"}, *(env or [])],
        "ports": [{"name": port[0], "containerPort": port[1]}],
        "readinessProbe": {**probe, "periodSeconds": 2}, "securityContext": _LOCKED,
        "volumeMounts": [{"name": vname, "mountPath": path, "readOnly": "configMap" in volumes[vname]}
                         for path, vname in mounts.items()],
    }  # fmt: skip
    return {"securityContext": _NON_ROOT, "containers": [container],
            "volumes": [{"name": vname, **source} for vname, source in volumes.items()]}  # fmt: skip


def postgres_pod() -> dict[str, Any]:
    password = {"secretKeyRef": {"name": "postgresql-admin", "key": "password"}}
    return external_pod(
        "postgresql", ["/bin/sh", "-c", _POSTGRES_SCRIPT], ("postgresql", 5432),
        {"exec": {"command": ["pg_isready", "-q", "-h", "127.0.0.1"]}},
        env=[{"name": "POSTGRES_PASSWORD", "valueFrom": password}],
        mounts={"/var/lib/postgresql/rehearsal": "data"}, volumes={"data": {"emptyDir": {"sizeLimit": "2Gi"}}},
    )  # fmt: skip


def s3_pod() -> dict[str, Any]:
    command = ["moto_server", "-H", "0.0.0.0", "-p", str(S3_PORT)]
    return external_pod("moto", command, ("s3", S3_PORT), {"tcpSocket": {"port": "s3"}})


def prometheus_pod() -> dict[str, Any]:
    command = ["prometheus", "--config.file=/etc/prometheus-rehearsal/prometheus.yml",
               "--storage.tsdb.path=/prometheus", "--web.listen-address=:9090"]  # fmt: skip
    return external_pod(
        "prometheus", command, ("http", 9090), {"httpGet": {"path": "/-/ready", "port": "http"}},
        mounts={"/etc/prometheus-rehearsal": "config", "/prometheus": "data"},
        volumes={"config": {"configMap": {"name": "rehearsal-prometheus"}}, "data": {"emptyDir": {}}},
    )  # fmt: skip


# --- the run ---------------------------------------------------------------------------------------------


@dataclass
class Row:
    workload: str
    started: str
    pod: Pod | None = None
    note: str = ""
    must_complete: bool = False
    flow_state: str = ""
    checks_ok: bool = True

    @property
    def ok(self) -> bool:
        if self.started == "skipped":
            return True
        if self.started != "yes" or not self.checks_ok:
            return False
        if self.flow_state:
            return self.flow_state == "Completed"
        if self.pod is None:
            return True
        return self.pod.succeeded if self.must_complete else self.pod.ready


def wait_ready(
    pods: Iterable[Pod], timeout: float, say: Say, *, label: str = "", jobs: Sequence[tuple[Row, int]] = ()
) -> bool:
    """Tick the pods (and the Jobs' pods) until every pod is ready and every Job finished, the pods not
    ready are all crash-looping, or the time is up. A Job past its backoffLimit is given up."""
    pods = list(pods)
    job_pods = [(row.pod, limit) for row, limit in jobs if row.pod is not None]
    deadline = time.monotonic() + timeout
    last = time.monotonic()
    while time.monotonic() < deadline:
        for pod in [*pods, *(job for job, _ in job_pods)]:
            pod.tick()
        for job, limit in job_pods:
            if job.restarts > limit:
                for container in job.containers:
                    container.finished = True
        jobs_done = all(job.finished for job, _ in job_pods)
        if jobs_done and all(pod.ready for pod in pods):
            return True
        if jobs_done and all(pod.ready or pod.restarts >= CRASH_LOOP_RESTARTS for pod in pods):
            say(
                f"  {label}the pods not ready are crash-looping ({CRASH_LOOP_RESTARTS}+ restarts): not waiting longer"
            )
            return False
        if time.monotonic() - last > 30:
            last = time.monotonic()
            waiting = [pod.name for pod in pods if not pod.ready] + [
                j.name for j, _ in job_pods if not j.finished
            ]
            say(f"  {label}waiting for {len(waiting)} pod(s): {', '.join(waiting)}")
        time.sleep(1)
    return False


def exec_in(container: str, command: list[str], env: Mapping[str, str] | None = None) -> str:
    env_args = [arg for name in (env or {}) for arg in ("--env", name)]
    done = subprocess.run(["podman", "--runtime", "runc", "exec", *env_args, container, *command],
                          capture_output=True, text=True, env={**os.environ, **(env or {})}, check=False)  # fmt: skip
    if done.returncode != 0:
        raise KubeError(
            f"podman exec {container} {command[0]} failed: {(done.stdout + done.stderr).strip()[-800:]}"
        )
    return done.stdout


def create_bucket(moto: Pod, bucket: str, keys: Mapping[str, str]) -> None:
    script = (
        f"import boto3, sys; boto3.client('s3', endpoint_url='http://127.0.0.1:{S3_PORT}', region_name='us-east-1')"
        ".create_bucket(Bucket=sys.argv[1])"
    )
    exec_in(moto.containers[0].name, ["/opt/moto/bin/python", "-c", script, bucket], env=dict(keys))


def prometheus_targets(pod: Pod) -> list[dict[str, Any]]:
    with urllib.request.urlopen(f"http://{pod.ip}:9090/api/v1/targets", timeout=5) as response:
        return list(json.load(response)["data"]["activeTargets"])


def print_table(rows: list[Row], say: Say) -> None:
    header = ("workload", "started", "ready after (s)", "restarts", "probe failures", "note")
    lines = [header]
    for row in rows:
        pod = row.pod
        ready = "-"
        if pod is not None and not row.must_complete:
            ready = f"{pod.ready_after:.0f}" if pod.ready_after is not None else "NOT READY"
        elif pod is not None:
            ready = "completed" if pod.succeeded else "FAILED"
            if row.flow_state:  # the pod may exit 0 with its flow run Failed: the run's state decides
                ready = "completed" if row.flow_state == "Completed" else "FAILED"
        lines.append((row.workload, row.started, ready, str(pod.restarts if pod else "-"),
                      str(pod.probe_failures if pod else "-"), row.note))  # fmt: skip
    widths = [max(len(line[i]) for line in lines) for i in range(len(header) - 1)]
    for line in lines:
        say("  ".join(cell.ljust(width) for cell, width in zip(line, widths, strict=False)) + "  " + line[-1])


def report_failures(rows: list[Row], say: Say) -> None:
    for row in rows:
        if row.ok or row.pod is None:
            if not row.ok:
                say(f"\n--- {row.workload}: {row.note}")
            continue
        for container in row.pod.containers:
            if container.ready and not row.must_complete:
                continue
            say(f"\n--- {row.workload} / {container.plan.name}: {container.last_error or 'not ready'}")
            say(container.logs(15))


class Interrupted(Exception):
    pass


def _on_signal(signum: int, frame: FrameType | None) -> None:
    del frame
    raise Interrupted(f"signal {signum}")


def rehearse(
    *,
    overlay: str = "dev",
    k8s_dir: Path | None = None,
    ready_timeout: float = 420.0,
    keep: bool = False,
    build: bool = True,
    say: Say = print,
) -> int:
    """Run the rehearsal; return the exit status (0 when every workload came up and every Job completed)."""
    started = time.monotonic()
    root = Path(__file__).resolve().parents[3]
    if build:
        build_images(root, CACHE_DIR / "build", say=say)
    objects = render_overlay(overlay, k8s_dir)
    configmaps, rendered_secrets = rendered_data(objects)
    secrets = {**rehearsal_secrets(os.environ), **rendered_secrets}
    platform = configmaps.get("aic-ml-config", {})
    if "MLFLOW_S3_ENDPOINT_URL" in platform:
        say(f"replaced: ConfigMap aic-ml-config MLFLOW_S3_ENDPOINT_URL {platform['MLFLOW_S3_ENDPOINT_URL']} -> "
            f"http://{S3_ALIAS}:{S3_PORT} (moto, the rehearsal's S3-compatible server)")  # fmt: skip
        platform["MLFLOW_S3_ENDPOINT_URL"] = f"http://{S3_ALIAS}:{S3_PORT}"
    left = remove_leftovers()
    if left:
        say(f"removed the leftovers of interrupted rehearsal(s) {', '.join(left)}")
    run_id = time.strftime("%Y%m%d%H%M%S")
    network = f"aicr-{run_id}"
    state_dir = Path(tempfile.mkdtemp(prefix=f"run-{run_id}-", dir=CACHE_DIR))
    services = of_kind(objects, "Service")
    app_image = os.environ.get("AIC_REHEARSAL_IMAGE", APP_IMAGE)  # another local image, e.g. a candidate fix
    images = {repo: app_image for repo in APP_REPOSITORIES}
    images.update({"docker.io/library/postgres": EXTERNALS_IMAGE, "postgres": EXTERNALS_IMAGE})
    say(f"replaced: images {', '.join(APP_REPOSITORIES)} -> {app_image}; postgres -> {EXTERNALS_IMAGE}")
    ctx = PodContext(network=network, run_id=run_id, state_dir=state_dir, configmaps=configmaps, secrets=secrets,
                     services=services, images=images)  # fmt: skip
    rows: list[Row] = []
    previous = {sig: signal.signal(sig, _on_signal) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        podman("network", "create", "--label", f"io.aic.rehearsal.run={run_id}", network)
        status = _run(objects, ctx, rows, ready_timeout, say)
    except (KubeError, Interrupted) as error:
        say(f"error: {error}")
        status = 2
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        if rows:
            say("")
            print_table(rows, say)
            report_failures(rows, say)
        if keep:
            say(f"\nkept: network {network}, containers labelled io.aic.rehearsal.run={run_id}")
        else:
            remove_run(run_id, network)
            shutil.rmtree(state_dir, ignore_errors=True)  # it holds the Secrets' files
    say(f"\nrehearsal took {time.monotonic() - started:.0f}s; " + ("ok" if status == 0 else "FAILED"))
    return status


def _run(objects: list[KubeObject], ctx: PodContext, rows: list[Row], ready_timeout: float, say: Say) -> int:
    say("external parts: PostgreSQL, S3 (moto)")
    postgres = start_pod(
        "postgresql", postgres_pod(), ctx, aliases=[PG_ALIAS, "postgresql-service.aic-platform"]
    )
    rows.append(Row("external/postgresql", "yes", postgres, "as " + PG_ALIAS))
    moto = start_pod("s3", s3_pod(), ctx, aliases=[S3_ALIAS, "s3-rehearsal"])
    rows.append(Row("external/s3 (moto)", "yes", moto))
    if not wait_ready([postgres, moto], 120, say):
        raise KubeError("PostgreSQL or the S3 server did not become ready")
    bucket = ctx.configmaps.get("aic-ml-config", {}).get(
        "MLFLOW_ARTIFACTS_DESTINATION", "s3://aic-mlflow-artifacts"
    )
    bucket = bucket.removeprefix("s3://").split("/", 1)[0]
    create_bucket(moto, bucket, ctx.secrets.get("mlflow-s3", {}))
    rows[-1].note = f"bucket {bucket} created"

    # As after `kubectl apply`: the Jobs and the Deployments start together; a Deployment that needs what a
    # Job makes (databases, MLflow users) restarts until it is there, a Job retries up to its backoffLimit.
    jobs: list[tuple[Row, int]] = []
    for job in of_kind(objects, "Job"):
        pod = start_pod(name_of(job), pod_spec(job) or {}, ctx, labels=pod_template_labels(job), kind="Job")
        jobs.append((Row(f"Job/{name_of(job)}", "yes", pod, must_complete=True),
                     int((job.get("spec") or {}).get("backoffLimit", 6))))  # fmt: skip
        rows.append(jobs[-1][0])
    app_pods: list[Pod] = []
    for deployment in of_kind(objects, "Deployment"):
        name = name_of(deployment)
        replicas = int((deployment.get("spec") or {}).get("replicas", 1))
        if replicas == 0:
            rows.append(Row(f"Deployment/{name}", "skipped", note="replicas: 0 in this overlay"))
            continue
        labels = pod_template_labels(deployment)
        spec = pod_spec(deployment) or {}
        try:
            pod = start_pod(
                name, spec, ctx, aliases=aliases_for(labels, of_kind(objects, "Service")), labels=labels
            )
        except KubeError as error:
            rows.append(Row(f"Deployment/{name}", "FAILED", note=str(error)[:200]))
            continue
        notes = []
        if spec.get("automountServiceAccountToken"):
            notes.append("no API server: no token")
        if replicas > 1:
            notes.append(f"1 of {replicas} replicas")
        rows.append(Row(f"Deployment/{name}", "yes", pod, "; ".join(notes)))
        app_pods.append(pod)
    say(f"started {len(jobs)} Job pod(s) and {len(app_pods)} Deployment pod(s); waiting up to "
        f"{ready_timeout:.0f}s")  # fmt: skip
    wait_ready(app_pods, ready_timeout, say, jobs=jobs)
    for row, _ in jobs:
        assert row.pod is not None
        row.note = "exit 0" if row.pod.succeeded else f"exit {row.pod.containers[0].exit_code}"

    running = [RunningPod(p.infra, p.labels, pod_ports(pod_spec_of(objects, p.name))) for p in app_pods]
    config = scrape_config(objects, running)
    ctx.configmaps["rehearsal-prometheus"] = {"prometheus.yml": yaml.safe_dump(config, sort_keys=False)}
    prometheus = start_pod("prometheus", prometheus_pod(), ctx)
    prom_row = Row("external/prometheus", "yes", prometheus)
    rows.append(prom_row)
    wanted = sum(len(job["static_configs"][0]["targets"]) for job in config["scrape_configs"])
    if wait_ready([prometheus], 60, say):
        prom_row.note = _targets_note(prometheus, wanted)

    flow_runs(objects, ctx, app_pods, rows, say)

    for cron in of_kind(objects, "CronJob"):
        say(f"CronJob {name_of(cron)}: its job's pod, once")
        job_spec = ((cron.get("spec") or {}).get("jobTemplate") or {}).get("spec") or {}
        pod = start_pod(f"{name_of(cron)}-once", pod_spec(cron) or {}, ctx, labels=pod_template_labels(cron),
                        kind="Job")  # fmt: skip
        row = Row(f"CronJob/{name_of(cron)}", "yes", pod, must_complete=True)
        rows.append(row)
        ok = run_to_completion(pod, 300, int(job_spec.get("backoffLimit", 6)), others=app_pods)
        row.note = "exit 0" if ok else f"exit {pod.containers[0].exit_code}"
        if ok:
            rows.append(restore_verify(cron, ctx, app_pods))
    for pod in app_pods:
        pod.tick()
    return 0 if all(row.ok for row in rows) else 1


def _targets_note(prometheus: Pod, wanted: int) -> str:
    deadline = time.monotonic() + 45
    targets: list[dict[str, Any]] = []
    while time.monotonic() < deadline:
        try:
            targets = prometheus_targets(prometheus)
        except OSError:
            targets = []
        if targets and all(t.get("health") != "unknown" for t in targets):
            break
        time.sleep(3)
    up = [t for t in targets if t.get("health") == "up"]
    down = [
        f"{t['labels'].get('job')} {t['scrapeUrl']}: {t.get('lastError')}" for t in targets if t not in up
    ]
    note = f"targets up {len(up)}/{wanted}"
    return note + (f" (down: {'; '.join(down)})" if down else "")


def pod_spec_of(objects: list[KubeObject], name: str) -> dict[str, Any]:
    for obj in objects:
        if (obj.get("metadata") or {}).get("name") == name and pod_spec(obj) is not None:
            return pod_spec(obj) or {}
    return {}


# --- step 3-4: the cluster's Prefect, flow-run Jobs, backup restore ----------------------------------


def _pod_env(objects: list[KubeObject], name: str, ctx: PodContext) -> dict[str, str]:
    """The resolved env of the first container of workload `name` (as start_pod gives it)."""
    spec = pod_spec_of(objects, name)
    containers = spec.get("containers") or [{}]
    try:
        return container_env(containers[0], spec, name, ctx)[0]
    except KubeError:
        return {}


WORKER_DEPLOYMENTS = {"prefect-worker-cpu": "k8s-cpu", "prefect-worker-gpu": "k8s-gpu"}
PIPELINE = "ml-pipeline/k8s-cpu"
TRAINING_DATA_CLAIM = "training-data-pvc"  # the pools' training_data_claim default
FLOW_RUN_TIMEOUT_S = 600.0


async def _take_scheduled(client: Any, pool: str) -> list[Any]:
    """What a worker of `pool` does when it polls: take the due runs by proposing Pending."""
    from prefect.client.schemas.responses import SetStateStatus
    from prefect.states import Pending

    taken = []
    for response in await client.get_scheduled_flow_runs_for_work_pool(pool):
        result = await client.set_flow_run_state(response.flow_run.id, Pending())
        if result.status == SetStateStatus.ACCEPT:
            taken.append(response.flow_run.id)
    return taken


@dataclass
class FlowRunPod:
    row: Row
    flow_run_id: Any
    notes: list[str]


def start_flow_run_job(job: Any, ctx: PodContext, say: Say) -> FlowRunPod:
    """Start the Job prefect-kubernetes rendered for a run; a k8s-gpu Job without its GPU request."""
    from aicml.kube.rehearsal.flowrun import strip_gpu

    manifest, notes = job.manifest, []
    if job.pool == "k8s-gpu":
        manifest, removal = strip_gpu(job.manifest)
        notes = removal.lines() if removal else ["no GPU request found"]
    template = manifest["spec"]["template"]
    name = f"{job.deployment.split('/')[0]}-{str(job.flow_run_id)[:8]}"
    workload = f"FlowRun/{job.deployment} ({job.pool})"
    say(
        f"{workload}: flow run {job.flow_run_id} as Job pod {name}"
        + (f" ({'; '.join(notes)})" if notes else "")
    )
    try:
        pod = start_pod(
            name, template["spec"], ctx, labels=template.get("metadata", {}).get("labels", {}), kind="Job"
        )
    except KubeError as error:
        return FlowRunPod(Row(workload, "FAILED", note=str(error)[:200]), job.flow_run_id, notes)
    return FlowRunPod(Row(workload, "yes", pod, must_complete=True), job.flow_run_id, notes)


def seed_training_data(ctx: PodContext, say: Say, rows: int = 5000) -> None:
    """Put the demo churn data where ml-pipeline/k8s-cpu's preset reads it (`source` under /mnt/data, the
    pool's training-data claim), as an operator's ingest would have: clean parts only, owned by 10001."""
    from aicml.data.demo import write_demo_data

    root = Path(__file__).resolve().parents[3]
    presets = yaml.safe_load((root / "deployments" / "presets.yaml").read_text())
    source = str(presets[PIPELINE]["source"])
    relative = Path(source).parent.relative_to("/mnt/data")
    target = Path(pvc_path(TRAINING_DATA_CLAIM, ctx, 10001)) / relative
    target.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        files = write_demo_data(Path(tmp), rows=rows)
        for part in sorted(Path(tmp).glob(Path(files.clean_glob).name)):
            shutil.copyfile(part, target / part.name)
    for path in [target, *target.iterdir()]:
        os.chown(path, 10001, 10001)
    say(f"seeded claim {TRAINING_DATA_CLAIM} with demo churn data ({rows} rows) for {source}")


def flow_runs(
    objects: list[KubeObject], ctx: PodContext, app_pods: list[Pod], rows: list[Row], say: Say
) -> None:
    """Register the platform on the rehearsal's Prefect server (the command a cluster uses), run ml-pipeline
    on k8s-cpu as the Job prefect-kubernetes renders, and play the workers' part for the runs it starts
    (its train stage on k8s-gpu): there is no API server for the workers to create Jobs on, so they are
    stopped once they have shown that they start and pass their probes."""
    prefect = next((pod for pod in app_pods if pod.name == "prefect-server"), None)
    if prefect is None or not prefect.ready:
        rows.append(Row("Prefect: pools and deployments", "no", note="prefect-server is not ready"))
        return
    from aicml.kube.prefect_setup import api_settings, register_platform, with_client
    from aicml.kube.rehearsal.flowrun import (
        render_flow_run_job,
        report_exit,
        take_flow_run,
        wait_for_final_state,
    )

    api_url = f"http://{prefect.ip}:4200/api"
    auth = _pod_env(objects, "prefect-server", ctx).get("PREFECT_SERVER_API_AUTH_STRING")
    pod_api_url = ctx.configmaps.get("aic-ml-config", {}).get("PREFECT_API_URL", api_url)
    say(f"Prefect at {api_url}: registering pools, deployments, limits, automation")
    try:
        report = register_platform(api_url, auth_string=auth, project_dir=Path(__file__).resolve().parents[3])
    except Exception as error:  # reported in the table; the rest of the run goes on
        rows.append(Row("Prefect: pools and deployments", "FAILED", note=str(error).splitlines()[-1][:200]))
        return
    rows.append(Row("Prefect: pools and deployments", "yes", note=f"{len(report.applied)} objects applied"))
    for row in rows:
        if row.pod is not None and row.pod.name in WORKER_DEPLOYMENTS:
            row.pod.stop()
            row.note = "; ".join(
                filter(None, [row.note, "stopped before the flow runs (no API server for Jobs)"])
            )
    seed_training_data(ctx, say)
    try:
        runs = [start_flow_run_job(take_flow_run(api_url, PIPELINE, auth_string=auth, pod_api_url=pod_api_url),
                                   ctx, say)]  # fmt: skip
    except Exception as error:
        rows.append(Row(f"FlowRun/{PIPELINE}", "FAILED", note=str(error).splitlines()[-1][:200]))
        return
    deadline, next_poll = time.monotonic() + FLOW_RUN_TIMEOUT_S, 0.0
    while time.monotonic() < deadline and not all(r.row.pod is None or r.row.pod.finished for r in runs):
        for each in [*app_pods, *(r.row.pod for r in runs if r.row.pod is not None)]:
            each.tick()
        if time.monotonic() >= next_poll:
            next_poll = time.monotonic() + 5
            for pool in WORKER_DEPLOYMENTS.values():
                with api_settings(api_url, auth):
                    taken = with_client(_take_scheduled, pool)
                for run_id in taken:
                    job = render_flow_run_job(api_url, run_id, auth_string=auth, pod_api_url=pod_api_url)
                    runs.append(start_flow_run_job(job, ctx, say))
        time.sleep(1)
    for run in runs:
        pod = run.row.pod
        try:
            if pod is not None and pod.finished:  # the worker's part: a non-zero exit proposes Crashed
                run.row.flow_state = report_exit(api_url, run.flow_run_id, pod.containers[0].exit_code or 0,
                                                 auth_string=auth)  # fmt: skip
            else:
                if pod is not None:
                    pod.stop()
                    run.notes.append(f"stopped after {FLOW_RUN_TIMEOUT_S:.0f}s")
                final = wait_for_final_state(api_url, run.flow_run_id, auth_string=auth, timeout=10)
                run.row.flow_state = final.state.name if final.state else "no state"
        except Exception as error:  # a timeout or an API error: reported
            run.row.flow_state = f"not final ({str(error)[:80]})"
        run.row.note = "; ".join([f"flow run {run.row.flow_state}", *run.notes])
        rows.append(run.row)
    agents = next((row for row in rows if row.workload == "Deployment/agent-orchestration-service"), None)
    if agents is not None and agents.pod is not None and agents.pod.ready:
        agents.note = "; ".join(filter(None, [agents.note, agent_coordination(agents.pod)]))
        agents.checks_ok = "FAILED" not in agents.note
    serving = next((row for row in rows if row.workload == "Deployment/model-serving" and row.pod), None)
    if serving is not None and serving.pod is not None and runs[0].row.flow_state == "Completed":
        say("model-serving: waiting for it to serve the champion")
        wait_ready([serving.pod], 180, say)
        served = served_model(serving.pod, ctx)
        serving.note = "; ".join(filter(None, [serving.note, served]))
        serving.checks_ok = "not served" not in served


def _http_json(url: str, token: str, method: str = "GET", body: Any = None) -> Any:
    data = json.dumps(body).encode() if body is not None else None
    headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}
    request = urllib.request.Request(url, data=data, headers=headers, method=method)
    with urllib.request.urlopen(request, timeout=30) as response:
        return json.load(response)


def agent_coordination(pod: Pod) -> str:
    """Register a rule agent, activate it, store a one-step coordination and invoke it, with the service's
    token: what a client of agent-orchestration does."""
    env = pod.containers[0].plan.env
    # Registering and storing are the admin's; invoking is an invoker's, as the API's roles say.
    token, admin = env.get("AIC_AGENTS_TOKEN", ""), env.get("AIC_AGENTS_ADMIN_TOKEN", "")
    base = f"http://{pod.ip}:8080/v1"
    agent = {"name": "rehearsal-reply", "version": "1",
             "implementation": {"kind": "rule", "rule": "template", "config": {"template": "Routed to {skill}"}}}  # fmt: skip
    try:
        _http_json(f"{base}/agents", admin, "POST", agent)
        _http_json(f"{base}/agents/rehearsal-reply/versions/1/transition", admin, "POST", {"to": "active"})
        graph = {"graph": {"pattern": "pipeline", "steps": [{"agent": "rehearsal-reply"}]}}
        _http_json(f"{base}/coordinations/rehearsal", admin, "PUT", graph)
        reply = _http_json(f"{base}/coordinations/rehearsal/invoke", token, "POST",
                           {"correlation_id": "rehearsal-1", "payload": {"skill": "billing"}})  # fmt: skip
    except (OSError, ValueError) as error:
        return f"coordination FAILED: {error}"
    return f"coordination answered: {reply.get('outcome')} {reply.get('payload', {}).get('text')!r}"


def served_model(pod: Pod, ctx: PodContext) -> str:
    """`model <name> version <v> served`, from the server's Open Inference Protocol metadata."""
    args = pod.containers[0].plan.run_args
    uri = next((arg for arg in args if arg.startswith("models:/")), "models:/churn@champion")
    name = uri.removeprefix("models:/").split("@")[0].split("/")[0]
    token = ctx.secrets.get("model-serving-token", {}).get("token", "")
    request = urllib.request.Request(f"http://{pod.ip}:8080/v2/models/{name}",
                                     headers={"Authorization": f"Bearer {token}"} if token else {})  # fmt: skip
    try:
        with urllib.request.urlopen(request, timeout=5) as response:
            meta = json.load(response)
    except OSError as error:
        return f"model {name}: not served ({error})"
    return f"model {name} version {', '.join(map(str, meta.get('versions') or []))} served ({uri})"


def restore_verify(cron: KubeObject, ctx: PodContext, app_pods: list[Pod]) -> Row:
    """`aicml restore --verify` on the backup just written, in the backup pod's shape (same env, volumes)."""
    spec = json.loads(json.dumps(pod_spec(cron) or {}))
    container = spec["containers"][0]
    backups = next(
        (m["mountPath"] for m in container.get("volumeMounts") or [] if m["name"] == "backups"), "/backups"
    )
    container["command"] = ["aicml", "restore", backups, "--verify", "--no-owner"]
    container.pop("args", None)
    spec["restartPolicy"] = "Never"
    pod = start_pod(f"{name_of(cron)}-restore", spec, ctx, labels=pod_template_labels(cron), kind="Job")
    ok = run_to_completion(pod, 300, 0, others=app_pods)
    return Row("aicml restore --verify", "yes", pod, "exit 0" if ok else f"exit {pod.containers[0].exit_code}",
               must_complete=True)  # fmt: skip
