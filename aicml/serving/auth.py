"""Bearer-token authentication of the predict endpoints.

The token comes from a Kubernetes Secret (mounted as a file, or exposed as an environment variable) or
from a Prefect Secret block, read once at startup. Authentication is off only when the operator says
so explicitly (``--no-auth``, for local use); a server with neither a token nor that flag refuses to start.
"""

from __future__ import annotations

import hmac
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import SecretStr

from aicml.errors import ConfigurationError

TOKEN_ENV = "AIC_SERVE_TOKEN"
CONTROL_TOKEN_ENV = "AIC_SERVE_CONTROL_TOKEN"


def is_loopback(host: str) -> bool:
    """Whether binding ``host`` keeps a server on this machine (127.0.0.0/8, ::1, localhost)."""
    import ipaddress

    if host.strip("[]").lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False  # a name or a wildcard such as 0.0.0.0: reachable from elsewhere


def refuse_open_server(host: str, auth_disabled: bool, switch: str) -> None:
    """A server without authentication binds only to loopback; anything else is refused before it starts."""
    if auth_disabled and not is_loopback(host):
        raise ConfigurationError(
            f"{switch} is for local use: the server would accept anyone on {host}. Bind to 127.0.0.1, or "
            "give it a token."
        )


@dataclass(frozen=True)
class BearerAuth:
    """Checks ``Authorization: Bearer <token>``; ``token=None`` means authentication is disabled."""

    token: SecretStr | None

    @property
    def enabled(self) -> bool:
        return self.token is not None

    def expected_header(self) -> bytes | None:
        return None if self.token is None else b"Bearer " + self.token.get_secret_value().encode()

    def allows(self, header: bytes | None, expected: bytes | None) -> bool:
        if expected is None:
            return True
        # Constant-time comparison: the time to refuse must not tell how much of the token was right.
        return header is not None and hmac.compare_digest(header, expected)


def resolve_auth(
    token_file: Path | None = None,
    token_env: str = TOKEN_ENV,
    secret_block: str | None = None,
    disabled: bool = False,
) -> BearerAuth:
    """The server's authentication from, in order: a file, an environment variable, a Prefect Secret block."""
    if disabled:
        return BearerAuth(None)
    token: str | None = None
    if token_file is not None:
        try:
            token = token_file.read_text().strip()
        except OSError as exc:
            raise ConfigurationError(f"Cannot read the serving token file {token_file}: {exc}.") from exc
    elif os.environ.get(token_env):
        token = os.environ[token_env].strip()
    elif secret_block is not None:
        from prefect.blocks.system import Secret

        try:
            block: Any = Secret.load(secret_block)
            token = str(block.get()).strip()
        except ValueError as exc:
            raise ConfigurationError(
                f"Cannot load the Prefect Secret block {secret_block!r}: {exc}. Create it with "
                f"`Secret(value=...).save({secret_block!r})`."
            ) from exc
    if not token:
        raise ConfigurationError(
            "The model server needs a bearer token: mount a Kubernetes Secret and pass --token-file, set "
            f"{token_env}, or name a Prefect Secret block with --token-block. Pass --no-auth only for "
            "local use."
        )
    if len(token) < 16:
        raise ConfigurationError("The serving token is shorter than 16 characters; use a random one.")
    return BearerAuth(SecretStr(token))


def resolve_control_auth(token_file: Path | None, predict: BearerAuth) -> BearerAuth | None:
    """The rollout controller's token (file, else AIC_SERVE_CONTROL_TOKEN), or None when none is given.

    It must differ from the predict token: a predict client must never be able to freeze a rollout.
    """
    if token_file is None and not os.environ.get(CONTROL_TOKEN_ENV):
        return None
    control = resolve_auth(token_file, token_env=CONTROL_TOKEN_ENV)
    if predict.token is not None and control.expected_header() == predict.expected_header():
        raise ConfigurationError("The control token must differ from the predict token.")
    return control
