"""`aicml backup` and `aicml restore --verify`: the typer commands over aicml.stack.backup."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from aicml.errors import AicError

app = typer.Typer(help="Back up and restore the stack's PostgreSQL databases.", no_args_is_help=True)

UrlOption = Annotated[
    str | None,
    typer.Option(
        "--url", help="PostgreSQL server URL, postgresql://user@host:port/ (default: $AIC_DATABASE_URL)."
    ),
]


def _server_url(url: str | None) -> str:
    if url:
        return url
    from blocks.settings import AicSettings

    configured = AicSettings().database_url
    if configured is None:
        print("error: no PostgreSQL server; pass --url or set AIC_DATABASE_URL=postgresql://user@host:port/")
        raise typer.Exit(2)
    return configured.get_secret_value()


def _home() -> Path:
    from blocks.settings import AicSettings

    return AicSettings().root


@app.command()
def backup(
    database: Annotated[
        list[str] | None,
        typer.Option(
            "--database", "-d", help="Database to dump; repeat it. Default: the MLflow and Prefect ones."
        ),
    ] = None,
    output: Annotated[
        Path | None, typer.Option("--output", help="Directory of backups (default: $AIC_HOME/backups).")
    ] = None,
    retention_days: Annotated[
        int | None,
        typer.Option("--retention-days", help="Delete backups older than this (the newest stays)."),
    ] = None,
    url: UrlOption = None,
    dry_run: Annotated[
        bool,
        typer.Option(
            "--dry-run",
            help="Print what would be dumped and which old backups would be deleted; write nothing.",
        ),
    ] = False,
) -> None:
    """pg_dump (custom format) of each database into a new stamped directory, with checksums and MLflow counts."""
    from aicml.stack.backup import backup_databases, backups_to_prune

    server_url = _server_url(url)
    if not database:
        from blocks.settings import AicSettings

        settings = AicSettings()
        database = [settings.mlflow_database, settings.prefect_database]
    if dry_run:
        directory = output or _home() / "backups"
        print(f"would dump {', '.join(dict.fromkeys(database))} into a new backup under {directory}")
        if retention_days is not None:
            # After the new backup it is the newest: every complete backup past the cutoff goes.
            old = backups_to_prune(directory, retention_days, keep_newest=False)
            print(f"would delete {len(old)} backup(s) older than {retention_days} day(s)")
            for path in old:
                print(f"  {path}")
        print("dry run: nothing written")
        return
    try:
        path = backup_databases(
            server_url, database, output or _home() / "backups", retention_days=retention_days
        )
    except AicError as error:
        print(f"error: {error}")
        raise typer.Exit(1) from error
    print(f"backup written to {path}")


@app.command()
def restore(
    backup_path: Annotated[
        Path | None,
        typer.Argument(
            help="A backup directory, or a directory of backups (the newest is used). Default: $AIC_HOME/backups."
        ),
    ] = None,
    database: Annotated[
        str, typer.Option("--database", "-d", help="Which database of the backup.")
    ] = "mlflow_db",
    target: Annotated[
        str | None,
        typer.Option("--target", help="New database to restore into (default: <database>_restore_<stamp>)."),
    ] = None,
    verify: Annotated[
        bool,
        typer.Option(
            "--verify", help="Check MLflow counts against the backup and resolve every model version."
        ),
    ] = False,
    artifacts_root: Annotated[
        Path | None,
        typer.Option(
            "--artifacts-root",
            help="Where mlflow-artifacts:/ URIs live (default: $AIC_HOME/mlartifacts when it exists, else "
            "through the tracking server).",
        ),
    ] = None,
    no_owner: Annotated[
        bool,
        typer.Option(
            "--no-owner", help="Restore without the original owners (their roles do not exist here)."
        ),
    ] = False,
    url: UrlOption = None,
) -> None:
    """Restore one database of a backup into a new database, and with --verify prove it is complete."""
    from aicml.stack.backup import BackupManifest, latest_backup, restore_database, verify_restore

    server_url = _server_url(url)
    try:
        chosen = latest_backup(backup_path or _home() / "backups")
        manifest = BackupManifest.read(chosen)
        name = target or f"{database}_restore_{manifest.created.lower()}"
        dump = restore_database(chosen, database, server_url, name, no_owner=no_owner)
        print(f"restored {database} from {chosen} into {name}")
        if verify:
            # The local stack keeps proxied artifacts under its home; a cluster keeps them in object
            # storage, reached through the tracking server (MLFLOW_TRACKING_URI) when no root exists here.
            local_root = _home() / "mlartifacts"
            root = artifacts_root or (local_root if local_root.is_dir() else None)
            check = verify_restore(server_url, name, dump.mlflow_counts, artifacts_root=root)
            if dump.mlflow_counts is None:
                print(f"error: {database} holds no MLflow schema in this backup; nothing to verify against")
                raise typer.Exit(1)
            print(check.describe())
            if not check.ok:
                print("error: the restore did not verify")
                raise typer.Exit(1)
            print("verified")
    except AicError as error:
        print(f"error: {error}")
        raise typer.Exit(1) from error
