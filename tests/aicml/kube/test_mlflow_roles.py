"""Each workload's MLflow identity against a real basic-auth server configured as on the cluster.

The accounts come from ``ensure_accounts`` (the ``mlflow-users`` Job); the server runs with
``default_permission = READ`` (the ``mlflow-auth`` ConfigMap). Each identity works through the normal
MLflow client and aicml's own registry functions. The matrix verified here:

================================================  ========  =======  ======  ======
action                                            pipeline  serving  agents  backup
================================================  ========  =======  ======  ======
create its experiment, log runs and a model       ok        ok*      ok*     ok*
register a version (digest stamped), set aliases  ok        403      403     403
read versions, aliases, runs; fetch_verified      ok        ok       ok      ok
rewrite/delete/re-stamp the ``aicml.sha256`` tag  (owner)   403      403     403
create a version, edit/delete version or model    (owner)   403      403     403
log to / start runs in / edit the pipeline's exp  (owner)   403      403     403
overwrite the model's artifact files              (owner)   403      403     403
grant itself rights on the pipeline's model       (owner)   403      403     403
create or delete users, change passwords, admin   403       403      403     403
grants on everything (``*``) or on others' things 403       403      403     403
wrong password, unknown user, no credentials      401       401      401     401
================================================  ========  =======  ======  ======

What MLflow's basic-auth app does not restrict, asserted so that a change in MLflow shows up here:

* (*) Any authenticated account may create a NEW experiment or registered model, and becomes its
  MANAGE owner: creation is gated only by workspace grants, and the platform runs without workspaces
  (``mlflow/server/auth/__init__.py``: ``_can_create_in_workspace`` is True when workspaces are off).
  Nothing the pipeline owns becomes writable through it, but a reader could claim a model name before
  the pipeline first registers it (the pipeline's registration then fails with 403). A wildcard DENY
  would close that but also deny reading, so the ``mlflow-users`` Job claims the platform's names
  instead: as the admin it creates each model of ``AIC_MLFLOW_MODELS`` and experiment of
  ``AIC_MLFLOW_EXPERIMENTS`` and grants MANAGE on it to its one writer (``aic-agents`` to the agents),
  so a reader's create gets "already exists"; a name another account can already write fails the Job.
  Only unconfigured names stay open to the first comer.
* The owner's MANAGE includes granting others rights on what it owns: the pipeline may share its own
  models, not anyone else's, and may not make wildcard grants.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import mlflow
import mlflow.sklearn
import pytest
from mlflow import MlflowClient
from mlflow.exceptions import MlflowException

from aicml.agents.tracing import MlflowTraceExporter
from aicml.errors import ConfigurationError, RegistryError
from aicml.kube.mlflow_users import (
    DEFAULT_EXPERIMENTS,
    DEFAULT_MODELS,
    Account,
    Claim,
    claims_from_env,
    ensure_accounts,
    ensure_claims,
)
from aicml.registry.checksums import (
    CHECKSUM_TAG,
    artifact_digest,
    fetch_verified,
    load_verified,
    stamp_checksum,
)
from aicml.registry.promotion import CHALLENGER, CHAMPION, point_alias, register_challenger

PIPELINE = Account("aicml-pipeline", "pipeline-password-1")
SERVING = Account("aicml-serving", "serving-password-1")
AGENTS = Account("aicml-agents", "agents-password-1")
BACKUP = Account("aicml-backup", "backup-password-1")
READERS = [SERVING, AGENTS, BACKUP]
WORKLOADS = {"pipeline": PIPELINE, "serving": SERVING, "agents": AGENTS, "backup": BACKUP}
MODEL = "churn"
EXPERIMENT = "churn-training"
AGENTS_EXPERIMENT = "aic-agents"
# What the mlflow-users Job claims here: the default models, this module's pipeline experiment.
JOB_ENV = {"AIC_MLFLOW_EXPERIMENTS": f"{EXPERIMENT},{AGENTS_EXPERIMENT}=agents"}
ADMIN_MODEL = "made-by-admin"  # owned by nobody but the admin


@dataclass(frozen=True)
class Registered:
    """What the pipeline made: its experiment, a run with a model, and version ``version`` of MODEL."""

    uri: str
    admin: Account
    experiment_id: str
    run_id: str
    model_uri: str
    version: str
    digest: str
    artifact_path: str  # the model's MLmodel file, under the server's artifact proxy
    claimed: dict[str, str]  # what the mlflow-users Job did before the pipeline's first run


def use_mlflow_as(mp: pytest.MonkeyPatch, uri: str, account: Account | None) -> None:
    """Point the MLflow client (tracking, registry, artifact proxy) at ``uri`` logged in as ``account``
    (``None``: no credentials). The client reads the credentials at each request."""
    from mlflow.tracking._model_registry import utils as registry_utils
    from mlflow.tracking._tracking_service import utils as tracking_utils

    mp.setattr(tracking_utils, "_tracking_uri", None)
    mp.setattr(registry_utils, "_registry_uri", None)
    mp.setenv("MLFLOW_TRACKING_URI", uri)
    mp.delenv("MLFLOW_REGISTRY_URI", raising=False)
    if account is None:
        mp.delenv("MLFLOW_TRACKING_USERNAME", raising=False)
        mp.delenv("MLFLOW_TRACKING_PASSWORD", raising=False)
    else:
        mp.setenv("MLFLOW_TRACKING_USERNAME", account.username)
        mp.setenv("MLFLOW_TRACKING_PASSWORD", account.password)


def log_tiny_model() -> tuple[str, str, str]:
    """As the current identity, in the current experiment: one run with a fitted model; returns
    (run id, model URI, logged-model id)."""
    from sklearn.linear_model import LogisticRegression

    model = LogisticRegression().fit([[0.0], [1.0], [2.0], [3.0]], [0, 0, 1, 1])
    with mlflow.start_run() as run:
        mlflow.log_metric("test_accuracy", 1.0)
        info = mlflow.sklearn.log_model(
            model, name="model", skops_trusted_types=["numpy.dtype"], pip_requirements=["scikit-learn"]
        )
    return run.info.run_id, info.model_uri, str(info.model_id)


@pytest.fixture(scope="module")
def registered(auth_server: str, mlflow_admin: Account) -> Iterator[Registered]:
    """The mlflow-users Job (accounts, claimed names), then the pipeline's work: experiment, run, model
    version registered (digest stamped), champion set."""
    ensure_accounts(auth_server, mlflow_admin, [PIPELINE, *READERS])
    claimed = ensure_claims(auth_server, mlflow_admin, claims_from_env(JOB_ENV, WORKLOADS))
    with pytest.MonkeyPatch.context() as mp:
        use_mlflow_as(mp, auth_server, mlflow_admin)
        MlflowClient().create_registered_model(ADMIN_MODEL)
        use_mlflow_as(mp, auth_server, PIPELINE)
        experiment_id = str(mlflow.set_experiment(EXPERIMENT).experiment_id)
        run_id, model_uri, model_id = log_tiny_model()
        version = register_challenger(MODEL, model_uri, run_id, "accuracy", 1.0)
        point_alias(MODEL, CHAMPION, version.version)
        client = MlflowClient()
        digest = client.get_model_version(MODEL, version.version).tags[CHECKSUM_TAG]
        location = client.get_logged_model(model_id).artifact_location
    assert location.startswith("mlflow-artifacts:/"), location
    artifact_path = f"{location.removeprefix('mlflow-artifacts:').strip('/')}/MLmodel"
    yield Registered(
        auth_server,
        mlflow_admin,
        experiment_id,
        run_id,
        model_uri,
        version.version,
        digest,
        artifact_path,
        claimed,
    )


def admin_http(reg: Registered) -> httpx.Client:
    return httpx.Client(base_url=reg.uri, auth=(reg.admin.username, reg.admin.password), timeout=30)


def server_state(reg: Registered) -> dict[str, Any]:
    """What the server holds of the pipeline's work, read back as the admin."""
    with admin_http(reg) as http:
        model = http.get("/api/2.0/mlflow/registered-models/get", params={"name": MODEL}).json()
        versions = http.get(
            "/api/2.0/mlflow/model-versions/search", params={"filter": f"name = '{MODEL}'"}
        ).json()
        runs = http.post("/api/2.0/mlflow/runs/search", json={"experiment_ids": [reg.experiment_id]}).json()
        experiment = http.get(
            "/api/2.0/mlflow/experiments/get", params={"experiment_id": reg.experiment_id}
        ).json()
        artifact = http.get(f"/api/2.0/mlflow-artifacts/artifacts/{reg.artifact_path}")
    return {
        "model": model,
        "versions": versions,
        "runs": runs.get("runs", []),
        "experiment": experiment,
        "artifact": (artifact.status_code, artifact.content),
    }


