"""Agent callables for tests: slow, flaky, failing and misbehaving agents (importable as `testagents:fn`)."""

from __future__ import annotations

import asyncio
import threading
import time
from collections import Counter
from typing import Any

_calls: Counter[str] = Counter()
_lock = threading.Lock()


async def slow(payload: dict[str, Any], delay: float = 0.5) -> dict[str, Any]:
    await asyncio.sleep(delay)
    return {"slept": delay}


def blocking_sleep(payload: dict[str, Any], delay: float = 0.05) -> dict[str, Any]:
    time.sleep(delay)
    return {"slept": delay}


def flaky(payload: dict[str, Any], failures: int = 2) -> dict[str, Any]:
    """Fails ``failures`` times for each payload `key`, then answers."""
    key = str(payload.get("key"))
    with _lock:
        _calls[key] += 1
        n = _calls[key]
    if n <= failures:
        raise ConnectionError(f"transient failure {n} for {key}")
    return {"answer": "ok", "attempt": n}


def boom(payload: dict[str, Any]) -> dict[str, Any]:
    raise RuntimeError("this agent always fails")


def wrong_shape(payload: dict[str, Any]) -> dict[str, Any]:
    return {"score": "not a number"}


def double(payload: dict[str, Any]) -> dict[str, Any]:
    return {"value": payload["value"] * 2}


_inside = 0
peak_inside = 0


def counted(payload: dict[str, Any], delay: float = 0.05) -> dict[str, Any]:
    """Counts how many calls run at once (``peak_inside``), to check concurrency leases."""
    global _inside, peak_inside
    with _lock:
        _inside += 1
        peak_inside = max(peak_inside, _inside)
    try:
        time.sleep(delay)
    finally:
        with _lock:
            _inside -= 1
    return {"done": True}
