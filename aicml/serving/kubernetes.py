"""Kubernetes objects of a model deployment: render, validate against the API schemas, apply.

Rendered: the server's Deployment, Service, HorizontalPodAutoscaler (CPU 70 %, 2 to 10 replicas, as the
seed specifies), PodDisruptionBudget and ServiceAccount, plus the namespaced least-privilege Role (and its
binding) that the deploying identity needs and nothing more. The bearer token stays in a Kubernetes
Secret that the pod mounts; no manifest carries it.

With ``prediction_log`` (the default) the server logs its predictions (aicml.serving.predlog) to
``<the platform's bucket>/predictions`` (the bucket is ``MLFLOW_ARTIFACTS_DESTINATION`` of the platform
ConfigMap) with its own write-only key (Secret ``model-serving-s3``), and the summaries to the model
deployment database (Secret ``model-deployment-db``, ``PGHOST``/``PGPORT`` from the ConfigMap); the pod
carries the label that opens PostgreSQL in the NetworkPolicies.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from aicml import IMAGE
from aicml.errors import ConfigurationError
from aicml.names import slug

SERVER_PORT = 8080
TOKEN_DIR = "/var/run/aicml/token"
CONTROL_TOKEN_DIR = "/var/run/aicml/control-token"
# What `apply_manifests` asks of the API server per object: server-side apply (a PATCH, authorised as
# `create` too when the object is missing) after discovery, which needs no Role.
APPLY_VERBS = ("create", "patch")
MODELS_DIR = "/var/lib/aicml/models"
# The platform ConfigMap's keys the prediction log reads (k8s/base/config.yaml).
ARTIFACTS_DESTINATION_KEY = "MLFLOW_ARTIFACTS_DESTINATION"
S3_ENDPOINT_KEY = "MLFLOW_S3_ENDPOINT_URL"
# Under the bucket: the prefix the serving key may write (aicml.kube.secrets.serving_s3_policy).
PREDICTION_LOG_PREFIX = "predictions"
# The pod label the NetworkPolicy allow-egress-postgresql selects.
POSTGRES_CLIENT_LABEL = "aic.io/postgres-client"
# The resource (plural) of each kind `render_manifests` produces, for the deployer's Role.
RESOURCES = {
    "ServiceAccount": "serviceaccounts",
    "Deployment": "deployments",
    "Service": "services",
    "HorizontalPodAutoscaler": "horizontalpodautoscalers",
    "PodDisruptionBudget": "poddisruptionbudgets",
}


def platform_serving_spec() -> KubeServingSpec:
    """The platform's own model server (k8s/base/services/model-serving.yaml is rendered from it)."""
    return KubeServingSpec(
        model_name="churn",
        name="model-serving",
        service_port=SERVER_PORT,
        cpu_request="500m",
        cpu_limit="1",
        memory_request="1Gi",
        memory_limit="1Gi",
        models_claim="model-deployment-pvc",
        wait_for_model=True,
    )


