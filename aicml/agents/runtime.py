"""Turn an ``AgentSpec`` into something the router can call, with its schemas compiled once.

Sync callables that do not block run inline on the router's event loop (the cheapest path, used by
rule agents); blocking ones (models, embeddings) run in a worker thread; HTTP-backed ones (LLM, remote
agents) are async.
"""

from __future__ import annotations

import asyncio
import importlib
import inspect
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from functools import partial
from typing import Any

from aicml.agents.builtin import build_rule
from aicml.agents.errors import AgentConfigurationError, MessageError
from aicml.agents.policy import AgentPolicy
from aicml.agents.spec import (
    AgentSpec,
    HttpImpl,
    LlmImpl,
    MlflowImpl,
    PythonImpl,
    RetrievalImpl,
    RuleImpl,
)

SyncFn = Callable[[dict[str, Any]], dict[str, Any]]
AsyncFn = Callable[[dict[str, Any]], Awaitable[dict[str, Any]]]


def _validator(schema: dict[str, Any]) -> Callable[[dict[str, Any]], None] | None:
    # The permissive default schema needs no check at all: skip it on the hot path.
    if schema in ({"type": "object"}, {}):
        return None
    from jsonschema import Draft202012Validator

    compiled = Draft202012Validator(schema)

    def check(payload: dict[str, Any]) -> None:
        error = next(iter(compiled.iter_errors(payload)), None)
        if error is not None:
            where = "/".join(str(p) for p in error.absolute_path) or "(root)"
            raise MessageError(f"at {where}: {error.message}")

    return check


@dataclass
class LoadedAgent:
    """A callable agent version: ``sync`` or ``async_`` is set; ``blocking`` sends ``sync`` to a thread."""

    spec: AgentSpec
    sync: SyncFn | None = None
    async_: AsyncFn | None = None
    blocking: bool = False
    check_input: Callable[[dict[str, Any]], None] | None = field(default=None, repr=False)
    check_output: Callable[[dict[str, Any]], None] | None = field(default=None, repr=False)

    async def call(self, payload: dict[str, Any]) -> dict[str, Any]:
        if self.async_ is not None:
            return await self.async_(payload)
        assert self.sync is not None
        if self.blocking:
            return await asyncio.to_thread(self.sync, payload)
        return self.sync(payload)

    def call_sync(self, payload: dict[str, Any]) -> dict[str, Any]:
        """Outside an event loop (health checks, CLI)."""
        if self.async_ is not None:
            return asyncio.run(_as_coroutine(self.async_(payload)))
        assert self.sync is not None
        return self.sync(payload)


async def _as_coroutine(awaitable: Awaitable[dict[str, Any]]) -> dict[str, Any]:
    return await awaitable


def _import(target: str) -> Callable[..., Any]:
    module, _, name = target.partition(":")
    try:
        return getattr(importlib.import_module(module), name)  # type: ignore[no-any-return]
    except (ImportError, AttributeError) as exc:
        raise AgentConfigurationError(f"Cannot import agent callable {target!r}: {exc}") from exc


def load_agent(spec: AgentSpec, policy: AgentPolicy | None = None) -> LoadedAgent:
    """Resolve the implementation; heavy models load here, once per version and process.

    With a ``policy`` (the service's), nothing is imported, loaded or contacted unless the operator allowed it.
    Model agents are always loaded from the registry with their checksum verified.
    """
    impl = spec.implementation
    if policy is not None:
        policy.check(spec)
    loaded = LoadedAgent(
        spec, check_input=_validator(spec.input_schema), check_output=_validator(spec.output_schema)
    )
    if isinstance(impl, RuleImpl):
        loaded.sync = build_rule(impl.rule, impl.config)
    elif isinstance(impl, PythonImpl):
        fn = _import(impl.target)
        bound = partial(fn, **impl.config) if impl.config else fn
        if inspect.iscoroutinefunction(fn):
            loaded.async_ = bound
        else:
            loaded.sync, loaded.blocking = bound, impl.blocking
    elif isinstance(impl, MlflowImpl):
        from aicml.agents.implementations import mlflow_agent

        loaded.sync, loaded.blocking = mlflow_agent(impl), True
    elif isinstance(impl, RetrievalImpl):
        from aicml.agents.implementations import retrieval_agent

        loaded.sync, loaded.blocking = retrieval_agent(impl), True
    elif isinstance(impl, LlmImpl):
        from aicml.agents.implementations import llm_agent

        loaded.async_ = llm_agent(impl)
    elif isinstance(impl, HttpImpl):
        from aicml.agents.implementations import http_agent

        loaded.async_ = http_agent(impl, spec.name, policy.token_for(impl.url) if policy else None)
    else:  # pragma: no cover - the discriminated union is exhaustive
        raise AgentConfigurationError(f"Unknown implementation kind {impl!r}")
    return loaded
