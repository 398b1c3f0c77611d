"""One way to keep passwords out of text: URLs in logs, flow-run parameters, artifacts and errors."""

from __future__ import annotations

import re

# A URL's scheme and everything up to the next whitespace or quote: a password may hold '/', ':' or '@'
# unencoded (people paste them that way), so the user info ends at the token's last '@'.
_URL = re.compile(r"(?P<scheme>\b[A-Za-z][A-Za-z0-9+.\-]*://)(?P<rest>[^\s'\"<>]*)")


def _hide(match: re.Match[str]) -> str:
    rest = match.group("rest")
    userinfo, at, host = rest.rpartition("@")
    if not at or ":" not in userinfo:
        return match.group(0)
    user = userinfo.split(":", 1)[0]
    return f"{match.group('scheme')}{user}:***@{host}"


def redact(text: str) -> str:
    """``text`` with the password of every URL in it replaced by ``***``; user names and hosts are kept."""
    if "://" not in text or "@" not in text:
        return text
    return _URL.sub(_hide, text)


def has_password(text: str) -> bool:
    """Whether any URL in ``text`` carries a password."""
    return any(_hide(match) != match.group(0) for match in _URL.finditer(text)) if "@" in text else False


def refuse_password(value: str | None) -> str | None:
    """A pydantic validator for parameters that name data: a URL with a password is refused, because
    a flow run's parameters are stored by Prefect and shown in its UI."""
    if value and has_password(value):
        raise ValueError(
            "must not carry a password (flow-run parameters are stored and shown in the UI): keep the URL "
            "without it and put the credentials in a block (a SQLAlchemy Connector or S3 Bucket block) or the "
            "environment (PGPASSWORD, AWS_*)"
        )
    return value
