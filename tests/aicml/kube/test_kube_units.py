"""Pure parts of apply/verify: which Secrets to create and with what, and how rollout status is judged."""

from __future__ import annotations

import pytest

from aicml.kube.cluster import claim_status, deployment_status, job_status, missing_secrets
from aicml.kube.errors import KubeError
from aicml.kube.secrets import SECRET_SPECS, resolve_values, secret_manifests, spec_named

ENV = {
    "AIC_K8S_POSTGRES_ADMIN_PASSWORD": "admin-pw",
    "AIC_K8S_S3_ACCESS_KEY_ID": "AKIA",
    "AIC_K8S_S3_SECRET_ACCESS_KEY": "s3-secret",
    "AIC_K8S_SERVING_S3_ACCESS_KEY_ID": "AKIA-SERVING",
    "AIC_K8S_SERVING_S3_SECRET_ACCESS_KEY": "serving-s3-secret",
}


def test_all_missing_secrets_resolve_with_generated_passwords() -> None:
    values = resolve_values(list(SECRET_SPECS), ENV)
    assert set(values) == {spec.name for spec in SECRET_SPECS}
    assert values["mlflow-db"]["database"] == "mlflow_db"
    assert len(values["mlflow-db"]["password"]) == 48 and values["mlflow-db"]["password"].isalnum()
    assert values["mlflow-db"]["password"] != values["agent-orchestration-db"]["password"]
    # Each workload has its own MLflow account, none of them the admin's.
    users = {name: values[name] for name in values if name.startswith("mlflow-user-")}
    assert len(users) == 4
    passwords = {user["password"] for user in users.values()} | {values["mlflow-admin"]["password"]}
    assert len(passwords) == 5
    assert "admin" not in {user["username"] for user in users.values()}
    auth = values["prefect-api-auth"]["auth-string"]
    assert auth.startswith("aicml:") and len(auth) == len("aicml:") + 48
    assert values["postgresql-admin"]["password"] == "admin-pw"
    # The model servers' write-only key is the operator's own, never MLflow's artifact key.
    assert values["model-serving-s3"] == {
        "AWS_ACCESS_KEY_ID": "AKIA-SERVING",
        "AWS_SECRET_ACCESS_KEY": "serving-s3-secret",
    }


def test_missing_operator_values_are_all_named_before_anything_is_created() -> None:
    with pytest.raises(KubeError) as raised:
        resolve_values(list(SECRET_SPECS), {})
    message = str(raised.value)
    for variable in ENV:
        assert variable in message


def test_existing_secrets_are_left_alone() -> None:
    existing = {spec.name for spec in SECRET_SPECS} - {"mlflow-db"}
    assert missing_secrets(existing) == [spec_named("mlflow-db")]


def test_secret_manifests_are_namespaced_opaque() -> None:
    (manifest,) = secret_manifests({"mlflow-db": {"password": "x"}}, "aic-ai-ml")
    assert manifest["kind"] == "Secret" and manifest["metadata"] == {
        "name": "mlflow-db",
        "namespace": "aic-ai-ml",
        "labels": {"app.kubernetes.io/part-of": "aic-ml", "app.kubernetes.io/managed-by": "aicml"},
    }


def test_rollout_judgement() -> None:
    fresh = {"metadata": {"name": "d", "generation": 2}, "spec": {"replicas": 2}}
    ready = {**fresh, "status": {"observedGeneration": 2, "availableReplicas": 2, "updatedReplicas": 2}}
    stale = {**fresh, "status": {"observedGeneration": 1, "availableReplicas": 2, "updatedReplicas": 2}}
    assert deployment_status(ready).ready
    assert not deployment_status(stale).ready
    assert not deployment_status(fresh).ready
    assert deployment_status({"metadata": {"name": "z"}, "spec": {"replicas": 0}}).ready
    assert claim_status({"metadata": {"name": "c"}, "status": {"phase": "Bound"}}).ready
    assert not claim_status({"metadata": {"name": "c"}, "status": {"phase": "Lost"}}).ready
    assert job_status({"metadata": {"name": "j"}, "status": {"succeeded": 1}}).ready
    assert not job_status({"metadata": {"name": "j"}, "status": {"failed": 4}}).ready
