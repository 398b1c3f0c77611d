"""Our policy rules pass on both overlays, and each one fires on a manifest that breaks it."""

from __future__ import annotations

import copy
from collections.abc import Callable

import pytest

from aicml.kube.policy import RULES, image_is_pinned, run_policies
from aicml.kube.render import KubeObject, find, pod_spec


@pytest.mark.parametrize("overlay", ["dev", "prod"])
def test_overlays_pass_every_policy(rendered: dict[str, list[KubeObject]], overlay: str) -> None:
    assert run_policies(rendered[overlay]) == []


def _broken(
    objects: list[KubeObject], kind: str, name: str, mutate: Callable[[KubeObject], None]
) -> list[KubeObject]:
    copied = copy.deepcopy(objects)
    mutate(find(copied, kind, name))
    return copied


def _container(obj: KubeObject) -> dict:
    spec = pod_spec(obj)
    assert spec is not None
    return spec["containers"][0]


def _set(path: list[str], value: object) -> Callable[[KubeObject], None]:
    def mutate(obj: KubeObject) -> None:
        target: dict = _container(obj)
        for key in path[:-1]:
            target = target.setdefault(key, {})
        target[path[-1]] = value

    return mutate


def _gpu_pod(limits: str = "1") -> Callable[[KubeObject], None]:
    def mutate(obj: KubeObject) -> None:
        resources = _container(obj)["resources"]
        resources["requests"]["nvidia.com/gpu"] = "1"
        resources["limits"]["nvidia.com/gpu"] = limits

    return mutate


def _pod(mutate: Callable[[dict], None]) -> Callable[[KubeObject], None]:
    def apply(obj: KubeObject) -> None:
        spec = pod_spec(obj)
        assert spec is not None
        mutate(spec)

    return apply


