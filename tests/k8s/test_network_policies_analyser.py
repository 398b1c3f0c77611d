"""The NetworkPolicies, evaluated by network-config-analyzer (nca), open every path the platform needs
and keep closed the ones that must stay closed; each check fires on a seeded fault."""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Any

import pytest

from aicml.kube.netpol import (
    POSTGRES_HOST,
    Allowed,
    Connectivity,
    analysis_objects,
    check_network_policies,
    nca_binary,
    parse_connection,
    peer,
    run_nca,
)
from aicml.kube.render import NAMESPACE, KubeObject, find, pod_spec
from aicml.kube.wiring import DEPLOYMENT_ANNOTATION, NAME_LABEL, wiring_objects


@pytest.fixture(scope="session")
def analysed(rendered: dict[str, list[KubeObject]]) -> dict[str, tuple[list[KubeObject], Connectivity]]:
    """Each overlay with its flow-run Jobs and serving objects, and what nca says they may reach.
    `make tools` installs nca into its own venv; no skip when it is missing."""
    result = {}
    for overlay, objects in rendered.items():
        everything = wiring_objects(objects)
        result[overlay] = (everything, run_nca(everything))
    return result


@pytest.mark.parametrize("overlay", ["dev", "prod"])
def test_policies_open_and_close_the_right_paths(
    analysed: dict[str, tuple[list[KubeObject], Connectivity]], overlay: str
) -> None:
    objects, connectivity = analysed[overlay]
    assert [str(v) for v in check_network_policies(objects, connectivity)] == []


def test_nca_answers_for_every_pod_template(
    analysed: dict[str, tuple[list[KubeObject], Connectivity]],
) -> None:
    objects, connectivity = analysed["prod"]
    assert nca_binary()
    sources = {source for source, _ in connectivity.allowed}
    # every workload, flow-run Jobs included, is a pod nca reasoned about (each at least reaches DNS)
    for obj in objects:
        if pod_spec(obj) is not None:
            assert peer(obj) in sources, peer(obj)
    # an unrelated namespace reaches nothing of ours except what a policy opens to everyone
    mlflow = peer(find(objects, "Deployment", "mlflow-service"))
    assert not connectivity.permits("other-tenant/outsider", mlflow, 5000)


def test_parse_connection() -> None:
    assert parse_connection("All connections") == Allowed(None, None)
    allowed = parse_connection("{protocols:TCP,dst_ports:443,8000-8080}")
    assert allowed.permits("TCP", 443) and allowed.permits("TCP", 8042)
    assert not allowed.permits("UDP", 443) and not allowed.permits("TCP", 22)
    assert parse_connection("{protocols:UDP}").permits("UDP", 53)


# --- seeded into the real render ---------------------------------------------------------------------


def _strip_pod_labels(obj: KubeObject) -> None:
    template = obj["spec"]["template"]
    name = template["metadata"]["labels"].get(NAME_LABEL)
    template["metadata"]["labels"] = {NAME_LABEL: name} if name else {}


def test_flow_run_pod_without_labels_reaches_nothing(rendered: dict[str, list[KubeObject]]) -> None:
    objects = copy.deepcopy(wiring_objects(rendered["prod"]))
    job = next(
        o
        for o in objects
        if o.get("kind") == "Job" and DEPLOYMENT_ANNOTATION in o["metadata"].get("annotations", {})
    )
    _strip_pod_labels(job)
    ref = f"Job/aic-ai-ml/{job['metadata']['name']}"
    found = [str(v) for v in check_network_policies(objects) if v.ref == ref]
    for what in ("the Prefect API", "MLflow", "PostgreSQL", "object storage (HTTPS)"):
        assert any(f"cannot reach {what} (" in f for f in found), (what, found)


def test_model_serving_without_labels_cannot_reach_mlflow(
    analysed: dict[str, tuple[list[KubeObject], Connectivity]],
) -> None:
    objects, connectivity = analysed["prod"]
    expected = "[netpol-required] Deployment/aic-ai-ml/model-serving: cannot reach MLflow ("
    assert not [v for v in check_network_policies(objects, connectivity) if str(v).startswith(expected)]
    seeded = copy.deepcopy(objects)
    _strip_pod_labels(find(seeded, "Deployment", "model-serving"))
    assert [v for v in check_network_policies(seeded) if str(v).startswith(expected)]


