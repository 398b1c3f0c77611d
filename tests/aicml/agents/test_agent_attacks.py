"""Attacks on the agent API, against the real service: each is refused precisely and leaves no trace.

A caller holding a token must not get code run, files written, requests sent to an address of their choice,
secrets of the service sent anywhere, unverified models loaded, administration done with an invoker's token,
another name written into the audit trail, or unbounded work started. Each case asserts the status, that the
error names the problem, and that nothing happened: no agent or coordination stored, no request at the trap
listener, no marker file written.
"""

from __future__ import annotations

import json
import threading
import uuid
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest

pytestmark = pytest.mark.timeout(600)

# A module the service can import (it sits in the service's working directory), which writes a marker file
# when imported and when called: if the allowlist let it through, the marker would exist.
EVIL_MODULE = """
from pathlib import Path
Path(__file__).with_name("imported.marker").write_text("imported")

def run(payload, **config):
    Path(__file__).with_name("called.marker").write_text("called")
    return {"pwned": True}
"""


class Listener:
    """An HTTP server on 127.0.0.1 that records every request; answers like an agent that succeeded."""

    def __init__(self) -> None:
        self.requests: list[dict[str, Any]] = []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                length = int(self.headers.get("content-length") or 0)
                outer.requests.append({"path": self.path, "headers": dict(self.headers),
                                       "body": self.rfile.read(length).decode()})  # fmt: skip
                body = json.dumps({"outcome": "success", "payload": {"remote": "ok"}}).encode()
                self.send_response(200)
                self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            do_GET = do_PUT = do_POST

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture(scope="module")
def trap() -> Iterator[Listener]:
    """Nothing may ever reach this one."""
    listener = Listener()
    yield listener
    listener.close()


@pytest.fixture(scope="module")
def allowed() -> Iterator[Listener]:
    """The one remote agent service the operator allowlisted (under /allowed/), with its token."""
    listener = Listener()
    yield listener
    listener.close()


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("agent-attacks")
    (path / "evil_agent.py").write_text(EVIL_MODULE)
    return path


@pytest.fixture(scope="module")
def running(
    workdir: Path, trap: Listener, allowed: Listener, launch_agent_service: Any, stack: Any
) -> Iterator[Any]:
    env = {
        "MLFLOW_TRACKING_URI": stack.settings.tracking_uri,
        "AIC_AGENTS_REMOTE_URLS": f"{allowed.url}/allowed/",
        "AIC_AGENTS_REMOTE_TOKENS": json.dumps({f"{allowed.url}/allowed/": "operator-token-for-remote"}),
        "PGPASSWORD": "canary-pg-password-7f3a",
        "AIC_AGENTS_CATALOG_TTL_S": "0",
    }
    with launch_agent_service(workdir, **env) as service:
        yield service


@pytest.fixture(scope="module")
def admin(running: Any) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=running.url, headers=running.headers("admin"), timeout=60) as c:
        yield c


@pytest.fixture(scope="module")
def invoker(running: Any) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=running.url, headers=running.headers("invoker"), timeout=60) as c:
        yield c


def _agent(name: str, implementation: dict[str, Any], **extra: Any) -> dict[str, Any]:
    return {"name": name, "version": "1", "implementation": implementation, **extra}


def _names(client: httpx.Client) -> set[str]:
    return {a["name"] for a in client.get("/v1/agents").json()["agents"]}


def _graphs(client: httpx.Client) -> set[str]:
    return {g["name"] for g in client.get("/v1/coordinations").json()["coordinations"]}


@pytest.fixture
def untouched(admin: httpx.Client, trap: Listener, workdir: Path) -> Iterator[None]:
    """After the case: nothing registered or stored, nothing at the trap, no marker file, no secret sent."""
    agents, graphs, seen = _names(admin), _graphs(admin), len(trap.requests)
    yield
    assert _names(admin) == agents, "an agent was registered"
    assert _graphs(admin) == graphs, "a coordination was stored"
    assert trap.requests[seen:] == [], "a request reached the trap listener"
    assert not list(workdir.glob("*.marker")), "the evil module was imported or called"


PYTHON = "AIC_AGENTS_PYTHON_MODULES"
REMOTE = "AIC_AGENTS_REMOTE_URLS"
TRAP = "{trap}"

