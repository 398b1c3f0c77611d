"""The router and the sequential decision, driven by seeded simulated traffic against two known models."""

from __future__ import annotations

import random

import pytest

from aicml.errors import ConfigurationError
from aicml.rollout.canary import Decision, Objectives, RolloutPlan, TrafficRouter, decide

BUDGET = 40_000  # total requests a rollout may take before the test calls it unbounded


def simulate(
    champion_error: float,
    challenger_error: float,
    seed: int,
    plan: RolloutPlan | None = None,
    challenger_slow: float = 0.01,
    objectives: Objectives | None = None,
) -> tuple[Decision, int, TrafficRouter]:
    """Send requests until the decision is final; each arm fails and is slow at its known rates."""
    rng = random.Random(seed)
    router = TrafficRouter(plan or RolloutPlan(seed=seed), slow_after_s=0.05)
    rates = {"champion": (champion_error, 0.01), "challenger": (challenger_error, challenger_slow)}
    for sent in range(1, BUDGET + 1):
        arm = router.choose(f"user-{rng.randrange(10_000)}")
        error_rate, slow_rate = rates[arm]
        latency = 0.2 if rng.random() < slow_rate else 0.002
        router.record(arm, rng.random() < error_rate, latency)
        if sent % 25 == 0:
            decision = decide(router.stats["champion"], router.stats["challenger"], objectives)
            if decision.final:
                router.freeze(decision.action)
                return decision, sent, router
    raise AssertionError(f"No decision within {BUDGET} requests")


def test_a_better_challenger_is_promoted_within_bounded_requests() -> None:
    decision, sent, router = simulate(champion_error=0.08, challenger_error=0.01, seed=1)
    assert decision.action == "promote", decision.reason
    assert sent < 8000
    assert router.step >= 1  # the canary moved beyond its first step before deciding
    assert router.choose() == "champion"  # frozen: no more challenger traffic until aliases move


def test_a_worse_challenger_is_rolled_back_quickly() -> None:
    decision, sent, _ = simulate(champion_error=0.01, challenger_error=0.10, seed=2)
    assert decision.action == "rollback", decision.reason
    assert "error_rate" in decision.reason
    assert sent < 6000


def test_an_equal_challenger_is_held_at_the_budget() -> None:
    objectives = Objectives(max_requests=3000)
    decision, sent, _ = simulate(0.03, 0.03, seed=3, objectives=objectives)
    assert decision.action == "hold", decision.reason
    assert decision.challenger_requests >= 3000
    assert sent < BUDGET


def test_a_slow_challenger_is_rolled_back_on_latency() -> None:
    decision, _, _ = simulate(0.02, 0.02, seed=4, challenger_slow=0.2)
    assert decision.action == "rollback"
    assert "slow_rate" in decision.reason


def test_false_decisions_stay_within_alpha() -> None:
    """Equal arms across many seeds: promote/roll-back must be rare (alpha = 0.05, two-sided)."""
    objectives = Objectives(max_requests=1500, alpha=0.05)
    wrong = 0
    for seed in range(40):
        decision, _, _ = simulate(
            0.05, 0.05, seed=100 + seed, objectives=objectives, plan=RolloutPlan(mode="ab", seed=seed)
        )
        wrong += decision.action != "hold"
    assert wrong <= 4, f"{wrong} false decisions in 40 equal rollouts"


def test_ab_assignment_is_sticky_and_near_the_share() -> None:
    router = TrafficRouter(RolloutPlan(mode="ab", ab_share=0.3))
    arms = {f"user-{i}": router.choose(f"user-{i}") for i in range(5000)}
    assert all(router.choose(key) == arm for key, arm in list(arms.items())[:500])
    share = sum(arm == "challenger" for arm in arms.values()) / len(arms)
    assert 0.27 < share < 0.33
    # The same key lands on the same arm in another process: the hash is not Python's salted hash().
    assert TrafficRouter(RolloutPlan(mode="ab", ab_share=0.3)).choose("user-1") == arms["user-1"]


def test_canary_follows_its_step_schedule() -> None:
    router = TrafficRouter(RolloutPlan(steps=(0.1, 0.5), step_requests=1000, seed=5))
    first = [router.choose() for _ in range(1000)]
    for arm in first:
        router.record(arm, False, 0.001)
    assert router.step == 1
    second = [router.choose() for _ in range(2000)]
    assert 0.06 < first.count("challenger") / 1000 < 0.14
    assert 0.45 < second.count("challenger") / 2000 < 0.55


def test_shadow_mode_answers_from_the_champion_and_mirrors_a_fraction() -> None:
    router = TrafficRouter(RolloutPlan(mode="shadow", shadow_fraction=0.2, seed=6))
    assert {router.choose() for _ in range(200)} == {"champion"}
    mirrored = sum(router.mirror() for _ in range(5000)) / 5000
    assert 0.17 < mirrored < 0.23


def test_invalid_plans_are_refused_with_a_reason() -> None:
    with pytest.raises(ConfigurationError, match="increasing"):
        RolloutPlan(steps=(0.5, 0.1))
    with pytest.raises(ConfigurationError, match="mode"):
        RolloutPlan(mode="blue-green")  # type: ignore[arg-type]
