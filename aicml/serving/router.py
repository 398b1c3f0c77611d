"""Traffic management between a champion and a challenger: canary steps, sticky A/B, shadow mirroring.

Pure and synchronous: the server asks ``choose`` per request and reports each outcome with ``record``;
tests drive the same object with simulated traffic. Assignment uses a seeded generator (canary, shadow)
or a stable hash of the request key (A/B), so a user keeps their arm across requests and processes.
"""

from __future__ import annotations

import random
import zlib
from dataclasses import asdict, dataclass, field
from typing import Literal

from aicml.errors import ConfigurationError

Arm = Literal["champion", "challenger"]
Mode = Literal["canary", "ab", "shadow"]


@dataclass(frozen=True)
class RolloutPlan:
    """How traffic is split while a challenger is tried."""

    mode: Mode = "canary"
    steps: tuple[float, ...] = (0.05, 0.25, 0.5)  # canary: the challenger's share at each step
    step_requests: int = 500  # canary: requests seen at a step before moving to the next
    ab_share: float = 0.5  # A/B: share of request keys assigned to the challenger
    sticky_header: str = "x-request-key"  # A/B: header whose value pins a caller to an arm
    shadow_fraction: float = 0.1  # shadow: share of requests mirrored to the challenger
    seed: int = 0

    def __post_init__(self) -> None:
        if self.mode not in ("canary", "ab", "shadow"):
            raise ConfigurationError(f"Unknown rollout mode {self.mode!r}; use canary, ab or shadow.")
        if (
            not self.steps
            or any(not 0 < s <= 1 for s in self.steps)
            or list(self.steps) != sorted(self.steps)
        ):
            raise ConfigurationError(f"Canary steps {self.steps} must be increasing shares in (0, 1].")
        if self.step_requests < 1:
            raise ConfigurationError("step_requests must be at least 1.")
        for name in ("ab_share", "shadow_fraction"):
            if not 0 <= getattr(self, name) <= 1:
                raise ConfigurationError(f"{name} must be between 0 and 1.")


@dataclass
class ArmStats:
    """Outcomes seen on one arm: requests, server errors, requests slower than the latency objective."""

    requests: int = 0
    errors: int = 0
    slow: int = 0
    latency_sum: float = 0.0

    def add(self, error: bool, latency_s: float, slow_after_s: float) -> None:
        self.requests += 1
        self.errors += error
        self.slow += latency_s > slow_after_s
        self.latency_sum += latency_s

    @property
    def error_rate(self) -> float:
        return self.errors / self.requests if self.requests else 0.0


@dataclass
class TrafficRouter:
    """Chooses the arm of each request and keeps the evidence the rollout decision reads."""

    plan: RolloutPlan
    slow_after_s: float = 0.05  # a request slower than this counts against the latency objective
    stats: dict[str, ArmStats] = field(
        default_factory=lambda: {"champion": ArmStats(), "challenger": ArmStats()}
    )
    step: int = 0
    at_step: int = 0
    frozen: str | None = None  # set once a decision is reached: all traffic goes to the champion
    shadow_disagreements: int = 0
    shadow_compared: int = 0

    def __post_init__(self) -> None:
        self._rng = random.Random(self.plan.seed)

    @property
    def challenger_share(self) -> float:
        if self.frozen is not None:
            return 0.0
        if self.plan.mode == "canary":
            return self.plan.steps[self.step]
        if self.plan.mode == "ab":
            return self.plan.ab_share
        return 0.0

    def choose(self, key: str | bytes | None = None) -> Arm:
        """The arm that answers this request."""
        if self.frozen is not None or self.plan.mode == "shadow":
            return "champion"
        if self.plan.mode == "ab" and key:
            raw = key.encode() if isinstance(key, str) else key
            bucket = zlib.crc32(raw) / 2**32  # stable across processes, unlike hash()
            return "challenger" if bucket < self.plan.ab_share else "champion"
        return "challenger" if self._rng.random() < self.challenger_share else "champion"

    def mirror(self) -> bool:
        """Whether this (champion-answered) request is also sent to the challenger in the background."""
        return (
            self.frozen is None
            and self.plan.mode == "shadow"
            and self._rng.random() < self.plan.shadow_fraction
        )

    def record(self, arm: Arm, error: bool, latency_s: float) -> None:
        self.stats[arm].add(error, latency_s, self.slow_after_s)
        if self.plan.mode == "canary" and self.frozen is None:
            self.at_step += 1
            if self.at_step >= self.plan.step_requests and self.step < len(self.plan.steps) - 1:
                self.step += 1
                self.at_step = 0

    def record_shadow(self, agreed: bool) -> None:
        self.shadow_compared += 1
        self.shadow_disagreements += not agreed

    def freeze(self, action: str) -> None:
        self.frozen = action

    def snapshot(self) -> dict[str, object]:
        return {
            "mode": self.plan.mode,
            "step": self.step,
            "challenger_share": self.challenger_share,
            "frozen": self.frozen,
            "slow_after_s": self.slow_after_s,
            "arms": {arm: asdict(stats) for arm, stats in self.stats.items()},
            "shadow": {"compared": self.shadow_compared, "disagreements": self.shadow_disagreements},
        }