# (case, role, method, path, body, status, words the error must contain)
CORPUS: list[tuple[str, str, str, str, Any, int, tuple[str, ...]]] = [
    ("python target in a module outside the allowlist", "admin", "POST", "/v1/agents",
     _agent("shell", {"kind": "python", "target": "os:system", "config": {"command": "touch x.marker"}}),
     403, ("'os'", PYTHON)),
    ("importable module with side effects, not allowlisted", "admin", "POST", "/v1/agents",
     _agent("evil", {"kind": "python", "target": "evil_agent:run"}, health_input={}), 403, ("'evil_agent'", PYTHON)),
    ("module whose name only starts with an allowlisted one", "admin", "POST", "/v1/agents",
     _agent("lookalike", {"kind": "python", "target": "testagents_evil:run"}), 403, ("'testagents_evil'", PYTHON)),
    ("builtins exec", "admin", "POST", "/v1/agents",
     _agent("exec", {"kind": "python", "target": "builtins:exec", "config": {"source": "1"}}), 403,
     ("'builtins'", PYTHON)),
    ("service's environment variable as the remote token (PGPASSWORD)", "admin", "POST", "/v1/agents",
     _agent("leak", {"kind": "http", "url": TRAP + "/v1/agents/x/invoke", "token_env": "PGPASSWORD"}), 403,
     ("token_env", "AIC_AGENTS_REMOTE_TOKENS")),
    ("header values interpolated from the environment", "admin", "POST", "/v1/agents",
     _agent("headers", {"kind": "http", "url": TRAP + "/x", "headers": {"X-Leak": "${PGPASSWORD}"}}), 422,
     ("headers", "Extra inputs are not permitted")),
    ("remote agent URL not allowlisted", "admin", "POST", "/v1/agents",
     _agent("ssrf", {"kind": "http", "url": TRAP + "/v1/agents/x/invoke"}), 403, ("implementation.url", REMOTE)),
    ("allowlisted prefix escaped with ..", "admin", "POST", "/v1/agents",
     _agent("dots", {"kind": "http", "url": "{allowed}/allowed/../steal"}), 403, ("implementation.url",)),
    ("credentials in the URL to pass for the allowed host", "admin", "POST", "/v1/agents",
     _agent("userinfo", {"kind": "http", "url": "http://{allowed_host}@{trap_host}/allowed/"}), 403,
     ("without credentials",)),
    ("cloud metadata address", "admin", "POST", "/v1/agents",
     _agent("metadata", {"kind": "http", "url": "http://169.254.169.254/latest/meta-data/"}), 403, (REMOTE,)),
    ("LLM base_url of the caller's choice", "admin", "POST", "/v1/agents",
     _agent("llm", {"kind": "llm", "base_url": TRAP + "/v1", "model": "x"}), 403,
     ("implementation.base_url", REMOTE)),
    ("non-http scheme for a remote agent", "admin", "POST", "/v1/agents",
     _agent("file", {"kind": "http", "url": "file:///etc/passwd"}), 403, ("only http(s)",)),
    ("model agent from runs:/", "admin", "POST", "/v1/agents",
     _agent("runs", {"kind": "mlflow", "model_uri": "runs:/0123abcd/model"}), 422, ("model_uri", "models:/")),
    ("model agent from a file URI", "admin", "POST", "/v1/agents",
     _agent("pickle", {"kind": "mlflow", "model_uri": "file:///tmp/evil/model"}), 422, ("model_uri", "models:/")),
    ("model agent from a bare path", "admin", "POST", "/v1/agents",
     _agent("path", {"kind": "mlflow", "model_uri": "/etc/passwd"}), 422, ("model_uri", "models:/")),
    ("invoker registers an agent", "invoker", "POST", "/v1/agents",
     _agent("sneaky", {"kind": "rule", "rule": "constant", "config": {"output": {}}}), 403,
     ("AIC_AGENTS_ADMIN_TOKEN",)),
    ("invoker moves a version through its lifecycle", "invoker", "POST",
     "/v1/agents/double/versions/1/transition", {"to": "retired"}, 403, ("AIC_AGENTS_ADMIN_TOKEN",)),
    ("invoker runs a health check", "invoker", "POST", "/v1/agents/double/versions/1/health", None, 403,
     ("AIC_AGENTS_ADMIN_TOKEN",)),
    ("invoker starts a rollout", "invoker", "POST", "/v1/agents/double/rollout", {"canary": "1"}, 403,
     ("AIC_AGENTS_ADMIN_TOKEN",)),
    ("invoker rolls back", "invoker", "POST", "/v1/agents/double/rollout/rollback", None, 403,
     ("AIC_AGENTS_ADMIN_TOKEN",)),
    ("invoker stores a coordination", "invoker", "PUT", "/v1/coordinations/mine",
     {"graph": {"pattern": "pipeline", "steps": [{"agent": "double"}]}}, 403, ("AIC_AGENTS_ADMIN_TOKEN",)),
    ("fan-out wider than the cap (ad hoc)", "invoker", "POST", "/v1/coordinations",
     {"coordination": {"name": "wide", "graph": {"pattern": "fanout",
      "branches": [{"agent": "double"}] * 33}}, "message": {"payload": {"value": 1}}}, 422,
     ("at most 32 branches", "MAX_FANOUT")),
    ("fan-out wider than the cap (stored)", "admin", "PUT", "/v1/coordinations/wide",
     {"graph": {"pattern": "fanout", "branches": [{"agent": "double"}] * 5000}}, 422,
     ("at most 32 branches", "MAX_FANOUT")),
    ("huge graph (stored)", "admin", "PUT", "/v1/coordinations/huge",
     {"graph": {"pattern": "pipeline", "steps": [{"agent": "double"}] * 20000}}, 422,
     ("at most 64 steps", "MAX_GRAPH_STEPS")),
    ("huge supervisor graph (ad hoc)", "invoker", "POST", "/v1/coordinations",
     {"coordination": {"name": "routes", "graph": {"pattern": "supervisor",
      "routes": {f"s{i}": {"agent": "double"} for i in range(100)}}}, "message": {"payload": {}}}, 422,
     ("at most 64 steps", "MAX_GRAPH_STEPS")),
    ("no token at all", "none", "POST", "/v1/agents", _agent("anon", {"kind": "rule", "rule": "constant"}), 401,
     ("bearer token",)),
]  # fmt: skip


