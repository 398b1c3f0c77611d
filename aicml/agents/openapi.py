"""The agent API's OpenAPI 3.1 document: request bodies from the pydantic models the handlers validate with."""

from __future__ import annotations

from functools import cache
from typing import Any

from pydantic import BaseModel
from pydantic.json_schema import models_json_schema

from aicml.agents.graph import Coordination
from aicml.agents.messages import AgentMessage
from aicml.agents.spec import NAME_PATTERN, VERSION_PATTERN, AgentSpec

_REF = "#/components/schemas/{model}"


def _body(name: str) -> dict[str, Any]:
    return {"required": True, "content": {"application/json": {"schema": {"$ref": _REF.format(model=name)}}}}


def _answers(*statuses: int, ok: int = 200) -> dict[str, Any]:
    error = {"content": {"application/json": {"schema": {"$ref": _REF.format(model="Error")}}}}
    described = {
        400: "Bad request.", 401: "Missing or wrong bearer token.", 403: "Not allowed for this identity, or "
        "the definition names code or an address the operator did not allow.", 404: "No such agent, version or "
        "coordination.", 409: "Conflict with the current state.", 413: "Body over 1 MiB.",
        422: "Invalid body.", 502: "An agent failed.", 503: "agent_db is unavailable; retry after Retry-After.",
        504: "Deadline exceeded.",
    }  # fmt: skip
    out: dict[str, Any] = {str(ok): {"description": "OK.", "content": {"application/json": {"schema": {}}}}}
    for status in (401, 413, 422, 503, *statuses):
        out[str(status)] = {"description": described[status], **error}
    return out


def _path_params(*names: str) -> list[dict[str, Any]]:
    pattern = {"name": NAME_PATTERN, "version": VERSION_PATTERN, "action": r"^[a-z]{1,16}$"}
    return [
        {"name": n, "in": "path", "required": True, "schema": {"type": "string", "pattern": pattern[n]}}
        for n in names
    ]


@cache
def _components() -> dict[str, Any]:
    from aicml.agents.api import RolloutRequest, TransitionRequest

    class RunGraph(BaseModel):
        coordination: Coordination
        message: AgentMessage | None = None

    models: list[type[BaseModel]] = [
        AgentSpec, AgentMessage, TransitionRequest, RolloutRequest, RunGraph,
    ]  # fmt: skip
    _, top = models_json_schema([(m, "validation") for m in models], ref_template=_REF)
    schemas: dict[str, Any] = dict(top.get("$defs", {}))
    # PUT /v1/coordinations/{name}: the name comes from the path.
    graph = dict(schemas["Coordination"])
    graph["properties"] = {k: v for k, v in graph["properties"].items() if k != "name"}
    graph["required"] = [r for r in graph.get("required", []) if r != "name"]
    schemas["CoordinationBody"] = graph
    schemas["Error"] = {"type": "object", "properties": {"error": {"type": "string"}}}
    return schemas


def openapi_document(auth: bool) -> dict[str, Any]:
    """OpenAPI for /v1 (agents, lifecycle, rollouts, coordinations), health and metrics."""
    invoke = {"requestBody": _body("AgentMessage"), "responses": _answers(404, 409, 502, 504)}
    paths: dict[str, Any] = {
        "/healthz": {"get": {"security": [], "responses": {"200": {"description": "Alive."}}}},
        "/readyz": {
            "get": {
                "security": [],
                "responses": {
                    "200": {"description": "Ready for traffic."},
                    "503": {"description": "Draining after SIGTERM: route new calls elsewhere."},
                },
            }
        },
        "/v1/agents": {
            "get": {"responses": _answers()},
            "post": {"requestBody": _body("AgentSpec"), "responses": _answers(403, 409, ok=201)},
        },
        "/v1/agents/{name}": {"parameters": _path_params("name"), "get": {"responses": _answers(404)}},
        "/v1/agents/{name}/invoke": {"parameters": _path_params("name"), "post": invoke},
        "/v1/agents/{name}/transitions": {
            "parameters": _path_params("name"),
            "get": {"responses": _answers(404)},
        },
        "/v1/agents/{name}/rollout": {
            "parameters": _path_params("name"),
            "get": {"responses": _answers(404)},
            "post": {"requestBody": _body("RolloutRequest"), "responses": _answers(403, 404, 409)},
        },
        "/v1/agents/{name}/rollout/{action}": {
            "parameters": _path_params("name", "action"),
            "post": {"responses": _answers(403, 404, 409)},
        },
        "/v1/agents/{name}/versions/{version}": {
            "parameters": _path_params("name", "version"),
            "get": {"responses": _answers(404)},
        },
        "/v1/agents/{name}/versions/{version}/transition": {
            "parameters": _path_params("name", "version"),
            "post": {"requestBody": _body("TransitionRequest"), "responses": _answers(403, 404, 409)},
        },
        "/v1/agents/{name}/versions/{version}/transitions": {
            "parameters": _path_params("name", "version"),
            "get": {"responses": _answers(404)},
        },
        "/v1/agents/{name}/versions/{version}/health": {
            "parameters": _path_params("name", "version"),
            "post": {"responses": {**_answers(403, 404), "503": {"description": "Unhealthy."}}},
        },
        "/v1/coordinations": {
            "get": {"responses": _answers()},
            "post": {"requestBody": _body("RunGraph"), "responses": _answers(404, 409, 502, 504)},
        },
        "/v1/coordinations/{name}": {
            "parameters": _path_params("name"),
            "put": {"requestBody": _body("CoordinationBody"), "responses": _answers(403)},
        },
        "/v1/coordinations/{name}/invoke": {"parameters": _path_params("name"), "post": invoke},
    }
    document: dict[str, Any] = {
        "openapi": "3.1.0",
        "info": {"title": "aic-ml agent orchestration", "version": "1"},
        "paths": paths,
        "components": {"schemas": _components()},
    }
    if auth:
        document["components"]["securitySchemes"] = {"bearer": {"type": "http", "scheme": "bearer"}}
        document["security"] = [{"bearer": []}]
    return document
