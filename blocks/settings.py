"""Settings of the local stack and the pipeline, read from the environment (prefix ``AIC_``) or `.env`."""

from __future__ import annotations

import os
from functools import cached_property
from pathlib import Path

from pydantic import Field, SecretStr, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

# The standard variables of the tools aic-ml drives. A user (or a Kubernetes ConfigMap) who sets them means
# them: settings fall back to them, and `LocalStack.export_client_env` never overwrites them. MLflow, Prefect,
# botocore/s3fs and libpq read them themselves; aic-ml only has to leave them alone.
STANDARD_VARIABLES = (
    "MLFLOW_TRACKING_URI",
    "MLFLOW_TRACKING_USERNAME",
    "MLFLOW_TRACKING_PASSWORD",
    "MLFLOW_TRACKING_TOKEN",
    "MLFLOW_S3_ENDPOINT_URL",
    "PREFECT_API_URL",
    "PREFECT_API_KEY",
    "PREFECT_API_AUTH_STRING",
    "AWS_ACCESS_KEY_ID",
    "AWS_SECRET_ACCESS_KEY",
    "AWS_ENDPOINT_URL",
    "AWS_ENDPOINT_URL_S3",
    "AWS_DEFAULT_REGION",
    "PGHOST",
    "PGPORT",
    "PGUSER",
    "PGPASSWORD",
    "PGDATABASE",
)

# What this process itself exported for a local stack (`export_client_env`): such a value is the stack's,
# not the user's, so a later stack in the same process may replace it and settings do not treat it as a
# user's choice.
EXPORTED: dict[str, str] = {}


def user_variable(name: str) -> str | None:
    """The value of a standard variable when the user (not this process's stack export) set it."""
    value = os.environ.get(name)
    if not value or EXPORTED.get(name) == value:
        return None
    return value


