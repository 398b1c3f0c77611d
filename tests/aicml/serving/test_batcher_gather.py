"""The micro-batcher's gathering: requests of the clients a call answered join the next call when they come
back within the time a call takes; a lone client never waits."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import numpy as np

from aicml.serving.inputs import Batch
from aicml.serving.runtime import MicroBatcher


class SlowModel:
    """Stands in for a ServedModel: each call costs ``cost_s`` and answers row numbers."""

    name = "gather-test"

    def __init__(self, cost_s: float) -> None:
        self.cost_s = cost_s
        self.calls: list[int] = []

    def predict(self, batch: Batch) -> Any:
        self.calls.append(batch.rows)
        time.sleep(self.cost_s)  # inline on the loop, as a scikit-learn predict is
        return batch.columns["x"].copy()


def one(value: float) -> Batch:
    return Batch({"x": np.array([value])}, 1)


async def scenario(max_gather_s: float) -> tuple[SlowModel, MicroBatcher, list[int]]:
    model = SlowModel(cost_s=0.03)
    batcher = MicroBatcher(model, max_gather_s=max_gather_s)  # type: ignore[arg-type]
    batcher.start()
    gathers: list[int] = []
    gather = batcher._gather

    async def counted(loop: asyncio.AbstractEventLoop, wanted: int) -> None:
        gathers.append(wanted)
        await gather(loop, wanted)

    batcher._gather = counted  # type: ignore[method-assign]

    async def client(value: float, delay: float) -> Any:
        await asyncio.sleep(delay)
        return await batcher.submit(one(value))

    # Eight clients at once: one call.
    assert [a.tolist() for a in await asyncio.gather(*(client(i, 0) for i in range(8)))] == [
        [float(i)] for i in range(8)
    ]
    # The same eight, four of them 2 ms late (well within the 30 ms a call takes): still one call.
    answers = await asyncio.gather(*(client(i, 0.002 if i % 2 else 0) for i in range(8)))
    assert [a.tolist() for a in answers] == [[float(i)] for i in range(8)]
    # Then one client alone: it waits once (the previous call answered eight), then never again.
    for value in (100.0, 101.0, 102.0):
        assert (await client(value, 0)).tolist() == [value]
    await batcher.close(grace=1)
    return model, batcher, gathers


def test_late_requests_join_the_call_and_a_lone_client_waits_once() -> None:
    model, _, gathers = asyncio.run(scenario(max_gather_s=0.05))
    assert model.calls == [8, 8, 1, 1, 1]
    assert gathers == [7, 7]  # before the second call (four queued of eight) and before the first lone one


def test_the_wait_is_capped() -> None:
    started = time.perf_counter()
    model, _, gathers = asyncio.run(scenario(max_gather_s=0.0))
    # No time to gather: the late four make a call of their own.
    assert model.calls[:3] == [8, 4, 4]
    assert time.perf_counter() - started < 5
    assert gathers
