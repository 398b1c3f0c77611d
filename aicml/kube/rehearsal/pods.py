"""A Kubernetes pod spec run as podman containers, the way the kubelet would run it.

`start_pod(name, pod_spec, ctx, aliases=...)` is the one entry point: a Deployment's template, a Job's
template or a flow-run Job that prefect-kubernetes rendered all start the same way. Each pod gets an
infra container (the pause container's role: it holds the network namespace, the hostname and the Service
aliases on the podman network); every container of the pod joins it, so they reach each other on localhost.

What is translated (the pure part, `plan_container`, is unit-tested without podman):

- command/args exactly, with the kubelet's `$(VAR)` expansion from the container's environment;
- env in the kubelet's order: Service links (`NAME_SERVICE_HOST`..., unless `enableServiceLinks: false`;
  the host is the Service's DNS name, there being no cluster IPs), `envFrom` (ConfigMaps, Secrets, prefix),
  then `env` (`value` with expansion, `configMapKeyRef`, `secretKeyRef`, `fieldRef` for metadata.name,
  metadata.namespace, spec.serviceAccountName, spec.nodeName, status.podIP/hostIP as far as known).
  Values reach podman through its environment (`--env NAME`), never its command line;
- user, group, fsGroup and supplementalGroups (`--user`, `--group-add`), readOnlyRootFilesystem
  (`--read-only` without podman's extra tmpfs mounts), capabilities, no-new-privileges, workingDir;
- volumes: one named podman volume per PVC (owned by the pod's fsGroup, subPath honoured), a tmpfs
  volume per emptyDir shared by the pod's containers, ConfigMap and Secret volumes as read-only files
  (items, defaultMode).

Not translated: resource requests and limits (this machine has 2 cores), node selectors, tolerations,
affinity and GPU requests (no scheduler), seccomp profiles other than the runtime default, and the
ServiceAccount token (no API server: pods that need one are reported by the caller).

Probes (httpGet, tcpSocket, exec) are polled from the host against the pod's IP, as the kubelet does from
the node, honouring initialDelaySeconds, periodSeconds, timeoutSeconds, successThreshold and
failureThreshold; a liveness failure or an exited container restarts it (restartPolicy, with the kubelet's
doubling back-off) and both are counted.
"""

from __future__ import annotations

import json
import os
import re
import socket
import ssl
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aicml.kube.errors import KubeError
from aicml.kube.rehearsal.images import BASE_IMAGE, PODMAN, ULIMITS, podman

NAMESPACE = "aic-ai-ml"
RUN_LABEL = "io.aic.rehearsal.run"
INFRA_LABEL = "io.aic.rehearsal.infra"
_VAR = re.compile(r"\$\$|\$\(([A-Za-z_][A-Za-z0-9_.-]*)\)")
_ENV_NAME = re.compile(r"^[-._a-zA-Z][-._a-zA-Z0-9]*$")
MAX_BACKOFF_S = 300.0


def expand(text: str, env: Mapping[str, str]) -> str:
    """The kubelet's `$(VAR)` expansion: defined names are replaced, `$$` is a literal `$`, others stay."""

    def replace(found: re.Match[str]) -> str:
        if found.group(0) == "$$":
            return "$"
        name = found.group(1)
        return env[name] if name in env else found.group(0)

    return _VAR.sub(replace, text)


def service_link_env(services: Sequence[Mapping[str, Any]], namespace: str = NAMESPACE) -> dict[str, str]:
    """The docker-link variables the kubelet injects for each Service (host: the Service's DNS name)."""
    env: dict[str, str] = {}
    for service in services:
        name = str(service["metadata"]["name"])
        ports = (service.get("spec") or {}).get("ports") or []
        if not ports:
            continue
        host = f"{name}.{namespace}.svc.cluster.local"
        prefix = name.upper().replace("-", "_")
        first = ports[0]
        env[f"{prefix}_SERVICE_HOST"] = host
        env[f"{prefix}_SERVICE_PORT"] = str(first["port"])
        env[f"{prefix}_PORT"] = f"{str(first.get('protocol', 'TCP')).lower()}://{host}:{first['port']}"
        for port in ports:
            proto = str(port.get("protocol", "TCP"))
            if port.get("name"):
                env[f"{prefix}_SERVICE_PORT_{str(port['name']).upper().replace('-', '_')}"] = str(
                    port["port"]
                )
            base = f"{prefix}_PORT_{port['port']}_{proto}"
            env[base] = f"{proto.lower()}://{host}:{port['port']}"
            env[f"{base}_PROTO"] = proto.lower()
            env[f"{base}_PORT"] = str(port["port"])
            env[f"{base}_ADDR"] = host
    return env


