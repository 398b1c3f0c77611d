"""`aicml models trust` against a real MLflow server running its basic-auth app: only an admin or an
account with MANAGE on the registered model may trust; the audit names the authenticated account."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from typer.testing import CliRunner

from aicml.kube.mlflow_users import Account, ensure_accounts
from aicml.registry.checksums import CHECKSUM_TAG, TRUST_TAG_PREFIX
from aicml.registry.cli import app
from aicml.rollout.audit import read_audit
from tests.aicml.kube.conftest import auth_server, mlflow_admin  # noqa: F401  (fixtures)

OWNER = Account("model-owner", "owner-password-123")
READER = Account("model-reader", "reader-password-123")
EDITOR = Account("model-editor", "editor-password-123")
MODEL = "outside-model"


def login(mp: pytest.MonkeyPatch, uri: str, account: Account | None) -> None:
    """Point the MLflow client at ``uri`` as ``account`` (None: no credentials); read at each request."""
    import mlflow

    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    mp.setenv("MLFLOW_TRACKING_URI", uri)
    if account is None:
        mp.delenv("MLFLOW_TRACKING_USERNAME", raising=False)
        mp.delenv("MLFLOW_TRACKING_PASSWORD", raising=False)
    else:
        mp.setenv("MLFLOW_TRACKING_USERNAME", account.username)
        mp.setenv("MLFLOW_TRACKING_PASSWORD", account.password)


@pytest.fixture
def registered(auth_server: str, mlflow_admin: Account) -> Iterator[str]:  # noqa: F811
    """As OWNER (plain MLflow, no aic-ml code): log and register a model, which makes OWNER its MANAGE
    holder; the admin grants EDITOR EDIT on it (can write tags in MLflow, may not trust)."""
    import httpx
    import mlflow
    import mlflow.sklearn
    from sklearn.linear_model import LogisticRegression

    tracking, registry = mlflow.get_tracking_uri(), mlflow.get_registry_uri()
    ensure_accounts(auth_server, mlflow_admin, [OWNER, READER, EDITOR])
    with pytest.MonkeyPatch.context() as mp:
        login(mp, auth_server, OWNER)
        mlflow.set_experiment("owners-experiment")
        with mlflow.start_run():
            info = mlflow.sklearn.log_model(
                LogisticRegression().fit([[0.0], [1.0]], [0, 1]), name="model", pip_requirements=["mlflow"]
            )
        version = str(mlflow.register_model(info.model_uri, MODEL).version)
    grant = {"username": EDITOR.username, "resource_type": "registered_model", "resource_id": MODEL,
             "permission": "EDIT"}  # fmt: skip
    answer = httpx.post(
        f"{auth_server}/api/3.0/mlflow/users/permissions/grant",
        json=grant,
        auth=(mlflow_admin.username, mlflow_admin.password),
    )
    assert answer.status_code == 200, answer.text
    try:
        yield version
    finally:
        mlflow.set_tracking_uri(tracking)
        mlflow.set_registry_uri(registry)


def tags_as_admin(uri: str, admin: Account, version: str) -> dict[str, str]:
    from mlflow import MlflowClient

    with pytest.MonkeyPatch.context() as mp:
        login(mp, uri, admin)
        return dict(MlflowClient().get_model_version(MODEL, version).tags or {})


def test_only_manage_or_admin_may_trust(
    auth_server: str,  # noqa: F811
    mlflow_admin: Account,  # noqa: F811
    registered: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    runner = CliRunner()
    audit = tmp_path / "trust.jsonl"
    trust = ["trust", MODEL, registered, "--tracking-uri", auth_server, "--audit-log", str(audit)]

    login(monkeypatch, auth_server, READER)
    refused = runner.invoke(app, trust)
    assert refused.exit_code == 1, refused.output
    assert f"'{READER.username}' holds READ on registered model '{MODEL}'" in refused.output
    assert "needs MANAGE" in refused.output
    # EDIT lets an account write tags in MLflow itself, but not vouch for the files here.
    login(monkeypatch, auth_server, EDITOR)
    refused = runner.invoke(app, trust)
    assert refused.exit_code == 1 and f"'{EDITOR.username}' holds EDIT" in refused.output, refused.output
    login(monkeypatch, auth_server, None)
    refused = runner.invoke(app, trust)
    assert refused.exit_code == 1 and "requires a login" in refused.output, refused.output
    login(monkeypatch, auth_server, Account(OWNER.username, "wrong-password-123"))
    refused = runner.invoke(app, trust)
    assert refused.exit_code == 1 and "(401)" in refused.output, refused.output
    assert CHECKSUM_TAG not in tags_as_admin(auth_server, mlflow_admin, registered)
    assert not audit.exists()

    login(monkeypatch, auth_server, READER)  # anyone who can read may verify
    untrusted = runner.invoke(app, ["verify", MODEL, registered, "--tracking-uri", auth_server])
    assert untrusted.exit_code == 2, untrusted.output

    login(monkeypatch, auth_server, OWNER)
    trusted = runner.invoke(app, trust)
    assert trusted.exit_code == 0, trusted.output
    login(monkeypatch, auth_server, mlflow_admin)
    again = runner.invoke(app, trust)
    assert again.exit_code == 0, again.output
    lines = read_audit(audit)
    assert [(line["actor"], line["evidence"]["grounds"]) for line in lines] == [
        (OWNER.username, "MANAGE"),
        (mlflow_admin.username, "admin"),
    ]
    assert all(line["evidence"]["identity_source"] == "mlflow" for line in lines)
    tags = tags_as_admin(auth_server, mlflow_admin, registered)
    assert tags[CHECKSUM_TAG] == lines[0]["evidence"]["digest"] == lines[1]["evidence"]["digest"]
    assert lines[1]["evidence"]["previous_digest"] == lines[0]["evidence"]["digest"]
    assert json.loads(tags[f"{TRUST_TAG_PREFIX}.{lines[0]['id']}"])["actor"] == OWNER.username

    login(monkeypatch, auth_server, READER)
    matched = runner.invoke(app, ["verify", MODEL, registered, "--tracking-uri", auth_server])
    assert matched.exit_code == 0 and matched.output.startswith("match:"), matched.output
