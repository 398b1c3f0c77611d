"""Rendering of the model deployment's Kubernetes objects, validated offline against the API schemas."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from aicml.errors import ConfigurationError
from aicml.serving.kubernetes import (
    KubeServingSpec,
    apply_manifests,
    render_deployer_rbac,
    render_manifests,
    validate_manifests,
)


def by_kind(manifests: list[dict[str, object]]) -> dict[str, dict[str, object]]:
    return {str(m["kind"]): m for m in manifests}


def test_rendered_objects_are_valid_kubernetes() -> None:
    spec = KubeServingSpec("Churn_Model", challenger_alias="challenger")
    manifests = render_manifests(spec) + render_deployer_rbac(spec)
    validate_manifests(manifests)
    kinds = by_kind(manifests)
    assert set(kinds) == {
        "ServiceAccount",
        "Deployment",
        "Service",
        "HorizontalPodAutoscaler",
        "PodDisruptionBudget",
        "Role",
        "RoleBinding",
    }
    assert all(m["metadata"]["namespace"] == "aic-ai-ml" for m in manifests)  # type: ignore[index]


def test_hpa_and_pdb_follow_the_seed() -> None:
    kinds = by_kind(render_manifests(KubeServingSpec("churn")))
    hpa = kinds["HorizontalPodAutoscaler"]["spec"]
    assert (hpa["minReplicas"], hpa["maxReplicas"]) == (2, 10)  # type: ignore[index]
    assert hpa["metrics"][0]["resource"]["target"] == {"type": "Utilization", "averageUtilization": 70}  # type: ignore[index]
    assert kinds["PodDisruptionBudget"]["spec"]["minAvailable"] == 1  # type: ignore[index]
    container = kinds["Deployment"]["spec"]["template"]["spec"]["containers"][0]  # type: ignore[index]
    assert container["args"][:2] == ["serve", "models:/churn@champion"]
    assert container["readinessProbe"]["httpGet"]["path"] == "/v2/health/ready"
    # Started when the process answers, not when it has a model: a server waiting for the first champion
    # (--wait-for-model, test_wait_for_model.py: live 200, ready 503) is not restarted meanwhile.
    assert container["startupProbe"]["httpGet"]["path"] == container["livenessProbe"]["httpGet"]["path"]
    assert container["livenessProbe"]["httpGet"]["path"] == "/v2/health/live"
    assert container["securityContext"]["readOnlyRootFilesystem"] is True


def test_no_secret_value_in_the_manifests() -> None:
    os.environ["AIC_SERVE_TOKEN"] = "super-secret-token-value-123"
    try:
        text = json.dumps(render_manifests(KubeServingSpec("churn")))
    finally:
        del os.environ["AIC_SERVE_TOKEN"]
    assert "super-secret-token-value-123" not in text
    assert '"secretName": "model-serving-token"' in text


def test_deployer_role_is_least_privilege() -> None:
    role = by_kind(render_deployer_rbac(KubeServingSpec("churn")))["Role"]
    verbs = {verb for rule in role["rules"] for verb in rule["verbs"]}  # type: ignore[index]
    resources = {res for rule in role["rules"] for res in rule["resources"]}  # type: ignore[index]
    assert verbs == {"create", "patch"}  # what server-side apply needs: no delete, no wildcard, no secrets
    assert "*" not in resources and "secrets" not in resources


def test_an_invalid_object_is_refused_with_its_name() -> None:
    manifests = render_manifests(KubeServingSpec("churn"))
    hpa = by_kind(manifests)["HorizontalPodAutoscaler"]
    hpa["spec"]["maxReplicas"] = "ten"  # type: ignore[index]
    with pytest.raises(ConfigurationError, match="HorizontalPodAutoscaler/aicml-serve-churn"):
        validate_manifests([hpa])


@pytest.mark.k8s_live
def test_apply_to_a_live_cluster() -> None:
    if not (Path.home() / ".kube" / "config").exists() and not os.environ.get("KUBERNETES_SERVICE_HOST"):
        pytest.skip("no Kubernetes cluster configured")
    spec = KubeServingSpec("churn", namespace=os.environ.get("AIC_TEST_NAMESPACE", "aic-ai-ml"))
    applied = apply_manifests(render_manifests(spec))
    assert "Deployment/aicml-serve-churn" in applied


def test_a_rollout_server_gets_the_controller_s_own_token() -> None:
    from aicml.kube.secrets import spec_named

    plain = by_kind(render_manifests(KubeServingSpec("churn")))["Deployment"]
    rollout = by_kind(render_manifests(KubeServingSpec("churn", challenger_alias="challenger")))["Deployment"]
    assert "--control-token-file" not in str(plain)
    pod = rollout["spec"]["template"]["spec"]  # type: ignore[index]
    args = pod["containers"][0]["args"]
    assert args[args.index("--control-token-file") + 1].startswith("/var/run/aicml/control-token/")
    secrets = {v["secret"]["secretName"] for v in pod["volumes"] if "secret" in v}
    assert secrets == {"model-serving-token", "model-serving-control-token"}
    assert spec_named("model-serving-control-token").key_names == ("token",)  # created by `aicml k8s apply`