def assert_pipeline_work_intact(reg: Registered, before: dict[str, Any]) -> None:
    after = server_state(reg)
    version = after["versions"]["model_versions"]
    assert [v["version"] for v in version] == [reg.version]
    tags = {t["key"]: t["value"] for t in version[0].get("tags", [])}
    assert tags[CHECKSUM_TAG] == reg.digest  # the digest recorded at registration still stands
    aliases = {a["alias"]: a["version"] for a in after["model"]["registered_model"].get("aliases", [])}
    assert aliases == {CHALLENGER: reg.version, CHAMPION: reg.version}
    assert [r["info"]["run_id"] for r in after["runs"]] == [reg.run_id]
    assert after["artifact"][0] == 200
    assert after == before


def refused(call: Callable[[], object]) -> int:
    """Run ``call``; it must fail with the server's HTTP status, which is returned."""
    with pytest.raises((MlflowException, RegistryError)) as raised:
        call()
    error: BaseException | None = raised.value
    if isinstance(error, RegistryError):  # aicml's functions wrap the client's error
        error = error.__cause__
    assert isinstance(error, MlflowException), repr(raised.value)
    return int(error.get_http_status_code())


def http_as(reg: Registered, account: Account) -> httpx.Client:
    return httpx.Client(base_url=reg.uri, auth=(account.username, account.password), timeout=30)


