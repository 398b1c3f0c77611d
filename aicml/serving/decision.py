"""The rollout decision: promote, hold or roll back a challenger from live evidence, by a sequential test.

Two rates are compared between the arms: server errors, and requests slower than the latency objective.
Each comparison is a mixture sequential probability ratio test (mSPRT, Johari et al., "Always valid
inference"): with a normal mixture N(0, tau^2) over the difference, the likelihood ratio

    Lambda_n = sqrt(V / (V + tau^2)) * exp(tau^2 * d^2 / (2 V (V + tau^2)))

(d the observed difference of rates, V its variance) may be checked after every request, and the chance
that it ever crosses 1/alpha while the arms are truly equal is at most alpha. The two tests share alpha
(Bonferroni), so the chance of any false promote or roll-back is bounded by ``alpha`` overall. A challenger
that is not told apart within ``max_requests`` is held: the champion stays, nothing moves.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Literal

from aicml.errors import ConfigurationError
from aicml.serving.router import ArmStats

Action = Literal["promote", "hold", "rollback", "continue"]


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
