"""`aicml agents ...`: serve the agent API, load agents and graphs from a file, run the demo scenario."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

app = typer.Typer(help="Agent orchestration: registry, lifecycle, coordination.", no_args_is_help=True)


def _fail(message: str) -> None:
    typer.secho(message, fg=typer.colors.RED, err=True)
    raise typer.Exit(1)


@app.command()
def serve(
    host: Annotated[str, typer.Option(help="Interface to bind.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port to listen on.")] = 8080,
    database_url: Annotated[
        str | None,
        typer.Option(help="agent_db URL; default AIC_AGENTS_DATABASE_URL, the k8s env, or SQLite."),
    ] = None,
    log_level: Annotated[str, typer.Option(help="uvicorn log level.")] = "warning",
    drain_seconds: Annotated[
        float,
        typer.Option(
            help="After SIGTERM: /readyz answers 503 and the service keeps answering this long before it "
            "stops accepting, so the Service stops routing here first."
        ),
    ] = 5.0,
    grace_seconds: Annotated[
        float,
        typer.Option(
            help="After SIGTERM the process is gone within this long (drain, calls in flight, releasing "
            "leases); keep it below the pod's terminationGracePeriodSeconds."
        ),
    ] = 25.0,
) -> None:
    """Serve /v1/agents, /v1/coordinations, /healthz, /readyz, /metrics and /openapi.json.

    Invokers send AIC_AGENTS_TOKEN, administrators AIC_AGENTS_ADMIN_TOKEN; python agents only from
    AIC_AGENTS_PYTHON_MODULES, remote agents only under AIC_AGENTS_REMOTE_URLS.
    """
    from pydantic import SecretStr

    from aicml.agents.server import run_server
    from aicml.agents.settings import AgentSettings
    from aicml.auth import refuse_open_server
    from aicml.errors import AicError
    from aicml.shutdown import DrainPolicy

    settings = AgentSettings()
    if database_url:
        settings.database_url = SecretStr(database_url)
    try:
        refuse_open_server(host, settings.auth_disabled, "AIC_AGENTS_AUTH_DISABLED")
        drain = DrainPolicy(drain_seconds, grace_seconds)
        typer.echo(
            f"Agent service on http://{host}:{port} (auth {'off' if settings.auth_disabled else 'on'})"
        )
        run_server(settings, host, port, drain, log_level=log_level)
    except AicError as exc:
        _fail(str(exc))


@app.command()
def load(
    path: Annotated[Path, typer.Argument(help="YAML/JSON with `agents: [...]` and `coordinations: [...]`.")],
    activate: Annotated[bool, typer.Option(help="Activate each agent after a passing health check.")] = True,
    actor: Annotated[str, typer.Option(help="Who, for the audit trail.")] = "cli",
) -> None:
    """Register agents and save coordination graphs from a file into agent_db."""
    import yaml

    from aicml.agents.graph import Coordination
    from aicml.agents.service import AgentService
    from aicml.agents.settings import AgentSettings
    from aicml.agents.spec import AgentSpec, LifecycleState
    from aicml.errors import AicError

    document = yaml.safe_load(path.read_text())
    service = AgentService.from_url(AgentSettings().resolved_database_url())
    try:
        for item in document.get("agents", []):
            spec = AgentSpec.model_validate(item)
            service.register(spec, actor)
            if activate:
                service.transition(spec.name, spec.version, LifecycleState.ACTIVE, actor, "loaded from file")
            typer.echo(f"agent {spec.key}: {'active' if activate else 'draft'}")
        for item in document.get("coordinations", []):
            coordination = Coordination.model_validate(item)
            service.store.save_graph(coordination)
            typer.echo(f"coordination {coordination.name}: {coordination.graph.pattern}")
    except AicError as exc:
        _fail(str(exc))
    finally:
        service.close()


@app.command()
def demo(
    database_url: Annotated[
        str | None, typer.Option(help="agent_db URL; default a fresh SQLite file under .aic/.")
    ] = None,
    tracking_uri: Annotated[
        str | None, typer.Option(help="MLflow server for the traces; default MLFLOW_TRACKING_URI, else none.")
    ] = None,
    text: Annotated[str, typer.Option(help="The support ticket the agents work on.")] = (
        "Hello, customer 4711 here. I was charged twice on my last invoice and want a refund."
    ),
) -> None:
    """Register agents, roll a new version out by canary, run four patterns end to end and print the traces."""
    from aicml.agents.demo import run_demo

    report = run_demo(database_url=database_url, tracking_uri=tracking_uri, text=text, echo=typer.echo)
    typer.echo(json.dumps(report, indent=2, default=str))


if __name__ == "__main__":
    app()
