"""Bearer-token authentication, the one implementation of both servers (model serving and agents).

``resolve_token`` reads a token at start-up, from the first of: a value, a file (a mounted Kubernetes Secret),
an environment variable, a Prefect Secret block. It is called by the servers' start-up and CLIs only, never by
engine code: what the engine gets is a ``BearerAuth`` holding the values.

``BearerAuth`` checks ``Authorization: Bearer <token>`` in constant time. It has two roles: ``invoker`` (the
token) and ``admin`` (an optional second token that the agent API lets administer); ``local`` means that
authentication is off. A server without authentication binds only to loopback (``refuse_open_server``).
"""

from __future__ import annotations

import hmac
import ipaddress
import os
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

from pydantic import SecretStr

from aicml.errors import ConfigurationError

MIN_TOKEN_LENGTH = 16
ADMIN, INVOKER, LOCAL = "admin", "invoker", "local"


def is_loopback(host: str) -> bool:
    """Whether binding ``host`` keeps a server on this machine (127.0.0.0/8, ::1, localhost)."""
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
    """Checks ``Authorization: Bearer <token>``; ``token=None`` means authentication is disabled.

    ``admin``: a second token whose holder gets the ``admin`` role (None: nobody does).
    """

    token: SecretStr | None
    admin: SecretStr | None = None

    @classmethod
    def of(cls, token: str | None, admin: str | None = None) -> BearerAuth:
        return cls(SecretStr(token) if token else None, SecretStr(admin) if admin else None)

    @property
    def enabled(self) -> bool:
        return self.token is not None

    @cached_property
    def _expected(self) -> tuple[bytes | None, bytes | None]:
        def header(secret: SecretStr | None) -> bytes | None:
            return None if secret is None else b"Bearer " + secret.get_secret_value().encode()

        return header(self.token), header(self.admin)

    def same_token(self, other: BearerAuth) -> bool:
        """Whether both check the same (enabled) invoker token."""
        return self.token is not None and self._expected[0] == other._expected[0]

    def role(self, header: bytes | None) -> str | None:
        """The caller's role by the ``Authorization`` header sent: admin, invoker, local (auth off) or None."""
        expected, admin = self._expected
        if expected is None:
            return LOCAL
        given = header or b""
        # Constant-time comparisons, both always run: the time to answer must not tell how much of a token
        # was right, nor which token was close.
        is_admin = admin is not None and hmac.compare_digest(given, admin)
        is_invoker = hmac.compare_digest(given, expected)
        if is_admin:
            return ADMIN
        return INVOKER if is_invoker else None

    def allows(self, header: bytes | None) -> bool:
        return self.role(header) is not None


def resolve_token(
    what: str,
    *,
    value: str | None = None,
    file: Path | None = None,
    env: str | None = None,
    secret_block: str | None = None,
    error: type[ConfigurationError] = ConfigurationError,
) -> str | None:
    """A token from the first source given: ``value``, ``file``, the environment variable ``env``, the Prefect
    Secret block named ``secret_block``; None when none is. ``what`` names it in errors (a token shorter than
    ``MIN_TOKEN_LENGTH``, a file or block that cannot be read), raised as ``error``."""
    token: str | None = None
    if value:
        token = value
    elif file is not None:
        try:
            token = file.read_text()
        except OSError as exc:
            raise error(f"Cannot read the {what} file {file}: {exc}.") from exc
    elif env and os.environ.get(env):
        token = os.environ[env]
    elif secret_block:
        token = _secret_block(secret_block, error)
    if token is None:
        return None
    token = token.strip()
    if len(token) < MIN_TOKEN_LENGTH:
        raise error(f"The {what} is shorter than {MIN_TOKEN_LENGTH} characters; use a random one.")
    return token


def _secret_block(name: str, error: type[ConfigurationError]) -> str:
    from prefect.blocks.system import Secret

    try:
        block: Any = Secret.load(name, _sync=True)  # type: ignore[call-arg]
    except ValueError as exc:
        raise error(
            f"Cannot load the Prefect Secret block {name!r}: {exc}. Create it with `Secret(value=...).save({name!r})`."
        ) from exc
    loaded = block.get()
    if not isinstance(loaded, str) or not loaded.strip():
        raise error(f"Prefect Secret block {name!r} holds no token string; save one.")
    return loaded
