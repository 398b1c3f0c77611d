"""`aicml gc`: delete what the retention policy lets go; `--dry-run` prints what would go and why.

Registered in aicml/cli.py as ``app.command("gc")(gc)``; ``app`` here runs it alone (tests).
"""

from __future__ import annotations

import json
from datetime import datetime
from pathlib import Path
from typing import Annotated

import typer

from aicml.errors import AicError

app = typer.Typer(help="Retention: delete what the policy lets go.", no_args_is_help=False)

COLUMNS = ("kind", "id", "action", "reason", "rule")


@app.command()
def gc(
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="Print what would be deleted and why; delete nothing.")
    ] = False,
    policy: Annotated[
        Path | None,
        typer.Option("--policy", help="Retention policy file (YAML; default: the shipped policy)."),
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the plan and outcome as JSON.")] = False,
    kind: Annotated[
        list[str] | None,
        typer.Option("--kind", "-k", help="Only this kind (repeat it); default: every enabled kind."),
    ] = None,
    backups_dir: Annotated[
        Path | None, typer.Option("--backups-dir", help="Directory of backups (default: $AIC_HOME/backups).")
    ] = None,
    now: Annotated[
        datetime | None,
        typer.Option("--now", help="Judge ages as of this UTC time instead of the clock (a rehearsal)."),
    ] = None,
) -> None:
    """Delete old flow runs, MLflow runs, model versions, snapshots, logs and backups by the policy."""
    from aicml.retention.engine import table
    from aicml.retention.gc import Targets, collect
    from aicml.retention.policy import load_policy
    from blocks.settings import AicSettings

    try:
        rules = load_policy(policy)
        targets = Targets.from_settings(AicSettings(), backups=backups_dir)
        result = collect(targets, rules, dry_run=dry_run, kinds=kind or None, now=now)
    except AicError as error:
        print(f"error: {error}")
        raise typer.Exit(2 if "policy" in type(error).__name__.lower() else 1) from error
    summary = result.summary()
    if as_json:
        print(json.dumps(summary, indent=2, default=str))
    else:
        for note in result.notes:
            print(f"note: {note}")
        if dry_run:
            print(f"would delete {len(result.plan.delete)} item(s):")
            print(table(result.plan.rows(), COLUMNS))
            print("dry run: nothing deleted")
        else:
            assert result.outcome is not None
            print(f"deleted {len(result.outcome.deleted)} item(s):")
            print(table(result.outcome.rows(), (*COLUMNS, "outcome")))
    if result.outcome is not None and result.outcome.failed:
        if not as_json:
            print(f"error: {len(result.outcome.failed)} deletion(s) failed; run `aicml gc` again to finish")
        raise typer.Exit(1)