def _grant(account: Account, resource_type: str, resource_id: str, permission: str) -> dict[str, str]:
    return {
        "username": account.username,
        "resource_type": resource_type,
        "resource_id": resource_id,
        "permission": permission,
    }


# --- the pipeline: training, tuning, registration, promotion ----------------------------------------


def test_the_pipeline_trains_registers_stamps_and_promotes(
    registered: Registered, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    reg = registered
    use_mlflow_as(monkeypatch, reg.uri, PIPELINE)
    client = MlflowClient()
    version = client.get_model_version(MODEL, reg.version)
    assert version.tags[CHECKSUM_TAG] == reg.digest and version.run_id == reg.run_id
    assert artifact_digest(fetch_verified(MODEL, reg.version, tmp_path)) == reg.digest
    assert client.get_model_version_by_alias(MODEL, CHAMPION).version == reg.version
    # Tuning logs more runs into the same experiment; promotion moves and removes aliases.
    with mlflow.start_run(experiment_id=reg.experiment_id) as trial:
        mlflow.log_metric("val_accuracy", 0.9)
    assert client.get_run(trial.info.run_id).data.metrics == {"val_accuracy": 0.9}
    client.delete_run(trial.info.run_id)
    point_alias(MODEL, "candidate", reg.version)
    assert client.get_model_version_by_alias(MODEL, "candidate").version == reg.version
    point_alias(MODEL, "candidate", None)
    assert "candidate" not in client.get_registered_model(MODEL).aliases


PIPELINE_ADMIN_ACTS: dict[str, tuple[str, str, dict[str, object]]] = {
    "create a user": ("POST", "/api/2.0/mlflow/users/create", {"username": "intruder", "password": "x"}),
    "make itself admin": (
        "PATCH", "/api/2.0/mlflow/users/update-admin", {"username": PIPELINE.username, "is_admin": True}
    ),
    "change another user's password": (
        "PATCH", "/api/2.0/mlflow/users/update-password", {"username": SERVING.username, "password": "x"}
    ),
    "delete a user": ("DELETE", "/api/2.0/mlflow/users/delete", {"username": SERVING.username}),
    "grant on every model": (
        "POST", "/api/3.0/mlflow/users/permissions/grant", _grant(SERVING, "registered_model", "*", "EDIT")
    ),
    "grant on a model it does not own": (
        "POST", "/api/3.0/mlflow/users/permissions/grant", _grant(SERVING, "registered_model", ADMIN_MODEL, "EDIT")
    ),
    "grant itself on a model it does not own": (
        "POST", "/api/3.0/mlflow/users/permissions/grant", _grant(PIPELINE, "registered_model", ADMIN_MODEL, "MANAGE")
    ),
    "grant itself on the Default experiment": (
        "POST", "/api/3.0/mlflow/users/permissions/grant", _grant(PIPELINE, "experiment", "0", "EDIT")
    ),
}  # fmt: skip


@pytest.mark.parametrize("act", PIPELINE_ADMIN_ACTS)
def test_the_pipeline_cannot_manage_users_or_others_permissions(registered: Registered, act: str) -> None:
    method, path, body = PIPELINE_ADMIN_ACTS[act]
    before = server_state(registered)
    with http_as(registered, PIPELINE) as http:
        assert http.request(method, path, json=body).status_code == 403
        # The pipeline can still not write the admin's model (the grant did not happen).
        denied = http.post(
            "/api/2.0/mlflow/registered-models/set-tag", json={"name": ADMIN_MODEL, "key": "k", "value": "v"}
        )
        assert denied.status_code == 403
    assert_pipeline_work_intact(registered, before)
    with admin_http(registered) as http:  # no account was made
        assert http.get("/api/2.0/mlflow/users/get", params={"username": "intruder"}).status_code == 404
    with http_as(registered, SERVING) as http:  # serving's password was not changed
        assert http.post("/api/2.0/mlflow/experiments/search", json={"max_results": 1}).status_code == 200


def test_the_pipeline_may_share_only_what_it_owns(
    registered: Registered, monkeypatch: pytest.MonkeyPatch
) -> None:
    use_mlflow_as(monkeypatch, registered.uri, PIPELINE)
    MlflowClient().create_registered_model("pipeline-shared")
    with http_as(registered, PIPELINE) as http:
        shared = http.post(
            "/api/3.0/mlflow/users/permissions/grant",
            json=_grant(AGENTS, "registered_model", "pipeline-shared", "READ"),
        )
    assert shared.status_code == 200  # an owner's MANAGE includes granting on what it owns


# --- serving, agents, backup: readers ---------------------------------------------------------------


@pytest.mark.parametrize("reader", READERS, ids=lambda a: a.username)
def test_a_reader_reads_and_verifies_the_registered_version(
    registered: Registered, reader: Account, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    reg = registered
    use_mlflow_as(monkeypatch, reg.uri, reader)
    client = MlflowClient()
    assert client.get_model_version_by_alias(MODEL, CHAMPION).version == reg.version
    assert client.get_model_version(MODEL, reg.version).tags[CHECKSUM_TAG] == reg.digest
    path = fetch_verified(MODEL, reg.version, tmp_path / "cache")
    assert artifact_digest(path) == reg.digest and (path / "MLmodel").is_file()
    model: Any = load_verified(f"models:/{MODEL}@{CHAMPION}", tmp_path / "load")
    assert list(model.predict([[0.0], [3.0]])) == [0, 1]
    # What the backup reads: experiments, runs, models, versions.
    assert [e.experiment_id for e in client.search_experiments(filter_string=f"name = '{EXPERIMENT}'")] == [
        reg.experiment_id
    ]
    assert [r.info.run_id for r in client.search_runs([reg.experiment_id])] == [reg.run_id]
    assert client.get_run(reg.run_id).data.metrics["test_accuracy"] == 1.0
    assert MODEL in [m.name for m in client.search_registered_models()]
    assert [v.version for v in client.search_model_versions(f"name = '{MODEL}'")] == [reg.version]


Write = Callable[[MlflowClient, Registered], object]
READER_WRITES: dict[str, Write] = {
    "rewrite the digest tag": lambda c, r: c.set_model_version_tag(MODEL, r.version, CHECKSUM_TAG, "0" * 64),
    "delete the digest tag": lambda c, r: c.delete_model_version_tag(MODEL, r.version, CHECKSUM_TAG),
    "re-stamp the digest": lambda c, r: stamp_checksum(MODEL, r.version),
    "move the champion alias": lambda c, r: point_alias(MODEL, CHAMPION, r.version),
    "add an alias": lambda c, r: point_alias(MODEL, "serving-pick", r.version),
    "remove the champion alias": lambda c, r: point_alias(MODEL, CHAMPION, None),
    "register a challenger": lambda c, r: register_challenger(MODEL, r.model_uri, r.run_id, "accuracy", 2.0),
    "create a model version": lambda c, r: c.create_model_version(MODEL, r.model_uri, r.run_id),
    "edit the version": lambda c, r: c.update_model_version(MODEL, r.version, description="changed"),
    "delete the version": lambda c, r: c.delete_model_version(MODEL, r.version),
    "tag the model": lambda c, r: c.set_registered_model_tag(MODEL, "owner", "me"),
    "rename the model": lambda c, r: c.rename_registered_model(MODEL, "taken"),
    "delete the model": lambda c, r: c.delete_registered_model(MODEL),
    "log to the pipeline's run": lambda c, r: c.log_metric(r.run_id, "test_accuracy", 0.0),
    "start a run in the pipeline's experiment": lambda c, r: c.create_run(r.experiment_id),
    "tag the pipeline's experiment": lambda c, r: c.set_experiment_tag(r.experiment_id, "k", "v"),
    "delete the pipeline's experiment": lambda c, r: c.delete_experiment(r.experiment_id),
}


@pytest.mark.parametrize("reader", READERS, ids=lambda a: a.username)
def test_a_reader_cannot_change_the_pipelines_work(
    registered: Registered, reader: Account, monkeypatch: pytest.MonkeyPatch
) -> None:
    # One test per reader, the server read back once after all the refused writes (each request costs a
    # password hash on the server: a read-back per write tripled the requests for no more coverage,
    # since every write is refused with 403 and none of them could undo another).
    before = server_state(registered)
    use_mlflow_as(monkeypatch, registered.uri, reader)
    statuses = {}
    for write, call in READER_WRITES.items():
        statuses[write] = refused(lambda call=call: call(MlflowClient(), registered))
    assert statuses == dict.fromkeys(READER_WRITES, 403)
    assert_pipeline_work_intact(registered, before)


@pytest.mark.parametrize("reader", READERS, ids=lambda a: a.username)
def test_a_reader_cannot_overwrite_artifacts_grant_itself_rights_or_manage_users(
    registered: Registered, reader: Account
) -> None:
    reg = registered
    before = server_state(reg)
    artifact = f"/api/2.0/mlflow-artifacts/artifacts/{reg.artifact_path}"
    with http_as(reg, reader) as http:
        assert http.get(artifact).status_code == 200  # the path is the real file: reading it is allowed
        assert http.put(artifact, content=b"tampered").status_code == 403
        assert http.delete(artifact).status_code == 403
        grant = "/api/3.0/mlflow/users/permissions/grant"
        assert http.post(grant, json=_grant(reader, "registered_model", MODEL, "EDIT")).status_code == 403
        assert (
            http.post(grant, json=_grant(reader, "experiment", reg.experiment_id, "EDIT")).status_code == 403
        )
        assert http.post(grant, json=_grant(reader, "registered_model", "*", "EDIT")).status_code == 403
        made = http.post("/api/2.0/mlflow/users/create", json={"username": "intruder", "password": "x"})
        assert made.status_code == 403
        admin = http.patch(
            "/api/2.0/mlflow/users/update-admin", json={"username": reader.username, "is_admin": True}
        )
        assert admin.status_code == 403
    assert_pipeline_work_intact(reg, before)


@pytest.mark.parametrize("reader", READERS, ids=lambda a: a.username)
def test_any_account_may_create_new_experiments_and_models_and_owns_only_those(
    registered: Registered, reader: Account, monkeypatch: pytest.MonkeyPatch
) -> None:
    before = server_state(registered)
    use_mlflow_as(monkeypatch, registered.uri, reader)
    client = MlflowClient()
    experiment_id = client.create_experiment(f"{reader.username}-own")
    client.create_run(experiment_id)
    client.create_registered_model(f"{reader.username}-own")
    client.set_registered_model_tag(f"{reader.username}-own", "k", "v")
    assert refused(lambda: client.set_registered_model_tag(MODEL, "k", "v")) == 403
    assert_pipeline_work_intact(registered, before)


def test_a_name_claimed_by_a_reader_makes_the_pipelines_registration_fail_loudly(
    registered: Registered, monkeypatch: pytest.MonkeyPatch
) -> None:
    reg = registered
    use_mlflow_as(monkeypatch, reg.uri, SERVING)
    MlflowClient().create_registered_model("claimed-early")
    use_mlflow_as(monkeypatch, reg.uri, PIPELINE)
    with pytest.raises(RegistryError) as raised:
        register_challenger("claimed-early", reg.model_uri, reg.run_id, "accuracy", 1.0)
    assert isinstance(raised.value.__cause__, MlflowException)
    assert raised.value.__cause__.get_http_status_code() == 403
    assert MlflowClient().search_model_versions("name = 'claimed-early'") == []


def test_the_agents_write_traces_to_their_own_experiment_only(
    registered: Registered, monkeypatch: pytest.MonkeyPatch
) -> None:
    use_mlflow_as(monkeypatch, registered.uri, AGENTS)
    exporter = MlflowTraceExporter(registered.uri, AGENTS_EXPERIMENT, background=False)
    span = mlflow.start_span_no_context(name="probe", experiment_id=exporter.experiment_id)
    span.end()
    mlflow.flush_trace_async_logging()
    traces = MlflowClient().search_traces(locations=[exporter.experiment_id])
    assert [t.info.trace_id for t in traces] == [span.trace_id]
    # Serving cannot write into the agents' experiment.
    use_mlflow_as(monkeypatch, registered.uri, SERVING)
    assert refused(lambda: MlflowClient().create_run(exporter.experiment_id)) == 403


# --- the names the mlflow-users Job claims -----------------------------------------------------------


def test_the_job_claims_the_platforms_names_so_no_reader_can_take_them(
    registered: Registered, monkeypatch: pytest.MonkeyPatch
) -> None:
    reg = registered
    # The Job ran before the pipeline's first run; the pipeline then registered into the admin's model.
    assert reg.claimed == {
        f"registered model {MODEL!r}": f"created, MANAGE granted to {PIPELINE.username}",
        f"experiment {EXPERIMENT!r}": f"created, MANAGE granted to {PIPELINE.username}",
        f"experiment {AGENTS_EXPERIMENT!r}": f"created, MANAGE granted to {AGENTS.username}",
    }
    before = server_state(reg)
    for reader in (SERVING, AGENTS):
        use_mlflow_as(monkeypatch, reg.uri, reader)
        client = MlflowClient()
        assert refused(lambda client=client: client.create_registered_model(MODEL)) == 400  # exists
        assert (
            refused(lambda client=client: client.create_model_version(MODEL, reg.model_uri, reg.run_id))
            == 403
        )
        assert refused(lambda client=client: client.create_experiment(EXPERIMENT)) == 400
    use_mlflow_as(monkeypatch, reg.uri, SERVING)
    assert refused(lambda: MlflowClient().create_experiment(AGENTS_EXPERIMENT)) == 400
    # Rerunning the Job changes nothing: every name exists and its owner keeps MANAGE.
    again = ensure_claims(reg.uri, reg.admin, claims_from_env(JOB_ENV, WORKLOADS))
    assert again == {
        name: f"exists, MANAGE already held by {what.rsplit(' ', 1)[1]}" for name, what in reg.claimed.items()
    }
    assert_pipeline_work_intact(reg, before)


def _permission(reg: Registered, account: Account, resource_type: str, resource_id: str) -> str:
    with admin_http(reg) as http:
        answer = http.get(
            "/api/3.0/mlflow/users/permissions/get",
            params={"username": account.username, "resource_type": resource_type, "resource_id": resource_id},
        )
    return str(answer.json()["permission"])


def test_a_name_another_account_can_write_makes_the_job_fail_without_granting_on_it(
    registered: Registered, monkeypatch: pytest.MonkeyPatch
) -> None:
    reg = registered
    use_mlflow_as(monkeypatch, reg.uri, SERVING)
    MlflowClient().create_registered_model("claimed-by-serving")  # serving owns it (MANAGE)
    use_mlflow_as(monkeypatch, reg.uri, reg.admin)
    MlflowClient().create_registered_model("pipeline-has-edit")
    with admin_http(reg) as http:
        grant = "/api/3.0/mlflow/users/permissions/grant"
        assert http.post(
            grant, json=_grant(PIPELINE, "registered_model", "pipeline-has-edit", "EDIT")
        ).is_success
    claims = [
        Claim("registered_model", "claimed-by-serving", PIPELINE),
        Claim("registered_model", "pipeline-has-edit", PIPELINE),
        Claim("experiment", f"{SERVING.username}-own-exp", PIPELINE),
    ]
    MlflowClient(tracking_uri=reg.uri).create_experiment(f"{SERVING.username}-own-exp")  # admin's
    with admin_http(reg) as http:
        experiment_id = http.get(
            "/api/2.0/mlflow/experiments/get-by-name", params={"experiment_name": claims[2].name}
        ).json()["experiment"]["experiment_id"]
        assert http.post(grant, json=_grant(AGENTS, "experiment", experiment_id, "EDIT")).is_success
    with pytest.raises(ConfigurationError) as raised:
        ensure_claims(reg.uri, reg.admin, claims)
    message = str(raised.value)
    assert f"registered model 'claimed-by-serving' is writable by {SERVING.username} (MANAGE)" in message
    assert f"experiment '{claims[2].name}' is writable by {AGENTS.username} (EDIT)" in message
    assert "pipeline-has-edit" not in message and "rerun the Job" in message
    # The claimed names got no grant; the clean one did (its EDIT replaced by MANAGE).
    assert _permission(reg, PIPELINE, "registered_model", "claimed-by-serving") == "READ"
    assert _permission(reg, PIPELINE, "experiment", experiment_id) == "READ"
    assert _permission(reg, PIPELINE, "registered_model", "pipeline-has-edit") == "MANAGE"


def test_the_jobs_default_names_are_the_platforms() -> None:
    import yaml

    from aicml.agents.settings import AgentSettings
    from blocks.settings import AicSettings

    root = Path(__file__).parents[3]
    presets = yaml.safe_load((root / "deployments/presets.yaml").read_text())
    preset_models = {p["model_name"] for p in presets.values() if p.get("model_name")}
    claims = claims_from_env({}, WORKLOADS)
    models = {c.name for c in claims if c.resource_type == "registered_model"}
    experiments = {(c.name, c.owner) for c in claims if c.resource_type == "experiment"}
    assert preset_models and preset_models <= models
    assert (AicSettings.model_fields["experiment"].default, PIPELINE) in experiments
    assert (AgentSettings.model_fields["experiment"].default, AGENTS) in experiments
    # The Job's manifest sets the same names.
    docs = list(yaml.safe_load_all((root / "k8s/base/mlflow.yaml").read_text()))
    job = next(d for d in docs if d and d["kind"] == "Job" and d["metadata"]["name"] == "mlflow-users")
    env = {e["name"]: e.get("value") for e in job["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert env["AIC_MLFLOW_MODELS"] == DEFAULT_MODELS
    assert env["AIC_MLFLOW_EXPERIMENTS"] == DEFAULT_EXPERIMENTS


def test_the_jobs_names_belong_to_configured_workloads() -> None:
    only_pipeline = {"pipeline": PIPELINE}
    # Defaults for a workload without an account are left out; a name you set must have its account.
    assert [(c.name, c.owner) for c in claims_from_env({}, only_pipeline)] == [
        ("churn", PIPELINE),
        ("aic-ml", PIPELINE),
    ]
    with pytest.raises(ConfigurationError, match=r"aic-agents \(agents\)"):
        claims_from_env({"AIC_MLFLOW_EXPERIMENTS": "aic-ml,aic-agents=agents"}, only_pipeline)
    assert claims_from_env({"AIC_MLFLOW_MODELS": "", "AIC_MLFLOW_EXPERIMENTS": ""}, WORKLOADS) == []
    claims = claims_from_env(
        {"AIC_MLFLOW_MODELS": "churn, fraud", "AIC_MLFLOW_EXPERIMENTS": "a=b=agents"}, WORKLOADS
    )
    assert [(c.resource_type, c.name, c.owner) for c in claims] == [
        ("registered_model", "churn", PIPELINE),
        ("registered_model", "fraud", PIPELINE),
        ("experiment", "a=b", AGENTS),
    ]


# --- no valid login ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "account",
    [None, Account(SERVING.username, "wrong-password"), Account("nobody", "whatever")],
    ids=["no credentials", "wrong password", "unknown user"],
)
def test_without_a_valid_login_everything_is_401(
    registered: Registered, account: Account | None, monkeypatch: pytest.MonkeyPatch
) -> None:
    auth = None if account is None else (account.username, account.password)
    for method, path, body in [
        ("POST", "/api/2.0/mlflow/experiments/search", {"max_results": 1}),
        ("GET", "/api/2.0/mlflow/registered-models/get", {"name": MODEL}),
        ("POST", "/api/2.0/mlflow/model-versions/set-tag", {"name": MODEL, "version": "1", "key": "k", "value": "v"}),
        ("GET", f"/api/2.0/mlflow-artifacts/artifacts/{registered.artifact_path}", None),
    ]:  # fmt: skip
        params = body if method == "GET" else None
        answer = httpx.request(
            method,
            f"{registered.uri}{path}",
            params=params,
            json=None if method == "GET" else body,
            auth=auth,
        )
        assert answer.status_code == 401, (method, path)
    use_mlflow_as(monkeypatch, registered.uri, account)
    assert refused(lambda: MlflowClient().get_model_version(MODEL, registered.version)) == 401
    assert refused(lambda: stamp_checksum(MODEL, registered.version)) == 401