@dataclass
class PodContext:
    """What the pods of one rehearsal share: the network, the rendered ConfigMaps, the Secrets' values,
    the Services (for links), and which local image stands for which image of the manifests."""

    network: str
    run_id: str
    state_dir: Path
    configmaps: dict[str, dict[str, str]] = field(default_factory=dict)
    secrets: dict[str, dict[str, str]] = field(default_factory=dict)
    services: list[dict[str, Any]] = field(default_factory=list)
    images: dict[str, str] = field(default_factory=dict)
    namespace: str = NAMESPACE
    prefix: str = "aicr"
    infra_image: str = BASE_IMAGE

    def image_for(self, image: str) -> str:
        """`images` maps a full reference or a repository (without tag) to a local image."""
        if image in self.images:
            return self.images[image]
        repository = image.rsplit("@", 1)[0]
        if ":" in repository.rsplit("/", 1)[-1]:
            repository = repository.rsplit(":", 1)[0]
        return self.images.get(repository, image)


class EnvError(KubeError):
    """A reference in a pod's env that the kubelet would refuse (CreateContainerConfigError)."""


def _lookup(source: Mapping[str, dict[str, str]], kind: str, ref: Mapping[str, Any]) -> str | None:
    name, key = ref.get("name"), ref.get("key")
    data = source.get(str(name))
    if data is None or key not in data:
        if ref.get("optional"):
            return None
        what = f"{kind} {name!r}" if data is None else f"key {key!r} of {kind} {name!r}"
        raise EnvError(f"{what} not found (the kubelet reports CreateContainerConfigError)")
    return data[str(key)]


def container_env(
    container: Mapping[str, Any], pod_spec: Mapping[str, Any], pod_name: str, ctx: PodContext
) -> tuple[dict[str, str], set[str]]:
    """The container's environment in the kubelet's order, and the names whose values come from Secrets."""
    env: dict[str, str] = {}
    secret_names: set[str] = set()
    if pod_spec.get("enableServiceLinks", True):
        env.update(service_link_env(ctx.services, ctx.namespace))
    for source in container.get("envFrom") or []:
        prefix = str(source.get("prefix") or "")
        for kind, store in (("configMapRef", ctx.configmaps), ("secretRef", ctx.secrets)):
            if kind not in source:
                continue
            ref = source[kind]
            data = store.get(str(ref.get("name")))
            if data is None:
                if ref.get("optional"):
                    continue
                what = "ConfigMap" if kind == "configMapRef" else "Secret"
                raise EnvError(f"{what} {ref.get('name')!r} not found (envFrom; CreateContainerConfigError)")
            for key, text in data.items():
                if _ENV_NAME.match(prefix + key):
                    env[prefix + key] = text
                    if kind == "secretRef":
                        secret_names.add(prefix + key)
    fields = {
        "metadata.name": pod_name,
        "metadata.namespace": ctx.namespace,
        "spec.serviceAccountName": str(pod_spec.get("serviceAccountName") or "default"),
        "spec.nodeName": "rehearsal",
    }
    for item in container.get("env") or []:
        name = str(item["name"])
        value: str | None = None
        secret_names.discard(name)
        if "value" in item:
            value = expand(str(item["value"]), env)
        else:
            source = item.get("valueFrom") or {}
            if "secretKeyRef" in source:
                value = _lookup(ctx.secrets, "Secret", source["secretKeyRef"])
                secret_names.add(name)
            elif "configMapKeyRef" in source:
                value = _lookup(ctx.configmaps, "ConfigMap", source["configMapKeyRef"])
            elif "fieldRef" in source:
                value = fields.get(str(source["fieldRef"].get("fieldPath")), "")
            else:
                value = ""  # resourceFieldRef: limits are not applied in the rehearsal
        if value is not None:
            env[name] = value
    return env, secret_names


