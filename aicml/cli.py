"""The `aicml` command: the local stack, the demo, and running the pipeline on your own data."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Annotated, Any

import typer

app = typer.Typer(help="aic-ml: the AIC platform's AI/ML services as Prefect flows.", no_args_is_help=True)


def _stack() -> Any:
    from aicml.stack.local import LocalStack

    return LocalStack()


def _fail(message: str) -> None:
    typer.secho(message, fg=typer.colors.RED, err=True)
    raise typer.Exit(1)


@app.command()
def up(
    auth: Annotated[
        bool | None,
        typer.Option(
            "--auth/--no-auth",
            help="Require a password for the Prefect API and UI (kept in <home>/prefect-api-auth, mode 0600). "
            "Default: as the stack was last started.",
        ),
    ] = None,
) -> None:
    """Start the local stack (Prefect server, MLflow server, metrics exporter, worker); idempotent."""
    from aicml.errors import AicError

    stack = _stack()
    typer.echo(f"Starting the local stack under {stack.home} ...")
    try:
        stack.up(auth=auth)
    except AicError as exc:
        _fail(str(exc))
    status()


@app.command()
def down() -> None:
    """Stop exactly what `aicml up` started, by pid."""
    stopped = _stack().down()
    typer.echo(f"Stopped: {', '.join(stopped)}" if stopped else "Nothing was running.")


@app.command()
def status(
    last: Annotated[int, typer.Option(min=1, help="Runs per deployment for the success rate.")] = 20,
) -> None:
    """Show what runs, where, the UI addresses, and each deployment's success rate over its last runs."""
    stack = _stack()
    states = stack.status()
    for item in states:
        state = "running" if item.healthy else ("starting/unhealthy" if item.pid else "stopped")
        pid = f"pid {item.pid}" if item.pid else ""
        typer.echo(f"  {item.name:<17} {state:<18} {pid:<11} {item.address}")
    s = stack.settings
    typer.echo(f"\n  Prefect UI : {s.prefect_ui_url}\n  MLflow UI  : {s.tracking_uri}")
    typer.echo(f"  Metrics    : http://{s.host}:{s.metrics_port}/metrics\n  State      : {stack.home}")
    if stack.auth_string() is not None:  # the file's name only: a password is never printed
        typer.echo(f"  Prefect API auth: on; user `aicml`, password in {stack.auth_file}")
    if next(st for st in states if st.name == "prefect-server").healthy:
        from aicml.stack.history import deployment_health

        with stack.prefect_api():
            health = deployment_health(s.prefect_url, last)
        if health:
            typer.echo(f"\n  Deployments (last {last} runs; the seed's target is 95% success):")
        for h in health:
            rate = "no finished runs" if h.success_rate is None else f"{h.success_rate:.0%} success"
            typer.echo(
                f"    {h.deployment:<34} {h.runs:>3} runs  {h.succeeded:>3} ok  {h.failed:>3} failed  {rate}"
            )


@app.command("demo-data")
def demo_data(
    out: Annotated[Path, typer.Option(help="Directory to write the demo data to.")] = Path(".aic/demo"),
    rows: Annotated[int, typer.Option(min=100, help="Rows of the clean dataset.")] = 50_000,
) -> None:
    """Generate the demo churn data: CSV parts, a corrupted batch, and a SQLite table."""
    from aicml.data.demo import write_demo_data

    files = write_demo_data(out, rows=rows)
    typer.echo(json.dumps(files.__dict__, indent=2))


@app.command()
def deploy(
    pool: Annotated[str | None, typer.Option(help="Only deployments on this work pool.")] = "local",
) -> None:
    """Register the deployments of prefect.yaml with the Prefect server."""
    from aicml.errors import AicError
    from aicml.stack.deploy import register_deployments

    stack = _stack()
    try:
        names = register_deployments(stack, Path.cwd(), pool)
    except AicError as exc:
        _fail(str(exc))
    typer.echo("Registered: " + ", ".join(names))


def _run_and_report(name: str, parameters: dict[str, Any] | None, timeout: float) -> Any:
    from aicml.stack.deploy import run_deployment_and_wait

    stack = _stack()
    stack.export_client_env()
    started = time.perf_counter()
    run = run_deployment_and_wait(name, parameters, timeout)
    state = run.state
    typer.echo(
        f"Flow run {run.name!r} of {name}: {state.name} in {time.perf_counter() - started:.0f}s "
        f"-> {stack.settings.prefect_ui_url}/runs/flow-run/{run.id}"
    )
    return run


