"""Wiring: the rendered overlays, the flow-run Jobs prefect-kubernetes renders from our base job templates
and deploy-model's objects refer only to things that exist; each check fires on a seeded fault."""

from __future__ import annotations

import copy
from collections.abc import Callable

import pytest

from aicml.kube.render import KubeObject, find, pod_spec
from aicml.kube.wiring import (
    DEPLOYER_ROLE,
    DEPLOYMENT_ANNOTATION,
    FLOW_RUN_ENV,
    Check,
    addresses,
    check_addresses,
    check_claims_and_accounts,
    check_deployer_role,
    check_flow_run_env,
    check_prediction_log,
    check_references,
    check_role_bindings,
    check_secret_consumers,
    check_services,
    check_worker_pools,
    container_env,
    expand,
    flow_run_jobs,
    required_permissions,
    run_wiring,
    selects,
    serving_manifests,
    wiring_objects,
    worker_pool,
)

PROD_CONFIG = "ConfigMap/aic-ai-ml/aic-ml-config"


@pytest.fixture(scope="session")
def everything(rendered: dict[str, list[KubeObject]]) -> dict[str, list[KubeObject]]:
    """Each overlay's render plus its flow-run Jobs and deploy-model's serving objects."""
    return {overlay: wiring_objects(objects) for overlay, objects in rendered.items()}


@pytest.mark.parametrize("overlay", ["dev", "prod"])
def test_render_flow_runs_and_serving_are_wired(
    everything: dict[str, list[KubeObject]], overlay: str
) -> None:
    assert [str(v) for v in run_wiring(everything[overlay])] == []


# --- the flow-run Jobs are prefect-kubernetes' own rendering ---------------------------------------------


def test_every_kubernetes_deployment_gets_its_flow_run_job(prod: list[KubeObject]) -> None:
    jobs = {job.deployment: job for job in flow_run_jobs(prod)}
    assert {"ml-pipeline/k8s-cpu", "deploy-model/k8s-cpu", "train-flow/k8s-gpu"} <= set(jobs)
    for job in jobs.values():
        manifest = job.manifest
        assert manifest["kind"] == "Job"
        assert manifest["metadata"]["annotations"][DEPLOYMENT_ANNOTATION] == job.deployment
        pod = manifest["spec"]["template"]
        # Labels and the flow-run command are what the worker's code adds, not our template.
        assert "prefect.io/flow-run-id" in pod["metadata"]["labels"]
        container = pod["spec"]["containers"][0]
        assert container["args"] == ["prefect", "flow-run", "execute"]
        env = {e["name"]: e.get("value") for e in container["env"]}
        assert "PREFECT__FLOW_RUN_ID" in env


def test_flow_run_jobs_get_the_workers_prefect_api_not_this_process(prod: list[KubeObject]) -> None:
    config = find(prod, "ConfigMap", "aic-ml-config")
    api_url = config["data"]["PREFECT_API_URL"]
    for job in flow_run_jobs(prod):
        env = {
            e["name"]: e.get("value")
            for e in job.manifest["spec"]["template"]["spec"]["containers"][0]["env"]
        }
        assert env.get("PREFECT_API_URL") == api_url, job.deployment
        assert "PREFECT_SERVER_EPHEMERAL_ENABLED" not in env


def test_serving_manifests_are_what_deploy_model_renders() -> None:
    kinds = [m["kind"] for m in serving_manifests()]
    assert kinds == [
        "ServiceAccount",
        "Deployment",
        "Service",
        "HorizontalPodAutoscaler",
        "PodDisruptionBudget",
    ]


# --- each check fires on a seeded fault --------------------------------------------------------------


def _seeded(
    objects: list[KubeObject], kind: str, name: str, mutate: Callable[[dict], None], *, pod: bool = False
) -> list[KubeObject]:
    """A copy of `objects` with `mutate` applied to one object (or, with `pod`, to its pod spec)."""
    copied = copy.deepcopy(objects)
    target = find(copied, kind, name)
    mutate(pod_spec(target) if pod else target)
    return copied


