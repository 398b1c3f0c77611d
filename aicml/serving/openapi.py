"""The server's OpenAPI 3.0 document, derived from the served model's input signature."""

from __future__ import annotations

from typing import Any

from aicml.serving.inputs import V2_NATIVE, InputSchema

_JSON_TYPES: dict[str, dict[str, Any]] = {
    "double": {"type": "number"},
    "float": {"type": "number"},
    "long": {"type": "integer", "minimum": -(2**63), "maximum": 2**63 - 1},
    "integer": {"type": "integer", "minimum": -(2**31), "maximum": 2**31 - 1},
    "boolean": {"type": "boolean"},
    "string": {"type": "string"},
    "binary": {"type": "string", "format": "byte"},
    "datetime": {"type": "string", "format": "date-time"},
}


# The request id (aicml.serving.app.request_id_of): 1 to 128 visible ASCII characters.
REQUEST_ID = "x-request-id"
_REQUEST_ID_SCHEMA = {"type": "string", "minLength": 1, "maxLength": 128, "pattern": "^[!-~]+$"}


def _request_id_header(required: bool) -> dict[str, Any]:
    return {
        "description": "The request's id: the caller's x-request-id, else one the server made.",
        "required": required,
        "schema": _REQUEST_ID_SCHEMA,
    }


def _error(description: str) -> dict[str, Any]:
    return {
        "description": description,
        "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}},
    }


def _with_request_id(response: dict[str, Any]) -> dict[str, Any]:
    """An error answer of a predict operation: it echoes the request id when the id was read before the
    error (not for a malformed id itself)."""
    return {**response, "headers": {REQUEST_ID: _request_id_header(required=False)}}


