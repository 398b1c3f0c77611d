"""`aicml tune`: look at tuning studies. `aicml tune dashboard` serves optuna-dashboard on a study's storage."""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated

import typer

if TYPE_CHECKING:
    from optuna.storages import BaseStorage

app = typer.Typer(help="Tuning studies: the live Optuna dashboard.", no_args_is_help=True)


@app.callback()
def tune() -> None:
    """Tuning studies: the live Optuna dashboard."""


def default_storage_url() -> str:
    """Where the tuning flows keep their studies: model tuning's own database on Kubernetes, else the
    SQLite file under the stack's home (the same rule as ``tasks.tune.default_storage_url``)."""
    from aicml.tuning.study import local_storage_url
    from blocks.settings import AicSettings, service_database_url

    return service_database_url("TUNING") or local_storage_url(AicSettings().root / "tuning")


def resolve_study(study_or_storage: str | None) -> tuple[str, str | None]:
    """(storage URL, study name or None) from a study name (in the default storage) or a storage URL."""
    if study_or_storage and "://" in study_or_storage:
        return study_or_storage, None
    return default_storage_url(), study_or_storage


def study_path(storage: BaseStorage, study_name: str | None, storage_label: str) -> str:
    """The dashboard's path of ``study_name`` (``/dashboard`` lists every study when None).

    A name that is not in the storage is an error that lists the studies there.
    """
    if study_name is None:
        return "/dashboard"
    studies = [s.study_name for s in storage.get_all_studies()]
    if study_name not in studies:
        known = ", ".join(sorted(studies)) or "none"
        raise typer.BadParameter(
            f"No study {study_name!r} in {storage_label} (studies there: {known}). Give a study name or "
            "the storage URL the study was run with (the tune flow's storage_url).",
            param_hint="STUDY_OR_STORAGE",
        )
    return f"/dashboard/studies/{storage.get_study_id_from_name(study_name)}"


@app.command()
def dashboard(
    study_or_storage: Annotated[
        str | None,
        typer.Argument(
            help="A study name (in the tuning flows' default storage) or a storage URL "
            "(sqlite:///..., postgresql+psycopg://...). Empty: every study of the default storage."
        ),
    ] = None,
    host: Annotated[str, typer.Option(help="Address to listen on (0.0.0.0 to reach it from elsewhere).")] = (
        "127.0.0.1"
    ),
    port: Annotated[int, typer.Option(min=1, max=65535, help="Port to listen on.")] = 8080,
) -> None:
    """Serve optuna-dashboard (live history, importances, trials) on a study's storage until Ctrl-C."""
    import optuna_dashboard

    from aicml.redaction import redact
    from aicml.tuning.errors import TuningError
    from aicml.tuning.study import open_storage

    url, study_name = resolve_study(study_or_storage)
    try:
        storage = open_storage(url)
    except TuningError as exc:
        typer.secho(str(exc), fg=typer.colors.RED, err=True)
        raise typer.Exit(1) from exc
    path = study_path(storage, study_name, redact(url))
    shown = "localhost" if host in ("0.0.0.0", "::") else host
    # The storage is handed over in-process: a URL holding a password never appears in a process list.
    typer.echo(f"Optuna dashboard of {study_name or 'every study'} in {redact(url)}")
    typer.echo(f"  http://{shown}:{port}{path}", color=False)
    typer.echo("Press Ctrl-C to stop.")
    optuna_dashboard.run_server(storage, host=host, port=port)


if __name__ == "__main__":
    app()