@pytest.fixture(scope="module")
def double(admin: httpx.Client) -> None:
    """An allowed python agent, active: the positive control every refusal is measured against."""
    created = admin.post("/v1/agents", json=_agent("double", {"kind": "python", "target": "testagents:double"},
                                                   health_input={"value": 2}))  # fmt: skip
    assert created.status_code == 201, created.text
    assert admin.post("/v1/agents/double/versions/1/transition", json={"to": "active"}).status_code == 200


def _fill(value: Any, trap: Listener, allowed: Listener) -> Any:
    text = json.dumps(value)
    text = text.replace("{trap}", trap.url).replace("{allowed}", allowed.url)
    text = text.replace("{allowed_host}", allowed.url.removeprefix("http://"))
    text = text.replace("{trap_host}", trap.url.removeprefix("http://"))
    return json.loads(text)


@pytest.mark.parametrize(("case", "role", "method", "path", "body", "status", "words"), CORPUS,
                         ids=[c[0] for c in CORPUS])  # fmt: skip
def test_attack_is_refused_and_nothing_happens(
    running: Any, double: None, trap: Listener, allowed: Listener, untouched: None,
    case: str, role: str, method: str, path: str, body: Any, status: int, words: tuple[str, ...],
) -> None:  # fmt: skip
    headers = running.headers(role) if role != "none" else {}
    content = None if body is None else json.dumps(_fill(body, trap, allowed))
    answer = httpx.request(method, running.url + path, content=content, headers=headers, timeout=60)
    assert answer.status_code == status, f"{case}: {answer.status_code} {answer.text[:500]}"
    text = answer.text
    for word in words:
        assert word in text, f"{case}: {word!r} not in {text[:500]}"
    assert "canary-pg-password" not in text


def test_python_target_stored_before_the_allowlist_is_never_imported_by_a_health_check(
    running: Any, admin: httpx.Client, workdir: Path, trap: Listener
) -> None:
    # The definition is in agent_db (put there before the operator narrowed the allowlist, or by hand).
    from aicml.agents.spec import AgentSpec
    from aicml.agents.store import AgentStore

    store = AgentStore(f"sqlite:///{workdir / 'agent_db.sqlite'}")
    try:
        evil = _agent("stored-evil", {"kind": "python", "target": "evil_agent:run"}, health_input={})
        store.register(AgentSpec.model_validate(evil), "dba")
    finally:
        store.close()
    health = admin.post("/v1/agents/stored-evil/versions/1/health")
    assert health.status_code == 503 and health.json()["healthy"] is False
    assert "'evil_agent'" in health.json()["detail"] and PYTHON in health.json()["detail"]
    activate = admin.post("/v1/agents/stored-evil/versions/1/transition", json={"to": "active"})
    assert activate.status_code == 409 and "health check" in activate.json()["error"]
    assert admin.get("/v1/agents/stored-evil/versions/1").json()["state"] == "draft"
    # Forced active, it is still never loaded: the router refuses it by the same policy.
    forced = admin.post("/v1/agents/stored-evil/versions/1/transition", json={"to": "active", "force": True})
    assert forced.status_code == 200
    reply = admin.post("/v1/agents/stored-evil/invoke", json={"payload": {}})
    assert reply.status_code == 422 and PYTHON in reply.text, reply.text  # no agent was called
    admin.post("/v1/agents/stored-evil/versions/1/transition", json={"to": "retired"})
    assert not list(workdir.glob("*.marker")), "the evil module was imported or called"
    assert trap.requests == []


