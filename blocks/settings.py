"""Settings of the local stack and the pipeline, read from the environment (prefix ``AIC_``) or `.env`."""

from __future__ import annotations

from functools import cached_property
from pathlib import Path

from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict


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
    mlflow_tracking_uri: str | None = Field(
        default=None, description="Use this MLflow server instead of the local one (for example a cluster's)."
    )
    prefect_api_url: str | None = Field(
        default=None, description="Use this Prefect API instead of the local server's."
    )
    work_pool: str = Field(default="local", description="Name of the local process work pool.")
    pool_concurrency: int = Field(default=4, ge=1, description="Flow runs the local pool runs at once.")
    failure_webhook_url: str | None = Field(
        default=None,
        description="When set, `aicml up` makes Prefect POST to it whenever a flow run fails or crashes.",
    )
    experiment: str = Field(default="aic-ml", description="MLflow experiment the pipeline logs to.")

    @cached_property
    def root(self) -> Path:
        return self.home.resolve()

    @property
    def prefect_url(self) -> str:
        return self.prefect_api_url or f"http://{self.host}:{self.prefect_port}/api"

    @property
    def prefect_ui_url(self) -> str:
        return self.prefect_url.removesuffix("/api")

    @property
    def tracking_uri(self) -> str:
        return self.mlflow_tracking_uri or f"http://{self.host}:{self.mlflow_port}"

    def database_for(self, name: str, driver: str) -> str | None:
        """The SQLAlchemy URL of database ``name`` on ``database_url`` with ``driver``, or None when unset."""
        if self.database_url is None:
            return None
        base = self.database_url.get_secret_value().rstrip("/")
        _, _, rest = base.partition("://")
        hostpart = rest.split("/", 1)[0]
        return f"postgresql+{driver}://{hostpart}/{name}"