@dataclass(frozen=True)
class Mount:
    """A volume as podman mounts it: `-v SOURCE:TARGET[:ro]` or `--mount type=volume,...`."""

    source: str
    target: str
    read_only: bool = False

    def args(self) -> list[str]:
        return ["-v", f"{self.source}:{self.target}" + (":ro" if self.read_only else "")]


@dataclass
class ContainerPlan:
    """One container's `podman run` options (secret values kept out of them: they are in `env_secret`)."""

    name: str
    container_name: str
    image: str
    run_args: list[str]
    env_secret: dict[str, str]
    spec: dict[str, Any]
    env: dict[str, str] = field(default_factory=dict)  # the whole environment, for the rehearsal's own calls


def security_args(container: Mapping[str, Any], pod_spec: Mapping[str, Any]) -> list[str]:
    """--user, --group-add, --read-only, capabilities and no-new-privileges from the securityContexts."""
    pod_sc = pod_spec.get("securityContext") or {}
    sc = {**pod_sc, **(container.get("securityContext") or {})}
    args: list[str] = []
    user, group = sc.get("runAsUser"), sc.get("runAsGroup")
    if sc.get("runAsNonRoot") and user == 0:
        raise KubeError("runAsNonRoot with runAsUser 0: the kubelet refuses to start this container")
    if user is not None:
        args += ["--user", f"{user}:{group}" if group is not None else str(user)]
    elif group is not None:
        raise KubeError("runAsGroup without runAsUser cannot be expressed with podman --user")
    extra = list(pod_sc.get("supplementalGroups") or [])
    if pod_sc.get("fsGroup") is not None:
        extra.append(pod_sc["fsGroup"])
    for gid in dict.fromkeys(extra):
        args += ["--group-add", str(gid)]
    if sc.get("readOnlyRootFilesystem"):
        args += ["--read-only", "--read-only-tmpfs=false"]
    caps = sc.get("capabilities") or {}
    for cap in caps.get("drop") or []:
        args += ["--cap-drop", str(cap).lower()]
    for cap in caps.get("add") or []:
        args += ["--cap-add", str(cap).lower()]
    if sc.get("allowPrivilegeEscalation") is False:
        args += ["--security-opt", "no-new-privileges"]
    if sc.get("privileged"):
        args += ["--privileged"]
    return args


def plan_container(
    pod_name: str,
    pod_spec: Mapping[str, Any],
    container: Mapping[str, Any],
    ctx: PodContext,
    volumes: Mapping[str, str],
) -> ContainerPlan:
    """The podman run options for one container of a pod; `volumes` maps a pod volume name to a source
    (a named volume, or a host path) prepared by `start_pod`."""
    env, secret_names = container_env(container, pod_spec, pod_name, ctx)
    cname = f"{ctx.prefix}-{pod_name}-{container['name']}"
    args = ["--name", cname, "--label", f"{RUN_LABEL}={ctx.run_id}", "--label", f"io.aic.rehearsal.pod={pod_name}",
            *ULIMITS, *security_args(container, pod_spec)]  # fmt: skip
    if container.get("workingDir"):
        args += ["--workdir", str(container["workingDir"])]
    for mount in container.get("volumeMounts") or []:
        source = volumes.get(str(mount["name"]))
        if source is None:
            raise KubeError(
                f"container {container['name']!r} mounts volume {mount['name']!r}, which the pod lacks"
            )
        sub = str(mount.get("subPath") or "")
        if sub and not source.startswith("/"):
            raise KubeError(
                f"subPath {sub!r} of volume {mount['name']!r}: only PVC, ConfigMap and Secret volumes"
            )
        if sub:
            source = os.path.join(source, sub)
        args += Mount(source, str(mount["mountPath"]), bool(mount.get("readOnly"))).args()
    secret_env: dict[str, str] = {}
    for name, value in env.items():
        if name in secret_names:
            args += ["--env", name]
            secret_env[name] = value
        else:
            args += ["--env", f"{name}={value}"]
    command = [expand(str(word), env) for word in container.get("command") or []]
    rest = [expand(str(word), env) for word in container.get("args") or []]
    if command:
        args += ["--entrypoint", json.dumps(command[:1])]
        rest = command[1:] + rest
    image = ctx.image_for(str(container.get("image", "")))
    return ContainerPlan(
        str(container["name"]), cname, image, [*args, image, *rest], secret_env, dict(container), env
    )