NEGATIVE_CASES: list[tuple[str, str, str, Callable[[KubeObject], None], str]] = [
    (
        "pss-restricted",
        "Deployment",
        "model-serving",
        _set(["securityContext", "privileged"], True),
        "privileged",
    ),
    (
        "pss-restricted",
        "Deployment",
        "mlflow-service",
        _set(["securityContext", "allowPrivilegeEscalation"], True),
        "allowPrivilegeEscalation",
    ),
    (
        "pss-restricted",
        "Deployment",
        "mlflow-service",
        _set(["securityContext", "capabilities"], {"add": ["SYS_ADMIN"], "drop": ["ALL"]}),
        "SYS_ADMIN",
    ),
    (
        "pss-restricted",
        "Job",
        "postgresql-ai-ml-init",
        _pod(lambda s: s["securityContext"].pop("runAsNonRoot")),
        "runAsNonRoot",
    ),
    (
        "pss-restricted",
        "Deployment",
        "model-serving",
        _pod(lambda s: s["securityContext"].pop("seccompProfile")),
        "seccomp",
    ),
    (
        "pss-restricted",
        "Deployment",
        "model-serving",
        _pod(lambda s: s.update(hostNetwork=True)),
        "hostNetwork",
    ),
    (
        "pss-restricted",
        "Deployment",
        "model-serving",
        _pod(lambda s: s["volumes"].append({"name": "h", "hostPath": {"path": "/"}})),
        "hostPath",
    ),
    (
        "read-only-root",
        "Deployment",
        "model-serving",
        _set(["securityContext", "readOnlyRootFilesystem"], False),
        "writable",
    ),
    (
        "resources",
        "Deployment",
        "agent-orchestration-service",
        lambda o: _container(o)["resources"].pop("limits"),
        "no cpu limit",
    ),
    # No standing workload holds a GPU any more (GPU work runs as k8s-gpu flow-run Jobs): the GPU rules are
    # shown on a serving pod that is made to ask for one.
    ("resources", "Deployment", "model-serving", _gpu_pod(limits="2"), "requests != limits"),
    ("resources", "Deployment", "model-serving", _gpu_pod(), "toleration"),
    ("resources", "Deployment", "model-serving", _gpu_pod(), "nodeSelector"),
    ("image-pinned", "Deployment", "model-serving", _set(["image"], "ghcr.io/aic/aic-ml:latest"), "unpinned"),
    ("image-pinned", "Deployment", "model-serving", _set(["image"], "ghcr.io/aic/aic-ml"), "unpinned"),
    (
        "no-secret-literal",
        "Deployment",
        "mlflow-service",
        lambda o: _container(o)["env"].append({"name": "DB_PASSWORD", "value": "hunter2"}),
        "literal",
    ),
    (
        "no-secret-literal",
        "Deployment",
        "prefect-server",
        lambda o: _container(o)["env"].append({"name": "URL", "value": "postgresql://u:hunter2@db/x"}),
        "URL with a password",
    ),
    (
        "no-secret-literal",
        "ConfigMap",
        "aic-ml-config",
        lambda o: o["data"].update(DB="postgresql://u:pw@db:5432/x"),
        "URL with a password",
    ),
    (
        "secret-refs",
        "Deployment",
        "model-serving",
        lambda o: _container(o)["env"].append(
            {"name": "X", "valueFrom": {"secretKeyRef": {"name": "nope", "key": "k"}}}
        ),
        "unknown Secret",
    ),
    (
        "secret-refs",
        "Deployment",
        "model-serving",
        lambda o: _container(o).setdefault("envFrom", []).append({"secretRef": {"name": "mlflow-s3"}}),
        "envFrom",
    ),
    (
        "default-deny",
        "NetworkPolicy",
        "default-deny-all",
        lambda o: o["spec"].update(policyTypes=["Ingress"]),
        "default-deny",
    ),
    (
        "rbac",
        "Role",
        "model-deployer",
        lambda o: o["rules"].append({"apiGroups": [""], "resources": ["secrets"], "verbs": ["list"]}),
        "secrets",
    ),
    (
        "rbac",
        "Role",
        "model-deployer",
        lambda o: o["rules"].append({"apiGroups": [""], "resources": ["pods/exec"], "verbs": ["create"]}),
        "pods/exec",
    ),
    ("rbac", "Role", "prefect-worker", lambda o: o["rules"][0].update(verbs=["*"]), "wildcard"),
    (
        "rbac",
        "RoleBinding",
        "model-deployer",
        lambda o: o["roleRef"].update(kind="ClusterRole", name="edit"),
        "ClusterRole",
    ),
    (
        "rbac",
        "Deployment",
        "mlflow-service",
        _pod(lambda s: s.update(automountServiceAccountToken=True)),
        "API token",
    ),
]


@pytest.mark.parametrize(("rule", "kind", "name", "mutate", "message"), NEGATIVE_CASES)
def test_rule_fires_on_a_broken_manifest(
    prod: list[KubeObject],
    rule: str,
    kind: str,
    name: str,
    mutate: Callable[[KubeObject], None],
    message: str,
) -> None:
    findings = RULES[rule](_broken(prod, kind, name, mutate))
    assert findings, f"{rule} did not fire"
    assert all(f.rule == rule for f in findings)
    assert any(message in f.message for f in findings), [str(f) for f in findings]


def test_every_rule_has_a_negative_case() -> None:
    assert {case[0] for case in NEGATIVE_CASES} == set(RULES)


def test_cluster_scoped_rbac_and_missing_namespace_deny_fire(prod: list[KubeObject]) -> None:
    extra = {
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "ClusterRole",
        "metadata": {"name": "x"},
        "rules": [],
    }
    assert any("cluster scope" in f.message for f in RULES["rbac"]([*prod, extra]))
    other = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "c", "namespace": "elsewhere"}}
    assert [f.ref for f in RULES["default-deny"]([*prod, other])] == ["Namespace/elsewhere"]


@pytest.mark.parametrize(
    ("image", "pinned"),
    [
        ("ghcr.io/aic/aic-ml:0.1.0", True),
        ("docker.io/library/postgres:16.4-bookworm", True),
        ("localhost:5000/aic-ml", False),
        ("ghcr.io/aic/aic-ml:latest", False),
        ("ghcr.io/aic/aic-ml@sha256:" + "a" * 64, True),
    ],
)
def test_image_pinning(image: str, pinned: bool) -> None:
    assert image_is_pinned(image) is pinned
