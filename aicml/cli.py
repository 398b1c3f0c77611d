"""The `aicml` command: the local stack, the demo, and running the pipeline on your own data."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Annotated, Any, NoReturn

import typer

app = typer.Typer(help="aic-ml: the AIC platform's AI/ML services as Prefect flows.", no_args_is_help=True)


def _version(value: bool) -> None:
    if value:
        from importlib.metadata import PackageNotFoundError
        from importlib.metadata import version as installed

        try:
            typer.echo(f"aic-ml {installed('aic-ml')}")
        except PackageNotFoundError:  # a source tree that was never installed
            from aicml import __version__

            typer.echo(f"aic-ml {__version__}")
        raise typer.Exit()


@app.callback()
def _main(
    version: Annotated[
        bool,
        typer.Option("--version", callback=_version, is_eager=True, help="Print the version and exit."),
    ] = False,
) -> None:
    """aic-ml: the AIC platform's AI/ML services as Prefect flows."""


def _stack() -> Any:
    from aicml.stack.local import LocalStack

    return LocalStack()


def _fail(message: str) -> NoReturn:
    typer.secho(message, fg=typer.colors.RED, err=True)
    raise typer.Exit(1)


def _answers(url: str, timeout: float = 3.0) -> bool:
    """Whether a server answers at ``url`` at all (an auth challenge counts: it is up)."""
    import httpx

    for limit in (timeout, 5 * timeout):  # slow is not down: one longer look before saying so
        try:
            return httpx.get(url, timeout=limit).status_code < 500
        except httpx.TimeoutException:
            continue
        except httpx.HTTPError:
            return False
    return False


def _require_up(stack: Any, *, prefect: bool = True, mlflow: bool = True) -> None:
    """Fail at once, naming what is down, when a server the command needs does not answer.

    The local stack's services are checked through `LocalStack.require_up`; a Prefect API or MLflow
    server the user chose (``PREFECT_API_URL``, ``MLFLOW_TRACKING_URI`` or their ``AIC_`` settings) is
    checked instead of the local one.
    """
    from aicml.errors import StackError
    from aicml.redaction import redact

    s = stack.settings
    remote: list[tuple[str, str, str, str]] = []
    local = False
    if prefect:
        if s.prefect_url == s.local_prefect_url:
            local = True
        else:
            remote.append(
                ("Prefect API", s.prefect_url, f"{s.prefect_url.rstrip('/')}/health", "PREFECT_API_URL")
            )
    if mlflow:
        if s.tracking_uri == s.local_tracking_uri:
            local = True
        elif s.tracking_uri.startswith(("http://", "https://")):
            remote.append(
                ("MLflow", s.tracking_uri, f"{s.tracking_uri.rstrip('/')}/health", "MLFLOW_TRACKING_URI")
            )
    if local:
        try:
            stack.require_up()
        except StackError as exc:
            _fail(str(exc))
    for name, url, health, variable in remote:
        if not _answers(health):
            _fail(
                f"The {name} at {redact(url)} does not answer (set by {variable} or its AIC_ setting). "
                f"Check that server, or unset {variable} to use the local stack (`aicml up`)."
            )


def require_stack(*, prefect: bool = True, mlflow: bool = True) -> Any:
    """The stack, after checking that the servers a command needs answer (exit 1 naming what is down),
    with this process pointed at them; for sub-apps (`aicml data landed`) as for the commands here."""
    stack = _stack()
    _require_up(stack, prefect=prefect, mlflow=mlflow)
    stack.export_client_env()
    return stack


def _print_exports(stack: Any) -> None:
    for name, value in stack.shell_exports().items():
        typer.echo(f"export {name}={value}")


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
    with_prometheus: Annotated[
        bool,
        typer.Option(
            "--with-prometheus",
            help="Also start Prometheus (scraping the metrics exporter, alert rules loaded).",
        ),
    ] = False,
) -> None:
    """Start the local stack (Prefect server, MLflow server, metrics exporter, worker); idempotent.

    Then prints the `export` lines that point a shell's Prefect, MLflow and aicml at it."""
    from aicml.errors import AicError

    stack = _stack()
    typer.echo(f"Starting the local stack under {stack.home} ...")
    try:
        stack.up(auth=auth, with_prometheus=with_prometheus)
    except AicError as exc:
        _fail(str(exc))
    _print_status(stack, last=20)
    typer.echo('\nFor this shell (or run: eval "$(aicml env)"):')
    _print_exports(stack)


