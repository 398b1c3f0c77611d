"""REST API of the agent service (ASGI, Starlette): ``/v1/agents``, ``/v1/coordinations``, ``/healthz``,
``/readyz``, ``/metrics``.

Every ``/v1`` route needs ``Authorization: Bearer <token>`` unless auth was disabled on purpose;
``/healthz``, ``/readyz``, ``/metrics`` and ``/openapi.json`` stay open for probes, Prometheus and clients.
``/readyz`` answers 503 from SIGTERM on (``Readiness``), while the service still answers what it is sent.
agent_db out of reach: 503 naming the database, with ``Retry-After``. Two
identities: the invoker's token calls agents and coordinations and reads; the administrator's token also
registers agents, moves them through their lifecycle, runs health checks and rollouts and stores
coordinations (an invoker gets 403 there). The audit trail records the authenticated identity, never a
name the client sends. Invoke routes are async and never
block the event loop on the database except through the catalog's cached refresh (in a thread).
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

import orjson
from pydantic import BaseModel, Field, ValidationError
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from aicml.agents.errors import (
    AgentConflict,
    AgentError,
    AgentNotFound,
    AgentStoreUnavailable,
    AgentUnavailable,
    LifecycleError,
    MessageError,
)
from aicml.agents.graph import Coordination
from aicml.agents.messages import AgentMessage, AgentReply, Outcome
from aicml.agents.policy import AgentPolicyError
from aicml.agents.service import AgentService
from aicml.agents.spec import AgentSpec, LifecycleState
from aicml.auth import ADMIN, LOCAL, BearerAuth
from aicml.shutdown import closing

log = logging.getLogger(__name__)

Scope = MutableMapping[str, Any]
ASGIApp = Callable[[Scope, Callable[[], Awaitable[Any]], Callable[[Any], Awaitable[None]]], Awaitable[None]]

STATUS_OF_OUTCOME = {
    Outcome.SUCCESS: 200,
    Outcome.PARTIAL: 200,
    Outcome.REJECTED: 422,
    Outcome.TIMEOUT: 504,
    Outcome.FAILURE: 502,
}


class TransitionRequest(BaseModel):
    to: LifecycleState = Field(description="Target state.")
    reason: str = Field(default="", max_length=2000)
    force: bool = Field(default=False, description="Activate even if the health check fails.")


class RolloutRequest(BaseModel):
    canary: str = Field(description="Version to roll out.")
    steps: list[int] | None = Field(
        default=None, max_length=20, description="Canary percentages, ending at 100 (at most 20 steps)."
    )
    step_requests: int | None = Field(
        default=None, ge=1, description="Calls at a step before the router moves to the next (default 500)."
    )
    slow_after_ms: float | None = Field(
        default=None, gt=0, description="A call slower than this counts against the latency objective."
    )


def _json(body: Any, status: int = 200) -> Response:
    return Response(orjson.dumps(body), status_code=status, media_type="application/json")


# The largest request body the agent API reads (a message, a graph, an agent definition): 1 MiB.
MAX_BODY_BYTES = 1 << 20


class BodyTooLarge(ValueError):
    """A request body over MAX_BODY_BYTES (answered 413 before the rest is read)."""


async def read_body(request: Request, limit: int = MAX_BODY_BYTES) -> bytes:
    """The request body, refused as soon as it is known to exceed ``limit`` (header or streamed bytes)."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise BodyTooLarge(f"the request body is over {limit} bytes")
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise BodyTooLarge(f"the request body is over {limit} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


def json_object(body: bytes) -> dict[str, Any]:
    """The body as a JSON object; anything else (a list, a number) is a client error, not a crash."""
    value = orjson.loads(body)
    if not isinstance(value, dict):
        raise ValueError(f"the request body must be a JSON object, not {type(value).__name__}")
    return value


def _error(status: int, message: str) -> Response:
    return _json({"error": message}, status)


def _reply(reply: AgentReply) -> Response:
    status = STATUS_OF_OUTCOME[reply.outcome]
    if status == 502 and not reply.calls:
        # No agent was called, so no agent failed: the graph could not run on this input (a blackboard whose
        # goal no agent can reach, say). That is the request's problem, not a bad gateway.
        status = 422
    return Response(reply.model_dump_json().encode(), status_code=status, media_type="application/json")


ROLE_KEY = "aicml.agents.role"
OPEN_PATHS = ("/healthz", "/readyz", "/metrics", "/openapi.json")


class Readiness:
    """Whether this replica takes new traffic: not from SIGTERM on, so the Service stops routing here."""

    def __init__(self) -> None:
        self.draining = False

    def begin_drain(self) -> None:
        if not self.draining:
            self.draining = True
            log.info("Draining: /readyz answers 503 from now on")


class CloseWhileDraining:
    """Pure ASGI middleware: while draining, every response carries ``Connection: close``, so no client keeps
    an idle connection that the listener closes under it."""

    def __init__(self, app: ASGIApp, readiness: Readiness) -> None:
        self.app = app
        self.readiness = readiness

    async def __call__(self, scope: Scope, receive: Any, send: Any) -> None:
        if scope["type"] == "http" and self.readiness.draining:
            send = closing(send)
        await self.app(scope, receive, send)


async def _answer(send: Any, status: int, body: bytes, *headers: tuple[bytes, bytes]) -> None:
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), *headers]})  # fmt: skip
    await send({"type": "http.response.body", "body": body})


