"""Our own policy checks on rendered manifests: Pod Security `restricted`, resources, images, secrets,
default-deny networking and least-privilege RBAC. Each rule is a pure function of the objects."""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Iterator
from typing import Any

from aicml.kube.findings import Violation
from aicml.kube.render import KubeObject, containers, object_ref, pod_spec
from aicml.kube.secrets import SECRET_SPECS

Rule = Callable[[list[KubeObject]], list[Violation]]

# Volume types the Pod Security Standard `restricted` allows.
RESTRICTED_VOLUME_TYPES = frozenset(
    {
        "configMap",
        "csi",
        "downwardAPI",
        "emptyDir",
        "ephemeral",
        "persistentVolumeClaim",
        "projected",
        "secret",
    }
)
GPU_RESOURCE = "nvidia.com/gpu"
GPU_NODE_SELECTOR = {"accelerator": "nvidia-tesla-gpu"}
SECRET_ENV_NAME = re.compile(
    r"PASSWORD|PASSWD|SECRET|TOKEN|API_KEY|ACCESS_KEY|PRIVATE_KEY|CREDENTIAL", re.IGNORECASE
)
# user:password@ inside a URL; a password that is a `$(VAR)` reference is not a literal.
URL_CREDENTIAL = re.compile(r"://[^/\s:@]+:(?!\$\()[^@\s/]+@")
FORBIDDEN_RBAC_RESOURCES = frozenset({"pods/exec", "pods/attach", "pods/portforward", "nodes/proxy"})
FORBIDDEN_RBAC_VERBS = frozenset({"escalate", "bind", "impersonate"})


def _workloads(objects: Iterable[KubeObject]) -> Iterator[tuple[KubeObject, dict[str, Any]]]:
    for obj in objects:
        spec = pod_spec(obj)
        if spec is not None:
            yield obj, spec


def check_pod_security(objects: list[KubeObject]) -> list[Violation]:
    """Pod Security Standard `restricted` on every pod template (what admission would refuse)."""
    found: list[Violation] = []
    for obj, spec in _workloads(objects):
        ref = object_ref(obj)

        def flag(message: str, ref: str = ref) -> None:
            found.append(Violation("pss-restricted", ref, message))

        for host_field in ("hostNetwork", "hostPID", "hostIPC"):
            if spec.get(host_field):
                flag(f"{host_field} is true")
        for volume in spec.get("volumes") or []:
            kinds = set(volume) - {"name"}
            if not kinds <= RESTRICTED_VOLUME_TYPES:
                flag(f"volume {volume.get('name')!r} has type {sorted(kinds - RESTRICTED_VOLUME_TYPES)}")
        pod_ctx = spec.get("securityContext") or {}
        if pod_ctx.get("runAsUser") == 0:
            flag("pod runs as UID 0")
        pod_seccomp = (pod_ctx.get("seccompProfile") or {}).get("type")
        for container in containers(spec):
            name = container.get("name")
            ctx = container.get("securityContext") or {}
            if ctx.get("runAsNonRoot", pod_ctx.get("runAsNonRoot")) is not True:
                flag(f"container {name!r} does not set runAsNonRoot: true")
            if ctx.get("runAsUser") == 0:
                flag(f"container {name!r} runs as UID 0")
            if ctx.get("privileged"):
                flag(f"container {name!r} is privileged")
            if ctx.get("allowPrivilegeEscalation") is not False:
                flag(f"container {name!r} does not set allowPrivilegeEscalation: false")
            caps = ctx.get("capabilities") or {}
            if "ALL" not in (caps.get("drop") or []):
                flag(f"container {name!r} does not drop ALL capabilities")
            added = set(caps.get("add") or []) - {"NET_BIND_SERVICE"}
            if added:
                flag(f"container {name!r} adds capabilities {sorted(added)}")
            seccomp = (ctx.get("seccompProfile") or {}).get("type") or pod_seccomp
            if seccomp not in {"RuntimeDefault", "Localhost"}:
                flag(f"container {name!r} has no RuntimeDefault or Localhost seccomp profile")
            for port in container.get("ports") or []:
                if port.get("hostPort"):
                    flag(f"container {name!r} uses hostPort {port['hostPort']}")
    return found


def check_read_only_root(objects: list[KubeObject]) -> list[Violation]:
    """Beyond `restricted`: every container has a read-only root filesystem (writable paths are volumes)."""
    return [
        Violation(
            "read-only-root", object_ref(obj), f"container {c.get('name')!r} has a writable root filesystem"
        )
        for obj, spec in _workloads(objects)
        for c in containers(spec)
        if (c.get("securityContext") or {}).get("readOnlyRootFilesystem") is not True
    ]


