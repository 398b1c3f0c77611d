"""Settings of the agent service (prefix ``AIC_AGENTS_``): where ``agent_db`` is, and how callers authenticate.

Kept here rather than in ``blocks/settings.py`` so the agent service owns its configuration. On Kubernetes
the manifests give ``PGHOST``/``PGPORT`` (config map), ``AGENT_DB_USER``/``AGENT_DB_NAME`` and ``PGPASSWORD``
(secret); those build the PostgreSQL URL when ``AIC_AGENTS_DATABASE_URL`` is unset. psycopg reads
``PGPASSWORD`` itself, so the password never enters a URL or a log line.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated, Any

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from aicml.agents.errors import AgentConfigurationError
from aicml.auth import BearerAuth, resolve_token


class AgentSettings(BaseSettings):
    """Every field can be set as ``AIC_AGENTS_<FIELD>``."""

    model_config = SettingsConfigDict(env_prefix="AIC_AGENTS_", env_file=".env", extra="ignore")

    database_url: SecretStr | None = Field(
        default=None,
        description="SQLAlchemy URL of agent_db, e.g. postgresql+psycopg://postgres@127.0.0.1:5432/agent_db.",
    )
    token: SecretStr | None = Field(
        default=None, description="Bearer token of invokers: they call agents and coordinations and read."
    )
    token_secret_block: str | None = Field(
        default=None, description="Name of a Prefect Secret block holding the invokers' bearer token."
    )
    admin_token: SecretStr | None = Field(
        default=None,
        description="Bearer token of administrators: register agents, transitions, rollouts, health checks, "
        "storing coordinations. Unset: nobody can administer over the API (403).",
    )
    admin_token_secret_block: str | None = Field(
        default=None, description="Name of a Prefect Secret block holding the administrators' bearer token."
    )
    python_modules: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="Modules (comma-separated) whose functions `python` agents may name; a package allows its "
        "submodules. Empty: no python agents.",
    )
    remote_urls: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="URL prefixes (comma-separated, scheme://host[:port]/path) that `http` agents and `llm` "
        "agents' base_url may point at. Empty: none.",
    )
    remote_tokens: dict[str, SecretStr] = Field(
        default_factory=dict,
        description='JSON object {"<URL prefix>": "<token>"}: the bearer token sent to remote agents under that '
        "prefix (the operator's, never the caller's choice).",
    )
    auth_disabled: bool = Field(
        default=False, description="Serve /v1 without auth; only on purpose (a laptop, a benchmark)."
    )
    lease_margin_s: float = Field(
        default=30.0,
        ge=0,
        description="Added to the longest an agent call may take (timeout x attempts + backoffs) to make the TTL "
        "of its leases: a replica killed while holding leases loses them to the others within that TTL.",
    )
    catalog_ttl_s: float = Field(
        default=2.0, ge=0, description="How long the router caches the active agents and rollouts."
    )
    audit_path: Path | None = Field(
        default=None,
        description="JSON-lines file of rollout decisions (promote, hold, roll back); default "
        "<AIC_HOME>/audit/agents.jsonl.",
    )
    decision_events: bool = Field(
        default=True, description="Emit each rollout decision as a Prefect event when a Prefect API is set."
    )
    tracing: bool = Field(default=True, description="Export each coordination as an MLflow trace.")
    experiment: str = Field(default="aic-agents", description="MLflow experiment the traces go to.")

    @field_validator("python_modules", "remote_urls", mode="before")
    @classmethod
    def _comma_separated(cls, value: Any) -> Any:
        if isinstance(value, str):
            return [item.strip() for item in value.split(",") if item.strip()]
        return value

    def resolved_database_url(self) -> str:
        """agent_db's URL: the setting, else PostgreSQL from the Kubernetes env, else SQLite under AIC_HOME."""
        if self.database_url is not None:
            return self.database_url.get_secret_value()
        name, host = os.environ.get("AGENT_DB_NAME"), os.environ.get("PGHOST")
        if name and host:
            user = os.environ.get("AGENT_DB_USER", "postgres")
            port = os.environ.get("PGPORT", "5432")
            return f"postgresql+psycopg://{user}@{host}:{port}/{name}"
        home = Path(os.environ.get("AIC_HOME", ".aic")).resolve()
        home.mkdir(parents=True, exist_ok=True)
        return f"sqlite:///{home / 'agent_db.sqlite'}"

    def resolved_audit_path(self) -> Path:
        """Where rollout decisions are appended, beside serving's ``audit/deployments.jsonl``."""
        if self.audit_path is not None:
            return self.audit_path
        return Path(os.environ.get("AIC_HOME", ".aic")).resolve() / "audit" / "agents.jsonl"

    def bearer_token(self) -> str | None:
        """The invokers' token, or None when auth is disabled on purpose; refuses to run open by accident.

        Reads the Prefect Secret block when one is named: call it at start-up (``aicml agents serve``)."""
        if self.auth_disabled:
            return None
        token = _token(self.token, self.token_secret_block, "AIC_AGENTS_TOKEN")
        if token is None:
            raise AgentConfigurationError(
                "The agent API needs a bearer token: set AIC_AGENTS_TOKEN, or AIC_AGENTS_TOKEN_SECRET_BLOCK to the "
                "name of a Prefect Secret block, or AIC_AGENTS_AUTH_DISABLED=true to serve without auth on purpose."
            )
        return token

    def admin_bearer_token(self) -> str | None:
        """The administrators' token (None: no administration over the API); never the invokers' token."""
        if self.auth_disabled:
            return None
        admin = _token(self.admin_token, self.admin_token_secret_block, "AIC_AGENTS_ADMIN_TOKEN")
        if admin is not None and admin == self.bearer_token():
            raise AgentConfigurationError(
                "AIC_AGENTS_ADMIN_TOKEN equals AIC_AGENTS_TOKEN: administrators and invokers need different tokens."
            )
        return admin

    def auth(self) -> BearerAuth:
        """Both tokens resolved (Secret blocks read): what the API checks callers against."""
        return BearerAuth.of(self.bearer_token(), self.admin_bearer_token())

    def policy(self) -> Any:
        """What agent definitions may name (python modules, remote URLs and their tokens): ``AgentPolicy``."""
        from aicml.agents.policy import AgentPolicy

        return AgentPolicy(
            python_modules=tuple(self.python_modules),
            remote_urls=tuple(self.remote_urls),
            remote_tokens={k: v.get_secret_value() for k, v in self.remote_tokens.items()},
        )


def _token(value: SecretStr | None, block: str | None, setting: str) -> str | None:
    """A token from its setting, else from the Prefect Secret block named; None when neither is set."""
    return resolve_token(
        f"agent API token ({setting})",
        value=None if value is None else value.get_secret_value(),
        secret_block=block,
        error=AgentConfigurationError,
    )
