"""Agents backed by something outside the router: an MLflow registry model, an embedding model, an
OpenAI-compatible chat endpoint, or another agent service over HTTP.

Each factory runs once per agent version and process (the catalog caches the result); heavy imports
happen inside the factories, never at module import.
"""

from __future__ import annotations

import asyncio
import os
import time
import weakref
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from aicml.agents.errors import AgentCallError, AgentConfigurationError, MessageError
from aicml.agents.messages import CURRENT_COORDINATION, AgentMessage, new_id
from aicml.agents.spec import HttpImpl, LlmImpl, MlflowImpl, RetrievalImpl

SyncFn = Callable[[dict[str, Any]], dict[str, Any]]
AsyncFn = Callable[[dict[str, Any]], Awaitable[dict[str, Any]]]


def _per_loop(factory: Callable[[], Any]) -> Callable[[], Any]:
    """One HTTP client per event loop: an httpx.AsyncClient must not outlive the loop it was used on
    (each ``asyncio.run`` of a batch task or CLI call has its own loop; the server has one)."""
    clients: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, Any] = weakref.WeakKeyDictionary()

    def get() -> Any:
        loop = asyncio.get_running_loop()
        client = clients.get(loop)
        if client is None:
            client = clients[loop] = factory()
        return client

    return get


def model_cache_dir() -> Path:
    """Where model agents' verified files are downloaded: ``<AIC_HOME>/agents/models``."""
    return Path(os.environ.get("AIC_HOME", ".aic")).resolve() / "agents" / "models"


def mlflow_agent(impl: MlflowImpl) -> SyncFn:
    """A pyfunc model: payload ``{"records": [{...}, ...]}`` or ``{"features": {...}}`` -> predictions.

    Only a registry URI is loaded, and only after its files hash to the checksum recorded at registration
    (the model server's check, ``aicml.registry.checksums.fetch_verified``).
    """
    import mlflow.pyfunc
    import pandas as pd

    from aicml.registry.checksums import fetch_verified, parse_model_uri, resolve_version
    from aicml.serving.smoke import align_to_signature

    ref = parse_model_uri(impl.model_uri)
    path = fetch_verified(ref.name, resolve_version(ref), model_cache_dir())
    model = mlflow.pyfunc.load_model(str(path))

    def run(payload: dict[str, Any]) -> dict[str, Any]:
        if "records" in payload:
            records = payload["records"]
        elif "features" in payload:
            records = [payload["features"]]
        else:
            raise MessageError("a model agent needs `records` (a list of rows) or `features` (one row)")
        if not isinstance(records, list) or not all(isinstance(r, dict) for r in records):
            raise MessageError("`records` must be a list of objects (column -> value)")
        frame = align_to_signature(model, pd.DataFrame.from_records(records))
        predictions = model.predict(frame)
        values = predictions.tolist() if hasattr(predictions, "tolist") else list(predictions)
        return {impl.output_field: values}

    return run


def retrieval_agent(impl: RetrievalImpl) -> SyncFn:
    """Cosine nearest documents under the bundled all-MiniLM-L6-v2 encoder (``aicml.models.embeddings``)."""
    import numpy as np

    from aicml.models.embeddings import load_bundled_encoder

    encoder = load_bundled_encoder()
    corpus = encoder.encode(impl.documents, normalize_embeddings=True, convert_to_numpy=True)

    def run(payload: dict[str, Any]) -> dict[str, Any]:
        query = payload.get(impl.query_field)
        if not isinstance(query, str) or not query.strip():
            raise MessageError(f"a retrieval agent needs text in `{impl.query_field}`")
        vector = encoder.encode([query], normalize_embeddings=True, convert_to_numpy=True)[0]
        scores = corpus @ vector
        order = np.argsort(-scores)[: impl.top_k]
        return {
            "document": impl.documents[order[0]],
            "documents": [impl.documents[i] for i in order],
            "scores": [round(float(scores[i]), 6) for i in order],
        }

    return run


def llm_agent(impl: LlmImpl) -> AsyncFn:
    """POST /chat/completions to an OpenAI-compatible server; answer text and token usage back."""
    import httpx

    base_url, model, api_key, timeout = impl.base_url, impl.model, None, 30.0
    if impl.block:
        from blocks.llm import LlmEndpoint

        block: Any = LlmEndpoint.load(impl.block, _sync=True)  # type: ignore[call-arg]
        base_url = block.base_url
        model = impl.model or block.model
        api_key = block.api_key.get_secret_value() if block.api_key else None
        timeout = block.timeout_s
    if not base_url or not model:
        raise AgentConfigurationError(
            "An LLM agent needs an endpoint and a model: name a saved LlmEndpoint block (`block`), "
            "or give `base_url` and `model`."
        )
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    client = _per_loop(
        lambda: httpx.AsyncClient(base_url=base_url.rstrip("/"), headers=headers, timeout=timeout)
    )

    async def run(payload: dict[str, Any]) -> dict[str, Any]:
        text = payload.get(impl.prompt_field)
        if not isinstance(text, str):
            raise MessageError(f"an LLM agent needs text in `{impl.prompt_field}`")
        body = {
            "model": model,
            "messages": [
                {"role": "system", "content": impl.system_prompt},
                {"role": "user", "content": text},
            ],
            "max_tokens": impl.max_tokens,
        }
        response = await client().post("/chat/completions", json=body)
        if response.status_code >= 400:
            raise AgentCallError("llm", f"endpoint answered {response.status_code}: {response.text[:300]}")
        data = response.json()
        try:
            answer = data["choices"][0]["message"]["content"]
        except (KeyError, IndexError, TypeError) as exc:
            raise AgentCallError("llm", f"not a chat completion: {str(data)[:300]}") from exc
        return {"answer": answer, "model": data.get("model", model), "usage": data.get("usage", {})}

    return run


def http_agent(impl: HttpImpl, name: str, token: str | None = None) -> AsyncFn:
    """Forward the payload as an ``AgentMessage`` to another agent service and return its reply payload.

    ``token``: the operator's bearer token for that URL (``AgentPolicy.token_for``); a definition never
    chooses what is sent.
    """
    import httpx

    headers = {"Authorization": f"Bearer {token}"} if token else {}
    client = _per_loop(lambda: httpx.AsyncClient(headers=headers, timeout=None))  # wait_for bounds each call

    async def run(payload: dict[str, Any]) -> dict[str, Any]:
        correlation_id, deadline = CURRENT_COORDINATION.get((new_id(), None))
        remaining_ms = None if deadline is None else max(1.0, (deadline - time.monotonic()) * 1000.0)
        message = AgentMessage(
            sender=f"router:{name}", correlation_id=correlation_id, timeout_ms=remaining_ms, payload=payload
        )
        response = await client().post(impl.url, content=message.model_dump_json())
        try:
            body = response.json()
        except ValueError:
            body = {}
        if response.status_code >= 400 or body.get("outcome") not in ("success", "partial"):
            detail = body.get("errors") or body.get("error") or response.text[:300]
            raise AgentCallError(name, f"remote agent answered {response.status_code}: {detail}")
        return dict(body.get("payload", {}))

    return run
