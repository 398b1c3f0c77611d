"""The model server as a plain ASGI application: MLflow scoring protocol, Open Inference Protocol v2,
OpenAPI, Prometheus metrics, bearer authentication, load shedding and champion/challenger routing.

Written against raw ASGI rather than a framework because every microsecond of routing shows in the
latency of a millisecond-scale model; the request path touches only memory (no Prefect, no MLflow server).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import shutil
import time
import uuid
from collections.abc import Awaitable, Callable, MutableMapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import orjson

from aicml import __version__
from aicml.auth import BearerAuth
from aicml.observability.metrics import exposition
from aicml.rollout.canary import Arm, TrafficRouter
from aicml.serving.inputs import InputError, parse_json
from aicml.serving.metrics import (
    BATCH_ROWS,
    HTTP_REQUESTS,
    MODEL_DEPLOYMENTS_ACTIVE,
    REQUEST_LATENCY,
    SHADOW_DISAGREEMENTS,
)
from aicml.serving.openapi import openapi_document
from aicml.serving.predlog import PredictionLog
from aicml.serving.runtime import ModelHost, PredictionError, ServedModel, to_jsonable
from aicml.shutdown import closing

log = logging.getLogger(__name__)

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]

_JSON = [(b"content-type", b"application/json")]
_OPT = orjson.OPT_SERIALIZE_NUMPY


class _TooLarge(Exception):
    pass


REQUEST_ID_HEADER = b"x-request-id"
_MAX_REQUEST_ID = 128


def request_id_of(value: bytes | None) -> str:
    """The client's ``x-request-id`` (1 to 128 visible ASCII characters), else a new one."""
    if value is None:
        return uuid.uuid4().hex
    if not 0 < len(value) <= _MAX_REQUEST_ID or not all(0x21 <= c <= 0x7E for c in value):
        raise InputError(
            400,
            f"The x-request-id header must be 1 to {_MAX_REQUEST_ID} visible ASCII characters.",
            field="x-request-id",
        )
    return value.decode("ascii")


@dataclass
class ServerOptions:
    """Limits and behaviour of one server."""

    max_body_bytes: int = 1 << 20
    max_in_flight: int = 64  # predict requests being answered at once; beyond this: 503, retry later
    shadow_timeout_s: float = 2.0


