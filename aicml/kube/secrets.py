"""The Secrets the platform reads, declared once. They are never rendered into manifests: `aicml k8s apply`
creates the missing ones in the cluster (generated passwords, or values from the environment) and leaves
existing ones alone, so re-applying never rotates a credential by accident."""

from __future__ import annotations

import secrets as token_source
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from aicml.kube.errors import KubeError


@dataclass(frozen=True)
class SecretKey:
    """One key of a Secret and where its value comes from, in order: `env`, `default`, `generate`, `copy_from`."""

    name: str
    env: str | None = None
    default: str | None = None
    generate: bool = False
    copy_from: tuple[str, str] | None = None
    # A generated value is written into this pattern's ``{token}``: e.g. ``aicml:{token}`` for a
    # ``user:password`` auth string.
    pattern: str = "{token}"


@dataclass(frozen=True)
class SecretSpec:
    name: str
    purpose: str
    keys: tuple[SecretKey, ...] = field(default_factory=tuple)

    @property
    def key_names(self) -> tuple[str, ...]:
        return tuple(key.name for key in self.keys)


def _database_secret(name: str, username: str, database: str, purpose: str) -> SecretSpec:
    return SecretSpec(
        name=name,
        purpose=purpose,
        keys=(
            SecretKey("username", default=username),
            SecretKey("password", generate=True),
            SecretKey("database", default=database),
        ),
    )


def _mlflow_user(name: str, username: str, purpose: str) -> SecretSpec:
    return SecretSpec(
        name=name,
        purpose=f"the MLflow account of {purpose}",
        keys=(SecretKey("username", default=username), SecretKey("password", generate=True)),
    )


def _token(name: str, purpose: str, env: str) -> SecretSpec:
    """A generated bearer token (or the operator's, from ``env``), one key ``token``."""
    return SecretSpec(name=name, purpose=purpose, keys=(SecretKey("token", env=env, generate=True),))


SECRET_SPECS: tuple[SecretSpec, ...] = (
    _database_secret("agent-orchestration-db", "agent_orchestration", "agent_db", "agent orchestration"),
    _database_secret("model-training-db", "model_training", "training_db", "model training"),
    _database_secret("model-tuning-db", "model_tuning", "tuning_db", "model tuning (Optuna study storage)"),
    _database_secret("model-deployment-db", "model_deployment", "deployment_db", "model deployment"),
    _database_secret("data-integration-db", "data_integration", "data_integration_db", "data integration"),
    _database_secret("pipeline-execution-db", "pipeline_execution", "pipeline_db", "the Prefect server"),
    # The user name is also in the mlflow-auth ConfigMap's database_uri.
    _database_secret("mlflow-db", "mlflow", "mlflow_db", "MLflow tracking and registry"),
    SecretSpec(
        "postgresql-admin",
        "superuser of the core platform's PostgreSQL, for the init Job and backups",
        (SecretKey("password", env="AIC_K8S_POSTGRES_ADMIN_PASSWORD"),),
    ),
    SecretSpec(
        "mlflow-admin",
        "admin account of MLflow's basic-auth app (never MLflow's default)",
        (
            SecretKey("username", default="admin"),
            SecretKey("password", env="AIC_K8S_MLFLOW_ADMIN_PASSWORD", generate=True),
            # The basic-auth app's CSRF secret, the same for every worker of the server.
            SecretKey("flask-secret-key", generate=True),
        ),
    ),
    # One MLflow account per workload (created by the mlflow-users Job with the admin's credentials):
    # flow runs write experiments and register models; serving and agents only read.
    _mlflow_user("mlflow-user-pipeline", "aicml-pipeline", "flow runs (training, tuning, registration)"),
    _mlflow_user("mlflow-user-serving", "aicml-serving", "the model server (reads models)"),
    _mlflow_user("mlflow-user-agents", "aicml-agents", "agent orchestration (reads models, writes traces)"),
    _mlflow_user("mlflow-user-backup", "aicml-backup", "backup verification (reads model artifacts)"),
    SecretSpec(
        "prefect-api-auth",
        "basic auth of the Prefect server's API (`user:password`), sent by workers and flow runs",
        (
            SecretKey(
                "auth-string", env="AIC_K8S_PREFECT_AUTH_STRING", generate=True, pattern="aicml:{token}"
            ),
        ),
    ),
    _token(
        "model-serving-token",
        "bearer token of the model server's predict endpoints",
        "AIC_K8S_SERVING_TOKEN",
    ),
    _token(
        "model-serving-control-token",
        "bearer token of the rollout controller (POST /router/freeze of a server with a challenger)",
        "AIC_K8S_SERVING_CONTROL_TOKEN",
    ),
    _token(
        "agent-orchestration-token",
        "bearer token of the agent API's invokers",
        "AIC_K8S_AGENTS_TOKEN",
    ),
    _token(
        "agent-orchestration-admin-token",
        "bearer token of the agent API's administrators (register, transitions, rollouts, coordinations)",
        "AIC_K8S_AGENTS_ADMIN_TOKEN",
    ),
    SecretSpec(
        "mlflow-s3",
        "object-storage credentials for MLflow's artifact store",
        (
            SecretKey("AWS_ACCESS_KEY_ID", env="AIC_K8S_S3_ACCESS_KEY_ID"),
            SecretKey("AWS_SECRET_ACCESS_KEY", env="AIC_K8S_S3_SECRET_ACCESS_KEY"),
        ),
    ),
    # The model servers' own object-storage key: the prediction log writes under <bucket>/predictions/
    # and nothing else. The operator makes it in the store with a policy granting only s3:PutObject (and
    # s3:AbortMultipartUpload) on that prefix (`serving_s3_policy`), so a server never holds the key that
    # reads or overwrites MLflow's artifacts.
    SecretSpec(
        "model-serving-s3",
        "object-storage credentials of the model servers: write-only under the bucket's predictions/ prefix",
        (
            SecretKey("AWS_ACCESS_KEY_ID", env="AIC_K8S_SERVING_S3_ACCESS_KEY_ID"),
            SecretKey("AWS_SECRET_ACCESS_KEY", env="AIC_K8S_SERVING_S3_SECRET_ACCESS_KEY"),
        ),
    ),
)