def openapi_document(name: str, schema: InputSchema | None, auth: bool) -> dict[str, Any]:
    """OpenAPI for ``/invocations``, the v2 endpoints, health, metrics and the router status."""
    columns = schema.columns if schema is not None else []
    record = {
        "type": "object",
        "properties": {
            c.name: {**_JSON_TYPES[c.kind], **({"nullable": True} if not c.required else {})} for c in columns
        },
        "required": [c.name for c in columns if c.required],
        "additionalProperties": False,
    }
    max_rows = schema.max_rows if schema is not None else 10_000
    rows = {
        "type": "array",
        "items": {"$ref": "#/components/schemas/Record"},
        "minItems": 1,
        "maxItems": max_rows,
    }
    invocation = {
        "oneOf": [
            {
                "type": "object",
                "properties": {
                    "dataframe_split": {
                        "type": "object",
                        "properties": {
                            "columns": {"type": "array", "items": {"type": "string"}},
                            "data": {"type": "array", "items": {"type": "array"}, "minItems": 1},
                        },
                        "required": ["columns", "data"],
                        "additionalProperties": False,
                    }
                },
                "required": ["dataframe_split"],
                "additionalProperties": False,
            },
            {
                "type": "object",
                "properties": {"dataframe_records": rows},
                "required": ["dataframe_records"],
                "additionalProperties": False,
            },
            {
                "type": "object",
                "properties": {"instances": rows},
                "required": ["instances"],
                "additionalProperties": False,
            },
            {
                "type": "object",
                "properties": {"inputs": rows},
                "required": ["inputs"],
                "additionalProperties": False,
            },
        ]
    }
    tensor = {
        "type": "object",
        "properties": {
            "name": {"type": "string", "enum": [c.name for c in columns]} if columns else {"type": "string"},
            "shape": {
                "type": "array",
                "items": {"type": "integer", "minimum": 1},
                "minItems": 1,
                "maxItems": 2,
            },
            "datatype": {"type": "string", "enum": sorted({V2_NATIVE[c.kind] for c in columns}) or ["FP64"]},
            "data": {"type": "array", "minItems": 1},
        },
        "required": ["name", "shape", "datatype", "data"],
    }
    v2_request = {
        "type": "object",
        "properties": {
            "id": {"type": "string"},
            "inputs": {"type": "array", "items": tensor, "minItems": 1},
            "outputs": {
                "type": "array",
                "items": {"type": "object", "properties": {"name": {"type": "string"}}},
            },
        },
        "required": ["inputs"],
    }
    security: list[dict[str, list[str]]] = [{"bearer": []}] if auth else []
    refused = {
        "400": _error("Malformed JSON or input that does not fit the signature; `field` names the culprit."),
        "401": _error("Missing or wrong bearer token."),
        "404": _error("Unknown model."),
        "413": _error("Body or row count over the limit."),
        "415": _error("Unsupported content type."),
        "500": _error("The model failed while predicting."),
        "503": _error("At capacity (retry after a second) or not loaded yet."),
    }
    # Answers given after the request id was read carry it; 401 and a malformed id come before.
    refused_with_id = {
        code: (_with_request_id(response) if code not in ("401", "404") else response)
        for code, response in refused.items()
    }
    request_id = {
        "name": REQUEST_ID,
        "in": "header",
        "required": False,
        "description": "The caller's id of this request, echoed in the answer's x-request-id header and "
        "recorded with its predictions in the prediction log (the key `aicml labels ingest` joins labels "
        "on); a new one is made when absent. 400 when it is not 1 to 128 visible ASCII characters.",
        "schema": _REQUEST_ID_SCHEMA,
    }
    plain = {"200": {"description": "OK"}}
    return {
        "openapi": "3.0.3",
        "info": {"title": f"aicml model server: {name}", "version": "1.0.0"},
        "paths": {
            "/invocations": {
                "post": {
                    "summary": "MLflow scoring protocol",
                    "security": security,
                    "parameters": [request_id],
                    "requestBody": {
                        "required": True,
                        "content": {
                            "application/json": {"schema": {"$ref": "#/components/schemas/Invocation"}}
                        },
                    },
                    "responses": {
                        "200": {
                            "description": "Predictions",
                            "headers": {REQUEST_ID: _request_id_header(required=True)},
                            "content": {
                                "application/json": {
                                    "schema": {
                                        "type": "object",
                                        "properties": {"predictions": {"type": "array"}},
                                        "required": ["predictions"],
                                    }
                                }
                            },
                        },
                        **refused_with_id,
                    },
                }
            },
            "/v2/models/{model_name}/infer": {
                "post": {
                    "summary": "Open Inference Protocol v2 inference",
                    "security": security,
                    "parameters": [
                        {
                            "name": "model_name",
                            "in": "path",
                            "required": True,
                            "schema": {"type": "string", "enum": [name]},
                        },
                        request_id,
                    ],
                    "requestBody": {
                        "required": True,
                        "content": {
                            "application/json": {"schema": {"$ref": "#/components/schemas/InferenceRequest"}}
                        },
                    },
                    "responses": {
                        "200": {
                            "description": "Inference response (its `id` is the request id too)",
                            "headers": {REQUEST_ID: _request_id_header(required=True)},
                            "content": {
                                "application/json": {
                                    "schema": {"type": "object", "required": ["model_name", "outputs"]}
                                }
                            },
                        },
                        **refused_with_id,
                    },
                }
            },
            "/v2/models/{model_name}": {
                "get": {
                    "summary": "Model metadata",
                    "parameters": [
                        {"name": "model_name", "in": "path", "required": True, "schema": {"type": "string"}}
                    ],
                    "responses": {"200": {"description": "Metadata"}, "404": _error("Unknown model.")},
                }
            },
            "/v2/health/live": {"get": {"summary": "Liveness", "responses": plain}},
            "/v2/health/ready": {
                "get": {"summary": "Readiness", "responses": {**plain, "503": {"description": "Not ready"}}}
            },
            "/ping": {"get": {"summary": "MLflow health check", "responses": plain}},
            "/metrics": {"get": {"summary": "Prometheus metrics", "responses": plain}},
            "/router": {
                "get": {
                    "summary": "Rollout evidence",
                    "security": security,
                    "responses": {**plain, "401": _error("Missing or wrong bearer token.")},
                }
            },
        },
        "components": {
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
            "schemas": {
                "Record": record,
                "Invocation": invocation,
                "InferenceRequest": v2_request,
                "Error": {
                    "type": "object",
                    "properties": {
                        "error_code": {"type": "string"},
                        "message": {"type": "string"},
                        "field": {"type": "string"},
                    },
                    "required": ["message"],
                },
            },
        },
    }