class BearerMiddleware:
    """Pure ASGI middleware (no per-request task, unlike BaseHTTPMiddleware): the constant-time token check of
    ``aicml.auth.BearerAuth``, except on ``open_paths``.

    Sets the caller's role in the scope: ``admin`` or ``invoker`` by the token sent, ``local`` when auth is off.
    """

    def __init__(self, app: ASGIApp, auth: BearerAuth, open_paths: tuple[str, ...] = OPEN_PATHS):
        self.app = app
        self.auth = auth
        self.open_paths = open_paths

    async def __call__(self, scope: Scope, receive: Any, send: Any) -> None:
        if scope["type"] == "http":
            scope[ROLE_KEY] = LOCAL
            if self.auth.enabled and scope["path"] not in self.open_paths:
                role = self.auth.role(next((v for k, v in scope["headers"] if k == b"authorization"), None))
                if role is None:
                    body = b'{"error":"missing or wrong bearer token: send Authorization: Bearer <token>"}'
                    await _answer(send, 401, body, (b"www-authenticate", b"Bearer"))
                    return
                scope[ROLE_KEY] = role
        await self.app(scope, receive, send)


def admin_only(handler: Callable[[Request], Awaitable[Response]]) -> Callable[[Request], Awaitable[Response]]:
    """A route for administrators: an invoker gets 403 before the body is read or anything is done."""

    async def guarded(request: Request) -> Response:
        if request.scope.get(ROLE_KEY, LOCAL) not in (ADMIN, LOCAL):
            return _error(
                403,
                f"{request.method} {request.url.path} needs the administrator's token (AIC_AGENTS_ADMIN_TOKEN); "
                "the invoker's token only calls agents and coordinations and reads.",
            )
        return await handler(request)

    return guarded


def _route(path: str, **handlers: Callable[[Request], Awaitable[Response]]) -> Route:
    """One route per path, whatever its methods, so a 405 lists every method the path has in ``Allow``."""

    async def endpoint(request: Request) -> Response:
        return await handlers["GET" if request.method == "HEAD" else request.method](request)

    return Route(path, endpoint, methods=list(handlers))