def required_rules(manifests: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """RBAC rules that allow exactly `APPLY_VERBS` on the kinds in ``manifests``, one rule per API group."""
    by_group: dict[str, set[str]] = {}
    for manifest in manifests:
        kind = manifest["kind"]
        if kind not in RESOURCES:
            raise ConfigurationError(f"No RBAC resource is known for kind {kind!r}; add it to RESOURCES.")
        group = manifest["apiVersion"].rpartition("/")[0]
        by_group.setdefault(group, set()).add(RESOURCES[kind])
    return [
        {"apiGroups": [group], "resources": sorted(resources), "verbs": list(APPLY_VERBS)}
        for group, resources in sorted(by_group.items())
    ]


@dataclass(frozen=True)
class KubeServingSpec:
    """What to deploy and where."""

    model_name: str
    namespace: str = "aic-ai-ml"
    image: str = IMAGE
    tracking_uri: str = "http://mlflow-service.aic-ai-ml.svc.cluster.local:5000"
    token_secret: str = "model-serving-token"
    # The rollout controller's token (only with a challenger): predict clients cannot freeze a rollout.
    control_token_secret: str = "model-serving-control-token"
    # The server's own MLflow account (read-only), never the admin's.
    mlflow_secret: str = "mlflow-user-serving"
    # Name of every object; None derives it from the model (aicml-serve-<model>).
    name: str | None = None
    alias: str = "champion"
    challenger_alias: str | None = None
    mode: str = "canary"
    min_replicas: int = 2
    max_replicas: int = 10
    cpu_target_percent: int = 70
    cpu_request: str = "500m"
    cpu_limit: str = "2"
    memory_request: str = "512Mi"
    memory_limit: str = "2Gi"
    deployer_service_account: str = "model-deployer"
    service_port: int = 80
    # A claim for the server's home (downloaded models, audit); None keeps it in the pod's tmp.
    models_claim: str | None = None
    # Log predictions to object storage and their summaries to the model deployment database.
    prediction_log: bool = True
    # Share of requests logged (AIC_PREDICTION_LOG_SAMPLE).
    prediction_log_sample: float = 1.0
    # The ConfigMap with PGHOST, PGPORT, PGSSLMODE and the bucket (MLFLOW_ARTIFACTS_DESTINATION).
    platform_config: str = "aic-ml-config"
    # Write-only key for <bucket>/predictions/ (never MLflow's artifact key, mlflow-s3).
    prediction_log_s3_secret: str = "model-serving-s3"
    deployment_db_secret: str = "model-deployment-db"
    # Start not ready and poll until the alias exists (the platform's server, deployed before any model).
    wait_for_model: bool = False
    labels: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not 1 <= self.min_replicas <= self.max_replicas:
            raise ConfigurationError("Replicas need 1 <= min_replicas <= max_replicas.")
        if not 0.0 <= self.prediction_log_sample <= 1.0:
            raise ConfigurationError(
                "prediction_log_sample is the share of requests logged, between 0 and 1, "
                f"not {self.prediction_log_sample!r}."
            )

    @property
    def app_name(self) -> str:
        if self.name:
            return self.name
        return f"aicml-serve-{slug(self.model_name, limit=40, empty='model')}"


def _meta(spec: KubeServingSpec, name: str) -> dict[str, Any]:
    labels = {
        "app.kubernetes.io/name": spec.app_name,
        "app.kubernetes.io/component": "model-server",
        "app.kubernetes.io/part-of": "aic-ml",
        "app.kubernetes.io/managed-by": "aicml",
        **spec.labels,
    }
    return {"name": name, "namespace": spec.namespace, "labels": labels}


def _secret_env(name: str, secret: str, key: str) -> dict[str, Any]:
    return {"name": name, "valueFrom": {"secretKeyRef": {"name": secret, "key": key}}}


def _config_env(name: str, config: str, key: str | None = None) -> dict[str, Any]:
    return {"name": name, "valueFrom": {"configMapKeyRef": {"name": config, "key": key or name}}}


def prediction_log_env(spec: KubeServingSpec) -> list[dict[str, Any]]:
    """The server's prediction-log environment: where to write (object storage, with the serving key) and
    the summary table's database (the model deployment database on the platform's PostgreSQL)."""
    if not spec.prediction_log:
        return []
    config, s3, db = spec.platform_config, spec.prediction_log_s3_secret, spec.deployment_db_secret
    return [
        # The bucket is named once, in the ConfigMap; $(VAR) is expanded by the kubelet.
        _config_env(ARTIFACTS_DESTINATION_KEY, config),
        {"name": "AIC_PREDICTION_LOG", "value": f"$({ARTIFACTS_DESTINATION_KEY})/{PREDICTION_LOG_PREFIX}"},
        {"name": "AIC_PREDICTION_LOG_SAMPLE", "value": f"{spec.prediction_log_sample:g}"},
        # botocore (s3fs) reads the endpoint, key and secret from these variables.
        _config_env("AWS_ENDPOINT_URL", config, S3_ENDPOINT_KEY),
        _secret_env("AWS_ACCESS_KEY_ID", s3, "AWS_ACCESS_KEY_ID"),
        _secret_env("AWS_SECRET_ACCESS_KEY", s3, "AWS_SECRET_ACCESS_KEY"),
        # blocks.settings.service_database_url("MODEL_DEPLOYMENT") builds the summary table's URL from these.
        _config_env("PGHOST", config),
        _config_env("PGPORT", config),
        _config_env("PGSSLMODE", config),
        _secret_env("MODEL_DEPLOYMENT_DB_USER", db, "username"),
        _secret_env("MODEL_DEPLOYMENT_DB_PASSWORD", db, "password"),
        _secret_env("MODEL_DEPLOYMENT_DB_NAME", db, "database"),
    ]


def render_manifests(spec: KubeServingSpec) -> list[dict[str, Any]]:
    """All objects of one model deployment, in the order they should be applied."""
    name = spec.app_name
    selector = {"app.kubernetes.io/name": name}
    args = [
        "serve",
        f"models:/{spec.model_name}@{spec.alias}",
        "--host",
        "0.0.0.0",
        "--port",
        str(SERVER_PORT),
        "--token-file",
        f"{TOKEN_DIR}/token",
    ]
    control = bool(spec.challenger_alias)
    if spec.wait_for_model:
        args.append("--wait-for-model")
    if spec.challenger_alias:
        args += ["--challenger", f"models:/{spec.model_name}@{spec.challenger_alias}", "--mode", spec.mode]
        args += ["--control-token-file", f"{CONTROL_TOKEN_DIR}/token"]
    probe = {
        "httpGet": {"path": "/v2/health/ready", "port": "http"},
        "periodSeconds": 5,
        "failureThreshold": 3,
    }
    deployment = {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": _meta(spec, name),
        "spec": {
            "replicas": spec.min_replicas,
            "selector": {"matchLabels": selector},
            "strategy": {"type": "RollingUpdate", "rollingUpdate": {"maxUnavailable": 0, "maxSurge": 1}},
            "template": {
                "metadata": {
                    # tier and mlflow-client: the labels the NetworkPolicies let reach MLflow (and, with
                    # tier, object storage over HTTPS); postgres-client: PostgreSQL, for the log's summaries.
                    "labels": {
                        **_meta(spec, name)["labels"],
                        "tier": "ai-ml",
                        "aic.io/mlflow-client": "true",
                        **({POSTGRES_CLIENT_LABEL: "true"} if spec.prediction_log else {}),
                    },
                    "annotations": {
                        "prometheus.io/scrape": "true",
                        "prometheus.io/port": str(SERVER_PORT),
                        "prometheus.io/path": "/metrics",
                    },
                },
                "spec": {
                    "serviceAccountName": name,
                    "automountServiceAccountToken": False,
                    "securityContext": {
                        "runAsNonRoot": True,
                        "runAsUser": 10001,
                        "fsGroup": 10001,
                        "seccompProfile": {"type": "RuntimeDefault"},
                    },
                    "containers": [
                        {
                            "name": "model-server",
                            "image": spec.image,
                            "command": ["aicml"],
                            "args": args,
                            "ports": [{"name": "http", "containerPort": SERVER_PORT, "protocol": "TCP"}],
                            "env": [
                                {"name": "HOME", "value": "/tmp"},
                                {"name": "TMPDIR", "value": "/tmp"},
                                {"name": "MLFLOW_ENABLE_TELEMETRY", "value": "false"},
                                {"name": "MLFLOW_TRACKING_URI", "value": spec.tracking_uri},
                                {
                                    "name": "AIC_HOME",
                                    "value": MODELS_DIR if spec.models_claim else "/tmp/aic",
                                },
                                {
                                    "name": "MLFLOW_TRACKING_USERNAME",
                                    "valueFrom": {
                                        "secretKeyRef": {"name": spec.mlflow_secret, "key": "username"}
                                    },
                                },
                                {
                                    "name": "MLFLOW_TRACKING_PASSWORD",
                                    "valueFrom": {
                                        "secretKeyRef": {"name": spec.mlflow_secret, "key": "password"}
                                    },
                                },
                                *prediction_log_env(spec),
                            ],
                            "resources": {
                                "requests": {"cpu": spec.cpu_request, "memory": spec.memory_request},
                                "limits": {"cpu": spec.cpu_limit, "memory": spec.memory_limit},
                            },
                            "readinessProbe": probe,
                            "livenessProbe": {
                                "httpGet": {"path": "/v2/health/live", "port": "http"},
                                "periodSeconds": 10,
                                "initialDelaySeconds": 30,
                            },
                            # Started once the process answers: a server waiting for its model's first
                            # champion (--wait-for-model) is up but not ready, and must not be restarted
                            # every 5 minutes for it (the rehearsal saw one restart at 300 s).
                            "startupProbe": {
                                "httpGet": {"path": "/v2/health/live", "port": "http"},
                                "periodSeconds": 5,
                                "failureThreshold": 60,
                            },
                            "securityContext": {
                                "allowPrivilegeEscalation": False,
                                "readOnlyRootFilesystem": True,
                                "capabilities": {"drop": ["ALL"]},
                            },
                            "volumeMounts": [
                                {"name": "token", "mountPath": TOKEN_DIR, "readOnly": True},
                                *(
                                    [
                                        {
                                            "name": "control-token",
                                            "mountPath": CONTROL_TOKEN_DIR,
                                            "readOnly": True,
                                        }
                                    ]
                                    if control
                                    else []
                                ),
                                {"name": "tmp", "mountPath": "/tmp"},
                                *([{"name": "models", "mountPath": MODELS_DIR}] if spec.models_claim else []),
                            ],
                        }
                    ],
                    "volumes": [
                        {"name": "token", "secret": {"secretName": spec.token_secret, "defaultMode": 0o400}},
                        *(
                            [
                                {
                                    "name": "control-token",
                                    "secret": {"secretName": spec.control_token_secret, "defaultMode": 0o400},
                                }
                            ]
                            if control
                            else []
                        ),
                        {"name": "tmp", "emptyDir": {"sizeLimit": "2Gi"}},
                        *(
                            [{"name": "models", "persistentVolumeClaim": {"claimName": spec.models_claim}}]
                            if spec.models_claim
                            else []
                        ),
                    ],
                },
            },
        },
    }
    service = {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": _meta(spec, name),
        "spec": {
            "selector": selector,
            "ports": [{"name": "http", "port": spec.service_port, "targetPort": "http", "protocol": "TCP"}],
        },
    }
    hpa = {
        "apiVersion": "autoscaling/v2",
        "kind": "HorizontalPodAutoscaler",
        "metadata": _meta(spec, name),
        "spec": {
            "scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": name},
            "minReplicas": spec.min_replicas,
            "maxReplicas": spec.max_replicas,
            "metrics": [
                {
                    "type": "Resource",
                    "resource": {
                        "name": "cpu",
                        "target": {"type": "Utilization", "averageUtilization": spec.cpu_target_percent},
                    },
                }
            ],
        },
    }
    pdb = {
        "apiVersion": "policy/v1",
        "kind": "PodDisruptionBudget",
        "metadata": _meta(spec, name),
        "spec": {"minAvailable": 1, "selector": {"matchLabels": selector}},
    }
    service_account = {
        "apiVersion": "v1",
        "kind": "ServiceAccount",
        "metadata": _meta(spec, name),
        "automountServiceAccountToken": False,
    }
    return [service_account, deployment, service, hpa, pdb]


