"""The agent demo end to end (MLflow model agent and traces on the stack), then the `agent-batch` flow over
the demo's tickets: chunked tasks, replies written once, a rerun rewrites the same bytes."""

from __future__ import annotations

from pathlib import Path

import mlflow
from typer.testing import CliRunner

from aicml.agents.cli import app
from aicml.agents.demo import run_demo
from aicml.agents.tracing import trace_summary
from flows.agents import AgentBatchParams, agent_batch


def test_demo_then_batch_flow(stack, tmp_path: Path) -> None:
    db = f"sqlite:///{tmp_path / 'agent_db.sqlite'}"
    lines: list[str] = []
    report = run_demo(
        database_url=db,
        tracking_uri=stack.settings.tracking_uri,
        echo=lines.append,
        tickets_path=tmp_path / "tickets.jsonl",
    )
    coordinations = report["coordinations"]
    assert {c["outcome"] for c in coordinations.values()} == {"success"}, coordinations
    assert "churn-risk@1" in coordinations["resolve-ticket"]["calls"]
    assert coordinations["route-ticket"]["calls"] == ["classify@1", "billing-desk@1"]
    assert report["canary"]["100%"] == {"2": 40} and 0 < report["canary"]["25%"].get("2", 0) < 40
    trace = mlflow.get_trace(coordinations["resolve-ticket"]["trace_id"])
    spans = trace_summary(trace)
    assert sum(parent == "coordination:resolve-ticket" for _, parent in spans) == 6  # one span per agent call
    assert any("writer@1" in line for line in lines)
    assert [t["to_state"] for t in report["audit_classify"]].count("active") == 2

    # A second demo run reuses what is there (idempotent) through the CLI.
    result = CliRunner().invoke(app, ["demo", "--database-url", db], env={"MLFLOW_TRACKING_URI": ""})
    assert result.exit_code == 0, result.output
    assert "already active" in result.output

    params = AgentBatchParams(
        coordination="ticket-triage",
        source=str(tmp_path / "tickets.jsonl"),
        database_url=db,
        output_dir=str(tmp_path / "out"),
        chunk_size=8,
    )
    first = agent_batch(params)
    assert first.rows == 20 and first.outcomes == {"success": 20} and len(first.parts) == 3
    content = [Path(p).read_bytes() for p in first.parts]
    assert b'"skill":"billing"' in content[0]
    second = agent_batch(params)
    assert second.parts == first.parts
    assert [Path(p).read_bytes() for p in second.parts] == content
    assert sorted(p.name for p in Path(first.parts[0]).parent.iterdir()) == [
        Path(p).name for p in first.parts
    ]