def create_app(service: AgentService, auth: BearerAuth, readiness: Readiness | None = None) -> ASGIApp:
    """The ASGI app; ``auth`` without a token serves /v1 without auth (the caller decided that on purpose).

    ``auth.admin``: the administrators' token; None with auth on: no administration over the API.
    ``readiness``: what ``/readyz`` answers from (the server flips it on SIGTERM).
    """
    readiness = readiness or Readiness()

    def actor_of(request: Request) -> str:
        """Who, for the audit trail: the authenticated identity (never a header or field the client sends)."""
        return str(request.scope.get(ROLE_KEY, LOCAL))

    async def parse(request: Request, model: type[BaseModel]) -> Any:
        return model.model_validate_json(await read_body(request))

    async def guarded(fn: Callable[[], Awaitable[Response]]) -> Response:
        try:
            return await fn()
        except BodyTooLarge as exc:
            return _error(413, str(exc))
        except AgentStoreUnavailable as exc:
            # Not the caller's fault nor the agent's: 503, and the caller may try again in a moment.
            response = _error(503, str(exc))
            response.headers["retry-after"] = "1"
            return response
        except ValidationError as exc:
            return _json(
                {
                    "error": "invalid request body",
                    "detail": orjson.loads(exc.json(include_url=False, include_input=False)),
                },
                422,
            )
        except AgentNotFound as exc:
            return _error(404, str(exc))
        except AgentPolicyError as exc:
            return _error(403, str(exc))
        except (AgentConflict, LifecycleError) as exc:
            return _error(409, str(exc))
        except AgentUnavailable as exc:
            return _error(409, str(exc))
        except (MessageError, ValueError) as exc:
            return _error(422, str(exc))
        except AgentError as exc:
            return _error(400, str(exc))

    async def healthz(request: Request) -> Response:
        """Liveness: the process answers (also while draining, so it is not restarted mid-drain)."""
        return _json({"status": "ok"})

    async def readyz(request: Request) -> Response:
        """Readiness: 503 from SIGTERM on, so the Service routes new calls to other replicas."""
        if readiness.draining:
            return _json({"status": "draining"}, 503)
        return _json({"status": "ready"})

    async def openapi(request: Request) -> Response:
        from aicml.agents.openapi import openapi_document

        return _json(openapi_document(auth=auth.enabled))

    async def metrics(request: Request) -> Response:
        from prometheus_client import CONTENT_TYPE_LATEST

        from aicml.observability.metrics import exposition

        return Response(exposition(), media_type=CONTENT_TYPE_LATEST)

    async def register(request: Request) -> Response:
        async def go() -> Response:
            spec = await parse(request, AgentSpec)
            record = await run_in_threadpool(service.register, spec, actor_of(request))
            return _json(record.summary(), 201)

        return await guarded(go)

    async def list_agents(request: Request) -> Response:
        async def go() -> Response:
            state = request.query_params.get("state")
            records = await run_in_threadpool(
                service.store.list_agents,
                LifecycleState(state) if state else None,
                request.query_params.get("skill"),
            )
            return _json({"agents": [r.summary() for r in records]})

        return await guarded(go)

    async def get_agent(request: Request) -> Response:
        async def go() -> Response:
            name = request.path_params["name"]
            records = await run_in_threadpool(service.store.versions, name)
            await run_in_threadpool(service.catalog.refresh)
            return _json(
                {
                    "name": name,
                    "versions": [r.summary() for r in records],
                    "weights": service.catalog.weights(name),
                }
            )

        return await guarded(go)

    async def get_version(request: Request) -> Response:
        async def go() -> Response:
            record = await run_in_threadpool(
                service.store.get, request.path_params["name"], request.path_params["version"]
            )
            return _json({**record.summary(), "spec": record.spec.model_dump(mode="json")})

        return await guarded(go)

    async def invoke(request: Request) -> Response:
        async def go() -> Response:
            message = AgentMessage.model_validate_json(await read_body(request))
            return _reply(await service.invoke(request.path_params["name"], message))

        return await guarded(go)

    async def transition(request: Request) -> Response:
        async def go() -> Response:
            body = await parse(request, TransitionRequest)
            p = request.path_params
            record = await run_in_threadpool(
                service.transition, p["name"], p["version"], body.to, actor_of(request), body.reason, body.force,
            )  # fmt: skip
            return _json(record.summary())

        return await guarded(go)

    async def transitions(request: Request) -> Response:
        async def go() -> Response:
            p = request.path_params
            rows = await run_in_threadpool(service.store.transitions, p["name"], p.get("version"))
            return _json({"transitions": [t.as_dict() for t in rows]})

        return await guarded(go)

    async def health(request: Request) -> Response:
        async def go() -> Response:
            p = request.path_params
            healthy, detail = await run_in_threadpool(service.check_health, p["name"], p["version"])
            return _json({"healthy": healthy, "detail": detail}, 200 if healthy else 503)

        return await guarded(go)

    async def rollout(request: Request) -> Response:
        async def go() -> Response:
            name, action = request.path_params["name"], request.path_params.get("action")
            actor = actor_of(request)
            if action is None:
                body = await parse(request, RolloutRequest)
                done = await run_in_threadpool(
                    lambda: service.start_rollout(
                        name, body.canary, actor, body.steps,
                        step_requests=body.step_requests, slow_after_ms=body.slow_after_ms,
                    )
                )  # fmt: skip
            elif action == "advance":
                done = await run_in_threadpool(service.advance_rollout, name, actor)
            elif action == "rollback":
                done = await run_in_threadpool(service.rollback_rollout, name, actor)
            else:
                return _error(404, f"Unknown rollout action {action!r}; use advance or rollback.")
            return _json({**done.__dict__, "weights": done.weights()})

        return await guarded(go)

    async def get_rollout(request: Request) -> Response:
        """The latest rollout of an agent: step, weights, per-version evidence, and the decision once made."""

        async def go() -> Response:
            done = await run_in_threadpool(service.store.rollout, request.path_params["name"])
            return _json({**done.__dict__, "weights": done.weights()})

        return await guarded(go)

    async def put_graph(request: Request) -> Response:
        async def go() -> Response:
            body = json_object(await read_body(request))
            coordination = Coordination.model_validate({**body, "name": request.path_params["name"]})
            await run_in_threadpool(service.store.save_graph, coordination)
            return _json({"name": coordination.name, "edges": coordination.edges()}, 200)

        return await guarded(go)

    async def list_graphs(request: Request) -> Response:
        async def go() -> Response:
            graphs = await run_in_threadpool(service.store.graphs)
            return _json({"coordinations": [g.model_dump(mode="json") for g in graphs]})

        return await guarded(go)

    graph_cache: dict[str, Coordination] = {}

    async def invoke_graph(request: Request) -> Response:
        async def go() -> Response:
            name = request.path_params["name"]
            message = AgentMessage.model_validate_json(await read_body(request))
            coordination = graph_cache.get(name)
            if coordination is None or service.catalog.refresh_if_stale():
                coordination = graph_cache[name] = await run_in_threadpool(service.store.graph, name)
            return _reply(await service.coordinate(coordination, message))

        return await guarded(go)

    async def run_graph(request: Request) -> Response:
        """An ad-hoc graph in the body: ``{"coordination": {...}, "message": {...}}``."""

        async def go() -> Response:
            body = json_object(await read_body(request))
            coordination = Coordination.model_validate(body.get("coordination"))
            message = AgentMessage.model_validate(body.get("message") or {})
            return _reply(await service.coordinate(coordination, message))

        return await guarded(go)

    routes = [
        _route("/healthz", GET=healthz),
        _route("/readyz", GET=readyz),
        _route("/metrics", GET=metrics),
        _route("/openapi.json", GET=openapi),
        _route("/v1/agents", POST=admin_only(register), GET=list_agents),
        _route("/v1/agents/{name}", GET=get_agent),
        _route("/v1/agents/{name}/invoke", POST=invoke),
        _route("/v1/agents/{name}/transitions", GET=transitions),
        _route("/v1/agents/{name}/rollout", POST=admin_only(rollout), GET=get_rollout),
        _route("/v1/agents/{name}/rollout/{action}", POST=admin_only(rollout)),
        _route("/v1/agents/{name}/versions/{version}", GET=get_version),
        _route("/v1/agents/{name}/versions/{version}/transition", POST=admin_only(transition)),
        _route("/v1/agents/{name}/versions/{version}/transitions", GET=transitions),
        _route("/v1/agents/{name}/versions/{version}/health", POST=admin_only(health)),
        _route("/v1/coordinations", GET=list_graphs, POST=run_graph),
        _route("/v1/coordinations/{name}", PUT=admin_only(put_graph)),
        _route("/v1/coordinations/{name}/invoke", POST=invoke_graph),
    ]
    app = Starlette(routes=routes)
    return CloseWhileDraining(BearerMiddleware(app, auth), readiness)