def test_model_servers_reach_postgresql_and_object_storage(
    analysed: dict[str, tuple[list[KubeObject], Connectivity]],
) -> None:
    """The prediction log's paths (the Parquet files over HTTPS, the summaries to PostgreSQL), for the
    platform's server and deploy-model's; without the postgres-client label PostgreSQL is closed."""
    objects, connectivity = analysed["prod"]
    postgres = f"{POSTGRES_HOST[0]}/{POSTGRES_HOST[1]}"
    for name in ("model-serving", "aicml-serve-wiring-check"):
        server = peer(find(objects, "Deployment", name))
        assert connectivity.permits(server, postgres, 5432), name
        assert connectivity.permits_external(server, 443), name
        assert not connectivity.permits(server, postgres, 5433), name
    seeded = copy.deepcopy(objects)
    find(seeded, "Deployment", "model-serving")["spec"]["template"]["metadata"]["labels"].pop(
        "aic.io/postgres-client"
    )
    expected = "[netpol-required] Deployment/aic-ai-ml/model-serving: cannot reach PostgreSQL ("
    assert [v for v in check_network_policies(seeded) if str(v).startswith(expected)]


# --- a small platform whose policies are right, then broken one way at a time ---------------------------


def _deployment(name: str, labels: dict[str, str], ports: dict[str, int], **pod: Any) -> KubeObject:
    container = {
        "name": name,
        "image": "x:1",
        "ports": [{"name": n, "containerPort": p} for n, p in ports.items()],
    }
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": name, "namespace": NAMESPACE},
        "spec": {
            "replicas": 1,
            "selector": {"matchLabels": {NAME_LABEL: name}},
            "template": {
                "metadata": {"labels": {NAME_LABEL: name, **labels}},
                "spec": {"containers": [container], **pod},
            },
        },
    }


def _service(name: str, port: int, app: str) -> KubeObject:
    spec = {"selector": {NAME_LABEL: app}, "ports": [{"name": "http", "port": port, "targetPort": "http"}]}
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": name, "namespace": NAMESPACE},
        "spec": spec,
    }


def _policy(name: str, spec: dict[str, Any]) -> KubeObject:
    meta = {"name": name, "namespace": NAMESPACE}
    return {"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy", "metadata": meta, "spec": spec}


FLOW_RUN = {"aic.io/flow-run": "true"}


def small_platform() -> list[KubeObject]:
    """Prefect API, MLflow (with a metrics port Prometheus scrapes) and one flow-run Job, default-deny,
    and exactly the policies they need."""
    flow_run = {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {
            "name": "flow-run",
            "namespace": NAMESPACE,
            "annotations": {DEPLOYMENT_ANNOTATION: "f/k8s-cpu"},
        },
        "spec": {
            "template": {
                "metadata": {"labels": dict(FLOW_RUN)},
                "spec": {"containers": [{"name": "job", "image": "x:1"}]},
            }
        },
    }
    from_flow_runs = {"from": [{"podSelector": {"matchLabels": FLOW_RUN}}]}
    return [
        _deployment("prefect-server", {}, {"http": 4200}),
        _service("prefect-server", 4200, "prefect-server"),
        _deployment("mlflow", {}, {"http": 5000, "metrics": 9100}),
        _service("mlflow-service", 5000, "mlflow"),
        flow_run,
        _policy("deny", {"podSelector": {}, "policyTypes": ["Ingress", "Egress"]}),
        _policy(
            "flow-run-egress",
            {
                "podSelector": {"matchLabels": FLOW_RUN},
                "policyTypes": ["Egress"],
                "egress": [
                    {"to": [{"podSelector": {}}]},
                    {
                        "to": [
                            {
                                "namespaceSelector": {
                                    "matchLabels": {"kubernetes.io/metadata.name": POSTGRES_HOST[0]}
                                }
                            }
                        ],
                        "ports": [{"port": 5432}],
                    },
                    {"ports": [{"port": 443}]},
                ],
            },
        ),
        _policy(
            "api-ingress",
            {"podSelector": {"matchLabels": {NAME_LABEL: "prefect-server"}}, "ingress": [from_flow_runs]},
        ),
        _policy(
            "mlflow-ingress",
            {
                "podSelector": {"matchLabels": {NAME_LABEL: "mlflow"}},
                "ingress": [
                    from_flow_runs,
                    {
                        "from": [
                            {
                                "namespaceSelector": {
                                    "matchLabels": {"kubernetes.io/metadata.name": "monitoring"}
                                }
                            }
                        ],
                        "ports": [{"port": 9100}],
                    },
                ],
            },
        ),
    ]


