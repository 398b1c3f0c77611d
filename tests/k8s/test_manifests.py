"""The rendered overlays hold what the seed and issue 8 ask for, with the seed's numbers in prod."""

from __future__ import annotations

import pytest

from aicml.kube.render import NAMESPACE, KubeObject, containers, find, pod_spec
from aicml.kube.secrets import SECRET_SPECS

SEED_CLAIMS = {
    "agent-orchestration-pvc": "10Gi",
    "model-training-pvc": "50Gi",
    "training-data-pvc": "100Gi",
    "model-tuning-pvc": "30Gi",
    "tuning-data-pvc": "20Gi",
    "model-deployment-pvc": "20Gi",
    "data-integration-pvc": "100Gi",
    "pipeline-execution-pvc": "20Gi",
    "pipeline-logs-pvc": "50Gi",
    "mlflow-pvc": "10Gi",
}
SEED_DATABASES = {
    "agent_db",
    "training_db",
    "tuning_db",
    "deployment_db",
    "data_integration_db",
    "pipeline_db",
    "mlflow_db",
}


def _of(objects: list[KubeObject], kind: str) -> list[KubeObject]:
    return [obj for obj in objects if obj["kind"] == kind]


def _main_container(obj: KubeObject) -> dict:
    spec = pod_spec(obj)
    assert spec is not None
    return spec["containers"][0]


@pytest.mark.parametrize("overlay", ["dev", "prod"])
def test_every_namespaced_object_is_in_aic_ai_ml(rendered: dict[str, list[KubeObject]], overlay: str) -> None:
    objects = rendered[overlay]
    assert len(objects) > 50
    assert {obj["metadata"].get("namespace") for obj in objects if obj["kind"] != "Namespace"} == {NAMESPACE}


def test_namespace_quota_and_pod_security(prod: list[KubeObject]) -> None:
    labels = find(prod, "Namespace", NAMESPACE)["metadata"]["labels"]
    assert labels["pod-security.kubernetes.io/enforce"] == "restricted"
    hard = find(prod, "ResourceQuota", "ai-ml-resource-quota")["spec"]["hard"]
    assert hard == {
        "requests.cpu": "20",
        "requests.memory": "40Gi",
        "limits.cpu": "40",
        "limits.memory": "80Gi",
        "requests.nvidia.com/gpu": "4",
        "persistentvolumeclaims": "10",
    }
    assert _of(prod, "LimitRange")


def test_seed_claims_with_names_and_sizes(prod: list[KubeObject], dev: list[KubeObject]) -> None:
    claims = {
        c["metadata"]["name"]: c["spec"]["resources"]["requests"]["storage"]
        for c in _of(prod, "PersistentVolumeClaim")
    }
    assert claims == SEED_CLAIMS
    assert all(
        c["metadata"]["annotations"]["aic.io/storage-tier"] for c in _of(prod, "PersistentVolumeClaim")
    )
    dev_claims = _of(dev, "PersistentVolumeClaim")
    assert {c["spec"]["accessModes"][0] for c in dev_claims} == {"ReadWriteOnce"}


@pytest.mark.parametrize(
    ("deployment", "replicas", "cpu", "memory"),
    [
        ("agent-orchestration-service", 2, "500m", "1Gi"),
        ("model-serving", 2, "500m", "1Gi"),
    ],
)
def test_prod_services_have_seed_replicas_and_requests(
    prod: list[KubeObject], deployment: str, replicas: int, cpu: str, memory: str
) -> None:
    obj = find(prod, "Deployment", deployment)
    assert obj["spec"]["replicas"] == replicas
    requests = _main_container(obj)["resources"]["requests"]
    assert (str(requests["cpu"]), requests["memory"]) == (cpu, memory)


def test_nothing_idle_holds_a_gpu_and_gpu_jobs_get_one(prod: list[KubeObject]) -> None:
    """GPU work runs as k8s-gpu flow-run Jobs; no standing Deployment requests a GPU."""
    from deployments.templates import base_job_template

    for obj in _of(prod, "Deployment"):
        spec = pod_spec(obj)
        assert spec is not None
        for container in containers(spec):
            assert "nvidia.com/gpu" not in (container.get("resources") or {}).get("requests", {}), obj[
                "metadata"
            ]
    template = base_job_template("k8s-gpu")
    job_pod = template["job_configuration"]["job_manifest"]["spec"]["template"]["spec"]
    resources = job_pod["containers"][0]["resources"]
    assert (
        resources["requests"]["nvidia.com/gpu"] == resources["limits"]["nvidia.com/gpu"] == "{{ gpu_count }}"
    )
    assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in job_pod["tolerations"]
    shm = next(v for v in job_pod["volumes"] if v["name"] == "dshm")
    assert shm["emptyDir"]["medium"] == "Memory"
    # The GPU pool's worker runs the GPU image (it only submits Jobs, so it asks for no GPU itself).
    worker = _main_container(find(prod, "Deployment", "prefect-worker-gpu"))
    assert worker["image"].startswith("ghcr.io/aic/aic-ml-gpu:")
    assert template["variables"]["properties"]["image"]["default"].startswith("ghcr.io/aic/aic-ml-gpu:")


