"""One redaction for every URL the platform prints: no part of a password survives."""

from __future__ import annotations

import pytest

from aicml.data.sources import redact as redact_source
from aicml.redaction import redact
from aicml.tuning.study import redact as redact_storage

PASSWORDS = ["plain", "p@ss", "p:a:ss", "pa/ss", "pa%40ss", "@:/%", "a@b@c", "s3cr3t/@:x"]


@pytest.mark.parametrize("password", PASSWORDS)
@pytest.mark.parametrize(
    "template",
    [
        "postgresql+psycopg://trainer:{pw}@db.example:5432/tuning_db",
        "https://user:{pw}@files.example/data/*.csv",
        "s3://key:{pw}@bucket/path",
        "connecting to mysql://root:{pw}@10.0.0.5/db failed: timeout",
    ],
)
def test_no_part_of_a_password_is_left(template: str, password: str) -> None:
    text = template.format(pw=password)
    for redacted in (redact(text), redact_source(text), redact_storage(text)):
        assert "***" in redacted
        hidden = redacted.replace("***", "")
        # Whatever remains of the password is only what the host, user and path also contain.
        assert password not in hidden
        for fragment in password.replace("@", " ").replace(":", " ").replace("/", " ").split():
            if len(fragment) > 2:
                assert fragment not in hidden, (text, redacted)


def test_user_host_and_path_are_kept() -> None:
    assert redact("postgresql://trainer:pw@db:5432/tuning_db") == "postgresql://trainer:***@db:5432/tuning_db"
    assert (
        redact("two: http://a:x@h1/p and http://b:y@h2/q") == "two: http://a:***@h1/p and http://b:***@h2/q"
    )


@pytest.mark.parametrize(
    "text",
    [
        "sqlite:///tmp/optuna.db",
        "postgresql://trainer@db:5432/tuning_db",  # no password
        "https://host/path?email=a@b.example",  # an '@' that is not user info
        "no url here: user@example.com",
    ],
)
def test_text_without_a_password_is_unchanged(text: str) -> None:
    assert redact(text) == text
