"""The MLflow accounts of the platform's workloads, made by the `mlflow-users` Job with the admin's login.

Every workload logs in as itself (Secrets `mlflow-user-<workload>`), never as the admin: the admin's
credentials reach only this Job. Idempotent: a missing account is created, an existing one gets the
password its Secret holds now (so rotating a Secret and rerunning the Job rotates the account).

Run as ``python -m aicml.kube.mlflow_users``; reads ``MLFLOW_TRACKING_URI``, the admin's
``MLFLOW_TRACKING_USERNAME``/``MLFLOW_TRACKING_PASSWORD`` and, for each name in ``AIC_MLFLOW_USERS``
(comma separated), ``AIC_MLFLOW_USER_<NAME>_USERNAME`` and ``AIC_MLFLOW_USER_<NAME>_PASSWORD``.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping
from dataclasses import dataclass

from aicml.errors import ConfigurationError


@dataclass(frozen=True)
class Account:
    username: str
    password: str

    def __repr__(self) -> str:  # never print a password
        return f"Account({self.username!r})"


def accounts_from_env(environ: Mapping[str, str]) -> list[Account]:
    """The accounts named by ``AIC_MLFLOW_USERS``; every missing variable is named in one error."""
    names = [name.strip() for name in environ.get("AIC_MLFLOW_USERS", "").split(",") if name.strip()]
    if not names:
        raise ConfigurationError("AIC_MLFLOW_USERS names no account (comma-separated workload names).")
    accounts, missing = [], []
    for name in names:
        prefix = f"AIC_MLFLOW_USER_{name.upper().replace('-', '_')}"
        username, password = environ.get(f"{prefix}_USERNAME"), environ.get(f"{prefix}_PASSWORD")
        if not username:
            missing.append(f"{prefix}_USERNAME")
        if not password:
            missing.append(f"{prefix}_PASSWORD")
        if username and password:
            accounts.append(Account(username, password))
    if missing:
        raise ConfigurationError(
            "Set these variables (from the mlflow-user-* Secrets): " + ", ".join(missing)
        )
    return accounts


def wait_for_server(tracking_uri: str, timeout_s: float = 300.0) -> None:
    from aicml.stack.processes import healthy, wait_until

    url = f"{tracking_uri.rstrip('/')}/health"
    if not wait_until(lambda: healthy(url, timeout=5.0), timeout_s, interval=2.0):
        raise ConfigurationError(f"MLflow at {tracking_uri} did not answer /health within {timeout_s:.0f} s.")


def ensure_accounts(tracking_uri: str, admin: Account, accounts: list[Account]) -> dict[str, str]:
    """Create or update each account through MLflow's auth API as ``admin``; returns username -> what happened."""
    import httpx

    done: dict[str, str] = {}
    base = f"{tracking_uri.rstrip('/')}/api/2.0/mlflow/users"
    with httpx.Client(auth=(admin.username, admin.password), timeout=30.0) as client:
        for account in accounts:
            if account.username == admin.username:
                raise ConfigurationError(f"Workload account {account.username!r} must not be the admin.")
            found = client.get(f"{base}/get", params={"username": account.username})
            if found.status_code == 401:
                raise ConfigurationError("MLflow refused the admin's credentials (401).")
            if found.status_code == 200:
                answer = client.patch(
                    f"{base}/update-password",
                    json={"username": account.username, "password": account.password},
                )
                what = "password updated"
            else:
                answer = client.post(
                    f"{base}/create", json={"username": account.username, "password": account.password}
                )
                what = "created"
            if answer.status_code >= 400:
                raise ConfigurationError(
                    f"MLflow answered {answer.status_code} for account {account.username!r}: {answer.text[:200]}"
                )
            done[account.username] = what
    return done


def main(environ: Mapping[str, str] | None = None) -> int:
    env = os.environ if environ is None else environ
    try:
        tracking_uri = env["MLFLOW_TRACKING_URI"]
        admin = Account(env["MLFLOW_TRACKING_USERNAME"], env["MLFLOW_TRACKING_PASSWORD"])
    except KeyError as missing:
        print(f"error: {missing.args[0]} is not set", file=sys.stderr)
        return 2
    try:
        accounts = accounts_from_env(env)
        wait_for_server(tracking_uri)
        for username, what in ensure_accounts(tracking_uri, admin, accounts).items():
            print(f"mlflow account {username}: {what}")
    except ConfigurationError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