def _env(spec: dict, name: str) -> dict:
    return next(e for e in spec["containers"][0]["env"] if e["name"] == name)


def _append_env(name: str, source: dict) -> Callable[[dict], None]:
    return lambda spec: spec["containers"][0]["env"].append({"name": name, **source})


def _set_data(key: str, value: str) -> Callable[[dict], None]:
    return lambda obj: obj["data"].__setitem__(key, value)


MLFLOW_URL_PROBLEM = (
    "'http://mlflow.aic-ai-ml.svc:5000' names Service aic-ai-ml/mlflow, which is not rendered nor a declared "
    "external endpoint"
)
# (check, kind, name, mutate, on the pod spec?, the finding it must produce)
SEEDED_FAULTS: list[tuple[Check, str, str, Callable[[dict], None], bool, str]] = [
    (
        check_claims_and_accounts,
        "Deployment",
        "mlflow-service",
        lambda spec: spec.__setitem__("serviceAccountName", "mlflow-server"),
        True,
        "[wiring-refs] Deployment/aic-ai-ml/mlflow-service: runs as ServiceAccount 'mlflow-server', which is not "
        "rendered",
    ),
    (
        check_claims_and_accounts,
        "Deployment",
        "agent-orchestration-service",
        lambda spec: spec["volumes"][0]["persistentVolumeClaim"].__setitem__("claimName", "agent-pvc"),
        True,
        "[wiring-refs] Deployment/aic-ai-ml/agent-orchestration-service: volume 'data' mounts "
        "PersistentVolumeClaim 'agent-pvc', which is not rendered",
    ),
    (
        check_references,
        "Deployment",
        "prefect-server",
        lambda spec: _env(spec, "PGPASSWORD")["valueFrom"]["secretKeyRef"].__setitem__("key", "passwd"),
        True,
        "[wiring-refs] Deployment/aic-ai-ml/prefect-server: env 'PGPASSWORD' of container 'prefect-server' reads "
        "key 'passwd' of Secret 'pipeline-execution-db', which has ['database', 'password', 'username']",
    ),
    (
        check_references,
        "Deployment",
        "model-serving",
        lambda spec: spec["volumes"].append({"name": "token", "secret": {"secretName": "serve-token"}}),
        True,
        "[wiring-refs] Deployment/aic-ai-ml/model-serving: volume 'token' reads Secret 'serve-token', "
        "which is not declared in SECRET_SPECS or rendered",
    ),
    (
        check_references,
        "Deployment",
        "prefect-server",
        lambda spec: spec["containers"][0].__setitem__("envFrom", [{"configMapRef": {"name": "aic-config"}}]),
        True,
        "[wiring-refs] Deployment/aic-ai-ml/prefect-server: envFrom of container 'prefect-server' reads "
        "ConfigMap 'aic-config', which is not rendered",
    ),
    (
        check_references,
        "Deployment",
        "prefect-server",
        _append_env("X", {"valueFrom": {"configMapKeyRef": {"name": "aic-ml-config", "key": "NOPE"}}}),
        True,
        "[wiring-refs] Deployment/aic-ai-ml/prefect-server: env 'X' of container 'prefect-server' reads key "
        "'NOPE' of ConfigMap 'aic-ml-config', which has [",
    ),
    (
        check_role_bindings,
        "RoleBinding",
        "model-deployer",
        lambda binding: binding["roleRef"].__setitem__("name", "deployer"),
        False,
        "[wiring-rbac] RoleBinding/aic-ai-ml/model-deployer: binds Role 'deployer', which is not rendered",
    ),
    (
        check_role_bindings,
        "RoleBinding",
        "model-deployer",
        lambda binding: binding["subjects"][0].__setitem__("name", "deployer"),
        False,
        "[wiring-rbac] RoleBinding/aic-ai-ml/model-deployer: binds ServiceAccount aic-ai-ml/deployer, which is "
        "not rendered",
    ),
    (
        check_addresses,
        "ConfigMap",
        "aic-ml-config",
        _set_data("MLFLOW_TRACKING_URI", "http://mlflow.aic-ai-ml.svc:5000"),
        False,
        f"[wiring-url] {PROD_CONFIG}: key 'MLFLOW_TRACKING_URI': {MLFLOW_URL_PROBLEM}",
    ),
    (
        check_addresses,
        "ConfigMap",
        "aic-ml-config",
        _set_data("PREFECT_API_URL", "http://prefect-server.aic-ai-ml.svc.cluster.local:4201/api"),
        False,
        f"[wiring-url] {PROD_CONFIG}: key 'PREFECT_API_URL': 'http://prefect-server.aic-ai-ml.svc.cluster.local:4201'"
        ": Service aic-ai-ml/prefect-server has no port 4201 (ports [4200])",
    ),
    (
        check_addresses,
        "ConfigMap",
        "aic-ml-config",
        _set_data("PGPORT", "5433"),
        False,
        "[wiring-url] Deployment/aic-ai-ml/mlflow-service: args of container 'mlflow': "
        "'postgresql+psycopg://opaque@postgresql-service.aic-platform.svc.cluster.local:5433': port 5433 is not "
        "one of [5432]",
    ),
    (
        check_addresses,
        "ConfigMap",
        "aic-ml-config",
        lambda config: config["data"].pop("PGHOST"),
        False,
        "[wiring-url] Deployment/aic-ai-ml/mlflow-service: args of container 'mlflow': "
        "'postgresql+psycopg://opaque@$(PGHOST):5432' names an undefined variable",
    ),
    (
        check_addresses,
        "Deployment",
        "model-serving",
        _append_env("MLFLOW_TRACKING_URI", {"value": "http://127.0.0.1:5000"}),
        True,
        "[wiring-url] Deployment/aic-ai-ml/model-serving: env 'MLFLOW_TRACKING_URI' of container 'model-server': "
        "'http://127.0.0.1:5000' is this pod itself, and nothing in it listens there",
    ),
    (
        check_services,
        "Service",
        "prefect-server",
        lambda service: service["spec"].__setitem__("selector", {"app.kubernetes.io/name": "prefect"}),
        False,
        "[wiring-service] Service/aic-ai-ml/prefect-server: selector {'app.kubernetes.io/name': 'prefect'} selects "
        "no pod template",
    ),
    (
        check_services,
        "Service",
        "mlflow-service",
        lambda service: service["spec"]["ports"][0].__setitem__("targetPort", "api"),
        False,
        "[wiring-service] Service/aic-ai-ml/mlflow-service: port 'http': targetPort 'api' is no container port of "
        "Deployment/aic-ai-ml/mlflow-service",
    ),
    (
        check_secret_consumers,
        "Deployment",
        "model-serving",
        _append_env(
            "AWS_ACCESS_KEY_ID",
            {"valueFrom": {"secretKeyRef": {"name": "mlflow-s3", "key": "AWS_ACCESS_KEY_ID"}}},
        ),
        True,
        "[wiring-secret-consumer] Deployment/aic-ai-ml/model-serving: env 'AWS_ACCESS_KEY_ID' of container "
        "'model-server' reads Secret 'mlflow-s3', which only ['mlflow'] may read",
    ),
    (
        check_secret_consumers,
        "Deployment",
        "mlflow-service",
        _append_env(
            "AWS_SECRET_ACCESS_KEY",
            {"valueFrom": {"secretKeyRef": {"name": "model-serving-s3", "key": "AWS_SECRET_ACCESS_KEY"}}},
        ),
        True,
        "[wiring-secret-consumer] Deployment/aic-ai-ml/mlflow-service: env 'AWS_SECRET_ACCESS_KEY' of container "
        "'mlflow' reads Secret 'model-serving-s3', which only pods of component ['model-server'] may read",
    ),
    (
        check_prediction_log,
        "Deployment",
        "model-serving",
        lambda spec: spec["containers"][0].__setitem__(
            "env", [e for e in spec["containers"][0]["env"] if e["name"] != "MODEL_DEPLOYMENT_DB_NAME"]
        ),
        True,
        "[wiring-prediction-log] Deployment/aic-ai-ml/model-serving: container 'model-server': is not given "
        "MODEL_DEPLOYMENT_DB_NAME: the log's summaries would go to SQLite in the pod",
    ),
    (
        check_prediction_log,
        "Deployment",
        "model-serving",
        lambda spec: spec["containers"][0].__setitem__(
            "env", [e for e in spec["containers"][0]["env"] if e["name"] != "AWS_SECRET_ACCESS_KEY"]
        ),
        True,
        "[wiring-prediction-log] Deployment/aic-ai-ml/model-serving: container 'model-server': is not given "
        "AWS_SECRET_ACCESS_KEY for s3://aic-mlflow-artifacts/predictions",
    ),
    (
        check_prediction_log,
        "Deployment",
        "model-serving",
        lambda spec: _env(spec, "AIC_PREDICTION_LOG").__setitem__(
            "value", "/var/lib/aicml/models/predictions"
        ),
        True,
        "[wiring-prediction-log] Deployment/aic-ai-ml/model-serving: container 'model-server': AIC_PREDICTION_LOG "
        "'/var/lib/aicml/models/predictions' is inside the pod, lost with it; use object storage",
    ),
    (
        check_prediction_log,
        "Deployment",
        "model-serving",
        lambda spec: _env(spec, "AIC_PREDICTION_LOG").__setitem__("value", "$(ARTIFACTS)/predictions"),
        True,
        "[wiring-prediction-log] Deployment/aic-ai-ml/model-serving: container 'model-server': AIC_PREDICTION_LOG "
        "'$(ARTIFACTS)/predictions' names an undefined variable",
    ),
]