def test_dev_is_smaller_than_prod(prod: list[KubeObject], dev: list[KubeObject]) -> None:
    def memory_mi(objects: list[KubeObject]) -> float:
        total = 0.0
        for obj in _of(objects, "Deployment"):
            spec = pod_spec(obj)
            assert spec is not None
            for container in containers(spec):
                value = container["resources"]["requests"]["memory"]
                number = float(value[:-2])
                total += obj["spec"]["replicas"] * (number * 1024 if value.endswith("Gi") else number)
        return total

    assert memory_mi(dev) < memory_mi(prod) / 3


def test_serving_scales_and_survives_drains(prod: list[KubeObject]) -> None:
    hpa = find(prod, "HorizontalPodAutoscaler", "model-serving")["spec"]
    assert (hpa["minReplicas"], hpa["maxReplicas"]) == (2, 10)
    assert hpa["metrics"][0]["resource"] == {
        "name": "cpu",
        "target": {"type": "Utilization", "averageUtilization": 70},
    }
    assert find(prod, "PodDisruptionBudget", "model-serving")["spec"]["minAvailable"] == 1


def test_mlflow_postgres_s3_basic_auth(prod: list[KubeObject]) -> None:
    container = _main_container(find(prod, "Deployment", "mlflow-service"))
    args = " ".join(container["args"])
    assert (
        "--backend-store-uri=postgresql+psycopg://" in args and "mlflow_db" not in args
    )  # name from the Secret
    assert "--artifacts-destination=$(MLFLOW_ARTIFACTS_DESTINATION)" in args
    assert "--app-name=basic-auth" in args
    env = {e["name"]: e for e in container["env"]}
    assert env["MLFLOW_AUTH_ADMIN_PASSWORD"]["valueFrom"]["secretKeyRef"]["name"] == "mlflow-admin"
    assert find(prod, "ConfigMap", "aic-ml-config")["data"]["MLFLOW_ARTIFACTS_DESTINATION"].startswith(
        "s3://"
    )
    assert {s["metadata"]["name"] for s in _of(prod, "Service")} >= {"mlflow-service", "mlflow-ui"}


def test_prefect_server_and_workers_for_both_pools(prod: list[KubeObject]) -> None:
    for pool, name in (("k8s-cpu", "prefect-worker-cpu"), ("k8s-gpu", "prefect-worker-gpu")):
        obj = find(prod, "Deployment", name)
        assert ["--pool", pool] == _main_container(obj)["command"][3:5]
        assert pod_spec(obj)["serviceAccountName"] == name  # type: ignore[index]
        binding = find(prod, "RoleBinding", name)
        assert binding["roleRef"]["name"] == "prefect-worker"
    rules = find(prod, "Role", "prefect-worker")["rules"]
    granted = {(r, v) for rule in rules for r in rule["resources"] for v in rule["verbs"]}
    assert ("jobs", "create") in granted and ("pods/log", "get") in granted
    assert not {r for r, _ in granted} - {"jobs", "pods", "pods/log", "events"}
    assert not {v for r, v in granted if r != "jobs"} - {"get", "list", "watch"}


def test_model_deployer_role(prod: list[KubeObject]) -> None:
    rules = find(prod, "Role", "model-deployer")["rules"]
    assert {r for rule in rules for r in rule["resources"]} == {
        "deployments",
        "services",
        "serviceaccounts",
        "horizontalpodautoscalers",
        "poddisruptionbudgets",
    }
    assert {v for rule in rules for v in rule["verbs"]} == {"create", "patch"}


def test_database_init_covers_the_seed_databases_one_secret_each(prod: list[KubeObject]) -> None:
    job = find(prod, "Job", "postgresql-ai-ml-init")
    env = _main_container(job)["env"]
    secrets = {e["valueFrom"]["secretKeyRef"]["name"] for e in env if "valueFrom" in e} - {"postgresql-admin"}
    assert len(secrets) == 7
    defaults = {
        spec.name: {k.name: k.default for k in spec.keys} for spec in SECRET_SPECS if spec.name in secrets
    }
    assert {values["database"] for values in defaults.values()} == SEED_DATABASES
    assert len({values["username"] for values in defaults.values()}) == 7  # one role per service


def test_backup_cronjob_dumps_every_seed_database(prod: list[KubeObject]) -> None:
    cron = find(prod, "CronJob", "postgres-backup")
    command = _main_container(cron)["command"]
    assert command[:2] == ["aicml", "backup"]
    assert {arg.split("=", 1)[1] for arg in command if arg.startswith("--database=")} == SEED_DATABASES


def test_no_secret_is_rendered(rendered: dict[str, list[KubeObject]]) -> None:
    for objects in rendered.values():
        assert not _of(objects, "Secret")


def test_five_seed_dashboards(prod: list[KubeObject]) -> None:
    from aicml.kube.monitoring import dashboards

    titles = {board["title"] for board in dashboards(prod).values()}
    assert titles == {
        "ML Training Overview",
        "Model Deployment Status",
        "Data Pipeline Monitoring",
        "GPU Utilization",
        "MLflow Metrics",
    }
    assert all(board["panels"] for board in dashboards(prod).values())