@dataclass
class ModelServer:
    """The ASGI app. ``champion`` answers by default; ``challenger`` is used only through ``router``."""

    champion: ModelHost
    auth: BearerAuth
    options: ServerOptions = field(default_factory=ServerOptions)
    challenger: ModelHost | None = None
    router: TrafficRouter | None = None
    cleanup_dir: Path | None = None  # a private download cache to remove at shutdown
    # The rollout controller's token (POST /router/freeze), never the predict clients' one. None: control
    # is refused, unless the whole server runs without auth (loopback only).
    control_auth: BearerAuth | None = None
    # Records each (sampled) prediction off the request path; None: predictions are not logged.
    prediction_log: PredictionLog | None = None
    prediction_log_close_s: float = 1.5  # at shutdown, within the exit reserve of the grace period

    def __post_init__(self) -> None:
        self.name = self.champion.ref.name
        self.in_flight = 0
        self.shed = 0
        self._openapi: bytes | None = None
        self._openapi_version: str | None = None
        self._shadow_tasks: set[asyncio.Task[None]] = set()
        self._latency: dict[str, Any] = {}
        self._counters: dict[tuple[str, int], Any] = {}
        # Set on SIGTERM: readiness answers 503 and responses close their connections while the server
        # still answers, so that the Service stops routing here before the listener closes.
        self.draining = False

    # --- lifecycle ------------------------------------------------------------------------------------

    async def startup(self) -> None:
        await self.champion.start()
        if self.challenger is not None:
            await self.challenger.start()
        if self.prediction_log is not None:
            self.prediction_log.start()
        MODEL_DEPLOYMENTS_ACTIVE.labels(model=self.name).inc()

    def begin_drain(self) -> None:
        if not self.draining:
            self.draining = True
            log.info("Draining: readiness answers 503 from now on")
            if self.prediction_log is not None:
                self.prediction_log.request_flush()  # written now, not after the in-flight requests

    async def shutdown(self) -> None:
        MODEL_DEPLOYMENTS_ACTIVE.labels(model=self.name).dec()
        for task in list(self._shadow_tasks):
            task.cancel()
        await self.champion.stop()
        if self.challenger is not None:
            await self.challenger.stop()
        if self.prediction_log is not None:
            # Flush what is queued; the writer is a thread, so the loop stays free meanwhile.
            await asyncio.to_thread(self.prediction_log.close, self.prediction_log_close_s)
        if self.cleanup_dir is not None:
            shutil.rmtree(self.cleanup_dir, ignore_errors=True)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        kind = scope["type"]
        if kind == "http":
            await self._http(scope, receive, send)
        elif kind == "lifespan":
            await self._lifespan(receive, send)

    async def _lifespan(self, receive: Receive, send: Send) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                try:
                    await self.startup()
                except Exception as exc:
                    log.exception("Model server failed to start")
                    await send({"type": "lifespan.startup.failed", "message": str(exc)})
                    return
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await self.shutdown()
                await send({"type": "lifespan.shutdown.complete"})
                return

    # --- plumbing -------------------------------------------------------------------------------------

    async def _body(self, scope: Scope, receive: Receive) -> bytes:
        limit = self.options.max_body_bytes
        for name, value in scope["headers"]:
            if name == b"content-length":
                try:
                    declared = int(value)
                except ValueError:
                    raise InputError(400, "Content-Length is not a number.", field="content-length") from None
                if declared > limit:
                    raise _TooLarge
                break
        chunks: list[bytes] = []
        size = 0
        more = True
        while more:
            message = await receive()
            if message["type"] == "http.disconnect":
                raise InputError(400, "The client disconnected.", field="body")
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > limit:  # stop reading: memory stays bounded whatever the client sends
                raise _TooLarge
            chunks.append(chunk)
            more = message.get("more_body", False)
        return chunks[0] if len(chunks) == 1 else b"".join(chunks)

    @staticmethod
    async def _send(
        send: Send, status: int, body: bytes, headers: list[tuple[bytes, bytes]] | None = None
    ) -> None:
        await send(
            {
                "type": "http.response.start",
                "status": status,
                "headers": [*(headers or _JSON), (b"content-length", str(len(body)).encode())],
            }
        )
        await send({"type": "http.response.body", "body": body})

    def _observe(self, route: str, status: int, started: float) -> None:
        counter = self._counters.get((route, status))
        if counter is None:
            counter = self._counters[(route, status)] = HTTP_REQUESTS.labels(self.name, route, str(status))
        counter.inc()
        histogram = self._latency.get(route)
        if histogram is None:
            histogram = self._latency[route] = REQUEST_LATENCY.labels(self.name, route)
        histogram.observe(time.perf_counter() - started)

    @staticmethod
    def _header(scope: Scope, wanted: bytes) -> bytes | None:
        for name, value in scope["headers"]:
            if name == wanted:
                return bytes(value)
        return None

    # --- routing --------------------------------------------------------------------------------------

    async def _http(self, scope: Scope, receive: Receive, send: Send) -> None:
        started = time.perf_counter()
        path: str = scope["path"]
        method: str = scope["method"]
        route = path
        status = 500
        if self.draining:
            send = closing(send)
        try:
            if path == "/router/freeze" and method == "POST":
                route = path
                status = await self._freeze(scope, receive, send)
                return
            if path == "/invocations" or (path.startswith("/v2/models/") and path.endswith("/infer")):
                route = "/invocations" if path == "/invocations" else "/v2/models/{name}/infer"
                if method != "POST":
                    status = 405
                    await self._send(send, 405, _USE_POST, [*_JSON, (b"allow", b"POST")])
                    return
                status = await self._predict_endpoint(
                    scope, receive, send, v2=route != "/invocations", started=started
                )
                return
            status, body, headers = self._read_only(path, method, scope)
            route = _route_label(path, self.name) if status != 404 else "unmatched"
            await self._send(send, status, body, headers)
        except Exception:  # a bug must become a 500 with a message, never a dropped connection
            log.exception("Unhandled error on %s %s", method, path)
            status = 500
            with contextlib.suppress(Exception):
                await self._send(
                    send, 500, orjson.dumps({"error_code": "INTERNAL_ERROR", "message": "Internal error."})
                )
        finally:
            self._observe(route, status, started)

    def _read_only(
        self, path: str, method: str, scope: Scope
    ) -> tuple[int, bytes, list[tuple[bytes, bytes]] | None]:
        if method not in ("GET", "HEAD"):
            if path in _GET_ROUTES or path.startswith("/v2"):
                return 405, _USE_GET, [*_JSON, (b"allow", b"GET, HEAD")]
            return 404, _not_found(f"No route {path}."), None
        ready = self.champion.ready and not self.draining
        if path in ("/ping", "/health", "/v2/health/live"):
            return 200, b"{}" if path.startswith("/v2") else b"\n", None
        if path == "/v2/health/ready":
            return (200 if ready else 503), orjson.dumps({"ready": ready}), None
        if path == "/version":
            import mlflow

            return 200, mlflow.__version__.encode(), [(b"content-type", b"text/plain")]
        if path == "/metrics":
            if self.prediction_log is not None:
                self.prediction_log.sync_metrics()
            return 200, exposition(), [(b"content-type", b"text/plain; version=0.0.4; charset=utf-8")]
        if path in ("/openapi.json", "/v2/openapi.json"):
            return 200, self._openapi_bytes(), None
        if path == "/v2":
            return 200, orjson.dumps({"name": "aicml", "version": __version__, "extensions": []}), None
        if path == "/router":
            if not self.auth.allows(self._header(scope, b"authorization")):
                return 401, _UNAUTHORIZED, [*_JSON, (b"www-authenticate", b"Bearer")]
            return 200, orjson.dumps(self.router_status()), None
        if path.startswith("/v2/models/"):
            rest = path[len("/v2/models/") :].split("/")
            name = rest[0]
            if name != self.name:
                return (
                    404,
                    _not_found(f"Unknown model {name!r}; this server serves {self.name!r}."),
                    None,
                )
            model = self.champion.model
            if len(rest) >= 3 and rest[1] == "versions":
                if model is None or rest[2] != model.version:
                    return (
                        404,
                        _not_found(f"Version {rest[2]!r} of {name!r} is not served here."),
                        None,
                    )
                rest = [name, *rest[3:]]
            if rest[1:] == ["ready"]:
                return (200 if ready else 503), orjson.dumps({"name": name, "ready": ready}), None
            if rest[1:] == [] and model is not None:
                return 200, orjson.dumps(self.model_metadata(model)), None
        return 404, _not_found(f"No route {path}."), None

    def model_metadata(self, model: ServedModel) -> dict[str, Any]:
        from aicml.serving.inputs import V2_NATIVE

        return {
            "name": model.name,
            "versions": [model.version],
            "platform": "mlflow",
            "inputs": [
                {"name": c.name, "datatype": V2_NATIVE[c.kind], "shape": [-1]} for c in model.schema.columns
            ],
            "outputs": [{"name": "predictions", "datatype": model.output_datatype, "shape": [-1]}],
        }

    def router_status(self) -> dict[str, Any]:
        champion, challenger = self.champion.model, self.challenger.model if self.challenger else None
        return {
            "model": self.name,
            "champion_version": champion.version if champion else None,
            "challenger_version": challenger.version if challenger else None,
            "router": self.router.snapshot() if self.router else None,
            "swaps": self.champion.swaps,
            "shed": self.shed,
        }

    def _openapi_bytes(self) -> bytes:
        model = self.champion.model
        version = model.version if model else None
        if self._openapi is None or version != self._openapi_version:
            schema = model.schema if model else None
            self._openapi = orjson.dumps(openapi_document(self.name, schema, self.auth.enabled))
            self._openapi_version = version
        return self._openapi

    async def _freeze(self, scope: Scope, receive: Receive, send: Send) -> int:
        """Stop sending traffic to the challenger once the controller has decided (body: {"action": ...})."""
        if self.control_auth is None and self.auth.enabled:
            return await self._error(
                send,
                InputError(
                    403,
                    "Rollout control is off on this server: start it with --control-token-file.",
                    code="PERMISSION_DENIED",
                ),
            )
        if self.control_auth is not None and not self.control_auth.allows(
            self._header(scope, b"authorization")
        ):
            return await self._error(
                send, InputError(401, "Missing or wrong control token.", code="UNAUTHENTICATED")
            )
        try:
            payload = parse_json(await self._body(scope, receive))
        except _TooLarge:
            return await self._error(send, self._too_large())
        except InputError as exc:
            return await self._error(send, exc)
        action = payload.get("action") if isinstance(payload, dict) else None
        if action not in ("promote", "rollback", "hold"):
            return await self._error(
                send, InputError(400, "'action' must be promote, rollback or hold.", field="action")
            )
        if self.router is None:
            return await self._error(send, InputError(404, "This server has no challenger.", field="router"))
        self.router.freeze(action)
        await self._send(send, 200, orjson.dumps(self.router_status()))
        return 200

    def _too_large(self) -> InputError:
        return InputError(
            413,
            f"The body is larger than {self.options.max_body_bytes} bytes; split the request.",
            field="body",
            code="REQUEST_TOO_LARGE",
        )

    async def _error(self, send: Send, error: InputError, request_id: str | None = None) -> int:
        headers = list(_JSON)
        if request_id is not None:
            headers.append((REQUEST_ID_HEADER, request_id.encode()))
        if error.status == 401:
            headers.append((b"www-authenticate", b"Bearer"))
        elif error.status == 503:
            headers.append((b"retry-after", b"1"))
        await self._send(send, error.status, orjson.dumps(error.body()), headers)
        return error.status

    # --- prediction -----------------------------------------------------------------------------------

    async def _predict_endpoint(
        self, scope: Scope, receive: Receive, send: Send, v2: bool, started: float
    ) -> int:
        if not self.auth.allows(self._header(scope, b"authorization")):
            return await self._error(
                send, InputError(401, "Missing or wrong bearer token.", code="UNAUTHENTICATED")
            )
        try:
            request_id = request_id_of(self._header(scope, REQUEST_ID_HEADER))
        except InputError as exc:
            return await self._error(send, exc)
        if self.in_flight >= self.options.max_in_flight:
            self.shed += 1
            return await self._error(
                send,
                InputError(503, "The server is at capacity; retry shortly.", code="SERVICE_UNAVAILABLE"),
                request_id,
            )
        self.in_flight += 1
        try:
            return await self._predict(scope, receive, send, v2, request_id, started)
        except _TooLarge:
            return await self._error(send, self._too_large(), request_id)
        except InputError as exc:
            return await self._error(send, exc, request_id)
        finally:
            self.in_flight -= 1

    async def _predict(
        self, scope: Scope, receive: Receive, send: Send, v2: bool, request_id: str, started: float
    ) -> int:
        if v2:
            name = scope["path"][len("/v2/models/") :].split("/")[0]
            if name != self.name:
                raise InputError(
                    404,
                    f"Unknown model {name!r}; this server serves {self.name!r}.",
                    field="name",
                    code="NOT_FOUND",
                )
        content_type = self._header(scope, b"content-type") or b"application/json"
        body = await self._body(scope, receive)
        arm: Arm = "champion"
        host = self.champion
        router = self.router
        if router is not None and self.challenger is not None and self.challenger.ready:
            key_header = router.plan.sticky_header.encode()
            arm = router.choose(self._header(scope, key_header))
            if arm == "challenger":
                host = self.challenger
        batcher = host.batcher
        if batcher is None:
            raise InputError(503, "The model is not loaded yet.", code="SERVICE_UNAVAILABLE")
        model = batcher.model
        predict_started = time.perf_counter()
        if content_type.startswith(b"text/csv") and not v2:
            batch = _csv_batch(body, model)
            v2_id, outputs = None, None
        elif content_type.startswith(b"application/json"):
            payload = parse_json(body)
            if v2:
                batch, v2_id, outputs = model.schema.parse_v2(payload)
            else:
                batch = model.schema.parse_mlflow(payload)
                v2_id, outputs = None, None
        else:
            raise InputError(
                415,
                f"Content type {content_type.decode(errors='replace')!r} is not supported; send "
                "application/json (or text/csv to /invocations).",
                field="content-type",
                code="UNSUPPORTED_MEDIA_TYPE",
            )
        headers = [*_JSON, (REQUEST_ID_HEADER, request_id.encode())]
        version = model.version
        try:
            try:
                predictions = await batcher.submit(batch)
            except InputError as exc:
                current = host.batcher
                if exc.status != 503 or current is None or current is batcher:
                    raise
                # The version was swapped between validation and submission: answer with the new one.
                version = current.model.version
                predictions = await current.submit(batch)
        except PredictionError as exc:
            if router is not None:
                router.record(arm, True, time.perf_counter() - predict_started)
            log.error("%s", exc)
            await self._send(
                send, 500, orjson.dumps({"error_code": "PREDICTION_FAILED", "message": str(exc)}), headers
            )
            if self.prediction_log is not None:
                self.prediction_log.record(
                    request_id,
                    version,
                    arm,
                    time.perf_counter() - started,
                    batch.columns,
                    batch.rows,
                    None,
                    True,
                )
            return 500
        if router is not None:
            router.record(arm, False, time.perf_counter() - predict_started)
            if arm == "champion" and self.challenger is not None and router.mirror():
                self._start_shadow(batch, predictions)
        BATCH_ROWS.labels(self.name).observe(batch.rows)
        if v2:
            # The response's "id" is the request's own, as the protocol says; the header is the log's id.
            body_out = self._v2_response(model, predictions, v2_id, outputs)
        else:
            body_out = _mlflow_response(predictions)
        await self._send(send, 200, body_out, headers)
        if self.prediction_log is not None:  # after the answer is on its way: costs the caller nothing
            self.prediction_log.record(
                request_id,
                version,
                arm,
                time.perf_counter() - started,
                batch.columns,
                batch.rows,
                predictions,
            )
        return 200

    def _v2_response(
        self, model: ServedModel, predictions: Any, request_id: str | None, outputs: list[str] | None
    ) -> bytes:
        values = to_jsonable(predictions)
        if outputs is not None and any(o != "predictions" for o in outputs):
            bad = next(o for o in outputs if o != "predictions")
            raise InputError(
                400, f"Unknown output {bad!r}; this model has output 'predictions'.", field="outputs"
            )
        shape = [len(values)] if isinstance(values, list) else [1]
        response: dict[str, Any] = {
            "model_name": model.name,
            "model_version": model.version,
            "outputs": [
                {"name": "predictions", "shape": shape, "datatype": model.output_datatype, "data": values}
            ],
        }
        if request_id is not None:
            response["id"] = request_id
        return orjson.dumps(response, option=_OPT)

    def _start_shadow(self, batch: Any, champion_predictions: Any) -> None:
        if len(self._shadow_tasks) >= self.options.max_in_flight:
            return  # shadow traffic is best effort: never let it pile up
        task = asyncio.get_running_loop().create_task(self._shadow(batch, champion_predictions))
        self._shadow_tasks.add(task)
        task.add_done_callback(self._shadow_tasks.discard)

    async def _shadow(self, batch: Any, champion_predictions: Any) -> None:
        assert self.challenger is not None and self.router is not None
        started = time.perf_counter()
        try:
            challenger_predictions = await asyncio.wait_for(
                self.challenger.predict(batch), timeout=self.options.shadow_timeout_s
            )
        except Exception as exc:  # the caller already has its answer; only the evidence records this
            self.router.record("challenger", True, time.perf_counter() - started)
            log.warning("Shadow request to the challenger failed: %s", exc)
            return
        self.router.record("challenger", False, time.perf_counter() - started)
        agreed = to_jsonable(challenger_predictions) == to_jsonable(champion_predictions)
        self.router.record_shadow(agreed)
        if not agreed:
            SHADOW_DISAGREEMENTS.labels(self.name).inc()
            log.info("Shadow disagreement on %d rows", batch.rows)