@pytest.mark.parametrize(
    ("check", "kind", "name", "mutate", "pod", "expected"),
    SEEDED_FAULTS,
    ids=[f"{case[0].__name__}-{case[2]}-{i}" for i, case in enumerate(SEEDED_FAULTS)],
)
def test_check_fires_on_a_seeded_fault(
    prod: list[KubeObject],
    check: Check,
    kind: str,
    name: str,
    mutate: Callable[[dict], None],
    pod: bool,
    expected: str,
) -> None:
    """A finding starting with `expected` is on the seeded copy and not on the render it was seeded into."""
    assert not [str(v) for v in check(prod) if str(v).startswith(expected)]
    assert [str(v) for v in check(_seeded(prod, kind, name, mutate, pod=pod)) if str(v).startswith(expected)]


def test_a_wrong_configmap_address_is_reported_once_not_per_pod(prod: list[KubeObject]) -> None:
    seeded = _seeded(
        prod, "ConfigMap", "aic-ml-config", _set_data("MLFLOW_TRACKING_URI", "http://mlflow:5000")
    )
    found = [v for v in check_addresses(seeded) if "'http://mlflow:5000'" in v.message]
    assert [v.ref for v in found] == [PROD_CONFIG]
    # ... but a pod that sets it itself is reported
    seeded = _seeded(
        seeded,
        "Deployment",
        "model-serving",
        _append_env("MLFLOW_TRACKING_URI", {"value": "http://mlflow:5000"}),
        pod=True,
    )
    found = [v for v in check_addresses(seeded) if "'http://mlflow:5000'" in v.message]
    assert sorted(v.ref for v in found) == [PROD_CONFIG, "Deployment/aic-ai-ml/model-serving"]