# Where the model servers' prediction log lives inside the platform's bucket (the serving key's prefix).
PREDICTION_LOG_PREFIX = "predictions"


def serving_s3_policy(bucket: str, prefix: str = PREDICTION_LOG_PREFIX) -> dict[str, object]:
    """The IAM (or MinIO) policy of the `model-serving-s3` key: write objects under ``prefix/`` of ``bucket``
    (single and multipart uploads), nothing else: no reads, no listing, no deletes, no other prefix."""
    bucket = bucket.removeprefix("s3://").strip("/")
    prefix = prefix.strip("/")
    if not bucket or "/" in bucket:
        raise KubeError(f"The serving key's policy needs a bucket name, not {bucket!r}.")
    if not prefix or "*" in prefix:
        raise KubeError(f"The serving key's policy needs a fixed prefix, not {prefix!r}.")
    return {
        "Version": "2012-10-17",
        "Statement": [
            {
                "Sid": "PredictionLogWriteOnly",
                "Effect": "Allow",
                "Action": ["s3:PutObject", "s3:AbortMultipartUpload"],
                "Resource": [f"arn:aws:s3:::{bucket}/{prefix}/*"],
            }
        ],
    }


def spec_named(name: str) -> SecretSpec:
    for spec in SECRET_SPECS:
        if spec.name == name:
            return spec
    raise KubeError(f"No Secret named {name!r} is declared in aicml.kube.secrets.SECRET_SPECS.")


def resolve_values(
    missing: Sequence[SecretSpec], environ: Mapping[str, str], *, token_bytes: int = 24
) -> dict[str, dict[str, str]]:
    """Values for the Secrets to create. Generated passwords are hex, so they are safe inside URLs.

    Raises KubeError naming every environment variable that must be set, before anything is created.
    """
    values: dict[str, dict[str, str]] = {}
    needed: list[str] = []
    for spec in missing:
        resolved: dict[str, str] = {}
        for key in spec.keys:
            if key.env and environ.get(key.env):
                resolved[key.name] = environ[key.env]
            elif key.default is not None:
                resolved[key.name] = key.default
            elif key.generate:
                resolved[key.name] = key.pattern.format(token=token_source.token_hex(token_bytes))
            elif key.copy_from and key.copy_from[0] in values:
                resolved[key.name] = values[key.copy_from[0]][key.copy_from[1]]
            else:
                needed.append(f"{key.env} (Secret {spec.name}, key {key.name}: {spec.purpose})")
        values[spec.name] = resolved
    if needed:
        raise KubeError(
            "These Secrets do not exist yet and have no value to create them from; set the environment "
            "variables and rerun:\n" + "\n".join(f"  - {item}" for item in needed)
        )
    return values


def secret_manifests(values: Mapping[str, Mapping[str, str]], namespace: str) -> list[dict[str, object]]:
    """Secret objects for `kubectl create -f -` (sent on stdin, never written to disk or logged)."""
    return [
        {
            "apiVersion": "v1",
            "kind": "Secret",
            "type": "Opaque",
            "metadata": {
                "name": name,
                "namespace": namespace,
                "labels": {"app.kubernetes.io/part-of": "aic-ml", "app.kubernetes.io/managed-by": "aicml"},
            },
            "stringData": dict(data),
        }
        for name, data in values.items()
    ]
