"""Prefect Blocks for data sources that hold credentials: S3-compatible storage and SQL databases.

Secrets are ``SecretStr`` fields; a flow loads the block by name and hands the connector plain
options at run time, so credentials never appear in parameters, logs or artifacts.
"""

from __future__ import annotations

from typing import Any

from prefect.blocks.core import Block
from pydantic import Field, SecretStr


class S3Storage(Block):
    """Credentials and endpoint of an S3-compatible object store (AWS S3, MinIO, Ceph, ...)."""

    _block_type_name = "AIC S3 Storage"
    _block_type_slug = "aic-s3-storage"

    access_key_id: str = Field(description="Access key id.")
    secret_access_key: SecretStr = Field(description="Secret access key.")
    endpoint_url: str | None = Field(
        default=None, description="Endpoint of an S3-compatible server; empty for AWS S3."
    )
    region: str = Field(default="us-east-1", description="Region name.")

    def storage_options(self) -> dict[str, Any]:
        """fsspec/s3fs options for this store."""
        options: dict[str, Any] = {
            "key": self.access_key_id,
            "secret": self.secret_access_key.get_secret_value(),
            "client_kwargs": {"region_name": self.region},
        }
        if self.endpoint_url:
            options["client_kwargs"]["endpoint_url"] = self.endpoint_url
        return options


class SqlDatabase(Block):
    """A SQLAlchemy URL with its password, for SQL sources and sinks."""

    _block_type_name = "AIC SQL Database"
    _block_type_slug = "aic-sql-database"

    url: SecretStr = Field(description="SQLAlchemy URL, e.g. postgresql+psycopg://user:pass@host/db.")

    def sqlalchemy_url(self) -> str:
        return self.url.get_secret_value()