def test_flow_run_job_with_an_unknown_service_account(prod: list[KubeObject]) -> None:
    job = copy.deepcopy(flow_run_jobs(prod)[0].manifest)
    job["spec"]["template"]["spec"]["serviceAccountName"] = "nobody"
    found = [str(v) for v in check_claims_and_accounts([*prod, job])]
    ref = f"Job/aic-ai-ml/{job['metadata']['name']}"
    assert f"[wiring-refs] {ref}: runs as ServiceAccount 'nobody', which is not rendered" in found


# --- the deployer Role -------------------------------------------------------------------------------


def _exact_role(prod: list[KubeObject]) -> list[KubeObject]:
    """The render with the deployer Role replaced by exactly what deploy-model needs."""
    rules = [
        {"apiGroups": [group], "resources": [resource], "verbs": [verb]}
        for group, resource, verb in sorted(required_permissions(serving_manifests()))
    ]
    return _seeded(prod, "Role", DEPLOYER_ROLE, lambda role: role.__setitem__("rules", rules))


def test_needed_permissions_come_from_the_renderer() -> None:
    needed = required_permissions(serving_manifests())
    assert ("policy", "poddisruptionbudgets", "patch") in needed
    assert ("", "serviceaccounts", "create") in needed
    assert {verb for _, _, verb in needed} == {"create", "patch"}