@app.command()
def run(
    source: Annotated[str, typer.Argument(help="Files (path, glob, URL) or SQLAlchemy URL#table.")],
    target: Annotated[str, typer.Option(help="The label column.")],
    model_name: Annotated[str, typer.Option(help="Registry name of the model.")],
    problem: Annotated[
        str | None, typer.Option(help="classification or regression; inferred if omitted.")
    ] = None,
    epochs: Annotated[int, typer.Option(min=1, help="Epochs of the Lightning model.")] = 8,
    deployment: Annotated[str, typer.Option(help="Deployment to run.")] = "ml-pipeline/local",
    timeout: Annotated[float, typer.Option(help="Seconds to wait for the run.")] = 3600,
) -> None:
    """Run the pipeline on your own data as a deployment run through the local worker."""
    params = {
        "source": str(Path(source).resolve()) if Path(source).exists() else source,
        "target": target,
        "model_name": model_name,
        "problem": problem,
        "trainer": {"max_epochs": epochs, "progress_bar": False},
    }
    flow_run = _run_and_report(deployment, {"params": params}, timeout)
    if not flow_run.state.is_completed():
        _fail(flow_run.state.message or "The run did not complete.")


@app.command()
def predict(
    model_uri: Annotated[str, typer.Argument(help="For example models:/churn@champion.")],
    csv: Annotated[Path, typer.Option(help="CSV file of rows to predict.")],
    rows: Annotated[int, typer.Option(help="How many rows to predict.")] = 5,
) -> None:
    """Predict rows of a CSV with a registered model."""
    import pandas as pd

    from aicml.serving.smoke import predict_rows

    stack = _stack()
    stack.export_client_env()
    frame = pd.read_csv(csv).head(rows)
    typer.echo(json.dumps(predict_rows(model_uri, frame)))


@app.command()
def demo(
    rows: Annotated[int, typer.Option(min=1000, help="Rows of the demo dataset.")] = 50_000,
) -> None:
    """Start the stack, run the pipeline as a deployment, show the quality gate stop a bad batch, predict."""
    import pandas as pd

    from aicml.data.demo import write_demo_data
    from aicml.errors import AicError
    from aicml.redaction import redact
    from aicml.registry.tracking import Tracking
    from aicml.serving.smoke import predict_rows
    from aicml.stack.deploy import register_deployments

    started = time.perf_counter()
    stack = _stack()
    typer.secho("1/6 Starting the local stack", bold=True)
    try:
        stack.up()
    except AicError as exc:
        _fail(str(exc))
    stack.export_client_env()
    s = stack.settings
    typer.secho(f"2/6 Generating {rows} rows of churn data under .aic/demo", bold=True)
    sql_url = None
    if s.database_url is not None:  # the stack runs on PostgreSQL: the demo table goes there too
        from aicml.stack.local import ensure_postgres_database

        ensure_postgres_database(s.database_url.get_secret_value(), "aic_demo")
        sql_url = s.database_for("aic_demo", "psycopg")
    files = write_demo_data(Path(".aic/demo"), rows=rows, sql_url=sql_url)
    typer.echo(
        f"    CSV: {files.clean_glob}\n    table: {redact(files.sqlite_url)}#churn\n    bad batch: {files.corrupted}"
    )
    typer.secho("3/6 Registering the `local` deployments from prefect.yaml", bold=True)
    typer.echo("    " + ", ".join(register_deployments(stack, Path.cwd(), "local")))
    typer.secho(
        "4/6 Running ml-pipeline/local through the worker (ingest, validate, train, register, "
        "promote, smoke-serve)",
        bold=True,
    )
    good = _run_and_report("ml-pipeline/local", None, 3600)
    if not good.state.is_completed():
        _fail(f"The pipeline failed: {good.state.message}. Logs: {stack.log_dir}/worker.log")
    typer.secho("5/6 Running it again on a corrupted batch: the quality gate must stop it", bold=True)
    bad_params = {
        "params": {
            "source": str(Path(files.corrupted).resolve()),
            "target": "churn",
            "model_name": "churn",
            "trainer": {"progress_bar": False},
        }
    }
    bad = _run_and_report("ml-pipeline/local", bad_params, 1800)
    if bad.state.is_completed():
        _fail("The corrupted batch passed the gate; this is a bug.")
    typer.secho(
        f"    Stopped before training, as it should be:\n    {bad.state.message}", fg=typer.colors.YELLOW
    )
    typer.secho("6/6 Asking the champion for predictions", bold=True)
    Tracking(uri=s.tracking_uri, experiment=s.experiment).activate()  # predict_rows loads through pyfunc
    sample = pd.read_csv(sorted(Path(".aic/demo").glob("churn-part-*.csv"))[0]).head(3)
    predictions = predict_rows("models:/churn@champion", sample.drop(columns=["churn"]))
    for (_, row), predicted in zip(sample.iterrows(), predictions, strict=True):
        typer.echo(f"    customer {row['customer_id']}: predicted churn={predicted} (actual {row['churn']})")
    typer.secho(f"\nDone in {time.perf_counter() - started:.0f}s.", fg=typer.colors.GREEN, bold=True)
    typer.echo(f"  Prefect UI : {s.prefect_ui_url}  (flow runs, task runs, artifacts)")
    typer.echo(f"  MLflow UI  : {s.tracking_uri}  (experiment {s.experiment!r}, model 'churn' @champion)")
    typer.echo(f"  Metrics    : http://{s.host}:{s.metrics_port}/metrics")
    typer.echo("  Stop with  : make down   (or .venv/bin/aicml down)")


