"""`aicml serve`: serve a registered model (and optionally roll out a challenger beside it)."""

from __future__ import annotations

import math
import os
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

if TYPE_CHECKING:
    from aicml.serving.predlog import PredictionLogConfig

app = typer.Typer(help="Serve registered models.", no_args_is_help=True)


@app.command("serve")
def serve(
    model_uri: Annotated[str, typer.Argument(help="Registry URI, for example models:/churn@champion.")],
    host: Annotated[str, typer.Option(help="Interface to bind.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port to bind.")] = 8080,
    challenger: Annotated[
        str | None, typer.Option(help="Challenger URI (for example models:/churn@challenger) to roll out.")
    ] = None,
    mode: Annotated[
        str, typer.Option(help="Rollout mode with a challenger: canary, ab or shadow.")
    ] = "canary",
    steps: Annotated[
        str, typer.Option(help="Canary shares of the challenger, comma separated.")
    ] = "0.05,0.25,0.5",
    step_requests: Annotated[int, typer.Option(help="Requests per canary step.")] = 500,
    ab_share: Annotated[float, typer.Option(help="A/B share of request keys sent to the challenger.")] = 0.5,
    sticky_header: Annotated[
        str, typer.Option(help="A/B: header that pins a caller to an arm.")
    ] = "x-request-key",
    shadow_fraction: Annotated[float, typer.Option(help="Shadow: share of requests mirrored.")] = 0.1,
    slow_after_ms: Annotated[
        float, typer.Option(help="Latency objective: slower requests count against an arm.")
    ] = 50.0,
    token_file: Annotated[
        Path | None, typer.Option(help="File holding the bearer token (a mounted Secret).")
    ] = None,
    control_token_file: Annotated[
        Path | None,
        typer.Option(
            help="File holding the rollout controller's token (POST /router/freeze); not the predict token."
        ),
    ] = None,
    token_block: Annotated[
        str | None, typer.Option(help="Prefect Secret block holding the bearer token.")
    ] = None,
    no_auth: Annotated[
        bool, typer.Option("--no-auth", help="Disable authentication (local use only).")
    ] = False,
    tracking_uri: Annotated[
        str | None, typer.Option(help="MLflow server; defaults to the local stack's.")
    ] = None,
    poll_seconds: Annotated[float, typer.Option(help="How often to check whether the alias moved.")] = 10.0,
    wait_for_model: Annotated[
        bool,
        typer.Option(
            "--wait-for-model",
            help="Start even when the alias does not resolve yet: not ready until it does (a platform "
            "deployed before its first champion).",
        ),
    ] = False,
    max_in_flight: Annotated[int, typer.Option(help="Predict requests at once before answering 503.")] = 64,
    max_body_bytes: Annotated[int, typer.Option(help="Largest request body (413 beyond).")] = 1 << 20,
    max_rows: Annotated[int, typer.Option(help="Most rows in one request (413 beyond).")] = 10_000,
    drain_seconds: Annotated[
        float,
        typer.Option(
            help="After SIGTERM: readiness answers 503 and the server keeps answering this long before it "
            "stops accepting, so the Service stops routing here first."
        ),
    ] = 5.0,
    grace_seconds: Annotated[
        float,
        typer.Option(
            help="After SIGTERM the process is gone within this long (drain, in-flight requests, unload); "
            "keep it below the pod's terminationGracePeriodSeconds."
        ),
    ] = 25.0,
    prediction_log: Annotated[
        str | None,
        typer.Option(
            "--prediction-log",
            help="Log each prediction (inputs, output, version, request id, latency) as Parquet: off, on "
            "(<AIC_HOME>/predictions), a directory, or an object-storage URL such as s3://bucket/predictions. "
            "Default: AIC_PREDICTION_LOG, else off.",
        ),
    ] = None,
    prediction_log_sample: Annotated[
        float | None,
        typer.Option(
            "--prediction-log-sample",
            help="Share of requests whose predictions are logged, 0 to 1. Default: "
            "AIC_PREDICTION_LOG_SAMPLE, else 1.",
        ),
    ] = None,
) -> None:
    """Serve MODEL_URI with the MLflow scoring protocol, Open Inference Protocol v2 and /metrics."""
    import logging

    from aicml import compat
    from aicml.errors import AicError

    compat.quiet_downloads()  # a process start: one "loaded model" line per load, no progress bars

    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("aicml").setLevel(logging.INFO)
    from aicml.auth import refuse_open_server
    from aicml.registry.checksums import parse_model_uri
    from aicml.registry.tracking import Tracking
    from aicml.rollout.canary import RolloutPlan
    from aicml.serving.app import ServerOptions
    from aicml.serving.auth import resolve_auth, resolve_control_auth
    from aicml.serving.server import ServeConfig, run_server

    try:
        # Before anything else: a bad flag is refused by name before the model or MLflow is touched.
        log_config = prediction_log_config(prediction_log, prediction_log_sample, os.environ)
        plan = None
        if challenger is not None:
            plan = RolloutPlan(
                mode=mode,  # type: ignore[arg-type]
                steps=tuple(float(s) for s in steps.split(",")),
                step_requests=step_requests,
                ab_share=ab_share,
                sticky_header=sticky_header.lower(),
                shadow_fraction=shadow_fraction,
            )
        # Refuse a bad URI or a missing token before touching MLflow's process-wide settings.
        parse_model_uri(model_uri)
        refuse_open_server(host, no_auth, "--no-auth")
        predict_auth = resolve_auth(token_file, secret_block=token_block, disabled=no_auth)
        control_auth = resolve_control_auth(control_token_file, predict_auth)
        if tracking_uri is None:  # AIC_MLFLOW_TRACKING_URI, then MLFLOW_TRACKING_URI, then the local stack's
            from blocks.settings import AicSettings

            tracking_uri = AicSettings().tracking_uri
        Tracking(uri=tracking_uri).activate()
        config = ServeConfig(
            model_uri,
            host=host,
            port=port,
            challenger_uri=challenger,
            rollout=plan,
            slow_after_s=slow_after_ms / 1000,
            auth=predict_auth,
            control_auth=control_auth,
            poll_seconds=poll_seconds,
            wait_for_model=wait_for_model,
            max_rows=max_rows,
            options=ServerOptions(max_body_bytes=max_body_bytes, max_in_flight=max_in_flight),
            drain_s=drain_seconds,
            grace_s=grace_seconds,
            prediction_log=log_config,
            prediction_log_from_env=False,  # resolved above: flags over AIC_PREDICTION_LOG*
        )
        run_server(config)
    except AicError as exc:
        typer.secho(str(exc), fg=typer.colors.RED, err=True)
        raise typer.Exit(1) from exc