# --- running ---------------------------------------------------------------------------------------------


@dataclass
class ProbeState:
    spec: dict[str, Any]
    next_at: float
    failures: int = 0
    successes: int = 0


@dataclass
class Container:
    """A running container of a pod, with what the table reports."""

    plan: ContainerPlan
    pod: Pod
    restart_policy: str = "Always"
    started_at: float = 0.0
    ready_at: float | None = None
    ready: bool = False
    restarts: int = 0
    probe_failures: int = 0
    exit_code: int | None = None
    finished: bool = False
    restart_due: float | None = None
    readiness: ProbeState | None = None
    liveness: ProbeState | None = None
    startup: ProbeState | None = None
    last_error: str = ""

    @property
    def name(self) -> str:
        return self.plan.container_name

    def launch(self) -> None:
        env = {**os.environ, **self.plan.env_secret}
        done = subprocess.run([*PODMAN, "run", "-d", f"--network=container:{self.pod.infra}",
                               f"--uts=container:{self.pod.infra}", *self.plan.run_args],
                              capture_output=True, text=True, env=env, check=False)  # fmt: skip
        if done.returncode != 0:
            raise KubeError(f"podman run {self.name} failed: {done.stderr.strip()[-1500:]}")
        self._arm_probes()

    def _arm_probes(self) -> None:
        now = time.monotonic()
        self.started_at = self.started_at or now
        self.ready = False

        def state(key: str) -> ProbeState | None:
            spec = self.plan.spec.get(key)
            return ProbeState(spec, now + float(spec.get("initialDelaySeconds", 0))) if spec else None

        self.readiness, self.liveness, self.startup = (
            state("readinessProbe"),
            state("livenessProbe"),
            state("startupProbe"),
        )

    def state(self) -> tuple[str, int]:
        done = podman("inspect", "--format", "{{.State.Status}} {{.State.ExitCode}}", self.name, check=False)
        if done.returncode != 0:
            return "missing", -1
        status, _, code = done.stdout.strip().partition(" ")
        return status, int(code or 0)

    def restart(self, why: str) -> None:
        self.restarts += 1
        self.last_error = why
        podman("restart", "-t", "5", self.name, check=False)
        self._arm_probes()

    def logs(self, lines: int = 20) -> str:
        done = podman("logs", "--tail", str(lines), self.name, check=False)
        return (done.stdout + done.stderr).strip()


def _port_number(port: Any, container: Mapping[str, Any]) -> int:
    if isinstance(port, int) or str(port).isdigit():
        return int(port)
    for declared in container.get("ports") or []:
        if declared.get("name") == port:
            return int(declared["containerPort"])
    raise KubeError(f"probe port {port!r} is not a named port of container {container.get('name')!r}")


def run_probe(probe: Mapping[str, Any], ip: str, container: Container) -> tuple[bool, str]:
    """One probe, as the kubelet runs it: from the node (here: the host) to the pod IP, or exec inside."""
    timeout = float(probe.get("timeoutSeconds", 1))
    spec = container.plan.spec
    try:
        if "httpGet" in probe:
            get = probe["httpGet"]
            scheme = str(get.get("scheme", "HTTP")).lower()
            url = (
                f"{scheme}://{get.get('host') or ip}:{_port_number(get['port'], spec)}{get.get('path', '/')}"
            )
            request = urllib.request.Request(
                url, headers={h["name"]: h["value"] for h in get.get("httpHeaders") or []}
            )
            context = (
                ssl._create_unverified_context() if scheme == "https" else None
            )  # the kubelet skips verification
            try:
                with urllib.request.urlopen(request, timeout=timeout, context=context) as response:
                    return 200 <= response.status < 400, f"HTTP {response.status}"
            except urllib.error.HTTPError as error:
                return False, f"HTTP {error.code} from {get.get('path', '/')}"
        if "tcpSocket" in probe:
            port = _port_number(probe["tcpSocket"]["port"], spec)
            with socket.create_connection((probe["tcpSocket"].get("host") or ip, port), timeout=timeout):
                return True, "connected"
        if "exec" in probe:
            done = subprocess.run([*PODMAN, "exec", container.name, *probe["exec"]["command"]],
                                  capture_output=True, text=True, timeout=timeout + 5, check=False)  # fmt: skip
            return done.returncode == 0, (done.stdout + done.stderr).strip()[-200:]
    except (OSError, subprocess.TimeoutExpired) as error:
        return False, str(error)
    return False, "unsupported probe (grpc)"


