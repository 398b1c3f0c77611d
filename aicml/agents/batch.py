"""Batch coordination: run one coordination graph over many inputs (what the `agent-batch` flow does).

Pure functions of plain values; the Prefect tasks in ``tasks/agents.py`` wrap them. Outputs are written
once under a name derived from the inputs (graph + payloads fingerprint), atomically, so a rerun of the
same batch rewrites identical files and adds nothing.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
from collections import Counter
from pathlib import Path
from typing import Any

import orjson

from aicml.agents.errors import MessageError
from aicml.agents.graph import Coordination
from aicml.agents.messages import AgentMessage, AgentReply
from aicml.agents.router import Router
from aicml.durable import write_durably


def read_payloads(source: str | Path) -> list[dict[str, Any]]:
    """Payloads from a JSON-lines file (one object per line) or a JSON array; errors name the line."""
    path = Path(source)
    if not path.is_file():
        raise MessageError(f"Batch input {path} does not exist; give a JSON-lines file of payload objects.")
    text = path.read_text()
    if text.lstrip().startswith("["):
        items = json.loads(text)
        bad = next((i for i, item in enumerate(items) if not isinstance(item, dict)), None)
        if bad is not None:
            raise MessageError(f"{path}: item {bad} is not a JSON object")
        return list(items)
    payloads = []
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            item = orjson.loads(line)
        except orjson.JSONDecodeError as exc:
            raise MessageError(f"{path}:{number}: not JSON ({exc})") from None
        if not isinstance(item, dict):
            raise MessageError(f"{path}:{number}: expected a JSON object, got {type(item).__name__}")
        payloads.append(item)
    return payloads


def batch_fingerprint(coordination: Coordination, payloads: list[dict[str, Any]]) -> str:
    digest = hashlib.sha256(coordination.model_dump_json().encode())
    for payload in payloads:
        digest.update(orjson.dumps(payload, option=orjson.OPT_SORT_KEYS))
    return digest.hexdigest()[:16]


async def coordinate_many(
    router: Router,
    coordination: Coordination,
    payloads: list[dict[str, Any]],
    *,
    id_prefix: str,
    offset: int = 0,
    concurrency: int = 32,
    timeout_ms: float | None = None,
) -> list[AgentReply]:
    """Every payload through the router, ``concurrency`` at a time; correlation ids are stable per row."""
    gate = asyncio.Semaphore(concurrency)

    async def one(index: int, payload: dict[str, Any]) -> AgentReply:
        message = AgentMessage(
            id=f"{id_prefix}-{offset + index}",
            correlation_id=f"{id_prefix}-{offset + index}",
            sender="agent-batch",
            recipient=coordination.name,
            timeout_ms=timeout_ms,
            payload=payload,
        )
        async with gate:
            return await router.run(coordination, message)

    return list(await asyncio.gather(*(one(i, p) for i, p in enumerate(payloads))))


def write_replies(replies: list[AgentReply], path: Path) -> dict[str, int]:
    """Write replies as JSON lines atomically and durably (``aicml.durable``); return the count per outcome."""
    path.parent.mkdir(parents=True, exist_ok=True)
    lines = (
        orjson.dumps(
            reply.model_dump(mode="json", exclude={"id", "calls", "duration_ms", "trace_id"}),
            option=orjson.OPT_SORT_KEYS,
        )
        + b"\n"
        for reply in replies
    )
    write_durably(path, b"".join(lines))
    return dict(Counter(r.outcome.value for r in replies))
