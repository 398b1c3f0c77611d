"""The in-process router: every pattern, timeouts, retries, deadlines, partial failures, schemas, canary."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from pydantic import ValidationError

from aicml.agents.graph import Blackboard, Coordination, FanOut, Pipeline, Step, Supervisor
from aicml.agents.messages import AgentMessage, Outcome
from aicml.agents.router import Router, StaticCatalog
from aicml.agents.spec import AgentSpec
from aicml.agents.versions import CanaryVersionRouter
from aicml.observability.metrics import AGENT_ORCHESTRATION_REQUESTS


def rule(name: str, rule_name: str, config: dict[str, Any], version: str = "1", **kw: Any) -> AgentSpec:
    return AgentSpec(
        name=name, version=version, implementation={"kind": "rule", "rule": rule_name, "config": config}, **kw
    )


def py(name: str, target: str, version: str = "1", **kw: Any) -> AgentSpec:
    config = kw.pop("config", {})
    blocking = kw.pop("blocking", False)
    impl = {"kind": "python", "target": target, "config": config, "blocking": blocking}
    return AgentSpec(name=name, version=version, implementation=impl, **kw)


def run(router: Router, graph: Any, payload: dict[str, Any], **msg: Any) -> Any:
    message = AgentMessage(payload=payload, **msg)
    return asyncio.run(router.run(Coordination(name="t", graph=graph), message))


def count(pattern: str, outcome: str) -> float:
    return AGENT_ORCHESTRATION_REQUESTS.labels(pattern=pattern, outcome=outcome)._value.get()


CLASSIFY = rule(
    "classify",
    "keywords",
    {"rules": {"billing": ["invoice", "refund"], "tech": ["error", "crash"]}, "output": "skill"},
    skills=["triage"],
)
BILLING = rule(
    "billing", "template", {"template": "Refund for {customer}", "output": "answer"}, skills=["billing"]
)
TECH = rule("tech", "template", {"template": "Restart, {customer}", "output": "answer"}, skills=["tech"])


def test_pipeline_passes_outputs_along_and_counts_the_metric() -> None:
    extract = rule("extract", "extract", {"patterns": {"customer": r"customer (\w+)"}})
    router = Router(StaticCatalog([extract, CLASSIFY, BILLING]))
    before = count("pipeline", "success")
    reply = run(
        router,
        Pipeline(steps=[Step(agent="extract"), Step(agent="classify"), Step(agent="billing")]),
        {"text": "customer ada wants a refund"},
    )
    assert reply.outcome == Outcome.SUCCESS, reply.errors
    assert reply.payload["customer"] == "ada"
    assert reply.payload["skill"] == "billing"
    assert reply.payload["answer"] == "Refund for ada"
    assert [c.agent for c in reply.calls] == ["extract", "classify", "billing"]
    assert count("pipeline", "success") == before + 1


def test_fanout_vote_majority_and_quorum_with_a_failed_branch() -> None:
    yes = [rule(f"yes{i}", "constant", {"output": {"label": "spam"}}) for i in range(2)]
    no = rule("no", "constant", {"output": {"label": "ham"}})
    broken = py("broken", "testagents:boom")
    router = Router(StaticCatalog([*yes, no, broken]))
    graph = FanOut(
        branches=[Step(agent=s) for s in ("no", "yes0", "yes1", "broken")],
        combine="vote",
        vote_field="label",
        min_success=3,
    )
    reply = run(router, graph, {})
    assert reply.outcome == Outcome.PARTIAL
    assert reply.payload["label"] == "spam"
    assert reply.payload["agreement"] == pytest.approx(2 / 3)
    assert any("broken" in e for e in reply.errors)
    # Quorum not met: four needed, three succeed.
    strict = graph.model_copy(update={"min_success": 4})
    assert run(router, strict, {}).outcome == Outcome.FAILURE


def test_fanout_merge_runs_branches_concurrently() -> None:
    slow = [py(f"slow{i}", "testagents:slow", config={"delay": 0.3}, version="1") for i in range(3)]
    router = Router(StaticCatalog(slow))
    reply = run(router, FanOut(branches=[Step(agent=s.name, output_key=s.name) for s in slow]), {})
    assert reply.outcome == Outcome.SUCCESS
    assert set(reply.payload) == {"slow0", "slow1", "slow2"}
    # Three 0.3 s calls at once, not one after another: each branch started before any of them ended, and
    # the whole took less than the calls one after another would.
    calls = reply.calls
    assert sorted(c.agent for c in calls) == ["slow0", "slow1", "slow2"]
    assert max(c.started_ms for c in calls) < min(c.started_ms + c.duration_ms for c in calls)
    assert reply.duration_ms < sum(c.duration_ms for c in calls)


def test_supervisor_routes_by_classified_skill_and_by_header() -> None:
    router = Router(StaticCatalog([CLASSIFY, BILLING, TECH]))
    graph = Supervisor(classifier=Step(agent="classify"))
    reply = run(router, graph, {"text": "app crash with error", "customer": "bo"})
    assert reply.payload["routed_to"] == "tech" and reply.payload["answer"] == "Restart, bo"
    # The header skips the classifier.
    reply = run(router, graph, {"text": "app crash", "customer": "bo"}, headers={"skill": "billing"})
    assert reply.payload["routed_to"] == "billing"
    assert [c.agent for c in reply.calls] == ["billing"]
    # Unknown skill without fallback is the caller's problem.
    reply = run(router, graph, {"text": "hello"})
    assert reply.outcome == Outcome.REJECTED


def test_blackboard_runs_rounds_until_the_goal() -> None:
    extract = rule("extract", "extract", {"patterns": {"customer": r"customer (\w+)"}})
    answer = rule("answer", "template", {"template": "Hi {customer}, re {skill}", "output": "reply"})
    graph = Blackboard(
        agents=[
            Step(agent="answer", requires=["customer", "skill"], produces=["reply"]),
            Step(agent="classify", requires=["text"], produces=["skill"]),
            Step(agent="extract", requires=["text"], produces=["customer"]),
        ],
        goal=["reply"],
    )
    reply = run(Router(StaticCatalog([extract, CLASSIFY, answer])), graph, {"text": "customer cy: invoice"})
    assert reply.outcome == Outcome.SUCCESS, reply.errors
    assert reply.payload["reply"] == "Hi cy, re billing"
    assert [c.agent for c in reply.calls][-1] == "answer"  # second round, after the other two


def test_timeout_then_retry_and_deadline() -> None:
    slow = py("slow", "testagents:slow", config={"delay": 0.5}, policy={"timeout_s": 0.05, "retries": 1})
    flaky = py("flaky", "testagents:flaky", config={"failures": 2}, policy={"retries": 2})
    router = Router(StaticCatalog([slow, flaky]))
    reply = run(router, Pipeline(steps=[Step(agent="slow")]), {})
    assert reply.outcome == Outcome.FAILURE
    assert reply.calls[0].attempts == 2 and "timed out" in reply.errors[0]
    reply = run(router, Pipeline(steps=[Step(agent="flaky")]), {"key": "retry-test"})
    assert reply.outcome == Outcome.SUCCESS and reply.payload["attempt"] == 3
    assert reply.calls[0].attempts == 3
    # The message's deadline wins over the agent's own timeout.
    patient = py("patient", "testagents:slow", config={"delay": 5}, policy={"timeout_s": 30})
    reply = run(Router(StaticCatalog([patient])), Pipeline(steps=[Step(agent="patient")]), {}, timeout_ms=100)
    assert reply.outcome == Outcome.TIMEOUT
    # The call was cut at the deadline, not left to run out its 5 s.
    [call] = reply.calls
    assert not call.ok and "Deadline passed" in (call.error or "")
    assert call.duration_ms < 5000 and reply.duration_ms < 5000


def test_optional_pipeline_step_gives_partial() -> None:
    router = Router(StaticCatalog([py("broken", "testagents:boom"), py("double", "testagents:double")]))
    graph = Pipeline(steps=[Step(agent="broken", optional=True), Step(agent="double")])
    reply = run(router, graph, {"value": 21})
    assert reply.outcome == Outcome.PARTIAL and reply.payload["value"] == 42


def test_schemas_are_enforced_on_input_and_output() -> None:
    typed = py(
        "double",
        "testagents:double",
        input_schema={"type": "object", "required": ["value"], "properties": {"value": {"type": "number"}}},
    )
    liar = py(
        "liar",
        "testagents:wrong_shape",
        output_schema={"type": "object", "properties": {"score": {"type": "number"}}},
        policy={"retries": 3},
    )
    router = Router(StaticCatalog([typed, liar]))
    reply = run(router, Pipeline(steps=[Step(agent="double")]), {"value": "x"})
    assert reply.outcome == Outcome.REJECTED and "value" in reply.errors[0]
    reply = run(router, Pipeline(steps=[Step(agent="liar")]), {})
    assert reply.outcome == Outcome.FAILURE and "schema" in reply.errors[0]
    assert reply.calls[0].attempts == 1  # a wrong shape is not retried
    with pytest.raises(ValidationError):
        AgentSpec(
            name="x", version="1", implementation={"kind": "rule", "rule": "echo"}, input_schema={"type": 5}
        )


def test_canary_weights_split_traffic_sticky_per_correlation_id() -> None:
    v1 = rule("answer", "constant", {"output": {"v": 1}}, version="1")
    v2 = rule("answer", "constant", {"output": {"v": 2}}, version="2")
    versions = CanaryVersionRouter()
    versions.set_split("answer", stable="1", canary="2", share=0.25)
    router = Router(StaticCatalog([v1, v2], versions=versions))
    graph = Pipeline(steps=[Step(agent="answer")])
    seen = [run(router, graph, {}, correlation_id=f"c{i}").payload["v"] for i in range(400)]
    assert 60 <= seen.count(2) <= 140  # ~25 % of 400
    again = [run(router, graph, {}, correlation_id=f"c{i}").payload["v"] for i in range(400)]
    assert seen == again
    versions.set_version("answer", "2")
    assert {run(router, graph, {}, correlation_id=f"c{i}").payload["v"] for i in range(20)} == {2}


def test_graph_validation_and_edges() -> None:
    with pytest.raises(ValidationError, match="vote_field"):
        FanOut(branches=[Step(agent="a")], combine="vote")
    with pytest.raises(ValidationError, match="min_success"):
        FanOut(branches=[Step(agent="a")], min_success=2)
    c = Coordination.model_validate(
        {"name": "p", "graph": {"pattern": "pipeline", "steps": [{"agent": "a"}, {"agent": "b"}]}}
    )
    assert c.edges() == [("in", "a"), ("a", "b"), ("b", "out")]