_OFF = ("off", "false", "0", "no")


def prediction_log_config(
    location: str | None,
    sample: float | None,
    environ: Mapping[str, str],
    home: Path | None = None,
) -> PredictionLogConfig | None:
    """The prediction log `aicml serve` runs with: the flags over the ``AIC_PREDICTION_LOG*`` variables
    (the database and queue settings always come from the variables); None when logging is off.

    Raises ConfigurationError naming the flag when a flag's value is unusable.
    """
    from aicml.errors import ConfigurationError
    from aicml.serving.predlog import PredictionLogConfig

    env = dict(environ)
    if sample is not None:
        if math.isnan(sample) or not 0.0 <= sample <= 1.0:
            raise ConfigurationError(
                f"--prediction-log-sample must be a share of requests between 0 and 1, not {sample:g}."
            )
        env["AIC_PREDICTION_LOG_SAMPLE"] = repr(sample)
    if location is not None:
        env["AIC_PREDICTION_LOG"] = _prediction_log_location(location)
    config = PredictionLogConfig.from_env(env, home)
    if config is None and sample is not None:
        raise ConfigurationError(
            "--prediction-log-sample needs the prediction log on: add --prediction-log on, a directory or "
            "a URL (or set AIC_PREDICTION_LOG)."
        )
    return config


def _prediction_log_location(value: str) -> str:
    """``value`` of ``--prediction-log`` checked and normalised: off/on as given, a URL whose filesystem
    is installed, or a directory made absolute (created when missing)."""
    from aicml.errors import ConfigurationError

    text = value.strip()
    if not text:
        raise ConfigurationError(
            "--prediction-log needs off, on, a directory or a URL such as s3://bucket/predictions."
        )
    if text.lower() in (*_OFF, "on", "true", "1", "yes"):
        return text
    if "://" in text:
        from fsspec import get_filesystem_class

        protocol, _, rest = text.partition("://")
        try:
            get_filesystem_class(protocol)
        except (ValueError, ImportError) as exc:
            raise ConfigurationError(
                f"--prediction-log {text}: cannot write to {protocol}:// URLs ({exc}); use a directory or an "
                "s3:// URL."
            ) from None
        if not rest.strip("/"):
            raise ConfigurationError(f"--prediction-log {text}: the URL names no bucket or directory.")
        return text
    directory = Path(text).expanduser().absolute()
    if directory.exists() and not directory.is_dir():
        raise ConfigurationError(f"--prediction-log {text}: {directory} is a file, not a directory.")
    try:
        directory.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ConfigurationError(
            f"--prediction-log {text}: cannot create the directory {directory} ({exc.strerror})."
        ) from None
    if not os.access(directory, os.W_OK | os.X_OK):
        raise ConfigurationError(f"--prediction-log {text}: the directory {directory} is not writable.")
    return str(directory)


def main() -> None:
    app()


if __name__ == "__main__":
    main()