@app.command()
def env() -> None:
    """Print `export NAME=value` lines that point Prefect, MLflow and aicml at the local stack.

    Use it as: eval "$(aicml env)"
    """
    _print_exports(_stack())


@app.command()
def down() -> None:
    """Stop exactly what `aicml up` started, by pid."""
    stopped = _stack().down()
    typer.echo(f"Stopped: {', '.join(stopped)}" if stopped else "Nothing was running.")


def _status_data(stack: Any, last: int) -> dict[str, Any]:
    """What `status` reports, as data: each service (up or not, needed or not), the addresses, and each
    deployment's success rate; ``ok`` is False when a service the clients use is down."""
    import contextlib

    from aicml.redaction import redact

    s = stack.settings
    remote_prefect = s.prefect_url != s.local_prefect_url
    remote_mlflow = s.tracking_uri != s.local_tracking_uri
    replaced = {"prefect-server": "PREFECT_API_URL" if remote_prefect else None,
                "mlflow-server": "MLFLOW_TRACKING_URI" if remote_mlflow else None}  # fmt: skip
    services = []
    for item in stack.status():
        state = "running" if item.healthy else ("starting/unhealthy" if item.pid else "stopped")
        instead = replaced.get(item.name)
        services.append({"name": item.name, "state": state, "healthy": item.healthy, "pid": item.pid,
                         "address": item.address, "used": instead is None,
                         **({"instead": instead} if instead else {})})  # fmt: skip
    prefect_up = next(x for x in services if x["name"] == "prefect-server")["healthy"]
    if remote_prefect:
        prefect_up = _answers(f"{s.prefect_url.rstrip('/')}/health")
        services.append({"name": "prefect-api", "state": "running" if prefect_up else "not answering",
                         "healthy": prefect_up, "pid": None, "address": redact(s.prefect_url), "used": True})  # fmt: skip
    if remote_mlflow and s.tracking_uri.startswith(("http://", "https://")):
        up = _answers(f"{s.tracking_uri.rstrip('/')}/health")
        services.append({"name": "mlflow-tracking", "state": "running" if up else "not answering",
                         "healthy": up, "pid": None, "address": redact(s.tracking_uri), "used": True})  # fmt: skip
    deployments: list[dict[str, Any]] = []
    if prefect_up:
        from aicml.stack.history import deployment_health

        with stack.prefect_api() if not remote_prefect else contextlib.nullcontext():
            deployments = [
                {
                    "deployment": h.deployment,
                    "runs": h.runs,
                    "succeeded": h.succeeded,
                    "failed": h.failed,
                    "success_rate": h.success_rate,
                }
                for h in deployment_health(s.prefect_url, last)
            ]
    return {
        "ok": all(x["healthy"] for x in services if x["used"]),
        "services": services,
        "prefect_ui": redact(s.prefect_ui_url),
        "mlflow_ui": redact(s.tracking_uri),
        "metrics": f"http://{s.host}:{s.metrics_port}/metrics",
        # the dashboards' panels as Prometheus graphs, while `aicml up --with-prometheus` runs Prometheus
        "metrics_page": next(
            (stack.metrics_page_url for x in services if x["name"] == "prometheus" and x["healthy"]), None
        ),
        "home": str(stack.home),
        "prefect_api_auth": stack.auth_string() is not None,
        "last_runs": last,
        "deployments": deployments,
    }