def check_resources(objects: list[KubeObject]) -> list[Violation]:
    """Requests and limits of CPU and memory on every container; GPUs requested == limited and scheduled
    on GPU nodes only (the platform's node selector and toleration)."""
    found: list[Violation] = []
    for obj, spec in _workloads(objects):
        ref = object_ref(obj)
        wants_gpu = False
        for container in containers(spec):
            name = container.get("name")
            resources = container.get("resources") or {}
            requests = resources.get("requests") or {}
            limits = resources.get("limits") or {}
            for kind in ("cpu", "memory"):
                if kind not in requests:
                    found.append(Violation("resources", ref, f"container {name!r} has no {kind} request"))
                if kind not in limits:
                    found.append(Violation("resources", ref, f"container {name!r} has no {kind} limit"))
            if GPU_RESOURCE in requests or GPU_RESOURCE in limits:
                wants_gpu = True
                if str(requests.get(GPU_RESOURCE)) != str(limits.get(GPU_RESOURCE)):
                    found.append(
                        Violation("resources", ref, f"container {name!r}: {GPU_RESOURCE} requests != limits")
                    )
        if wants_gpu:
            selector = spec.get("nodeSelector") or {}
            if any(selector.get(key) != value for key, value in GPU_NODE_SELECTOR.items()):
                found.append(Violation("resources", ref, f"GPU pod lacks nodeSelector {GPU_NODE_SELECTOR}"))
            tolerates = any(
                t.get("key") == GPU_RESOURCE
                and t.get("operator") == "Exists"
                and t.get("effect") == "NoSchedule"
                for t in spec.get("tolerations") or []
            )
            if not tolerates:
                found.append(
                    Violation("resources", ref, f"GPU pod lacks toleration {GPU_RESOURCE} Exists NoSchedule")
                )
    return found


def image_is_pinned(image: str) -> bool:
    """True for `name:tag` (tag not `latest`) or `name@sha256:...`."""
    if "@" in image:
        return True
    last = image.rsplit("/", 1)[-1]
    if ":" not in last:
        return False
    return last.rsplit(":", 1)[1] != "latest"


def check_images(objects: list[KubeObject]) -> list[Violation]:
    """Every image carries an explicit tag other than `latest`, or a digest."""
    return [
        Violation(
            "image-pinned",
            object_ref(obj),
            f"container {c.get('name')!r} uses unpinned image {c.get('image')!r}",
        )
        for obj, spec in _workloads(objects)
        for c in containers(spec)
        if not image_is_pinned(str(c.get("image", "")))
    ]


def check_secret_literals(objects: list[KubeObject]) -> list[Violation]:
    """No credential in a rendered manifest: no Secret with data, no literal value for a secret-like env
    var, no `user:password@` in an env value or a ConfigMap."""
    found: list[Violation] = []
    for obj in objects:
        ref = object_ref(obj)
        if obj.get("kind") == "Secret" and (obj.get("data") or obj.get("stringData")):
            found.append(
                Violation(
                    "no-secret-literal",
                    ref,
                    "Secret with data is rendered; `aicml k8s apply` creates secrets",
                )
            )
        if obj.get("kind") == "ConfigMap":
            for key, value in (obj.get("data") or {}).items():
                if URL_CREDENTIAL.search(str(value)):
                    found.append(
                        Violation("no-secret-literal", ref, f"key {key!r} holds a URL with a password")
                    )
    for obj, spec in _workloads(objects):
        ref = object_ref(obj)
        for container in containers(spec):
            for env in container.get("env") or []:
                if "value" not in env:
                    continue
                value = str(env.get("value") or "")
                literal = value and not value.startswith("$(")
                if SECRET_ENV_NAME.search(str(env.get("name", ""))) and literal:
                    found.append(
                        Violation(
                            "no-secret-literal",
                            ref,
                            f"env {env['name']!r} of {container.get('name')!r} is a literal",
                        )
                    )
                if URL_CREDENTIAL.search(value):
                    found.append(
                        Violation(
                            "no-secret-literal", ref, f"env {env.get('name')!r} holds a URL with a password"
                        )
                    )
            for arg in [*(container.get("command") or []), *(container.get("args") or [])]:
                if URL_CREDENTIAL.search(str(arg)):
                    found.append(
                        Violation("no-secret-literal", ref, "a command argument holds a URL with a password")
                    )
    return found


