"""Resume down to mapped items: a failed `agent-batch` run resumes with only its failed chunk run again."""

from __future__ import annotations

import json
from pathlib import Path
from uuid import UUID

from prefect.deployments import run_deployment

from aicml.agents.demo import TICKETS, demo_agents, demo_coordinations
from aicml.agents.service import AgentService
from aicml.agents.spec import LifecycleState
from aicml.stack.resume import resume_flow_run
from tasks.policies import FAULT_VARIABLE
from tests.runs import local_deployments, task_run_states

REPO = Path(__file__).resolve().parents[2]


def _chunk_states(flow_run_id: UUID) -> dict[str, str]:
    return {n: s for n, s in task_run_states(flow_run_id).items() if n.startswith("coordinate-chunk-at-")}


def _triage_db(path: Path) -> str:
    """An agent_db with the three rule agents of the `ticket-triage` graph, active, and the graph."""
    url = f"sqlite:///{path}"
    service = AgentService.from_url(url)
    try:
        for spec in demo_agents("http://127.0.0.1:9", None):
            if spec.name in {"extract", "classify", "urgent-words"} and spec.version == "1":
                service.register(spec, "test")
                service.transition(spec.name, spec.version, LifecycleState.ACTIVE, "test", "resume test")
        service.store.save_graph(next(c for c in demo_coordinations(False) if c.name == "ticket-triage"))
    finally:
        service.close()
    return url


def test_failed_batch_resumes_running_only_the_failed_chunk(stack, tmp_path: Path) -> None:
    local_deployments(stack)
    source = tmp_path / "tickets.jsonl"
    source.write_text("".join(json.dumps({"text": t}) + "\n" for t in TICKETS * 5))  # 20 inputs
    params = {"params": {"coordination": "ticket-triage", "source": str(source),
                         "database_url": _triage_db(tmp_path / "agent_db.sqlite"),
                         "output_dir": str(tmp_path / "out"), "chunk_size": 5}}  # fmt: skip

    # A real failure in the flow-run process, in the third of four mapped chunks.
    failed = run_deployment(
        "agent-batch/local",
        parameters=params,
        timeout=600,
        job_variables={"env": {FAULT_VARIABLE: "coordinate-chunk-at-10"}},
    )
    assert failed.state.is_failed(), failed.state
    first = _chunk_states(failed.id)
    assert first == {"coordinate-chunk-at-0": "Completed", "coordinate-chunk-at-5": "Completed",
                     "coordinate-chunk-at-10": "Failed", "coordinate-chunk-at-15": "Completed"}, first  # fmt: skip
    written = sorted(p.name for p in (tmp_path / "out").rglob("part-*.jsonl"))
    assert written == ["part-00000.jsonl", "part-00001.jsonl", "part-00003.jsonl"]
    before = {p.name: p.stat().st_mtime_ns for p in (tmp_path / "out").rglob("part-*.jsonl")}

    resumed = resume_flow_run(failed.id, timeout=600)
    assert resumed.state.is_completed(), resumed.state
    second = _chunk_states(resumed.id)
    # Only the failed chunk's body ran again; the others came back from their persisted results.
    assert second == {"coordinate-chunk-at-0": "Cached", "coordinate-chunk-at-5": "Cached",
                      "coordinate-chunk-at-10": "Completed", "coordinate-chunk-at-15": "Cached"}, second  # fmt: skip
    parts = sorted((tmp_path / "out").rglob("part-*.jsonl"))
    assert [p.name for p in parts] == [
        "part-00000.jsonl",
        "part-00001.jsonl",
        "part-00002.jsonl",
        "part-00003.jsonl",
    ]
    assert {p.name: p.stat().st_mtime_ns for p in parts if p.name in before} == before  # not rewritten
    replies = [json.loads(line) for p in parts for line in p.read_text().splitlines()]
    assert len(replies) == 20