class AicSettings(BaseSettings):
    """Where the stack lives and how its parts find each other.

    Every field can be set as ``AIC_<FIELD>`` in the environment, for example ``AIC_HOME=/srv/aic``.
    """

    model_config = SettingsConfigDict(env_prefix="AIC_", env_file=".env", extra="ignore")

    home: Path = Field(
        default=Path(".aic"),
        description="Directory for the stack's databases, logs, pid files and artifacts.",
    )
    host: str = Field(default="127.0.0.1", description="Interface the local servers bind to.")
    prefect_port: int = Field(default=4200, description="Port of the local Prefect server.")
    mlflow_port: int = Field(default=5000, description="Port of the local MLflow tracking server.")
    metrics_port: int = Field(default=9464, description="Port of the local Prometheus metrics exporter.")
    prometheus_port: int = Field(
        default=9090, description="Port of the local Prometheus (`aicml up --with-prometheus`)."
    )
    database_url: SecretStr | None = Field(
        default=None,
        description=(
            "PostgreSQL URL (postgresql://user@host:port/) for the stack. When set, the Prefect server uses "
            "database `<prefect_database>` and MLflow `<mlflow_database>` on it; when unset both use SQLite "
            "under `home`."
        ),
    )
    prefect_database: str = Field(
        default="prefect", description="Database name for Prefect on `database_url`."
    )
    mlflow_database: str = Field(
        default="mlflow_db", description="Database name for MLflow on `database_url`."
    )
    data_integration_database: str | None = Field(
        default=None,
        description=(
            "Database name on `database_url` for the ingest state (ledger, watermarks), for example "
            "`data_integration_db`; `aicml up` creates it. Unset: a SQLite file under `home`. Never "
            "Prefect's database; on Kubernetes the data integration service's own database wins."
        ),
    )
    mlflow_tracking_uri: str | None = Field(
        default=None,
        description=(
            "Use this MLflow server instead of the local one (for example a cluster's). Falls back to "
            "MLFLOW_TRACKING_URI."
        ),
    )
    mlflow_ui_url: str | None = Field(
        default=None,
        description=(
            "Where people open the MLflow UI, for the links in Prefect artifacts (Data Docs, reports, plots), "
            "when it differs from the tracking URI: on Kubernetes the flows reach MLflow at an in-cluster "
            "address, people at an ingress or `kubectl port-forward` (e.g. http://localhost:5000)."
        ),
    )
    prefect_api_url: str | None = Field(
        default=None,
        description="Use this Prefect API instead of the local server's. Falls back to PREFECT_API_URL.",
    )
    work_pool: str = Field(default="local", description="Name of the local process work pool.")
    pool_concurrency: int = Field(default=4, ge=1, description="Flow runs the local pool runs at once.")
    failure_webhook_url: str | None = Field(
        default=None,
        description="When set, `aicml up` makes Prefect POST to it whenever a flow run fails or crashes.",
    )
    experiment: str = Field(
        default="aic-ml",
        description=(
            "MLflow experiment the pipeline logs to; with `team` set it becomes `<team>/<experiment>` (a "
            "name that already starts with `<team>/` is kept)."
        ),
    )
    team: str | None = Field(
        default=None,
        pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$",
        description=(
            "The team these runs belong to: prefixes the MLflow experiment (`<team>/aic-ml`), tags MLflow "
            "runs (`aicml.team`), flow runs (Prefect tag `team:<team>`) and usage rows."
        ),
    )
    usage_db: SecretStr | None = Field(
        default=None,
        description=(
            "SQLAlchemy URL of the usage store (`aicml usage`). Unset: the model deployment database on "
            "Kubernetes (MODEL_DEPLOYMENT_DB_*), else `<home>/deployment.db`."
        ),
    )
    price_cpu_hour: float | None = Field(
        default=None, ge=0, description="Price of one CPU core for an hour, for `aicml usage` costs."
    )
    price_gpu_hour: float | None = Field(
        default=None, ge=0, description="Price of one GPU for an hour, for `aicml usage` costs."
    )
    price_memory_gb_hour: float | None = Field(
        default=None, ge=0, description="Price of one GiB of memory for an hour, for `aicml usage` costs."
    )
    data_roots: str | None = Field(
        default=None,
        description=(
            "Directories (comma-separated) that file sources of deployment flow runs must lie in, after "
            "symlinks and '..' are resolved. Unset: `home` and /mnt/data (the data volume of the "
            "Kubernetes job templates). A flow's `base_dir` narrows it further."
        ),
    )
    confine_sources: bool = Field(
        default=False,
        description=(
            "Confine file sources to `data_roots` in every run, not only in flow runs of a deployment "
            "(direct calls from a notebook or a test act with their caller's own file access)."
        ),
    )
    ingest_allowed_hosts: str = Field(
        default="",
        description=(
            "Hosts (comma-separated names, IP addresses or CIDR networks) that HTTP sources may reach "
            "although they are loopback, private, link-local or otherwise not public. Empty: public "
            "addresses only."
        ),
    )
    landing_dir: Path | None = Field(
        default=None,
        description=(
            "The watched landing directory: `aicml.data.file.landed` events name files in it. Unset: "
            "`<home>/landing`."
        ),
    )

    @model_validator(mode="after")
    def _standard_fallbacks(self) -> AicSettings:
        """``AIC_*`` wins; otherwise the variables MLflow, Prefect and libpq users already set."""
        if self.mlflow_tracking_uri is None:
            self.mlflow_tracking_uri = user_variable("MLFLOW_TRACKING_URI")
        if self.prefect_api_url is None:
            self.prefect_api_url = user_variable("PREFECT_API_URL")
        host, user = user_variable("PGHOST"), user_variable("PGUSER")
        if self.database_url is None and host and user:
            # The password stays in PGPASSWORD, which libpq and psycopg read themselves: never in a URL.
            self.database_url = SecretStr(f"postgresql://{user}@{host}:{os.environ.get('PGPORT', '5432')}/")
        if self.team and not self.experiment.startswith(f"{self.team}/"):
            self.experiment = f"{self.team}/{self.experiment}"
        return self

    @cached_property
    def root(self) -> Path:
        return self.home.resolve()

    @property
    def local_prefect_url(self) -> str:
        """The API of the Prefect server a local stack starts (host and port of these settings)."""
        return f"http://{self.host}:{self.prefect_port}/api"

    @property
    def local_tracking_uri(self) -> str:
        """The MLflow server a local stack starts."""
        return f"http://{self.host}:{self.mlflow_port}"

    @property
    def prefect_url(self) -> str:
        """The Prefect API clients use: the configured one, else the local stack's."""
        return self.prefect_api_url or self.local_prefect_url

    @property
    def prefect_ui_url(self) -> str:
        return self.prefect_url.removesuffix("/api")

    @property
    def tracking_uri(self) -> str:
        return self.mlflow_tracking_uri or self.local_tracking_uri

    def ingest_state_url(self) -> str:
        """Where the ingest state (ledger, watermarks) lives, in a database of its own: data integration's
        on Kubernetes (data_integration_db), else `data_integration_database` on `database_url` when both
        are set, else SQLite under the stack's home."""
        if own := service_database_url("DATA_INTEGRATION"):
            return own
        if self.data_integration_database:
            url = self.database_for(self.data_integration_database, "psycopg")
            if url:
                return url
        return f"sqlite:///{self.root / 'ingest-state.db'}"

    def usage_store_url(self) -> str:
        """Where usage rows go (`aicml usage` reads them): `usage_db`, else the model deployment database on
        Kubernetes, else `<home>/deployment.db` (beside the retrain ledger)."""
        if self.usage_db is not None:
            return self.usage_db.get_secret_value()
        return service_database_url("MODEL_DEPLOYMENT") or f"sqlite:///{self.root / 'deployment.db'}"

    def database_for(self, name: str, driver: str) -> str | None:
        """The SQLAlchemy URL of database ``name`` on ``database_url`` with ``driver``, or None when unset."""
        if self.database_url is None:
            return None
        base = self.database_url.get_secret_value().rstrip("/")
        _, _, rest = base.partition("://")
        hostpart = rest.split("/", 1)[0]
        return f"postgresql+{driver}://{hostpart}/{name}"


def service_database_url(service: str, driver: str = "psycopg") -> str | None:
    """The URL of a platform service's own database on Kubernetes, else None.

    Each service's Secret reaches its pods as ``<SERVICE>_DB_USER``, ``<SERVICE>_DB_PASSWORD`` and
    ``<SERVICE>_DB_NAME`` (``service`` is e.g. ``DATA_INTEGRATION``), the server as ``PGHOST``/``PGPORT``
    from the platform ConfigMap. The URL carries the password, so keep it out of parameters and logs:
    resolve it where it is used.
    """
    from sqlalchemy.engine import URL

    prefix = service.upper()
    database, user = os.environ.get(f"{prefix}_DB_NAME"), os.environ.get(f"{prefix}_DB_USER")
    host = os.environ.get("PGHOST")
    if not (database and user and host):
        return None
    url = URL.create(
        f"postgresql+{driver}",
        username=user,
        password=os.environ.get(f"{prefix}_DB_PASSWORD") or None,
        host=host,
        port=int(os.environ.get("PGPORT", "5432")),
        database=database,
    )
    return url.render_as_string(hide_password=False)
