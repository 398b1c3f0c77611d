"""Every rendered object validates: Kubernetes' schemas (strict) and our Prometheus Operator CRD schemas."""

from __future__ import annotations

import copy

import pytest

from aicml.kube.render import KubeObject, find
from aicml.kube.schema import validate_object, validate_objects


@pytest.mark.parametrize("overlay", ["dev", "prod"])
def test_every_object_validates(rendered: dict[str, list[KubeObject]], overlay: str) -> None:
    assert validate_objects(rendered[overlay]) == []


def test_unknown_field_in_a_builtin_kind_fails(prod: list[KubeObject]) -> None:
    deployment = copy.deepcopy(find(prod, "Deployment", "model-serving"))
    deployment["spec"]["replica"] = 3
    findings = validate_object(deployment)
    assert findings and "replica" in findings[0].message


def test_wrong_type_fails(prod: list[KubeObject]) -> None:
    quota = copy.deepcopy(find(prod, "ResourceQuota", "ai-ml-resource-quota"))
    quota["spec"]["hard"] = ["20"]
    assert validate_object(quota)


@pytest.mark.parametrize(
    ("kind", "name", "path", "value"),
    [
        ("PodMonitor", "aicml-metrics-exporters", ("spec",), {"podMetricEndpoints": []}),
        ("ServiceMonitor", "model-serving", ("spec", "endpoints"), [{"path": "/metrics"}]),
        (
            "PrometheusRule",
            "aic-ai-ml-alerts",
            ("spec", "groups"),
            [{"name": "g", "rules": [{"alert": "A"}]}],
        ),
    ],
)
def test_crd_typo_fails(
    prod: list[KubeObject], kind: str, name: str, path: tuple[str, ...], value: object
) -> None:
    obj = copy.deepcopy(find(prod, kind, name))
    target = obj
    for key in path[:-1]:
        target = target[key]
    target[path[-1]] = value
    assert validate_object(obj)


def test_unknown_kind_is_a_finding_not_a_pass() -> None:
    obj = {"apiVersion": "example.com/v1", "kind": "Gadget", "metadata": {"name": "g", "namespace": "x"}}
    findings = validate_object(obj)
    assert findings and "no schema" in findings[0].message
