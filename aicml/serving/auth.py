"""The model server's tokens: which sources, in which order, under which names.

The token comes from a Kubernetes Secret (mounted as a file, or exposed as an environment variable) or
from a Prefect Secret block, read once at startup by the CLI (``aicml.auth.resolve_token``). Authentication
is off only when the operator says so explicitly (``--no-auth``, for local use); a server with neither a
token nor that flag refuses to start.
"""

from __future__ import annotations

from pathlib import Path

from aicml.auth import BearerAuth, resolve_token
from aicml.errors import ConfigurationError

TOKEN_ENV = "AIC_SERVE_TOKEN"
CONTROL_TOKEN_ENV = "AIC_SERVE_CONTROL_TOKEN"


def resolve_auth(
    token_file: Path | None = None,
    token_env: str = TOKEN_ENV,
    secret_block: str | None = None,
    disabled: bool = False,
) -> BearerAuth:
    """The server's authentication from, in order: a file, an environment variable, a Prefect Secret block."""
    if disabled:
        return BearerAuth(None)
    token = resolve_token("serving token", file=token_file, env=token_env, secret_block=secret_block)
    if token is None:
        raise ConfigurationError(
            "The model server needs a bearer token: mount a Kubernetes Secret and pass --token-file, set "
            f"{token_env}, or name a Prefect Secret block with --token-block. Pass --no-auth only for "
            "local use."
        )
    return BearerAuth.of(token)


def resolve_control_auth(token_file: Path | None, predict: BearerAuth) -> BearerAuth | None:
    """The rollout controller's token (file, else AIC_SERVE_CONTROL_TOKEN), or None when none is given.

    It must differ from the predict token: a predict client must never be able to freeze a rollout.
    """
    control = resolve_token("control token", file=token_file, env=CONTROL_TOKEN_ENV)
    if control is None:
        return None
    auth = BearerAuth.of(control)
    if auth.same_token(predict):
        raise ConfigurationError("The control token must differ from the predict token.")
    return auth
