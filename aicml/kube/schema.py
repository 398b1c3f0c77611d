"""Schema validation of rendered objects: Kubernetes' own OpenAPI schemas through kubernetes-validate
(strict: unknown fields are errors), and our own structural schemas for the Prometheus Operator CRDs.

kubernetes-validate ships only the built-in API groups, so ServiceMonitor, PodMonitor and PrometheusRule
would be "schema not found". Rather than skip them, they are checked against the subset of the
monitoring.coreos.com/v1 schema these manifests use, with unknown fields refused, so a typo such as
`podMetricEndpoints` fails here instead of being dropped by the API server.
"""

from __future__ import annotations

from typing import Any

from aicml.kube.findings import Violation
from aicml.kube.render import KubeObject, object_ref

KUBERNETES_VERSION = "1.32.0"

_LABEL_SELECTOR: dict[str, Any] = {
    "type": "object",
    "additionalProperties": False,
    "properties": {
        "matchLabels": {"type": "object", "additionalProperties": {"type": "string"}},
        "matchExpressions": {"type": "array", "items": {"type": "object"}},
    },
}
_ENDPOINT: dict[str, Any] = {
    "type": "object",
    "additionalProperties": False,
    "required": ["port"],
    "properties": {
        "port": {"type": "string"},
        "path": {"type": "string", "pattern": "^/"},
        "interval": {"type": "string", "pattern": "^[0-9]+(ms|s|m|h)$"},
        "scrapeTimeout": {"type": "string", "pattern": "^[0-9]+(ms|s|m|h)$"},
        "scheme": {"enum": ["http", "https"]},
        "honorLabels": {"type": "boolean"},
    },
}
_METADATA: dict[str, Any] = {
    "type": "object",
    "required": ["name", "namespace"],
    "properties": {
        "name": {"type": "string", "pattern": "^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"},
        "namespace": {"type": "string"},
        "labels": {"type": "object", "additionalProperties": {"type": "string"}},
        "annotations": {"type": "object", "additionalProperties": {"type": "string"}},
    },
}


def _crd(spec: dict[str, Any]) -> dict[str, Any]:
    return {
        "type": "object",
        "required": ["apiVersion", "kind", "metadata", "spec"],
        "additionalProperties": False,
        "properties": {
            "apiVersion": {"const": "monitoring.coreos.com/v1"},
            "kind": {"type": "string"},
            "metadata": _METADATA,
            "spec": spec,
        },
    }


_RULE: dict[str, Any] = {
    "type": "object",
    "additionalProperties": False,
    "required": ["expr"],
    "oneOf": [{"required": ["alert"]}, {"required": ["record"]}],
    "properties": {
        "alert": {"type": "string", "pattern": "^[A-Za-z_][A-Za-z0-9_]*$"},
        "record": {"type": "string"},
        "expr": {"type": "string", "minLength": 1},
        "for": {"type": "string", "pattern": "^[0-9]+(ms|s|m|h|d)$"},
        "labels": {"type": "object", "additionalProperties": {"type": "string"}},
        "annotations": {"type": "object", "additionalProperties": {"type": "string"}},
    },
}


def _monitor_spec(endpoints: str) -> dict[str, Any]:
    """The spec of a ServiceMonitor (``endpoints``) or PodMonitor (``podMetricsEndpoints``)."""
    return {
        "type": "object",
        "additionalProperties": False,
        "required": ["selector", endpoints],
        "properties": {
            "selector": _LABEL_SELECTOR,
            endpoints: {"type": "array", "minItems": 1, "items": _ENDPOINT},
            "namespaceSelector": {"type": "object"},
            "jobLabel": {"type": "string"},
        },
    }


CRD_SCHEMAS: dict[str, dict[str, Any]] = {
    "ServiceMonitor": _crd(_monitor_spec("endpoints")),
    "PodMonitor": _crd(_monitor_spec("podMetricsEndpoints")),
    "PrometheusRule": _crd(
        {
            "type": "object",
            "additionalProperties": False,
            "required": ["groups"],
            "properties": {
                "groups": {
                    "type": "array",
                    "minItems": 1,
                    "items": {
                        "type": "object",
                        "additionalProperties": False,
                        "required": ["name", "rules"],
                        "properties": {
                            "name": {"type": "string"},
                            "interval": {"type": "string"},
                            "rules": {"type": "array", "minItems": 1, "items": _RULE},
                        },
                    },
                }
            },
        }
    ),
}


def validate_object(obj: KubeObject, version: str = KUBERNETES_VERSION) -> list[Violation]:
    """Findings for one object; empty when it is valid."""
    import jsonschema
    import kubernetes_validate
    from kubernetes_validate.utils import SchemaNotFoundError, ValidationError

    ref = object_ref(obj)
    schema = CRD_SCHEMAS.get(str(obj.get("kind")))
    if schema is not None and str(obj.get("apiVersion", "")).startswith("monitoring.coreos.com/"):
        validator = jsonschema.Draft7Validator(schema)
        return [
            Violation(
                "schema", ref, f"{'/'.join(map(str, error.absolute_path)) or '(root)'}: {error.message}"
            )
            for error in validator.iter_errors(obj)
        ]
    try:
        kubernetes_validate.validate(obj, version, strict=True)
    except ValidationError as error:
        path = "/".join(str(part) for part in error.path) or "(root)"
        return [Violation("schema", ref, f"{path}: {error.message}")]
    except SchemaNotFoundError:
        return [
            Violation("schema", ref, f"no schema for {obj.get('apiVersion')} {obj.get('kind')} in {version}")
        ]
    return []


def validate_objects(objects: list[KubeObject], version: str = KUBERNETES_VERSION) -> list[Violation]:
    return [violation for obj in objects for violation in validate_object(obj, version)]
