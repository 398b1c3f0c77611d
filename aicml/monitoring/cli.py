"""The `aicml labels` and `aicml monitor` commands: feed late ground truth to a served model's logged
predictions, and start a `monitor-model` run."""

from __future__ import annotations

import json
from datetime import timedelta
from typing import Annotated, Any

import typer

app = typer.Typer(help="Watching served models: labels and monitor runs.", no_args_is_help=True)
labels_app = typer.Typer(help="Ground truth: join late labels to logged predictions.", no_args_is_help=True)
monitor_app = typer.Typer(help="Monitor a served model (the monitor-model flow).", no_args_is_help=True)
app.add_typer(labels_app, name="labels")
app.add_typer(monitor_app, name="monitor")


def _model_facts(model: str, settings: Any) -> tuple[str | None, list[str] | None, str]:
    """(problem, classes, note) of ``model``'s champion, from the registry when it answers."""
    from aicml.monitoring.reference import load_reference
    from aicml.registry.tracking import Tracking

    try:
        reference = load_reference(
            Tracking(uri=settings.tracking_uri).client(), model, suites_dir=None, rows=20_000
        )
    except Exception as exc:  # no registry here, or no champion yet: labels are still joined, unchecked
        return None, None, f"label classes not checked ({exc})"
    return reference.problem, reference.classes, f"checked against {model} version {reference.version}"


@labels_app.command("ingest")
def ingest(
    source: Annotated[
        str, typer.Argument(help="Labels: file, glob or URL (CSV, Parquet, JSON lines), or SQL URL#table.")
    ],
    model: Annotated[
        str, typer.Option("--model", help="The served model (registry name) the labels are for.")
    ],
    key: Annotated[
        str,
        typer.Option(
            help="Column that names the prediction: request_id, or an input column such as customer_id."
        ),
    ] = "request_id",
    label_column: Annotated[
        str, typer.Option("--label-column", help="Column holding the true label.")
    ] = "label",
    lookback_days: Annotated[
        float, typer.Option(min=0.01, help="Join to predictions logged in this many past days.")
    ] = 30.0,
    as_json: Annotated[bool, typer.Option("--json", help="Print the report as JSON.")] = False,
) -> None:
    """Join labels to the model's logged predictions and store them beside the logs (<home>/labels).

    Every label row is joined to exactly one logged prediction or set aside with its reason (unknown or
    repeated key, wrong type, missing value, contradicts a stored label); a rerun adds nothing. Exit 0 when
    the batch was read (bad rows are counted, not fatal); 2 when it could not be read at all.
    """
    from aicml.errors import AicError
    from aicml.monitoring.labels import ingest_labels
    from aicml.monitoring.predictions import prediction_log_root
    from blocks.settings import AicSettings

    settings = AicSettings()
    problem, classes, note = _model_facts(model, settings)
    root, storage = prediction_log_root(settings.root)
    try:
        report = ingest_labels(
            source, model, predictions_root=root, labels_root=settings.root / "labels", storage_options=storage,
            key=key, label_column=label_column, problem=problem, classes=classes,  # type: ignore[arg-type]
            lookback=timedelta(days=lookback_days),
        )  # fmt: skip
    except AicError as exc:
        typer.secho(str(exc), fg=typer.colors.RED, err=True)
        raise typer.Exit(2) from exc
    if as_json:
        typer.echo(
            json.dumps(
                {
                    "model": model,
                    "rows_read": report.rows_read,
                    "joined": report.joined,
                    "rejected": {k: v for k, v in report.rejected.items() if v},
                    "examples": report.examples,
                    "files": report.files,
                },
                indent=2,
            )
        )
        return
    typer.echo(report.summary())
    typer.echo(f"({note})")
    for reason, keys in report.examples.items():
        typer.echo(f"  {reason}: e.g. {', '.join(keys)}")


@monitor_app.command("run")
def run(
    model: Annotated[str, typer.Option("--model", help="The served model (registry name) to judge.")],
    window_hours: Annotated[float | None, typer.Option(help="Hours of traffic to judge (preset: 1).")] = None,
    deployment: Annotated[
        str, typer.Option(help="The monitor-model deployment to run.")
    ] = "monitor-model/local",
) -> None:
    """Start a monitor-model run for one model now (the worker runs it; the Prefect UI shows its report)."""
    from aicml.cli import require_stack
    from aicml.stack.deploy import submit_deployment_run

    require_stack(mlflow=False)
    overrides: dict[str, Any] = {"model_name": model}
    if window_hours is not None:
        overrides["window_hours"] = window_hours
    flow_run = submit_deployment_run(deployment, {"overrides": overrides})
    typer.echo(f"Started {deployment} for {model}: flow run {flow_run.name} ({flow_run.id})")
