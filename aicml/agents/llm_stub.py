"""A small OpenAI-compatible chat server with deterministic answers, for tests and the offline demo.

It speaks the protocol (``POST /v1/chat/completions``, ``GET /v1/models``) so an LLM agent cannot tell it
from vLLM or OpenAI; the answer is derived from the prompt, so runs are reproducible.
"""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

import orjson
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

STUB_MODEL = "aic-stub-chat"


def _json(body: object, status: int = 200) -> Response:
    return Response(orjson.dumps(body), status_code=status, media_type="application/json")


def stub_app(api_key: str | None = None) -> Starlette:
    async def models(request: Request) -> Response:
        return _json({"object": "list", "data": [{"id": STUB_MODEL, "object": "model", "owned_by": "aic"}]})

    async def chat(request: Request) -> Response:
        if api_key and request.headers.get("authorization") != f"Bearer {api_key}":
            return _json({"error": {"message": "invalid api key", "type": "invalid_request_error"}}, 401)
        body = orjson.loads(await request.body())
        messages = body.get("messages")
        if not isinstance(messages, list) or not messages:
            return _json({"error": {"message": "messages is required", "type": "invalid_request_error"}}, 400)
        user = next((m.get("content", "") for m in reversed(messages) if m.get("role") == "user"), "")
        words = str(user).split()
        limit = int(body.get("max_tokens") or 256)
        answer = " ".join(["Draft reply:", *words[: max(1, min(limit, 24))]])
        prompt_tokens = sum(len(str(m.get("content", "")).split()) for m in messages)
        return _json(
            {
                "id": f"chatcmpl-{abs(hash(user)) % 10**12}",
                "object": "chat.completion",
                "created": int(time.time()),
                "model": body.get("model", STUB_MODEL),
                "choices": [
                    {"index": 0, "message": {"role": "assistant", "content": answer}, "finish_reason": "stop"}
                ],
                "usage": {
                    "prompt_tokens": prompt_tokens,
                    "completion_tokens": len(answer.split()),
                    "total_tokens": prompt_tokens + len(answer.split()),
                },
            }
        )

    return Starlette(
        routes=[
            Route("/v1/models", models, methods=["GET"]),
            Route("/v1/chat/completions", chat, methods=["POST"]),
        ]
    )


@contextmanager
def serve_stub_llm(api_key: str | None = None) -> Iterator[str]:
    """Run the stub on a free loopback port in a thread; yield its base URL (``http://127.0.0.1:P/v1``)."""
    import uvicorn

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = int(sock.getsockname()[1])
    server = uvicorn.Server(
        uvicorn.Config(stub_app(api_key), host="127.0.0.1", port=port, log_level="warning", lifespan="off")
    )
    thread = threading.Thread(target=server.run, name="stub-llm", daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            raise RuntimeError("the stub LLM server did not start")
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{port}/v1"
    finally:
        server.should_exit = True
        thread.join(10)