@dataclass
class Pod:
    """A started pod: its infra container, IP and containers."""

    name: str
    infra: str
    ip: str
    aliases: tuple[str, ...]
    labels: dict[str, str]
    containers: list[Container] = field(default_factory=list)
    created_at: float = field(default_factory=time.monotonic)
    kind: str = "Deployment"

    @property
    def ready(self) -> bool:
        return bool(self.containers) and all(c.ready for c in self.containers)

    @property
    def ready_after(self) -> float | None:
        if not self.ready:
            return None
        return max(c.ready_at or 0.0 for c in self.containers) - self.created_at

    @property
    def restarts(self) -> int:
        return sum(c.restarts for c in self.containers)

    @property
    def probe_failures(self) -> int:
        return sum(c.probe_failures for c in self.containers)

    @property
    def finished(self) -> bool:
        return all(c.finished for c in self.containers)

    @property
    def succeeded(self) -> bool:
        return self.finished and all(c.exit_code == 0 for c in self.containers)

    def stop(self) -> None:
        """Stop the pod's containers for good (readiness as last seen stays in the report)."""
        for container in self.containers:
            container.finished = True
            podman("stop", "-t", "5", container.name, check=False)

    def tick(self, now: float | None = None) -> None:
        """Advance the kubelet's loop for this pod once: container states, restarts with back-off, probes."""
        now = time.monotonic() if now is None else now
        for container in self.containers:
            _tick_container(self, container, now)


def _tick_container(pod: Pod, c: Container, now: float) -> None:
    if c.finished:
        return
    if c.restart_due is not None:
        if now >= c.restart_due:
            c.restart_due = None
            c.restart(c.last_error)
        return
    status, code = c.state()
    if status in ("exited", "stopped", "missing"):
        c.ready = False
        c.exit_code = code
        if c.restart_policy == "Never" or (c.restart_policy == "OnFailure" and code == 0):
            c.finished = True
            return
        backoff = min(MAX_BACKOFF_S, 10.0 * 2 ** min(c.restarts, 6))
        c.last_error = f"exited with code {code}"
        c.restart_due = now + backoff
        return
    if status != "running":
        return
    if c.startup is not None:
        ok = _probe_due(pod, c, c.startup, now)
        if ok is False and c.startup.failures >= int(c.startup.spec.get("failureThreshold", 3)):
            c.restart("startup probe failed")
            return
        if not (ok or c.startup.successes):
            return
        c.startup = None if c.startup.successes else c.startup
    if c.liveness is not None:
        ok = _probe_due(pod, c, c.liveness, now)
        if ok is False and c.liveness.failures >= int(c.liveness.spec.get("failureThreshold", 3)):
            c.restart(f"liveness probe failed {c.liveness.failures} times")
            return
    if c.readiness is None:
        if not c.ready:
            c.ready, c.ready_at = True, now
        return
    ok = _probe_due(pod, c, c.readiness, now)
    if (
        ok is True
        and c.readiness.successes >= int(c.readiness.spec.get("successThreshold", 1))
        and not c.ready
    ):
        c.ready, c.ready_at = True, now
    elif ok is False and c.readiness.failures >= int(c.readiness.spec.get("failureThreshold", 3)):
        c.ready = False


def _probe_due(pod: Pod, c: Container, state: ProbeState, now: float) -> bool | None:
    """Run the probe if it is due; None when it was not."""
    if now < state.next_at:
        return None
    state.next_at = now + float(state.spec.get("periodSeconds", 10))
    ok, detail = run_probe(state.spec, pod.ip, c)
    if ok:
        state.successes, state.failures = state.successes + 1, 0
    else:
        state.successes, state.failures = 0, state.failures + 1
        c.probe_failures += 1
        c.last_error = f"probe: {detail}"
    return ok


# --- volumes and pods ------------------------------------------------------------------------------------