def _not_found(message: str) -> bytes:
    return orjson.dumps({"error_code": "NOT_FOUND", "message": message})


_UNAUTHORIZED = orjson.dumps({"error_code": "UNAUTHENTICATED", "message": "Missing or wrong bearer token."})
_USE_POST = orjson.dumps({"error_code": "METHOD_NOT_ALLOWED", "message": "Use POST."})
_USE_GET = orjson.dumps({"error_code": "METHOD_NOT_ALLOWED", "message": "Use GET."})
_GET_ROUTES = {"/ping", "/health", "/version", "/metrics", "/openapi.json", "/router"}
_V2_ROUTES = {"/v2", "/v2/health/live", "/v2/health/ready", "/v2/openapi.json"}


def _route_label(path: str, served: str) -> str:
    """The metrics label of a request's route: one of a fixed set, so that no caller can create label
    sets (and memory in every scraper) by inventing paths or model names."""
    if path in _GET_ROUTES or path in _V2_ROUTES:
        return path
    prefix = f"/v2/models/{served}"
    if path == prefix or path == f"{prefix}/ready":
        return path.replace(served, "{name}", 1)
    if path.startswith(f"{prefix}/versions/"):
        return "/v2/models/{name}/versions/{version}" + ("/ready" if path.endswith("/ready") else "")
    return "unmatched"


def _mlflow_response(predictions: Any) -> bytes:
    if isinstance(predictions, np.ndarray) and predictions.dtype.kind in "fiub":
        return orjson.dumps({"predictions": predictions}, option=_OPT)
    return orjson.dumps({"predictions": to_jsonable(predictions)}, option=_OPT)


def _csv_batch(body: bytes, model: ServedModel) -> Any:
    import io

    import pandas as pd

    try:
        frame = pd.read_csv(io.BytesIO(body))
    except Exception as exc:
        raise InputError(400, f"The body is not a CSV table: {exc}.", field="body") from None
    records = frame.astype(object).where(frame.notna(), None).to_dict(orient="split")
    return model.schema.parse_mlflow(
        {"dataframe_split": {"columns": [str(c) for c in records["columns"]], "data": records["data"]}}
    )