def _print_status(stack: Any, last: int) -> dict[str, Any]:
    data = _status_data(stack, last)
    for item in data["services"]:
        pid = f"pid {item['pid']}" if item["pid"] else ""
        note = f"  (not used: {item['instead']} points elsewhere)" if item.get("instead") else ""
        typer.echo(f"  {item['name']:<17} {item['state']:<18} {pid:<11} {item['address']}{note}")
    typer.echo(f"\n  Prefect UI : {data['prefect_ui']}\n  MLflow UI  : {data['mlflow_ui']}")
    typer.echo(f"  Metrics    : {data['metrics']}\n  State      : {data['home']}")
    if data["metrics_page"]:
        typer.echo(
            f"  Dashboards : {data['metrics_page']}  (the Grafana panels' queries in the local Prometheus)"
        )
    if data["prefect_api_auth"]:  # the file's name only: a password is never printed
        typer.echo(f"  Prefect API auth: on; user `aicml`, password in {stack.auth_file}")
    if data["deployments"]:
        typer.echo(f"\n  Deployments (last {last} runs; target 95% success):")
    for h in data["deployments"]:
        rate = "no finished runs" if h["success_rate"] is None else f"{h['success_rate']:.0%} success"
        typer.echo(
            f"    {h['deployment']:<34} {h['runs']:>3} runs  {h['succeeded']:>3} ok  {h['failed']:>3} failed  {rate}"
        )
    return data


@app.command()
def status(
    last: Annotated[int, typer.Option(min=1, help="Runs per deployment for the success rate.")] = 20,
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object instead.")] = False,
) -> None:
    """Show what runs, where, the UI addresses, and each deployment's success rate over its last runs.

    Exits 1 when a service that commands use is down."""
    stack = _stack()
    if as_json:
        data = _status_data(stack, last)
        typer.echo(json.dumps(data, indent=2))
    else:
        data = _print_status(stack, last)
    if not data["ok"]:
        down = ", ".join(x["name"] for x in data["services"] if x["used"] and not x["healthy"])
        if not as_json:
            typer.secho(f"\n  Down: {down}. Start the stack with `aicml up`.", fg=typer.colors.RED, err=True)
        raise typer.Exit(1)


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
    dry_run: Annotated[
        bool,
        typer.Option("--dry-run", help="List what would be registered (new or updated); register nothing."),
    ] = False,
) -> None:
    """Register the deployments of prefect.yaml with the Prefect server."""
    from aicml.errors import AicError
    from aicml.stack.deploy import deployment_names, register_deployments, registered_deployments

    stack = _stack()
    _require_up(stack, mlflow=False)
    stack.export_client_env()
    try:
        if dry_run:
            names = deployment_names(Path.cwd(), pool)
            if not names:
                _fail(f"prefect.yaml has no deployment on pool {pool!r}.")
            known = registered_deployments(names)
            typer.echo(f"Would register on {stack.settings.prefect_url}:")
            for name in names:
                typer.echo(f"  {name:<34} {'update' if known[name] else 'new'}")
            typer.echo("Dry run: nothing registered.")
            return
        names = register_deployments(stack, Path.cwd(), pool)
    except AicError as exc:
        _fail(str(exc))
    typer.echo("Registered: " + ", ".join(names))


def _watch(stack: Any, flow_run: Any, label: str, timeout: float, as_json: bool = False) -> dict[str, Any]:
    """Print the run's link at once, follow it live until it ends (or ``timeout``), then its summary;
    with ``as_json`` print only one JSON object at the end. Returns the summary data."""
    from aicml.stack.watch import flow_run_url, summary_data, summary_lines, watch_flow_run

    s = stack.settings
    url = flow_run_url(s.prefect_ui_url, flow_run.id)
    if not as_json:
        typer.echo(f"Flow run {flow_run.name!r} of {label}: {url}")
    try:
        outcome = watch_flow_run(flow_run.id, timeout=timeout, emit=None if as_json else typer.echo)
    except KeyboardInterrupt:
        typer.echo(f"\nStopped following; the run goes on: {url}", err=True)
        raise typer.Exit(130) from None
    data = summary_data(outcome, label, s.prefect_ui_url, s.tracking_uri)
    if as_json:
        typer.echo(json.dumps(data, indent=2))
    else:
        typer.echo("")
        for line in summary_lines(data):
            typer.echo(line)
    return data


def _exit_unless_completed(data: dict[str, Any], as_json: bool) -> None:
    """Exit 1 unless the run completed (the summary already said how it ended)."""
    if data["state"] == "Completed":
        return
    if not as_json:
        if not data["finished"]:
            _fail(f"Stopped following after {data['seconds']:.0f}s; the run goes on: {data['url']}")
        _fail(f"The run ended {data['state']}: {data.get('message') or 'no message'}")
    raise typer.Exit(1)


