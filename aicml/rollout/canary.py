"""The rollout machinery shared by the model server and the agent router: how traffic is split between a
champion and a challenger (canary steps, sticky A/B, shadow), the evidence each arm collects, the sequential
decision (promote, hold, roll back) and the audit record a decision leaves.

Pure and synchronous, no MLflow or Prefect import: the model server asks ``TrafficRouter.choose`` per request
and reports outcomes with ``record``; the agent router keeps one ``RolloutProgress`` per rollout in agent_db
and moves it with ``advance_progress``. Both decide with ``decide``. Applying a decision (MLflow aliases,
agent lifecycle transitions) belongs to the caller: ``aicml.rollout.aliases`` and ``aicml.rollout.agents``;
the record a decision leaves is ``aicml.rollout.audit``.

The decision is a mixture sequential probability ratio test (mSPRT, Johari et al., "Always valid
inference") per objective: with a normal mixture N(0, tau^2) over the difference, the likelihood ratio

    Lambda_n = sqrt(V / (V + tau^2)) * exp(tau^2 * d^2 / (2 V (V + tau^2)))

(d the observed difference of rates, V its variance) may be checked after every request, and the chance
that it ever crosses 1/alpha while the arms are truly equal is at most alpha. The two tests (server errors,
requests slower than the latency objective) share alpha (Bonferroni), so the chance of any false promote or
roll-back is bounded by ``alpha`` overall. A challenger not told apart within ``max_requests`` is held.
"""

from __future__ import annotations

import math
import random
import zlib
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

from aicml.errors import ConfigurationError

Arm = Literal["champion", "challenger"]
Mode = Literal["canary", "ab", "shadow"]
Action = Literal["promote", "hold", "rollback", "continue"]
ARMS: tuple[Arm, Arm] = ("champion", "challenger")


def bucket(key: str | bytes) -> float:
    """A request key's place in [0, 1): stable across processes and replicas, unlike Python's salted hash()."""
    raw = key.encode() if isinstance(key, str) else key
    return zlib.crc32(raw) / 2**32


def sticky_arm(share: float, key: str | bytes) -> Arm:
    """The arm of ``key`` when the challenger takes ``share``; a key stays on the challenger as the share grows."""
    return "challenger" if bucket(key) < share else "champion"


# --- the plan --------------------------------------------------------------------------------------------
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

    def share(self, step: int) -> float:
        """The challenger's share of traffic at canary step ``step`` (A/B: the fixed share; shadow: none)."""
        if self.mode == "canary":
            return self.steps[min(step, len(self.steps) - 1)]
        return self.ab_share if self.mode == "ab" else 0.0

    def advance(self, step: int, at_step: int, requests: int = 1) -> tuple[int, int]:
        """(step, requests seen at it) after ``requests`` more: one step up once a step has seen its quota.

        At most one step per call, so a batch of outcomes reported late never skips a share nobody saw.
        """
        if self.mode != "canary":
            return step, at_step
        at_step += requests
        if at_step >= self.step_requests and step < len(self.steps) - 1:
            return step + 1, 0
        return step, at_step


# --- the evidence ----------------------------------------------------------------------------------------
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

    def merge(self, other: ArmStats) -> None:
        self.requests += other.requests
        self.errors += other.errors
        self.slow += other.slow
        self.latency_sum += other.latency_sum

    @classmethod
    def from_dict(cls, data: dict[str, Any] | None) -> ArmStats:
        data = data or {}
        return cls(
            int(data.get("requests", 0)),
            int(data.get("errors", 0)),
            int(data.get("slow", 0)),
            float(data.get("latency_sum", 0.0)),
        )

    @property
    def error_rate(self) -> float:
        return self.errors / self.requests if self.requests else 0.0


@dataclass
class TrafficRouter:
    """Chooses the arm of each request and keeps the evidence the rollout decision reads (the model server)."""

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
        return 0.0 if self.frozen is not None else self.plan.share(self.step)

    def choose(self, key: str | bytes | None = None) -> Arm:
        """The arm that answers this request."""
        if self.frozen is not None or self.plan.mode == "shadow":
            return "champion"
        if self.plan.mode == "ab" and key:
            return sticky_arm(self.plan.ab_share, key)
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
        if self.frozen is None:
            self.step, self.at_step = self.plan.advance(self.step, self.at_step)

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


# --- the decision ----------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Objectives:
    """What the challenger is judged on, and how sure the decision must be."""

    alpha: float = 0.05  # bound on the probability of any false promote or roll-back
    tau: float = 0.05  # scale of differences the test is most sensitive to (rates, 0..1)
    min_requests: int = 100  # per arm, before the normal approximation is trusted
    max_requests: int = 5000  # challenger requests after which an undecided rollout is held
    max_error_rate: float = 1.0  # absolute ceiling: a challenger above it is rolled back at once

    def __post_init__(self) -> None:
        if (
            not 0 < self.alpha < 1
            or self.tau <= 0
            or self.min_requests < 1
            or self.max_requests < self.min_requests
        ):
            raise ConfigurationError(
                "Objectives need 0 < alpha < 1, tau > 0 and 1 <= min_requests <= max_requests."
            )


@dataclass(frozen=True)
class TestResult:
    """One mSPRT: the observed difference (challenger minus champion) and the evidence against 'equal'."""

    metric: str
    champion_rate: float
    challenger_rate: float
    difference: float
    log_likelihood_ratio: float
    threshold: float

    @property
    def significant(self) -> bool:
        return self.log_likelihood_ratio >= self.threshold


