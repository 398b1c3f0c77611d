"""A tag concurrency limit on the real Prefect server: never more holders than the limit at once."""

from __future__ import annotations

import threading
import time
import uuid

from prefect import flow, task
from prefect.client.orchestration import get_client
from prefect.task_runners import ThreadPoolTaskRunner

from aicml.stack.limits import DEFAULT_LIMITS, ensure_concurrency_limits

_lock = threading.Lock()
_running = {"now": 0, "peak": 0}


@task
def occupy_slot(seconds: float) -> None:
    with _lock:
        _running["now"] += 1
        _running["peak"] = max(_running["peak"], _running["now"])
    time.sleep(seconds)
    with _lock:
        _running["now"] -= 1


@flow(name="aic-test-limits", task_runner=ThreadPoolTaskRunner(max_workers=8))
def contend(tag: str, tasks: int) -> None:
    futures = [occupy_slot.with_options(tags={tag}).submit(1.0) for _ in range(tasks)]
    for future in futures:
        future.result()


def test_never_more_than_the_limit_run_at_once(stack) -> None:
    import asyncio

    async def limit_of(tag: str) -> int:
        async with get_client() as client:
            return int((await client.read_concurrency_limit_by_tag(tag)).concurrency_limit)

    assert asyncio.run(limit_of("training-slot")) == DEFAULT_LIMITS["training-slot"] == 4
    tag = f"slot-{uuid.uuid4().hex[:6]}"
    ensure_concurrency_limits(stack.settings.prefect_url, {tag: 2})
    _running.update(now=0, peak=0)
    contend(tag, 8)
    assert _running["peak"] == 2, f"peak concurrency {_running['peak']} with a limit of 2 and 8 contenders"