def test_the_audit_actor_is_the_authenticated_identity(admin: httpx.Client) -> None:
    spec = _agent("audited", {"kind": "rule", "rule": "constant", "config": {"output": {"ok": True}}})
    assert admin.post("/v1/agents", json=spec, headers={"X-Actor": "mallory"}).status_code == 201
    moved = admin.post("/v1/agents/audited/versions/1/transition",
                       json={"to": "active", "actor": "mallory"}, headers={"X-Actor": "mallory"})  # fmt: skip
    assert moved.status_code == 200, moved.text
    trail = admin.get("/v1/agents/audited/transitions").json()["transitions"]
    assert [t["actor"] for t in trail] == ["admin", "admin"]
    assert "mallory" not in json.dumps(trail)


def test_remote_agents_get_only_the_operators_token_at_the_allowlisted_address(
    admin: httpx.Client, invoker: httpx.Client, allowed: Listener, trap: Listener
) -> None:
    spec = _agent("partner", {"kind": "http", "url": f"{allowed.url}/allowed/invoke"})
    assert admin.post("/v1/agents", json=spec).status_code == 201
    assert admin.post("/v1/agents/partner/versions/1/transition", json={"to": "active"}).status_code == 200
    before = len(allowed.requests)
    reply = invoker.post("/v1/agents/partner/invoke", json={"payload": {"q": 1}})
    assert reply.status_code == 200 and reply.json()["payload"]["remote"] == "ok", reply.text
    sent = allowed.requests[before:]
    assert sent and all(r["path"] == "/allowed/invoke" for r in sent)
    assert {r["headers"].get("Authorization") for r in sent} == {"Bearer operator-token-for-remote"}
    assert "canary-pg-password" not in json.dumps(allowed.requests + trap.requests)
    assert trap.requests == []


def test_model_agent_with_a_wrong_checksum_never_activates(stack, admin: httpx.Client, workdir: Path) -> None:
    import mlflow
    import numpy as np
    import pandas as pd
    from mlflow import MlflowClient
    from sklearn.linear_model import LogisticRegression

    from aicml.registry.checksums import CHECKSUM_TAG, stamp_checksum

    model = f"attack-{uuid.uuid4().hex[:6]}"
    frame = pd.DataFrame({"a": np.arange(20.0), "b": np.arange(20.0)[::-1]})
    mlflow.set_tracking_uri(stack.settings.tracking_uri)
    mlflow.set_experiment("agent-attacks")
    with mlflow.start_run():
        mlflow.sklearn.log_model(LogisticRegression().fit(frame, (frame.a > 9).astype(int)), name="model",
                                 registered_model_name=model, serialization_format="skops",
                                 skops_trusted_types=[], pip_requirements=["scikit-learn"])  # fmt: skip
    stamp_checksum(model, "1")
    MlflowClient().set_model_version_tag(model, "1", CHECKSUM_TAG, "f" * 64)  # the files were swapped since
    spec = _agent(
        "tampered",
        {"kind": "mlflow", "model_uri": f"models:/{model}/1"},
        health_input={"features": {"a": 1.0, "b": 2.0}},
    )
    assert admin.post("/v1/agents", json=spec).status_code == 201
    activate = admin.post("/v1/agents/tampered/versions/1/transition", json={"to": "active"})
    assert activate.status_code == 409, activate.text
    assert "ChecksumError" in activate.json()["error"] and "hash to" in activate.json()["error"]
    assert admin.get("/v1/agents/tampered/versions/1").json()["state"] == "draft"
    assert not list((workdir / "home" / "agents" / "models").glob(f"{model}-v1*")), "refused files were kept"
