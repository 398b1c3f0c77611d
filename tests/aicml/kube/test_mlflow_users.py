"""The mlflow-users Job's code against a real MLflow server running the basic-auth app."""

from __future__ import annotations

import httpx
import pytest

from aicml.errors import ConfigurationError
from aicml.kube.mlflow_users import Account, accounts_from_env, ensure_accounts, main


def _search(uri: str, account: Account) -> int:
    return httpx.post(
        f"{uri}/api/2.0/mlflow/experiments/search",
        json={"max_results": 1},
        auth=(account.username, account.password),
    ).status_code


def test_workload_accounts_are_created_then_rotated(auth_server: str, mlflow_admin: Account) -> None:
    serving = Account("aicml-serving", "first-password")
    assert _search(auth_server, serving) == 401  # no such account yet
    assert ensure_accounts(auth_server, mlflow_admin, [serving]) == {"aicml-serving": "created"}
    assert _search(auth_server, serving) == 200
    rotated = Account("aicml-serving", "second-password")
    assert ensure_accounts(auth_server, mlflow_admin, [rotated]) == {"aicml-serving": "password updated"}
    assert _search(auth_server, rotated) == 200
    assert _search(auth_server, serving) == 401  # the old password no longer works
    # A workload account is not an admin: it cannot create other accounts.
    made = httpx.post(
        f"{auth_server}/api/2.0/mlflow/users/create",
        json={"username": "intruder", "password": "x"},
        auth=(rotated.username, rotated.password),
    )
    assert made.status_code == 403


def test_the_job_refuses_a_wrong_admin_and_an_admin_named_workload(
    auth_server: str, mlflow_admin: Account
) -> None:
    with pytest.raises(ConfigurationError, match="401"):
        ensure_accounts(auth_server, Account("admin", "wrong"), [Account("aicml-agents", "pw")])
    with pytest.raises(ConfigurationError, match="must not be the admin"):
        ensure_accounts(auth_server, mlflow_admin, [Account("admin", "pw")])


def test_the_job_entry_point_reads_its_secrets_from_the_environment(
    auth_server: str, mlflow_admin: Account, capsys: pytest.CaptureFixture[str]
) -> None:
    env = {
        "MLFLOW_TRACKING_URI": auth_server,
        "MLFLOW_TRACKING_USERNAME": mlflow_admin.username,
        "MLFLOW_TRACKING_PASSWORD": mlflow_admin.password,
        "AIC_MLFLOW_USERS": "pipeline",
        "AIC_MLFLOW_USER_PIPELINE_USERNAME": "aicml-pipeline",
        "AIC_MLFLOW_USER_PIPELINE_PASSWORD": "pipeline-password-1",
    }
    assert main(env) == 0
    out = capsys.readouterr().out
    assert "aicml-pipeline: created" in out and "pipeline-password-1" not in out
    assert _search(auth_server, Account("aicml-pipeline", "pipeline-password-1")) == 200


def test_missing_account_variables_are_all_named() -> None:
    with pytest.raises(ConfigurationError) as raised:
        accounts_from_env({"AIC_MLFLOW_USERS": "pipeline,serving"})
    for name in ("PIPELINE_USERNAME", "PIPELINE_PASSWORD", "SERVING_USERNAME", "SERVING_PASSWORD"):
        assert f"AIC_MLFLOW_USER_{name}" in str(raised.value)