def render_deployer_rbac(spec: KubeServingSpec) -> list[dict[str, Any]]:
    """The Role (and binding) the deploying identity needs: the kinds `render_manifests` produces, with the
    verbs `apply_manifests` uses (server-side apply is a PATCH that creates what is missing), nothing else."""
    role_name = f"{spec.deployer_service_account}"
    role = {
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "Role",
        "metadata": {"name": role_name, "namespace": spec.namespace},
        "rules": required_rules(render_manifests(spec)),
    }
    binding = {
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "RoleBinding",
        "metadata": {"name": role_name, "namespace": spec.namespace},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": role_name},
        "subjects": [
            {"kind": "ServiceAccount", "name": spec.deployer_service_account, "namespace": spec.namespace}
        ],
    }
    return [role, binding]


def validate_manifests(manifests: list[dict[str, Any]], kubernetes_version: str = "1.30.0") -> None:
    """Validate each object against the Kubernetes OpenAPI schemas (offline, strict: unknown fields fail)."""
    import kubernetes_validate

    for manifest in manifests:
        try:
            kubernetes_validate.validate(manifest, kubernetes_version, strict=True)
        except kubernetes_validate.ValidationError as exc:
            where = f"{manifest.get('kind')}/{manifest.get('metadata', {}).get('name')}"
            raise ConfigurationError(
                f"Rendered {where} is not a valid Kubernetes object: {exc.message}"
            ) from exc