def test_exact_role_passes_and_a_missing_kind_or_extra_verb_fires(prod: list[KubeObject]) -> None:
    exact = _exact_role(prod)
    assert [str(v) for v in check_deployer_role(exact) if v.ref.startswith("Role/")] == []

    def drop_pdb(role: KubeObject) -> None:
        role["rules"] = [r for r in role["rules"] if r["resources"] != ["poddisruptionbudgets"]]

    def add_delete(role: KubeObject) -> None:
        role["rules"].append({"apiGroups": ["apps"], "resources": ["deployments"], "verbs": ["delete"]})

    ref = f"[wiring-deployer-role] Role/aic-ai-ml/{DEPLOYER_ROLE}"
    missing = [str(v) for v in check_deployer_role(_seeded(exact, "Role", DEPLOYER_ROLE, drop_pdb))]
    assert f"{ref}: lacks create, patch on policy/poddisruptionbudgets, which deploy-model applies" in missing
    extra = [str(v) for v in check_deployer_role(_seeded(exact, "Role", DEPLOYER_ROLE, add_delete))]
    assert f"{ref}: grants delete on apps/deployments, which deploy-model never needs" in extra


def test_deploy_model_flow_run_needs_a_bound_account_with_a_token(prod: list[KubeObject]) -> None:
    job = next(j.manifest for j in flow_run_jobs(prod) if j.deployment.startswith("deploy-model/"))
    good = copy.deepcopy(job)
    good["spec"]["template"]["spec"]["automountServiceAccountToken"] = True
    good["spec"]["template"]["spec"]["serviceAccountName"] = "model-deployer"
    ref = f"Job/aic-ai-ml/{job['metadata']['name']}"
    assert [v for v in check_deployer_role([*prod, good]) if v.ref == ref] == []
    bad = copy.deepcopy(good)
    bad["spec"]["template"]["spec"]["automountServiceAccountToken"] = False
    bad["spec"]["template"]["spec"]["serviceAccountName"] = "model-serving"
    found = [str(v) for v in check_deployer_role([*prod, bad]) if v.ref == ref]
    assert (
        f"[wiring-deployer-role] {ref}: runs as ServiceAccount 'model-serving', which no RoleBinding binds to Role 'model-deployer'"
        in found
    )
    assert any("gets no API token" in f for f in found)


# --- the small parts ---------------------------------------------------------------------------------


def test_addresses_read_authority_and_default_ports() -> None:
    found = list(
        addresses(
            "a tcp://sched:8786 b postgresql+psycopg://u@db.ns.svc:5432/x s3://bucket/key https://h.example/p"
        )
    )
    assert [(a.scheme, a.host, a.port) for a in found] == [
        ("tcp", "sched", 8786),
        ("postgresql+psycopg", "db.ns.svc", 5432),
        ("https", "h.example", 443),
    ]


def test_variable_expansion_and_selectors() -> None:
    assert expand("$(A)@$(B):$(C)", {"A": "x", "B": "y"}) == "x@y:$(C)"
    labels = {"tier": "ai-ml", "app.kubernetes.io/name": "mlflow"}
    assert selects({"tier": "ai-ml"}, labels)
    assert not selects(
        {"matchExpressions": [{"key": "app.kubernetes.io/name", "operator": "NotIn", "values": ["mlflow"]}]},
        labels,
    )
    assert not selects({}, labels)