def _submit(stack: Any, name: str, overrides: dict[str, Any] | None) -> Any:
    from aicml.errors import AicError
    from aicml.stack.deploy import submit_deployment_run

    try:
        return submit_deployment_run(name, {"overrides": overrides} if overrides else None)
    except AicError as exc:
        _fail(str(exc))
    except Exception as exc:  # Prefect's client: an unknown deployment, a refused parameter
        _fail(f"Cannot start a run of {name}: {exc}")


def run_overrides(
    source: str | None,
    target: str | None,
    model_name: str | None,
    problem: str | None,
    epochs: int | None,
    settings: list[str] | None,
) -> dict[str, Any]:
    """The dotted-key overrides `aicml run` sends: ``--set`` items, then the named options given (they win)."""
    from aicml.stack.overrides import parse_set

    overrides: dict[str, Any] = dict(parse_set(settings or []))
    if source is not None:
        overrides["source"] = str(Path(source).resolve()) if Path(source).exists() else source
    named = {"target": target, "model_name": model_name, "problem": problem, "trainer.max_epochs": epochs}
    overrides.update({key: value for key, value in named.items() if value is not None})
    return overrides


@app.command()
def run(
    source: Annotated[
        str | None,
        typer.Argument(
            help="Files (path, glob, URL) or SQLAlchemy URL#table. Default: the deployment's preset."
        ),
    ] = None,
    target: Annotated[str | None, typer.Option(help="The label column.")] = None,
    model_name: Annotated[str | None, typer.Option(help="Registry name of the model.")] = None,
    problem: Annotated[
        str | None, typer.Option(help="classification or regression; inferred if omitted.")
    ] = None,
    epochs: Annotated[int | None, typer.Option(min=1, help="Epochs of the Lightning model.")] = None,
    set_: Annotated[
        list[str] | None,
        typer.Option(
            "--set",
            help="Override one parameter of the preset, KEY.PATH=VALUE (e.g. trainer.max_epochs=3); repeatable.",
        ),
    ] = None,
    deployment: Annotated[str, typer.Option(help="Deployment to run.")] = "ml-pipeline/local",
    timeout: Annotated[float, typer.Option(help="Seconds to follow the run.")] = 3600,
    as_json: Annotated[
        bool, typer.Option("--json", help="Print one JSON object at the end, nothing else.")
    ] = False,
) -> None:
    """Run the pipeline as a deployment run: the link at once, then state changes and logs live, then the result.

    Only what you give is sent, as overrides of the deployment's preset; everything else keeps the preset's value.
    """
    from aicml.errors import AicError

    try:
        overrides = run_overrides(source, target, model_name, problem, epochs, set_)
    except (AicError, ValueError) as exc:
        _fail(str(exc))
    stack = _stack()
    _require_up(stack)
    stack.export_client_env()
    flow_run = _submit(stack, deployment, overrides)
    data = _watch(stack, flow_run, deployment, timeout, as_json)
    _exit_unless_completed(data, as_json)