def test_small_platform_passes() -> None:
    objects = small_platform()
    assert {o["metadata"]["name"] for o in analysis_objects(objects) if o["kind"] == "Namespace"} >= {
        NAMESPACE,
        "monitoring",
        "aic-platform",
    }
    assert [str(v) for v in check_network_policies(objects)] == []


def _edit(kind: str, name: str, mutate: Callable[[KubeObject], None]) -> list[KubeObject]:
    objects = copy.deepcopy(small_platform())
    mutate(find(objects, kind, name))
    return objects


def _open_to_all_namespaces(policy: KubeObject) -> None:
    policy["spec"]["ingress"].append({"from": [{"namespaceSelector": {}}]})


def _allow_postgres_to_all(policy: KubeObject) -> None:
    policy["spec"]["podSelector"] = {}


SMALL_FAULTS: list[tuple[str, str, Callable[[KubeObject], None], str]] = [
    (
        "Service",
        "prefect-server",
        lambda service: service["spec"].__setitem__("selector", {NAME_LABEL: "gone"}),
        "[netpol-required] Job/aic-ai-ml/flow-run: cannot reach the Prefect API: no rendered Service of it "
        "selects a pod",
    ),
    (
        "Job",
        "flow-run",
        lambda job: job["spec"]["template"]["metadata"].__setitem__("labels", {}),
        "[netpol-required] Job/aic-ai-ml/flow-run: cannot reach the Prefect API (aic-ai-ml/prefect-server-1, TCP "
        "4200): the NetworkPolicies deny it",
    ),
    (
        "NetworkPolicy",
        "flow-run-egress",
        lambda policy: policy["spec"]["egress"].pop(),
        "[netpol-required] Job/aic-ai-ml/flow-run: cannot reach object storage (HTTPS) (outside the cluster, TCP "
        "443): the NetworkPolicies deny it",
    ),
    (
        "NetworkPolicy",
        "mlflow-ingress",
        lambda policy: policy["spec"]["ingress"].pop(),
        "[netpol-required] Prometheus (namespace monitoring): cannot reach metrics of Deployment/aic-ai-ml/mlflow "
        "(aic-ai-ml/mlflow-1, TCP 9100): the NetworkPolicies deny it",
    ),
    (
        "NetworkPolicy",
        "api-ingress",
        _open_to_all_namespaces,
        "[netpol-closed] pod other-tenant/outsider (outside the namespace): reaches the Prefect API "
        "(Deployment/aic-ai-ml/prefect-server) at aic-ai-ml/prefect-server-1 TCP 4200, which must stay closed to it",
    ),
    (
        "NetworkPolicy",
        "flow-run-egress",
        _allow_postgres_to_all,
        "[netpol-closed] Deployment/aic-ai-ml/mlflow: reaches PostgreSQL at aic-platform/postgresql TCP 5432, which "
        "must stay closed to it",
    ),
]


@pytest.mark.parametrize(
    ("kind", "name", "mutate", "expected"), SMALL_FAULTS, ids=[c[3][:40] for c in SMALL_FAULTS]
)
def test_small_platform_fault_is_found(
    kind: str, name: str, mutate: Callable[[KubeObject], None], expected: str
) -> None:
    assert expected in [str(v) for v in check_network_policies(_edit(kind, name, mutate))]
