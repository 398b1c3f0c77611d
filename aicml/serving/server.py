"""Build and run the model server under uvicorn (uvloop and httptools when installed)."""

from __future__ import annotations

import importlib.util
import logging
import os
import signal
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aicml.errors import ConfigurationError
from aicml.registry.canary import RolloutPlan, TrafficRouter
from aicml.registry.checksums import parse_model_uri
from aicml.serving.app import ModelServer, ServerOptions
from aicml.serving.auth import resolve_auth, resolve_control_auth
from aicml.serving.runtime import ModelHost

log = logging.getLogger(__name__)

# Kept after the drain for unloading the models and leaving the process, out of the grace period.
_EXIT_RESERVE_S = 2.0


@dataclass
class ServeConfig:
    """Everything `aicml serve` takes."""

    model_uri: str
    host: str = "127.0.0.1"
    port: int = 8080
    challenger_uri: str | None = None
    rollout: RolloutPlan | None = None
    slow_after_s: float = 0.05
    token_file: Path | None = None
    token_block: str | None = None
    no_auth: bool = False
    control_token_file: Path | None = None
    cache_dir: Path | None = None
    poll_seconds: float = 10.0
    wait_for_model: bool = False
    max_rows: int = 10_000
    max_batch_rows: int = 2048
    options: ServerOptions = field(default_factory=ServerOptions)
    # Connections uvicorn accepts before answering 503 itself; the app's in-flight limit sheds first.
    limit_concurrency: int = 1024
    # SIGTERM: readiness answers 503 at once and the server keeps answering for drain_s (the time the
    # Service needs to stop routing here), then stops accepting and finishes what is in flight; the process
    # is gone within grace_s, below Kubernetes' default terminationGracePeriodSeconds of 30.
    drain_s: float = 5.0
    grace_s: float = 25.0

    def __post_init__(self) -> None:
        if self.drain_s < 0 or self.grace_s - self.drain_s < _EXIT_RESERVE_S + 1:
            raise ConfigurationError(
                f"The grace period ({self.grace_s:g} s) must exceed the drain ({self.drain_s:g} s) by at "
                f"least {_EXIT_RESERVE_S + 1:g} s: in-flight requests need time to finish after the drain. "
                "Lower --drain-seconds or raise --grace-seconds (and the pod's terminationGracePeriodSeconds)."
            )


def build_server(config: ServeConfig) -> ModelServer:
    """The ASGI app for ``config``; models load in its lifespan startup, before it accepts requests."""
    cache = config.cache_dir or Path(tempfile.mkdtemp(prefix="aic-serve-"))
    champion = ModelHost(
        parse_model_uri(config.model_uri),
        cache,
        config.max_rows,
        config.max_batch_rows,
        config.poll_seconds,
        wait_for_alias=config.wait_for_model,
    )
    challenger = None
    router = None
    if config.challenger_uri is not None:
        challenger = ModelHost(
            parse_model_uri(config.challenger_uri),
            cache,
            config.max_rows,
            config.max_batch_rows,
            config.poll_seconds,
        )
        router = TrafficRouter(config.rollout or RolloutPlan(), slow_after_s=config.slow_after_s)
    auth = resolve_auth(config.token_file, secret_block=config.token_block, disabled=config.no_auth)
    control = resolve_control_auth(config.control_token_file, auth)
    return ModelServer(champion, auth, config.options, challenger, router, control_auth=control)


def run_server(config: ServeConfig) -> None:
    """Serve until interrupted."""
    import shutil

    import uvicorn

    owned = config.cache_dir is None
    if owned:  # a private download cache, removed when the server stops
        config.cache_dir = Path(tempfile.mkdtemp(prefix="aic-serve-"))
    try:
        server = build_server(config)
        if owned:
            # Removed in the lifespan shutdown too: the watchdog's exit skips the `finally` here.
            server.cleanup_dir = config.cache_dir
        _run(uvicorn, server, config)
    finally:
        if owned and config.cache_dir is not None:
            shutil.rmtree(config.cache_dir, ignore_errors=True)


def _run(uvicorn: Any, server: ModelServer, config: ServeConfig) -> None:
    settings = uvicorn.Config(
        server,
        host=config.host,
        port=config.port,
        loop="uvloop" if importlib.util.find_spec("uvloop") else "asyncio",
        http="httptools" if importlib.util.find_spec("httptools") else "h11",
        lifespan="on",
        log_level="warning",
        access_log=False,
        limit_concurrency=config.limit_concurrency,
        timeout_keep_alive=30,
        # In-flight requests get what is left of the grace period after the drain, less the exit reserve.
        timeout_graceful_shutdown=config.grace_s - config.drain_s - _EXIT_RESERVE_S,
    )
    _draining_server(uvicorn, server, config)(settings).run()


def _draining_server(uvicorn: Any, app: ModelServer, config: ServeConfig) -> Any:
    """uvicorn's Server, with SIGTERM draining first (uvicorn alone stops accepting at once, while the
    Service still routes here, and then dies by the re-raised signal rather than exiting 0)."""

    class DrainingServer(uvicorn.Server):  # type: ignore[misc,name-defined]
        stop_at: float | None = None

        def handle_exit(self, sig: int, frame: Any) -> None:
            if sig != signal.SIGTERM:
                super().handle_exit(sig, frame)  # Ctrl-C: uvicorn's own behaviour
            elif self.stop_at is None:
                app.begin_drain()
                self.stop_at = time.monotonic() + config.drain_s
                _exit_by(time.monotonic() + config.grace_s)
            else:
                self.stop_at = time.monotonic()  # a second SIGTERM: stop accepting now

        async def on_tick(self, counter: int) -> bool:
            if self.stop_at is not None and time.monotonic() >= self.stop_at:
                self.should_exit = True
            return bool(await super().on_tick(counter))

    return DrainingServer


def _exit_by(deadline: float) -> None:
    """Leave at ``deadline`` whatever still runs (a registry call stuck in a thread would hold the exit)."""

    def watchdog() -> None:
        time.sleep(max(deadline - time.monotonic(), 0))
        log.error("The server did not stop within its grace period; exiting.")
        os._exit(1)

    threading.Thread(target=watchdog, name="grace-watchdog", daemon=True).start()
