"""A model server as a local process, and the controller loop that watches its rollout evidence.

The controller reads ``GET /router`` (counts only, no request data), runs the sequential decision, and
when it is final tells the server to stop sending traffic to the challenger. Moving aliases, events and
audit records are the caller's part (see ``aicml.rollout.aliases`` and ``tasks/serve.py``).
"""

from __future__ import annotations

import os
import secrets
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import httpx

from aicml.errors import AicError
from aicml.rollout.canary import ArmStats, Decision, Objectives, decide
from aicml.stack.processes import ServiceSpec, start, stop


class RolloutError(AicError):
    """The rollout could not be observed or controlled (server gone, wrong token)."""


@dataclass(frozen=True)
class LocalServer:
    """A running `aicml serve` process started by pid file."""

    name: str
    url: str
    pid: int
    token_file: str
    run_dir: str
    log_dir: str
    control_token_file: str | None = None


def ensure_token_file(path: Path) -> Path:
    """Create ``path`` with a random token (mode 0600) unless it exists."""
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as handle:
            handle.write(secrets.token_urlsafe(32))
    return path


def start_local_server(
    model_name: str,
    port: int,
    tracking_uri: str,
    home: Path,
    token_file: Path,
    challenger: bool,
    mode: str,
    steps: tuple[float, ...],
    step_requests: int,
    slow_after_ms: float,
    poll_seconds: float,
    host: str = "127.0.0.1",
) -> LocalServer:
    """Start `aicml serve models:/NAME@champion` (with the challenger beside it) and wait until it is ready."""
    name = f"serve-{model_name}-{port}"
    # The controller's own token, beside the predict token: predict clients cannot freeze the rollout.
    control_token_file = ensure_token_file(token_file.with_name(f"{token_file.name}.control"))
    command = [
        sys.executable, "-m", "aicml.serving.cli", f"models:/{model_name}@champion",
        "--host", host, "--port", str(port), "--token-file", str(token_file),
        "--tracking-uri", tracking_uri, "--poll-seconds", str(poll_seconds),
        "--control-token-file", str(control_token_file),
    ]  # fmt: skip
    if challenger:
        command += [
            "--challenger", f"models:/{model_name}@challenger", "--mode", mode,
            "--steps", ",".join(str(s) for s in steps), "--step-requests", str(step_requests),
            "--slow-after-ms", str(slow_after_ms),
        ]  # fmt: skip
    spec = ServiceSpec(
        name=name,
        command=command,
        env={"MLFLOW_TRACKING_URI": tracking_uri},
        health_url=f"http://{host}:{port}/v2/health/ready",
        address=f"http://{host}:{port}",
    )
    run_dir, log_dir = home / "run", home / "logs"
    pid, _ = start(spec, run_dir, log_dir, timeout=180)
    return LocalServer(
        name, spec.address, pid, str(token_file), str(run_dir), str(log_dir), str(control_token_file)
    )


def stop_local_server(server: LocalServer) -> bool:
    return stop(Path(server.run_dir), server.name)


def _stats(arm: dict[str, float]) -> ArmStats:
    return ArmStats(int(arm["requests"]), int(arm["errors"]), int(arm["slow"]), float(arm["latency_sum"]))


def watch_rollout(
    url: str,
    token: str,
    objectives: Objectives,
    poll_seconds: float = 1.0,
    timeout_s: float = 600.0,
    control_token: str | None = None,
) -> Decision:
    """Poll the server's evidence until the decision is final (or hold at ``timeout_s``), then freeze it
    with the controller's token (``control_token``; the predict ``token`` only reads the evidence)."""
    headers = {"Authorization": f"Bearer {token}"}
    control = {"Authorization": f"Bearer {control_token or token}"}
    deadline = time.monotonic() + timeout_s
    with httpx.Client(base_url=url, headers=headers, timeout=10) as client:
        while True:
            try:
                response = client.get("/router")
            except httpx.HTTPError as exc:
                raise RolloutError(f"Cannot read the rollout evidence at {url}/router: {exc}") from exc
            if response.status_code != 200:
                raise RolloutError(f"{url}/router answered {response.status_code}: {response.text[:200]}")
            router = response.json().get("router")
            if router is None:
                raise RolloutError(f"The server at {url} serves no challenger; start it with --challenger.")
            arms = router["arms"]
            decision = decide(_stats(arms["champion"]), _stats(arms["challenger"]), objectives)
            if not decision.final and time.monotonic() >= deadline:
                decision = Decision(
                    "hold",
                    f"No decision within {timeout_s:.0f}s ({decision.reason}); the champion stays.",
                    decision.champion_requests,
                    decision.challenger_requests,
                    decision.tests,
                )
            if decision.final:
                client.post(
                    "/router/freeze", json={"action": decision.action}, headers=control
                ).raise_for_status()
                return decision
            time.sleep(poll_seconds)