def _volume_mountpoint(name: str, ctx: PodContext, options: Sequence[str] = ()) -> str:
    if podman("volume", "exists", name, check=False).returncode != 0:
        podman("volume", "create", "--label", f"{RUN_LABEL}={ctx.run_id}", *options, name)
    return podman("volume", "inspect", "--format", "{{.Mountpoint}}", name).stdout.strip()


def _own(path: str, fs_group: int | None, mode: int = 0o2775) -> None:
    if fs_group is not None:
        os.chown(path, -1, fs_group)
        os.chmod(path, mode)


def pvc_path(claim: str, ctx: PodContext, fs_group: int | None = None) -> str:
    """The host directory of the claim's named volume (created on first use), owned by `fs_group`."""
    path = _volume_mountpoint(f"{ctx.prefix}-pvc-{claim}", ctx)
    _own(path, fs_group)
    return path


def prepare_volumes(pod_name: str, pod_spec: Mapping[str, Any], ctx: PodContext) -> dict[str, str]:
    """Create each volume of the pod; return pod volume name -> the `-v` source (volume name or host path).

    PVCs become host paths of named volumes (so that subPath works on podman 4.3), emptyDirs tmpfs volumes
    (by name), ConfigMaps and Secrets files under the rehearsal's state directory."""
    fs_group = (pod_spec.get("securityContext") or {}).get("fsGroup")
    out: dict[str, str] = {}
    for volume in pod_spec.get("volumes") or []:
        vname = str(volume["name"])
        if "persistentVolumeClaim" in volume:
            path = pvc_path(str(volume["persistentVolumeClaim"]["claimName"]), ctx, fs_group)
            for container in pod_spec.get("containers") or []:
                for mount in container.get("volumeMounts") or []:
                    if mount["name"] == vname and mount.get("subPath"):
                        sub = os.path.join(path, str(mount["subPath"]))
                        os.makedirs(sub, exist_ok=True)
                        _own(sub, fs_group)
            out[vname] = path
        elif "emptyDir" in volume:
            # By name, so that podman mounts the tmpfs (once, shared by the pod's containers). podman 4.3 takes
            # no size for it (it reads size as an XFS quota): sizeLimit is not enforced.
            out[vname] = f"{ctx.prefix}-{pod_name}-{vname}"
            _volume_mountpoint(
                out[vname], ctx, ("--opt", "type=tmpfs", "--opt", "device=tmpfs", "--opt", "o=mode=1777")
            )
        elif "configMap" in volume or "secret" in volume:
            out[vname] = str(_write_files(pod_name, vname, volume, ctx, fs_group))
        else:
            raise KubeError(f"volume {vname!r} of pod {pod_name}: type {sorted(volume)} is not rehearsed")
    return out


def _write_files(
    pod_name: str, vname: str, volume: Mapping[str, Any], ctx: PodContext, fs_group: int | None = None
) -> Path:
    """The files of a ConfigMap or Secret volume. With an fsGroup, the kubelet gives them to that group and
    makes them group-readable (a read-only volume's mask, 0440), so `defaultMode: 0400` is still readable
    by the pod's user through its fsGroup."""
    kind = "configMap" if "configMap" in volume else "secret"
    source = volume[kind]
    ref = str(source.get("name") if kind == "configMap" else source.get("secretName"))
    data = (ctx.configmaps if kind == "configMap" else ctx.secrets).get(ref)
    if data is None:
        if source.get("optional"):
            data = {}
        else:
            raise KubeError(f"pod {pod_name}: {kind} volume {vname!r} names {ref!r}, which does not exist")
    directory = ctx.state_dir / "volumes" / pod_name / vname
    directory.mkdir(parents=True, exist_ok=True)
    default_mode = int(source.get("defaultMode", 0o644))
    items = source.get("items") or [{"key": key, "path": key} for key in data]
    for item in items:
        if item["key"] not in data:
            raise KubeError(f"pod {pod_name}: {kind} {ref!r} has no key {item['key']!r}")
        target = directory / str(item["path"])
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(data[item["key"]])
        mode = int(item.get("mode", default_mode))
        if fs_group is not None:
            os.chown(target, -1, fs_group)
            mode |= 0o440
        os.chmod(target, mode)
    directory.chmod(0o755)
    return directory