@dataclass(frozen=True)
class Decision:
    """What to do with the challenger, why, and the numbers behind it (the audit record's evidence)."""

    action: Action
    reason: str
    champion_requests: int
    challenger_requests: int
    tests: tuple[TestResult, ...]

    @property
    def final(self) -> bool:
        return self.action != "continue"

    def evidence(self) -> dict[str, object]:
        return {
            "champion_requests": self.champion_requests,
            "challenger_requests": self.challenger_requests,
            "tests": [{**asdict(t), "significant": t.significant} for t in self.tests],
        }


def msprt(
    metric: str,
    champion_hits: int,
    champion_n: int,
    challenger_hits: int,
    challenger_n: int,
    tau: float,
    alpha: float,
) -> TestResult:
    """The mixture SPRT of two Bernoulli rates; variance from smoothed rates so zero counts stay finite."""
    p_a = (champion_hits + 0.5) / (champion_n + 1)
    p_b = (challenger_hits + 0.5) / (challenger_n + 1)
    variance = p_a * (1 - p_a) / max(champion_n, 1) + p_b * (1 - p_b) / max(challenger_n, 1)
    difference = challenger_hits / max(challenger_n, 1) - champion_hits / max(champion_n, 1)
    t2 = tau * tau
    log_lr = 0.5 * math.log(variance / (variance + t2)) + t2 * difference * difference / (
        2 * variance * (variance + t2)
    )
    return TestResult(
        metric,
        champion_hits / max(champion_n, 1),
        challenger_hits / max(challenger_n, 1),
        difference,
        log_lr,
        math.log(1 / alpha),
    )


def decide(champion: ArmStats, challenger: ArmStats, objectives: Objectives | None = None) -> Decision:
    """Promote, roll back, hold, or keep collecting (``continue``)."""
    o = objectives or Objectives()
    share = o.alpha / 2  # two tests: errors and latency
    errors = msprt(
        "error_rate", champion.errors, champion.requests, challenger.errors, challenger.requests, o.tau, share
    )
    slow = msprt(
        "slow_rate", champion.slow, champion.requests, challenger.slow, challenger.requests, o.tau, share
    )
    tests = (errors, slow)

    def make(action: Action, reason: str) -> Decision:
        return Decision(action, reason, champion.requests, challenger.requests, tests)

    if challenger.requests >= o.min_requests and challenger.error_rate > o.max_error_rate:
        return make(
            "rollback",
            f"The challenger's error rate {challenger.error_rate:.3f} is above the ceiling {o.max_error_rate}.",
        )
    if champion.requests < o.min_requests or challenger.requests < o.min_requests:
        return make(
            "continue", f"Collecting evidence: at least {o.min_requests} requests per arm are needed."
        )
    worse = [t for t in tests if t.significant and t.difference > 0]
    if worse:
        t = worse[0]
        return make(
            "rollback",
            f"The challenger is worse on {t.metric}: {t.challenger_rate:.4f} against the champion's "
            f"{t.champion_rate:.4f} (log LR {t.log_likelihood_ratio:.1f} >= {t.threshold:.1f}).",
        )
    better = [t for t in tests if t.significant and t.difference < 0]
    if better:
        t = better[0]
        return make(
            "promote",
            f"The challenger is better on {t.metric}: {t.challenger_rate:.4f} against the champion's "
            f"{t.champion_rate:.4f} (log LR {t.log_likelihood_ratio:.1f} >= {t.threshold:.1f}), and not worse "
            "on the other objective.",
        )
    if challenger.requests >= o.max_requests:
        return make(
            "hold",
            f"No difference shown after {challenger.requests} challenger requests "
            f"(error rates {errors.challenger_rate:.4f} vs {errors.champion_rate:.4f}); the champion stays.",
        )
    return make("continue", "No significant difference yet.")


# --- a rollout's state where it is kept outside one process (agent_db) -----------------------------------
@dataclass
class RolloutProgress:
    """How far a canary has gone and what it has shown: what replicas share through a database."""

    step: int = 0
    at_step: int = 0
    arms: dict[str, ArmStats] = field(
        default_factory=lambda: {"champion": ArmStats(), "challenger": ArmStats()}
    )

    def as_dict(self) -> dict[str, Any]:
        return {
            "step": self.step,
            "at_step": self.at_step,
            "arms": {arm: asdict(s) for arm, s in self.arms.items()},
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any] | None) -> RolloutProgress:
        data = data or {}
        arms = data.get("arms") or {}
        return cls(
            int(data.get("step", 0)),
            int(data.get("at_step", 0)),
            {arm: ArmStats.from_dict(arms.get(arm)) for arm in ARMS},
        )


def advance_progress(
    progress: RolloutProgress,
    plan: RolloutPlan,
    objectives: Objectives,
    outcomes: dict[str, ArmStats],
) -> Decision:
    """Add outcomes reported by one replica, move the canary step as ``TrafficRouter.record`` would, decide.

    ``progress`` is changed in place; the caller stores it with the decision (and applies a final one).
    """
    seen = 0
    for arm in ARMS:
        delta = outcomes.get(arm)
        if delta is not None:
            progress.arms[arm].merge(delta)
            seen += delta.requests
    if seen:
        progress.step, progress.at_step = plan.advance(progress.step, progress.at_step, seen)
    return decide(progress.arms["champion"], progress.arms["challenger"], objectives)