def check_secret_refs(objects: list[KubeObject]) -> list[Violation]:
    """Every Secret a pod reads is one that `aicml k8s apply` creates, with the key it reads."""
    known = {spec.name: set(spec.key_names) for spec in SECRET_SPECS}
    found: list[Violation] = []
    for obj, spec in _workloads(objects):
        for container in containers(spec):
            for env in container.get("env") or []:
                ref = ((env.get("valueFrom") or {}).get("secretKeyRef")) or None
                if ref is None:
                    continue
                name, key = ref.get("name"), ref.get("key")
                if name not in known:
                    found.append(Violation("secret-refs", object_ref(obj), f"reads unknown Secret {name!r}"))
                elif key not in known[name]:
                    found.append(
                        Violation("secret-refs", object_ref(obj), f"reads unknown key {key!r} of {name!r}")
                    )
            for source in container.get("envFrom") or []:
                if "secretRef" in source:
                    found.append(
                        Violation(
                            "secret-refs",
                            object_ref(obj),
                            "envFrom secretRef exposes every key; use secretKeyRef",
                        )
                    )
    return found


def _namespaces(objects: Iterable[KubeObject]) -> set[str]:
    names: set[str] = set()
    for obj in objects:
        meta = obj.get("metadata") or {}
        if obj.get("kind") == "Namespace":
            names.add(str(meta.get("name")))
        elif meta.get("namespace"):
            names.add(str(meta["namespace"]))
    return names


def is_default_deny(policy: KubeObject) -> bool:
    spec = policy.get("spec") or {}
    selector = spec.get("podSelector")
    selects_all = selector == {} or (
        isinstance(selector, dict)
        and not selector.get("matchLabels")
        and not selector.get("matchExpressions")
    )
    return (
        selects_all
        and {"Ingress", "Egress"} <= set(spec.get("policyTypes") or [])
        and not spec.get("ingress")
        and not spec.get("egress")
    )


def check_default_deny(objects: list[KubeObject]) -> list[Violation]:
    """Every namespace the manifests touch has a NetworkPolicy denying all ingress and egress."""
    denied = {
        str((obj.get("metadata") or {}).get("namespace"))
        for obj in objects
        if obj.get("kind") == "NetworkPolicy" and is_default_deny(obj)
    }
    return [
        Violation(
            "default-deny", f"Namespace/{name}", "no default-deny NetworkPolicy (podSelector {}, no rules)"
        )
        for name in sorted(_namespaces(objects) - denied)
    ]


def check_rbac(objects: list[KubeObject]) -> list[Violation]:
    """Least privilege: namespaced Roles only, no wildcards, no secrets list/watch, no exec/attach/port-forward,
    no escalate/bind/impersonate; API tokens mounted only into pods whose ServiceAccount has a Role."""
    found: list[Violation] = []
    bound_accounts: set[str] = set()
    for obj in objects:
        kind = obj.get("kind")
        ref = object_ref(obj)
        if kind in {"ClusterRole", "ClusterRoleBinding"}:
            found.append(Violation("rbac", ref, f"{kind} grants cluster scope; use a namespaced Role"))
        if kind == "RoleBinding":
            if (obj.get("roleRef") or {}).get("kind") != "Role":
                found.append(Violation("rbac", ref, "binds a ClusterRole; bind a namespaced Role"))
            for subject in obj.get("subjects") or []:
                if subject.get("kind") != "ServiceAccount":
                    found.append(
                        Violation("rbac", ref, f"binds {subject.get('kind')} {subject.get('name')!r}")
                    )
                else:
                    bound_accounts.add(str(subject.get("name")))
        if kind != "Role":
            continue
        for rule in obj.get("rules") or []:
            groups, resources, verbs = (set(rule.get(k) or []) for k in ("apiGroups", "resources", "verbs"))
            if "*" in groups | resources | verbs:
                found.append(Violation("rbac", ref, f"wildcard in rule {rule}"))
            if "secrets" in resources and verbs & {"list", "watch", "*"}:
                found.append(Violation("rbac", ref, "may list or watch secrets"))
            for resource in sorted(resources & FORBIDDEN_RBAC_RESOURCES):
                found.append(Violation("rbac", ref, f"grants {resource}"))
            for verb in sorted(verbs & FORBIDDEN_RBAC_VERBS):
                found.append(Violation("rbac", ref, f"grants verb {verb}"))
    for obj, spec in _workloads(objects):
        if spec.get("automountServiceAccountToken") is False:
            continue
        account = spec.get("serviceAccountName") or "default"
        if account not in bound_accounts:
            found.append(
                Violation(
                    "rbac", object_ref(obj), f"mounts an API token of {account!r}, which needs no API access"
                )
            )
    return found


RULES: dict[str, Rule] = {
    "pss-restricted": check_pod_security,
    "read-only-root": check_read_only_root,
    "resources": check_resources,
    "image-pinned": check_images,
    "no-secret-literal": check_secret_literals,
    "secret-refs": check_secret_refs,
    "default-deny": check_default_deny,
    "rbac": check_rbac,
}


def run_policies(objects: list[KubeObject]) -> list[Violation]:
    """Every rule over every object; empty when the manifests are clean."""
    return [violation for rule in RULES.values() for violation in rule(objects)]