def start_pod(
    name: str,
    pod_spec: Mapping[str, Any],
    ctx: PodContext,
    *,
    aliases: Sequence[str] = (),
    labels: Mapping[str, str] | None = None,
    kind: str = "Deployment",
) -> Pod:
    """Start a pod spec as containers on `ctx.network`; return it with its containers launched.

    Init containers run first, each to completion (a failure raises KubeError with its log tail)."""
    infra = f"{ctx.prefix}-{name}"
    volumes = prepare_volumes(name, pod_spec, ctx)
    alias_args = [arg for alias in aliases for arg in ("--network-alias", alias)]
    podman("run", "-d", "--name", infra, "--hostname", name, "--network", ctx.network, *alias_args,
           "--label", f"{RUN_LABEL}={ctx.run_id}", "--label", f"io.aic.rehearsal.pod={name}",
           "--label", f"{INFRA_LABEL}=true", *ULIMITS, "--read-only", "--cap-drop", "all", "--user", "65534:65534", "--entrypoint", '["sleep"]',
           ctx.infra_image, "infinity")  # fmt: skip
    networks = json.loads(podman("inspect", "--format", "{{json .NetworkSettings.Networks}}", infra).stdout)
    ip = str((networks.get(ctx.network) or {}).get("IPAddress", ""))
    pod = Pod(name, infra, ip, tuple(aliases), dict(labels or {}), kind=kind)
    policy = str(pod_spec.get("restartPolicy") or "Always")
    for spec in pod_spec.get("initContainers") or []:
        plan = plan_container(name, pod_spec, spec, ctx, volumes)
        init = Container(plan, pod, restart_policy="Never")
        init.launch()
        code = wait_exit(init.name, timeout=600)
        if code != 0:
            raise KubeError(f"init container {spec['name']} of {name} exited {code}:\n{init.logs()}")
    for spec in pod_spec.get("containers") or []:
        container = Container(plan_container(name, pod_spec, spec, ctx, volumes), pod, restart_policy=policy)
        pod.containers.append(container)
        try:
            container.launch()
        except KubeError as error:
            container.finished, container.exit_code, container.last_error = True, -1, str(error)
    return pod


def wait_exit(container: str, timeout: float) -> int:
    done = podman("wait", container, check=False, timeout=timeout)
    text = done.stdout.strip().splitlines()
    return int(text[-1]) if text and text[-1].lstrip("-").isdigit() else -1


def run_to_completion(
    pod: Pod, timeout: float, backoff_limit: int = 6, *, others: Sequence[Pod] = ()
) -> bool:
    """Drive a Job's pod until its containers finish (restartPolicy OnFailure/Never), or time out; the
    `others` (the running Deployments' pods) keep being probed meanwhile."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and not pod.finished:
        for each in (pod, *others):
            each.tick()
        if pod.restarts > backoff_limit:
            break
        time.sleep(1)
    return pod.succeeded


def remove_leftovers() -> list[str]:
    """Remove what an interrupted earlier rehearsal left (its container names would collide); their runs."""
    runs = podman("ps", "-a", "--filter", f"label={RUN_LABEL}", "--format", f'{{{{index .Labels "{RUN_LABEL}"}}}}',
                  check=False).stdout.split()  # fmt: skip
    for run_id in sorted(set(runs)):
        remove_run(run_id, f"aicr-{run_id}")
    return sorted(set(runs))


def remove_run(run_id: str, network: str | None = None) -> None:
    """Remove every container and volume labelled with the run, then the network."""
    for _ in range(3):  # containers that join an infra container go first; a retry catches the rest
        ids = podman("ps", "-a", "-q", "--filter", f"label={RUN_LABEL}={run_id}", check=False).stdout.split()
        if not ids:
            break
        infra = set(podman("ps", "-a", "-q", "--filter", f"label={INFRA_LABEL}", check=False).stdout.split())
        members = [i for i in ids if i not in infra]
        for batch in (members, [i for i in ids if i in infra]):
            if batch:
                podman("rm", "-f", "-t", "2", *batch, check=False)
    vols = podman("volume", "ls", "-q", "--filter", f"label={RUN_LABEL}={run_id}", check=False).stdout.split()
    if vols:
        podman("volume", "rm", "-f", *vols, check=False)
    if network:
        podman("network", "rm", "-f", network, check=False)