# --- flow-run environment and work pools -----------------------------------------------------------


def test_flow_run_pod_is_told_where_prefect_and_mlflow_are(prod: list[KubeObject]) -> None:
    job = copy.deepcopy(flow_run_jobs(prod)[0].manifest)
    container = job["spec"]["template"]["spec"]["containers"][0]
    container["envFrom"] = []
    container["env"] = [{"name": name, "value": "x"} for name in FLOW_RUN_ENV]
    ref = f"Job/aic-ai-ml/{job['metadata']['name']}"
    assert [v for v in check_flow_run_env([*prod, job]) if v.ref == ref] == []
    container["env"] = [e for e in container["env"] if e["name"] != "MLFLOW_TRACKING_URI"]
    found = [str(v) for v in check_flow_run_env([*prod, job]) if v.ref == ref]
    assert found == [f"[wiring-flow-run-env] {ref}: container 'prefect-job' is not given MLFLOW_TRACKING_URI"]


def test_worker_pool_is_read_from_either_worker_command() -> None:
    assert worker_pool({"command": ["prefect", "worker", "start", "--pool", "k8s-cpu"]}) == "k8s-cpu"
    assert worker_pool({"command": ["python", "-m", "aicml.kube.worker", "--pool=k8s-gpu"]}) == "k8s-gpu"
    assert worker_pool({"command": ["aicml", "serve", "--pool", "x"]}) is None


def test_worker_polling_an_unused_pool(prod: list[KubeObject]) -> None:
    workers = [
        (obj, spec)
        for obj, spec in ((o, pod_spec(o)) for o in prod)
        if spec and worker_pool(spec["containers"][0])
    ]
    assert workers, "the render has a Prefect worker"
    obj, spec = workers[0]
    pool = worker_pool(spec["containers"][0])

    def repoint(pod: dict) -> None:
        words = pod["containers"][0]["command"]
        words[words.index(pool)] = "gpu-training"

    seeded = _seeded(prod, obj["kind"], obj["metadata"]["name"], repoint, pod=True)
    found = [str(v) for v in check_worker_pools(seeded)]
    ref = f"{obj['kind']}/aic-ai-ml/{obj['metadata']['name']}"
    assert (
        f"[wiring-pools] {ref}: container 'worker' polls work pool 'gpu-training', which no deployment of prefect.yaml uses"
        in found
    )
    assert (
        f"[wiring-pools] prefect.yaml: deployments run on work pool {pool!r}, which no rendered worker polls"
        in found
    )


# --- the model servers' prediction log ------------------------------------------------------------------