@app.command()
def predict(
    model_uri: Annotated[str, typer.Argument(help="For example models:/churn@champion.")],
    csv: Annotated[Path, typer.Option(help="CSV file of rows to predict.")],
    rows: Annotated[int, typer.Option(help="How many rows to predict.")] = 5,
) -> None:
    """Predict rows of a CSV with a registered model."""
    if not csv.is_file():
        _fail(f"No CSV file at {csv}.")
    stack = _stack()
    _require_up(stack, prefect=False)
    import pandas as pd

    from aicml.serving.smoke import predict_rows

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
    good = _watch(stack, _submit(stack, "ml-pipeline/local", None), "ml-pipeline/local", 3600)
    if good["state"] != "Completed":
        _fail(f"The pipeline failed: {good['message']}. Logs: {stack.log_dir}/worker.log")
    typer.secho("5/6 Running it again on a corrupted batch: the quality gate must stop it", bold=True)
    # Only the source changes: the preset's target, model name and trainer options stay.
    bad_run = _submit(stack, "ml-pipeline/local", {"source": str(Path(files.corrupted).resolve())})
    bad = _watch(stack, bad_run, "ml-pipeline/local", 1800)
    if bad["state"] == "Completed":
        _fail("The corrupted batch passed the gate; this is a bug.")
    typer.secho(
        f"    Stopped before training, as it should be:\n    {bad['message']}", fg=typer.colors.YELLOW
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
def pools_apply(
    dry_run: Annotated[
        bool,
        typer.Option("--dry-run", help="Show each pool and what would be created or changed; write nothing."),
    ] = False,
) -> None:
    """Create or update pools `local` (process), `k8s-cpu` and `k8s-gpu` (Kubernetes, with their base job templates)."""
    from aicml.kube.pools import apply_pools, plan_pools

    stack = _stack()
    _require_up(stack, mlflow=False)
    stack.export_client_env()
    s = stack.settings
    if dry_run:
        for change in plan_pools(s.prefect_url, s.work_pool, s.pool_concurrency):
            typer.echo(f"  {change.name:<8} {change.type:<10} would be {change.action}"
                       if change.action != "unchanged" else f"  {change.name:<8} {change.type:<10} unchanged")  # fmt: skip
            for what in change.changes:
                typer.echo(f"             ~ {what}")
        typer.echo("Dry run: nothing written.")
        return
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
    timeout: Annotated[float, typer.Option(help="Seconds to follow the resumed run.")] = 3600,
    as_json: Annotated[
        bool, typer.Option("--json", help="Print one JSON object at the end, nothing else.")
    ] = False,
) -> None:
    """Rerun a failed deployment run: completed stages come from persisted results, the rest runs again."""
    from uuid import UUID

    from aicml.errors import AicError
    from aicml.stack.resume import resume_flow_run

    try:
        failed_id = UUID(flow_run_id)
    except ValueError:
        _fail(f"{flow_run_id!r} is not a flow run id (a UUID, as in the run's UI link).")
    stack = _stack()
    _require_up(stack)
    stack.export_client_env()
    try:
        run = resume_flow_run(failed_id, timeout=0)
    except AicError as exc:
        _fail(str(exc))
    data = _watch(stack, run, f"resume of {failed_id}", timeout, as_json)
    _exit_unless_completed(data, as_json)


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


_registered: list[bool] = []


def _register_subcommands() -> None:
    """Add the sub-apps (imported only now, so that `import aicml.cli` stays light); once per process."""
    if _registered:
        return
    _registered.append(True)
    from aicml.agents.cli import app as agents_app
    from aicml.data.cli import app as data_app
    from aicml.kube.cli import app as kube_app
    from aicml.lineage.cli import lineage as lineage_command
    from aicml.monitoring.cli import labels_app, monitor_app
    from aicml.registry.cli import app as models_app
    from aicml.retention.cli import gc as gc_command
    from aicml.serving.cli import serve as serve_command
    from aicml.stack.backup_cli import backup as backup_command
    from aicml.stack.backup_cli import restore as restore_command
    from aicml.tuning.cli import app as tune_app
    from aicml.usage.cli import usage as usage_command

    app.add_typer(kube_app, name="k8s", help="Render, validate, apply and verify the platform on Kubernetes.")
    app.add_typer(
        data_app, name="data", help="Data integration: watch a landing folder, render the Dask spec."
    )
    app.add_typer(agents_app, name="agents", help="Agent orchestration: registry, lifecycle, coordination.")
    app.add_typer(
        models_app,
        name="models",
        help="Registered models: verify a version's digest, trust one from elsewhere.",
    )
    app.add_typer(tune_app, name="tune", help="Tuning studies: the live Optuna dashboard.")
    app.add_typer(labels_app, name="labels", help="Ground truth: join late labels to logged predictions.")
    app.add_typer(monitor_app, name="monitor", help="Monitor a served model (the monitor-model flow).")
    app.command("serve")(serve_command)
    app.command("backup")(backup_command)
    app.command("restore")(restore_command)
    app.command("gc")(gc_command)
    app.command("usage")(usage_command)
    app.command("lineage")(lineage_command)


def main() -> None:
    import os

    # The command is a process entry point: keep third-party phone-home off unless the user turned it on.
    for name, value in (("PREFECT_SERVER_ANALYTICS_ENABLED", "false"), ("GX_ANALYTICS_ENABLED", "False")):
        os.environ.setdefault(name, value)
    from aicml.compat import quiet_downloads

    quiet_downloads()  # no MLflow download progress bars in the command's output (the user's own value wins)
    _register_subcommands()
    app()


if __name__ == "__main__":
    main()
