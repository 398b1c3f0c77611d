"""Which version of an agent takes a call: traffic weights per version, sticky per correlation id.

A small interface on purpose: ``VersionRouter.choose(agent, key)``. The agent catalog feeds it the weights
of the running rollout (``agent_db.agent_rollouts``: a canary schedule such as 5 -> 25 -> 50 -> 100 %);
the model server's traffic router in ``aicml.serving`` can implement the same protocol so both roll out
through one piece of machinery.
"""

from __future__ import annotations

import zlib
from collections.abc import Mapping
from typing import Protocol


class VersionRouter(Protocol):
    """Picks a version of ``agent`` for the request identified by ``key``."""

    def choose(self, agent: str, key: str) -> str | None: ...

    def set_weights(self, agent: str, weights: Mapping[str, float]) -> None: ...


class WeightedVersionRouter:
    """Deterministic weighted choice: the same key always lands on the same version at given weights.

    Hashing the correlation id (rather than drawing at random) keeps every call of one coordination, and
    its retries, on one version, and makes canary splits reproducible in tests.
    """

    def __init__(self, weights: Mapping[str, Mapping[str, float]] | None = None) -> None:
        self._tables: dict[str, tuple[list[float], list[str]]] = {}
        for agent, table in (weights or {}).items():
            self.set_weights(agent, table)

    def set_weights(self, agent: str, weights: Mapping[str, float]) -> None:
        items = [(v, float(w)) for v, w in sorted(weights.items()) if w > 0]
        if not items:
            self._tables.pop(agent, None)
            return
        total = sum(w for _, w in items)
        bounds, running = [], 0.0
        for _, w in items:
            running += w / total
            bounds.append(running)
        bounds[-1] = 1.0
        self._tables[agent] = (bounds, [v for v, _ in items])

    def weights(self, agent: str) -> dict[str, float]:
        bounds, versions = self._tables.get(agent, ([], []))
        previous, out = 0.0, {}
        for bound, version in zip(bounds, versions, strict=True):
            out[version] = round((bound - previous) * 100, 6)
            previous = bound
        return out

    def choose(self, agent: str, key: str) -> str | None:
        table = self._tables.get(agent)
        if table is None:
            return None
        bounds, versions = table
        if len(versions) == 1:
            return versions[0]
        point = (zlib.crc32(key.encode()) & 0xFFFFFFFF) / 2**32
        for bound, version in zip(bounds, versions, strict=True):
            if point < bound:
                return version
        return versions[-1]