@pytest.mark.parametrize("overlay", ["dev", "prod"])
def test_model_servers_log_predictions_to_the_bucket_and_the_deployment_database(
    everything: dict[str, list[KubeObject]], overlay: str
) -> None:
    """The platform's server and the ones deploy-model renders: the log goes to <bucket>/predictions with the
    serving key, the summaries to the model deployment database on the platform's PostgreSQL, and the
    NetworkPolicies let the pod out to both."""
    objects = everything[overlay]
    config = find(objects, "ConfigMap", "aic-ml-config")["data"]
    configmaps = {"aic-ml-config": config}
    servers = [
        obj
        for obj in objects
        if obj.get("kind") == "Deployment"
        and obj["spec"]["template"]["metadata"]["labels"].get("app.kubernetes.io/component") == "model-server"
    ]
    assert {s["metadata"]["name"] for s in servers} == {"model-serving", "aicml-serve-wiring-check"}
    policies = [obj for obj in objects if obj.get("kind") == "NetworkPolicy"]
    for server in servers:
        container = pod_spec(server)["containers"][0]
        env = container_env(container, configmaps)
        assert env["AIC_PREDICTION_LOG"] == config["MLFLOW_ARTIFACTS_DESTINATION"] + "/predictions"
        assert env["AIC_PREDICTION_LOG"] == "s3://aic-mlflow-artifacts/predictions"
        assert (env["PGHOST"], env["PGPORT"]) == (config["PGHOST"], config["PGPORT"])
        assert env["AWS_ENDPOINT_URL"] == config["MLFLOW_S3_ENDPOINT_URL"]
        secrets = {
            e["name"]: (e["valueFrom"]["secretKeyRef"]["name"], e["valueFrom"]["secretKeyRef"]["key"])
            for e in container["env"]
            if "secretKeyRef" in e.get("valueFrom", {})
        }
        assert secrets["AWS_ACCESS_KEY_ID"] == ("model-serving-s3", "AWS_ACCESS_KEY_ID")
        assert secrets["AWS_SECRET_ACCESS_KEY"] == ("model-serving-s3", "AWS_SECRET_ACCESS_KEY")
        assert secrets["MODEL_DEPLOYMENT_DB_USER"] == ("model-deployment-db", "username")
        assert secrets["MODEL_DEPLOYMENT_DB_PASSWORD"] == ("model-deployment-db", "password")
        assert secrets["MODEL_DEPLOYMENT_DB_NAME"] == ("model-deployment-db", "database")
        assert "mlflow-s3" not in {name for name, _ in secrets.values()}  # never MLflow's artifact key
        labels = server["spec"]["template"]["metadata"]["labels"]
        egress = [
            rule
            for policy in policies
            if "Egress" in policy["spec"].get("policyTypes", [])
            and selects(policy["spec"]["podSelector"], labels)
            for rule in policy["spec"].get("egress") or []
        ]
        ports = {
            (port.get("protocol", "TCP"), port["port"]) for rule in egress for port in rule.get("ports") or []
        }
        assert {("TCP", 5432), ("TCP", 443)} <= ports, ports
        assert any(
            {"port": 5432, "protocol": "TCP"} in rule.get("ports", [])
            and any(
                peer.get("namespaceSelector", {}).get("matchLabels")
                == {"kubernetes.io/metadata.name": "aic-platform"}
                for peer in rule.get("to", [])
            )
            for rule in egress
        ), "no egress rule to PostgreSQL in aic-platform"
    assert check_prediction_log(objects) == []


def test_the_serving_key_may_only_write_its_prefix() -> None:
    from aicml.kube.errors import KubeError
    from aicml.kube.secrets import serving_s3_policy, spec_named

    assert spec_named("model-serving-s3").key_names == ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY")
    policy = serving_s3_policy("s3://aic-mlflow-artifacts")
    (statement,) = policy["Statement"]  # type: ignore[misc]
    assert statement["Effect"] == "Allow"
    assert statement["Action"] == ["s3:PutObject", "s3:AbortMultipartUpload"]  # no Get, List or Delete
    assert statement["Resource"] == ["arn:aws:s3:::aic-mlflow-artifacts/predictions/*"]
    for bad in ("", "s3://", "bucket/with/path"):
        with pytest.raises(KubeError, match="bucket name"):
            serving_s3_policy(bad)
    with pytest.raises(KubeError, match="fixed prefix"):
        serving_s3_policy("b", prefix="*")


def test_a_server_rendered_without_the_log_gets_none_of_its_wiring() -> None:
    from aicml.errors import ConfigurationError
    from aicml.serving.kubernetes import KubeServingSpec, render_manifests

    deployment = render_manifests(KubeServingSpec("quiet", prediction_log=False))[1]
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    names = {e["name"] for e in container["env"]}
    assert not names & {"AIC_PREDICTION_LOG", "AWS_ACCESS_KEY_ID", "MODEL_DEPLOYMENT_DB_USER", "PGHOST"}
    assert "aic.io/postgres-client" not in deployment["spec"]["template"]["metadata"]["labels"]
    sampled = render_manifests(KubeServingSpec("sampled", prediction_log_sample=0.25))[1]
    env = {e["name"]: e.get("value") for e in sampled["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert env["AIC_PREDICTION_LOG_SAMPLE"] == "0.25"
    with pytest.raises(ConfigurationError, match="prediction_log_sample is the share of requests logged"):
        KubeServingSpec("bad", prediction_log_sample=2)
