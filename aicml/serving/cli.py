"""`aicml serve`: serve a registered model (and optionally roll out a challenger beside it)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

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
        )
        run_server(config)
    except AicError as exc:
        typer.secho(str(exc), fg=typer.colors.RED, err=True)
        raise typer.Exit(1) from exc


def main() -> None:
    app()


if __name__ == "__main__":
    main()
