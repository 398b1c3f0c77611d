"""Build and run the model server under uvicorn (uvloop and httptools when installed)."""

from __future__ import annotations

import importlib.util
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aicml.auth import BearerAuth
from aicml.errors import ConfigurationError
from aicml.registry.checksums import parse_model_uri
from aicml.rollout.canary import RolloutPlan, TrafficRouter
from aicml.serving.app import ModelServer, ServerOptions
from aicml.serving.predlog import PredictionLog, PredictionLogConfig
from aicml.serving.runtime import ModelHost
from aicml.shutdown import DrainPolicy, draining_server


@dataclass
class ServeConfig:
    """Everything `aicml serve` takes."""

    model_uri: str
    host: str = "127.0.0.1"
    port: int = 8080
    challenger_uri: str | None = None
    rollout: RolloutPlan | None = None
    slow_after_s: float = 0.05
    # Resolved at start-up by the CLI (``aicml.serving.auth``: token file, environment, Secret block):
    # the predict clients' token (``BearerAuth(None)``: no auth, loopback only) and the rollout controller's.
    auth: BearerAuth | None = None
    control_auth: BearerAuth | None = None
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
    # Prediction logging (aicml.serving.predlog); None: off, unless run_server finds AIC_PREDICTION_LOG set.
    prediction_log: PredictionLogConfig | None = None
    # False when the caller already resolved the log from its flags and the environment (`aicml serve`):
    # then None means off, whatever AIC_PREDICTION_LOG says.
    prediction_log_from_env: bool = True
    drain: DrainPolicy = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self.drain = DrainPolicy(self.drain_s, self.grace_s)  # refuses a grace period too short for the drain


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
    if config.auth is None:
        raise ConfigurationError(
            "The model server was given no authentication; resolve it with resolve_auth."
        )
    prediction_log = None
    if config.prediction_log is not None:
        prediction_log = PredictionLog(champion.ref.name, config.prediction_log)
    return ModelServer(
        champion,
        config.auth,
        config.options,
        challenger,
        router,
        control_auth=config.control_auth,
        prediction_log=prediction_log,
    )


def run_server(config: ServeConfig) -> None:
    """Serve until interrupted."""
    import shutil

    import uvicorn

    if config.prediction_log is None and config.prediction_log_from_env:  # the edge: read once, here
        config.prediction_log = PredictionLogConfig.from_env()
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
        timeout_graceful_shutdown=config.drain.in_flight_s,
    )
    draining_server(uvicorn, server.begin_drain, config.drain)(settings).run()
