"""The `aicml lineage` command: what made a model version, or the model that answered a logged request."""

from __future__ import annotations

import json
from datetime import timedelta
from typing import Annotated

import typer

app = typer.Typer(help="Lineage: the data, suite, code and image behind a model or a prediction.")


@app.command("lineage")
def lineage(
    model_uri: Annotated[
        str,
        typer.Argument(
            help="models:/<name>@<alias> or models:/<name>/<version> (with --request-id: the model's name is "
            "what counts, the version is the one that answered)."
        ),
    ],
    request_id: Annotated[
        str | None,
        typer.Option("--request-id", help="A logged prediction's request id (its x-request-id header)."),
    ] = None,
    lookback_days: Annotated[
        float, typer.Option(min=0.01, help="With --request-id: search this many past days of the log.")
    ] = 30.0,
    as_json: Annotated[bool, typer.Option("--json", help="Print the chain as JSON.")] = False,
) -> None:
    """Print the chain behind a model version: source files or table, snapshot, quality suite and result,
    training run, code commit, image, model version, aliases and the rollouts that served it.

    Exit 2 when the question cannot be answered as asked (a malformed URI, an unknown model, version,
    alias or request id), with the reason.
    """
    from aicml.errors import AicError
    from aicml.lineage.chain import model_lineage, parse_model_uri, prediction_lineage
    from aicml.registry.tracking import Tracking
    from blocks.settings import AicSettings

    try:
        if request_id is not None and not model_uri.startswith("models:/"):
            model_uri = f"models:/{model_uri}@champion"  # with a request id, a bare name names the model
        name = parse_model_uri(model_uri).name  # a malformed URI is refused before any server is asked
        settings = AicSettings()
        client = Tracking(uri=settings.tracking_uri).client()
        audit_log = settings.root / "audit" / "deployments.jsonl"
        if request_id is None:
            chain = model_lineage(client, model_uri, audit_log, where=settings.tracking_uri)
        else:
            from aicml.monitoring.predictions import prediction_log_root

            root, storage = prediction_log_root(settings.root)
            chain = prediction_lineage(
                client, name, request_id, root, timedelta(days=lookback_days), storage, audit_log,
                where=settings.tracking_uri,
            )  # fmt: skip
    except AicError as exc:
        typer.secho(str(exc), fg=typer.colors.RED, err=True)
        raise typer.Exit(2) from exc
    if as_json:
        typer.echo(json.dumps(chain, indent=2, default=str))
        return
    from aicml.lineage.chain import render

    typer.echo(render(chain))
