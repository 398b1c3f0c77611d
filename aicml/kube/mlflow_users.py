"""The MLflow accounts of the platform's workloads, made by the `mlflow-users` Job with the admin's login,
and the platform's model and experiment names, claimed by the admin for the workload that writes them.

Every workload logs in as itself (Secrets `mlflow-user-<workload>`), never as the admin: the admin's
credentials reach only this Job. Idempotent: a missing account is created, an existing one gets the
password its Secret holds now (so rotating a Secret and rerunning the Job rotates the account).

MLflow lets any account create a new registered model or experiment and makes it that name's MANAGE
owner, so a read-only workload could otherwise claim ``churn`` before the pipeline first registers it.
The Job therefore creates each configured name itself and grants MANAGE on it to its one writer; a name
that another non-admin account can already write is reported, never taken over.

Run as ``python -m aicml.kube.mlflow_users``; reads ``MLFLOW_TRACKING_URI``, the admin's
``MLFLOW_TRACKING_USERNAME``/``MLFLOW_TRACKING_PASSWORD`` and, for each name in ``AIC_MLFLOW_USERS``
(comma separated), ``AIC_MLFLOW_USER_<NAME>_USERNAME`` and ``AIC_MLFLOW_USER_<NAME>_PASSWORD``;
``AIC_MLFLOW_MODELS`` (the pipeline's registered models) and ``AIC_MLFLOW_EXPERIMENTS``
(``name`` for the pipeline's, ``name=workload`` for another workload's), both comma separated.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

from aicml.errors import ConfigurationError

if TYPE_CHECKING:
    import httpx

# The names the platform writes (deployments/presets.yaml `model_name`, Settings.experiment,
# AgentSettings.experiment); tests/aicml/kube/test_mlflow_roles.py checks they stay in step.
PIPELINE = "pipeline"
DEFAULT_MODELS = "churn"
DEFAULT_EXPERIMENTS = "aic-ml,aic-agents=agents"

# Effective permissions that cannot write; any other one (EDIT, MANAGE, a future level) is a claim.
READ_ONLY = frozenset({"READ", "USE", "DENY", "NO_PERMISSIONS"})
IS_PROMPT_TAG = "mlflow.prompt.is_prompt"

ResourceType = Literal["registered_model", "experiment"]


@dataclass(frozen=True)
class Account:
    username: str
    password: str

    def __repr__(self) -> str:  # never print a password
        return f"Account({self.username!r})"


@dataclass(frozen=True)
class Claim:
    """A registered model or experiment name that only ``owner`` (and the admins) may write."""

    resource_type: ResourceType
    name: str
    owner: Account

    def __str__(self) -> str:
        kind = "registered model" if self.resource_type == "registered_model" else "experiment"
        return f"{kind} {self.name!r}"


def _names(value: str) -> list[str]:
    return [name.strip() for name in value.split(",") if name.strip()]


def workload_accounts_from_env(environ: Mapping[str, str]) -> dict[str, Account]:
    """Workload name -> account, for the names in ``AIC_MLFLOW_USERS``; every missing variable is named
    in one error."""
    names = _names(environ.get("AIC_MLFLOW_USERS", ""))
    if not names:
        raise ConfigurationError("AIC_MLFLOW_USERS names no account (comma-separated workload names).")
    accounts, missing = {}, []
    for name in names:
        prefix = f"AIC_MLFLOW_USER_{name.upper().replace('-', '_')}"
        username, password = environ.get(f"{prefix}_USERNAME"), environ.get(f"{prefix}_PASSWORD")
        if not username:
            missing.append(f"{prefix}_USERNAME")
        if not password:
            missing.append(f"{prefix}_PASSWORD")
        if username and password:
            accounts[name] = Account(username, password)
    if missing:
        raise ConfigurationError(
            "Set these variables (from the mlflow-user-* Secrets): " + ", ".join(missing)
        )
    return accounts


def accounts_from_env(environ: Mapping[str, str]) -> list[Account]:
    """The accounts named by ``AIC_MLFLOW_USERS``; every missing variable is named in one error."""
    return list(workload_accounts_from_env(environ).values())


def claims_from_env(environ: Mapping[str, str], accounts: Mapping[str, Account]) -> list[Claim]:
    """The names to claim: ``AIC_MLFLOW_MODELS`` for the pipeline, ``AIC_MLFLOW_EXPERIMENTS`` (``name`` for
    the pipeline, ``name=workload`` otherwise). An unset variable means the platform's defaults, of which
    an entry whose workload has no account here is left out; a name you set must have its account."""
    wanted: list[tuple[ResourceType, str, str, bool]] = []  # type, name, workload, explicit
    sources: list[tuple[str, ResourceType, str]] = [
        ("AIC_MLFLOW_MODELS", "registered_model", DEFAULT_MODELS),
        ("AIC_MLFLOW_EXPERIMENTS", "experiment", DEFAULT_EXPERIMENTS),
    ]
    for variable, resource_type, default in sources:
        explicit = variable in environ
        for entry in _names(environ.get(variable, default)):
            name, workload = entry, PIPELINE
            if resource_type == "experiment" and "=" in entry:  # the workload name never holds "="
                name, _, workload = (part.strip() for part in entry.rpartition("="))
            if not name or not workload:
                raise ConfigurationError(f"{variable}: {entry!r} is not 'name' or 'name=workload'.")
            wanted.append((resource_type, name, workload, explicit))
    claims, unknown = [], []
    for resource_type, name, workload, explicit in wanted:
        if workload in accounts:
            claims.append(Claim(resource_type, name, accounts[workload]))
        elif explicit:
            unknown.append(f"{name} ({workload})")
    if unknown:
        raise ConfigurationError(
            "These names belong to workloads that are not in AIC_MLFLOW_USERS: "
            + ", ".join(unknown)
            + ". Add the workload's account, or fix the name after '='."
        )
    return claims


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


def _checked(answer: httpx.Response, doing: str) -> dict[str, Any]:
    if answer.status_code == 401:
        raise ConfigurationError("MLflow refused the admin's credentials (401).")
    if answer.status_code >= 400:
        raise ConfigurationError(f"MLflow answered {answer.status_code} to {doing}: {answer.text[:200]}")
    body: dict[str, Any] = answer.json()
    return body


def _already_exists(answer: httpx.Response) -> bool:
    return answer.status_code == 400 and "RESOURCE_ALREADY_EXISTS" in answer.text


def _create_or_find(client: httpx.Client, claim: Claim) -> tuple[str, bool, str | None]:
    """(resource id, created now, why the existing one cannot be claimed or None)."""
    if claim.resource_type == "registered_model":
        made = client.post("/api/2.0/mlflow/registered-models/create", json={"name": claim.name})
        if not _already_exists(made):
            _checked(made, f"creating {claim}")
            return claim.name, True, None
        found = client.get("/api/2.0/mlflow/registered-models/get", params={"name": claim.name})
        model = _checked(found, f"reading {claim}")["registered_model"]
        tags = {tag["key"]: tag["value"] for tag in model.get("tags", [])}
        if tags.get(IS_PROMPT_TAG, "").lower() == "true":
            return claim.name, False, "is a prompt, not a model"
        return claim.name, False, None
    made = client.post("/api/2.0/mlflow/experiments/create", json={"name": claim.name})
    if not _already_exists(made):
        return str(_checked(made, f"creating {claim}")["experiment_id"]), True, None
    found = client.get("/api/2.0/mlflow/experiments/get-by-name", params={"experiment_name": claim.name})
    experiment = _checked(found, f"reading {claim}")["experiment"]
    if experiment.get("lifecycle_stage") == "deleted":
        return experiment["experiment_id"], False, "is deleted (restore it, or purge it with `mlflow gc`)"
    return experiment["experiment_id"], False, None


def _permissions(
    client: httpx.Client, usernames: list[str], claim: Claim, resource_id: str
) -> dict[str, str]:
    """username -> effective permission on the resource, as MLflow resolves it for a real request (direct
    grants, roles and wildcard grants alike)."""
    found = {}
    for username in usernames:
        answer = client.get(
            "/api/3.0/mlflow/users/permissions/get",
            params={"username": username, "resource_type": claim.resource_type, "resource_id": resource_id},
        )
        found[username] = str(_checked(answer, f"reading {username}'s permission on {claim}")["permission"])
    return found


def _grant_manage(client: httpx.Client, claim: Claim, resource_id: str) -> None:
    grant = {
        "username": claim.owner.username,
        "resource_type": claim.resource_type,
        "resource_id": resource_id,
        "permission": "MANAGE",
    }
    answer = client.post("/api/3.0/mlflow/users/permissions/grant", json=grant)
    if _already_exists(answer):  # a direct grant below MANAGE: MLflow replaces a grant by revoke + grant
        revoke = {key: grant[key] for key in ("username", "resource_type", "resource_id")}
        _checked(client.post("/api/3.0/mlflow/users/permissions/revoke", json=revoke), f"revoking on {claim}")
        answer = client.post("/api/3.0/mlflow/users/permissions/grant", json=grant)
    _checked(answer, f"granting MANAGE on {claim} to {claim.owner.username}")


def ensure_claims(tracking_uri: str, admin: Account, claims: list[Claim]) -> dict[str, str]:
    """As ``admin``: create each claimed name that does not exist and grant MANAGE on it to its owner;
    returns claim -> what happened. A name that a non-admin account other than its owner can write
    (it claimed the name first, or holds an EDIT/MANAGE grant on it) gets no grant, and the Job fails
    naming every such name and account once the others are done.

    What MLflow records is who holds which permission, not who created a model or experiment: a claimer
    that revoked its own MANAGE afterwards, or versions it registered then, cannot be told apart here.
    """
    import httpx

    done: dict[str, str] = {}
    conflicts: list[str] = []
    with httpx.Client(
        base_url=tracking_uri.rstrip("/"), auth=(admin.username, admin.password), timeout=30.0
    ) as client:
        users = _checked(client.get("/api/2.0/mlflow/users/list"), "listing users")["users"]
        non_admins = [str(u["username"]) for u in users if not u.get("is_admin")]
        for claim in claims:
            resource_id, created, unusable = _create_or_find(client, claim)
            if unusable:
                conflicts.append(f"{claim} {unusable}")
                continue
            permissions = _permissions(client, non_admins, claim, resource_id)
            writers = sorted(
                f"{user} ({permission})"
                for user, permission in permissions.items()
                if user != claim.owner.username and permission not in READ_ONLY
            )
            if writers:
                conflicts.append(f"{claim} is writable by {', '.join(writers)}")
                continue
            if permissions.get(claim.owner.username) == "MANAGE":
                what = "MANAGE already held by"
            else:
                _grant_manage(client, claim, resource_id)
                what = "MANAGE granted to"
            done[str(claim)] = f"{'created' if created else 'exists'}, {what} {claim.owner.username}"
    if conflicts:
        raise ConfigurationError(
            "Another account holds names the platform claims: "
            + "; ".join(conflicts)
            + ". Nothing was granted on them. As the MLflow admin, inspect what that account registered "
            "there, then delete the model or experiment (or revoke that account's grant) and rerun the Job."
        )
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
        accounts = workload_accounts_from_env(env)
        claims = claims_from_env(env, accounts)
        wait_for_server(tracking_uri)
        for username, what in ensure_accounts(tracking_uri, admin, list(accounts.values())).items():
            print(f"mlflow account {username}: {what}")
        for claim, what in ensure_claims(tracking_uri, admin, claims).items():
            print(f"mlflow {claim}: {what}")
    except ConfigurationError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
