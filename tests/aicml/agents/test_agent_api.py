"""`aicml agents serve` as a real process on loopback: auth, register, list, get, transition, invoke,
coordinations, an agent that calls another over HTTP, /healthz and /metrics."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from typer.testing import CliRunner

from aicml.agents.cli import app

TOKEN = "test-token-1234567890"  # the invokers' token the service is started with (conftest)

CLASSIFY = {
    "name": "classify",
    "version": "1",
    "skills": ["triage"],
    "input_schema": {"type": "object", "required": ["text"], "properties": {"text": {"type": "string"}}},
    "implementation": {
        "kind": "rule",
        "rule": "keywords",
        "config": {"rules": {"billing": ["refund", "invoice"]}, "default": "general", "output": "skill"},
    },
    "health_input": {"text": "refund"},
}


@pytest.fixture(scope="module")
def running(tmp_path_factory: pytest.TempPathFactory, launch_agent_service: Any) -> Iterator[Any]:
    # The service may call itself as a remote agent, with the invokers' token the operator configured for it.
    remote = {"AIC_AGENTS_REMOTE_URLS": "http://{self}/v1/agents/",
              "AIC_AGENTS_REMOTE_TOKENS": json.dumps({"http://{self}/v1/agents/": TOKEN})}  # fmt: skip
    with launch_agent_service(tmp_path_factory.mktemp("agents"), **remote) as service:
        yield service


@pytest.fixture(scope="module")
def server(running: Any) -> str:
    return str(running.url)


@pytest.fixture
def client(running: Any) -> Iterator[httpx.Client]:
    """An administrator (who may also invoke and read)."""
    with httpx.Client(base_url=running.url, headers=running.headers("admin"), timeout=30) as c:
        yield c


def test_auth_is_required_except_for_probes(server: str) -> None:
    assert httpx.get(f"{server}/v1/agents").status_code == 401
    bad = httpx.get(f"{server}/v1/agents", headers={"Authorization": "Bearer nope"})
    assert bad.status_code == 401 and "bearer token" in bad.json()["error"]
    assert httpx.get(f"{server}/healthz").json() == {"status": "ok"}
    assert httpx.get(f"{server}/metrics").status_code == 200


def test_register_transition_invoke_and_audit(client: httpx.Client) -> None:
    created = client.post("/v1/agents", json=CLASSIFY, headers={"X-Actor": "alice"})
    assert created.status_code == 201, created.text
    assert created.json()["state"] == "draft"
    bad = client.post("/v1/agents", json={**CLASSIFY, "version": "2", "name": "Bad Name"})
    assert bad.status_code == 422 and "name" in bad.text
    # Not active yet: the router refuses it.
    reply = client.post("/v1/agents/classify/invoke", json={"payload": {"text": "refund please"}})
    assert reply.status_code == 422 and reply.json()["outcome"] == "rejected"
    moved = client.post(
        "/v1/agents/classify/versions/1/transition", json={"to": "active", "reason": "launch"},
        headers={"X-Actor": "alice"},
    )  # fmt: skip
    assert moved.status_code == 200 and moved.json()["state"] == "active" and moved.json()["healthy"] is True
    illegal = client.post("/v1/agents/classify/versions/1/transition", json={"to": "draft"})
    assert illegal.status_code == 409 and "can move to" in illegal.json()["error"]

    reply = client.post(
        "/v1/agents/classify/invoke",
        json={"correlation_id": "corr-1", "payload": {"text": "I want a refund"}, "timeout_ms": 1000},
    )
    body = reply.json()
    assert reply.status_code == 200, body
    assert body["correlation_id"] == "corr-1" and body["outcome"] == "success"
    assert body["payload"]["skill"] == "billing" and body["calls"][0]["version"] == "1"
    wrong = client.post("/v1/agents/classify/invoke", json={"payload": {"text": 5}})
    assert wrong.status_code == 422 and "text" in wrong.json()["errors"][0]

    listed = client.get("/v1/agents", params={"state": "active"}).json()["agents"]
    assert [a["name"] for a in listed] == ["classify"]
    got = client.get("/v1/agents/classify").json()
    assert got["weights"] == {"1": 100.0}
    assert client.get("/v1/agents/classify/versions/1").json()["spec"]["skills"] == ["triage"]
    assert client.get("/v1/agents/nope").status_code == 404
    trail = client.get("/v1/agents/classify/versions/1/transitions").json()["transitions"]
    # The actor is the authenticated identity; the X-Actor header the client sent is not believed.
    assert [(t["from_state"], t["to_state"], t["actor"]) for t in trail] == [
        (None, "draft", "admin"),
        ("draft", "active", "admin"),
    ]


def test_stored_coordination_with_an_agent_over_http(client: httpx.Client, server: str) -> None:
    if client.get("/v1/agents/classify").status_code == 404:
        test_register_transition_invoke_and_audit(client)
    remote = {
        "name": "remote-classify",
        "version": "1",
        "implementation": {
            "kind": "http",
            "url": f"{server}/v1/agents/classify/invoke",
        },
    }
    reply_agent = {
        "name": "reply",
        "version": "1",
        "implementation": {"kind": "rule", "rule": "template", "config": {"template": "Routed to {skill}"}},
    }
    for spec in (remote, reply_agent):
        assert client.post("/v1/agents", json=spec).status_code == 201
        ok = client.post(f"/v1/agents/{spec['name']}/versions/1/transition", json={"to": "active"})
        assert ok.status_code == 200, ok.text
    graph = {"graph": {"pattern": "pipeline", "steps": [{"agent": "remote-classify"}, {"agent": "reply"}]}}
    saved = client.put("/v1/coordinations/ticket", json=graph)
    assert saved.status_code == 200 and saved.json()["edges"][0] == ["in", "remote-classify"]
    reply = client.post(
        "/v1/coordinations/ticket/invoke",
        json={"correlation_id": "c-http", "payload": {"text": "invoice wrong"}},
    )
    assert reply.status_code == 200, reply.text
    assert reply.json()["payload"]["text"] == "Routed to billing"
    metrics = httpx.get(f"{server}/metrics").text
    assert 'ml_agent_orchestration_requests_total{outcome="success",pattern="pipeline"}' in metrics
    assert 'ml_agent_orchestration_requests_total{outcome="success",pattern="single"}' in metrics
    assert 'outcome="rejected",pattern="single"' in metrics


def test_an_invoker_calls_and_reads_but_does_not_administer(client: httpx.Client, running: Any) -> None:
    if client.get("/v1/agents/classify").status_code == 404:
        test_register_transition_invoke_and_audit(client)
    with httpx.Client(base_url=running.url, headers=running.headers("invoker"), timeout=30) as invoker:
        assert invoker.get("/v1/agents").status_code == 200
        assert invoker.get("/v1/agents/classify/versions/1/transitions").status_code == 200
        reply = invoker.post("/v1/agents/classify/invoke", json={"payload": {"text": "refund"}})
        assert reply.status_code == 200, reply.text
        adhoc = {"coordination": {"name": "adhoc", "graph": {"pattern": "pipeline", "steps": [{"agent": "classify"}]}},
                 "message": {"payload": {"text": "invoice"}}}  # fmt: skip
        assert invoker.post("/v1/coordinations", json=adhoc).status_code == 200
        refused = invoker.post("/v1/agents/classify/versions/1/transition", json={"to": "paused"})
        assert refused.status_code == 403 and "AIC_AGENTS_ADMIN_TOKEN" in refused.json()["error"]
    assert client.get("/v1/agents/classify/versions/1").json()["state"] == "active"


def test_serve_refuses_to_run_open_by_accident(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    for name in ("AIC_AGENTS_TOKEN", "AIC_AGENTS_TOKEN_SECRET_BLOCK", "AIC_AGENTS_AUTH_DISABLED"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.chdir(tmp_path)  # no .env here
    result = CliRunner().invoke(app, ["serve", "--database-url", f"sqlite:///{tmp_path / 'x.db'}"])
    assert result.exit_code == 1
    assert "AIC_AGENTS_AUTH_DISABLED=true" in result.output


def test_canary_rollout_over_http(client: httpx.Client) -> None:
    if client.get("/v1/agents/classify").status_code == 404:
        test_register_transition_invoke_and_audit(client)
    v2 = {**CLASSIFY, "version": "2"}
    v2["implementation"] = {**CLASSIFY["implementation"], "config": {**CLASSIFY["implementation"]["config"],
                            "default": "other"}}  # fmt: skip
    assert client.post("/v1/agents", json=v2).status_code == 201
    started = client.post("/v1/agents/classify/rollout", json={"canary": "2", "steps": [50, 100]})
    assert started.status_code == 200, started.text
    assert started.json()["weights"] == {"1": 50.0, "2": 50.0}
    assert client.post("/v1/agents/classify/rollout", json={"canary": "2"}).status_code == 409
    versions = {
        client.post(
            "/v1/agents/classify/invoke", json={"correlation_id": f"r{i}", "payload": {"text": "x"}}
        ).json()["calls"][0]["version"]
        for i in range(30)
    }
    assert versions == {"1", "2"}
    back = client.post("/v1/agents/classify/rollout/rollback", headers={"X-Actor": "oncall"})
    assert back.status_code == 200 and back.json()["status"] == "rolled_back"
    state = client.get("/v1/agents/classify/versions/2").json()
    assert state["state"] == "paused"
    assert client.post("/v1/agents/classify/rollout/advance").status_code == 404


def test_load_command_registers_and_activates_from_yaml(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import yaml

    db = f"sqlite:///{tmp_path / 'db.sqlite'}"
    monkeypatch.setenv("AIC_AGENTS_DATABASE_URL", db)
    document = {
        "agents": [CLASSIFY],
        "coordinations": [
            {"name": "one", "graph": {"pattern": "pipeline", "steps": [{"agent": "classify"}]}}
        ],
    }
    (tmp_path / "agents.yaml").write_text(yaml.safe_dump(document))
    result = CliRunner().invoke(app, ["load", str(tmp_path / "agents.yaml")])
    assert result.exit_code == 0, result.output
    assert "agent classify@1: active" in result.output and "coordination one: pipeline" in result.output
    from aicml.agents.store import AgentStore

    store = AgentStore(db)
    try:
        assert store.get("classify", "1").state.value == "active"
        assert store.graph("one").graph.pattern == "pipeline"
    finally:
        store.close()


@pytest.mark.parametrize(
    ("method", "path", "body", "status"),
    [
        ("PUT", "/v1/coordinations/x", b"[1, 2]", 422),  # a JSON list, not an object: was a 500
        ("PUT", "/v1/coordinations/x", b"42", 422),
        ("POST", "/v1/coordinations", b'"text"', 422),
        ("PUT", "/v1/coordinations/x", b"{" + b" " * (1 << 20) + b"}", 413),  # over the 1 MiB cap
        ("POST", "/v1/agents", b"[" + b"0," * (600 * 1024) + b"0]", 413),
    ],
)
def test_malformed_and_oversize_bodies_are_client_errors(
    client: httpx.Client, method: str, path: str, body: bytes, status: int
) -> None:
    answer = client.request(method, path, content=body, headers={"content-type": "application/json"})
    assert answer.status_code == status, answer.text
    assert "error" in answer.json()
    assert client.get("/v1/coordinations").status_code == 200  # and the service is still there
    assert "x" not in {g["name"] for g in client.get("/v1/coordinations").json().get("coordinations", [])}