pools_app = typer.Typer(help="Work pools: create or update them from the templates in deployments/.")
app.add_typer(pools_app, name="pools")


@pools_app.command("apply")
def pools_apply() -> None:
    """Create or update pools `local` (process), `k8s-cpu` and `k8s-gpu` (Kubernetes, with their base job templates)."""
    from aicml.kube.pools import apply_pools

    s = _stack().settings
    for pool, what in apply_pools(s.prefect_url, s.work_pool, s.pool_concurrency):
        typer.echo(f"  {pool:<8} {what}")


@app.command()
def plan(
    show: Annotated[bool, typer.Option(help="Print each rendered Job as YAML.")] = False,
) -> None:
    """Render the final Kubernetes Job of every deployment and lint it; exit 1 on any finding."""
    import yaml

    from aicml.kube.jobs import plan as plan_jobs

    findings = 0
    for job in plan_jobs(Path.cwd()):
        verdict = "ok" if not job.findings else f"{len(job.findings)} finding(s)"
        typer.echo(f"  {job.deployment:<28} pool {job.pool:<8} {verdict}")
        for finding in job.findings:
            typer.secho(f"      [{finding.rule}] {finding.message}", fg=typer.colors.RED)
        if show:
            typer.echo(yaml.safe_dump(job.manifest, sort_keys=False))
        findings += len(job.findings)
    if findings:
        raise typer.Exit(1)


@app.command()
def resume(
    flow_run_id: Annotated[str, typer.Argument(help="The failed or crashed flow run to resume.")],
    timeout: Annotated[float, typer.Option(help="Seconds to wait for the resumed run.")] = 3600,
) -> None:
    """Rerun a failed deployment run: completed stages come from persisted results, the rest runs again."""
    from uuid import UUID

    from aicml.errors import AicError
    from aicml.stack.resume import resume_flow_run

    _stack().export_client_env()
    try:
        run = resume_flow_run(UUID(flow_run_id), timeout)
    except (AicError, ValueError) as exc:
        _fail(str(exc))
    typer.echo(f"Resumed as flow run {run.name!r} ({run.id}): {run.state.name}")
    if not run.state.is_completed():
        raise typer.Exit(1)


@app.command("metrics-exporter")
def metrics_exporter(
    host: Annotated[str, typer.Option(help="Interface to bind.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port to serve /metrics on.")] = 9464,
    directory: Annotated[
        Path | None, typer.Option("--dir", help="PROMETHEUS_MULTIPROC_DIR to merge (default: the stack's).")
    ] = None,
) -> None:
    """Serve /metrics for every process sharing PROMETHEUS_MULTIPROC_DIR (a sidecar on Kubernetes)."""
    from aicml.observability.exporter import main as serve_metrics

    serve_metrics(["--host", host, "--port", str(port), "--dir", str(directory or _stack().metrics_dir)])


def _register_subcommands() -> None:
    from aicml.agents.cli import app as agents_app
    from aicml.data.cli import app as data_app
    from aicml.kube.cli import app as kube_app
    from aicml.serving.cli import serve as serve_command
    from aicml.stack.backup_cli import backup as backup_command
    from aicml.stack.backup_cli import restore as restore_command

    app.add_typer(kube_app, name="k8s", help="Render, validate, apply and verify the platform on Kubernetes.")
    app.add_typer(
        data_app, name="data", help="Data integration: watch a landing folder, render the Dask spec."
    )
    app.add_typer(agents_app, name="agents", help="Agent orchestration: registry, lifecycle, coordination.")
    app.command("serve")(serve_command)
    app.command("backup")(backup_command)
    app.command("restore")(restore_command)


def main() -> None:
    import os

    # The command is a process entry point: keep third-party phone-home off unless the user turned it on.
    for name, value in (("PREFECT_SERVER_ANALYTICS_ENABLED", "false"), ("GX_ANALYTICS_ENABLED", "False")):
        os.environ.setdefault(name, value)
    _register_subcommands()
    app()