def apply_manifests(manifests: list[dict[str, Any]], api_client: Any | None = None) -> list[str]:
    """Create or server-side-apply each object with the Kubernetes Python client; returns kind/name."""
    from kubernetes import client, config, dynamic

    if api_client is None:
        try:
            config.load_incluster_config()
        except config.ConfigException:
            config.load_kube_config()
        api_client = client.ApiClient()
    dyn = dynamic.DynamicClient(api_client)
    applied = []
    for manifest in manifests:
        resource = dyn.resources.get(api_version=manifest["apiVersion"], kind=manifest["kind"])
        meta = manifest["metadata"]
        resource.server_side_apply(
            body=manifest,
            name=meta["name"],
            namespace=meta.get("namespace"),
            field_manager="aicml",
            force_conflicts=True,
        )
        applied.append(f"{manifest['kind']}/{meta['name']}")
    return applied


GENERATED_HEADER = (
    "# Generated by `python -m aicml.serving.kubernetes --write` from {source}: do not edit by hand.\n"
)
# The kustomize base's files that come from this renderer, relative to k8s/base.
BASE_FILES = ("services/model-serving.yaml", "model-deployer.yaml")


def base_files() -> dict[str, str]:
    """k8s/base's serving files, rendered from the same code the deploy-model flow applies."""
    import yaml

    spec = platform_serving_spec()
    deployer_account = {
        "apiVersion": "v1",
        "kind": "ServiceAccount",
        "metadata": {"name": spec.deployer_service_account, "namespace": spec.namespace},
        # Its flow runs ask for the token (job variable automount_service_account_token in prefect.yaml).
        "automountServiceAccountToken": False,
    }
    documents = {
        "services/model-serving.yaml": render_manifests(spec),
        "model-deployer.yaml": [deployer_account, *render_deployer_rbac(spec)],
    }
    # kustomize sets the namespace; a base object that names its own would not match the overlays' patches.
    for objects in documents.values():
        for obj in objects:
            obj["metadata"].pop("namespace", None)
    source = "aicml.serving.kubernetes.platform_serving_spec()"
    return {
        path: GENERATED_HEADER.format(source=source) + yaml.safe_dump_all(objects, sort_keys=False)
        for path, objects in documents.items()
    }


def main(argv: list[str] | None = None) -> int:
    import argparse
    from pathlib import Path

    parser = argparse.ArgumentParser(prog="python -m aicml.serving.kubernetes")
    parser.add_argument("--base", type=Path, default=Path("k8s/base"), help="The kustomize base directory.")
    parser.add_argument(
        "--write", action="store_true", help="Write the files (default: check they are current)."
    )
    args = parser.parse_args(argv)
    stale = []
    for path, text in base_files().items():
        target = args.base / path
        if args.write:
            target.write_text(text)
        elif not target.exists() or target.read_text() != text:
            stale.append(str(target))
    if stale:
        print("stale (run `python -m aicml.serving.kubernetes --write`): " + ", ".join(stale))
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
