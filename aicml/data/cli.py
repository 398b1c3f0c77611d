"""The `aicml data` commands: watch a landing directory, announce a landed file, render the Dask
cluster spec for Kubernetes."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

app = typer.Typer(help="Data integration: landing events and cluster specs.", no_args_is_help=True)


def _require_prefect() -> None:
    """Events go to the Prefect API: fail at once when it does not answer, and point this process at it."""
    from aicml.cli import require_stack

    require_stack(mlflow=False)


@app.command()
def watch(
    directory: Annotated[Path, typer.Argument(help="Directory where files land.")],
    interval: Annotated[float, typer.Option(help="Seconds between polls.")] = 1.0,
    polls: Annotated[int | None, typer.Option(help="Stop after this many polls (default: forever).")] = None,
) -> None:
    """Emit `aicml.data.file.landed` for each new file once its size is stable (triggers ingest-flow/on-file-landed)."""
    from aicml.data.landing import LandingWatcher, emit_file_landed

    def announce(path: Path) -> None:
        emit_file_landed(path)
        typer.echo(f"landed: {path}")

    if not directory.is_dir():
        typer.secho(f"{directory} is not a directory.", fg=typer.colors.RED, err=True)
        raise typer.Exit(1)
    _require_prefect()
    LandingWatcher(directory, announce).run(interval, polls)


@app.command()
def landed(path: Annotated[Path, typer.Argument(help="A file that has landed.")]) -> None:
    """Emit `aicml.data.file.landed` for one file now."""
    from aicml.data.landing import emit_file_landed

    if not path.is_file():
        typer.secho(f"{path} is not a file.", fg=typer.colors.RED, err=True)
        raise typer.Exit(1)
    _require_prefect()
    emit_file_landed(path)
    typer.echo(f"landed: {path.resolve()}")


@app.command("cluster-spec")
def cluster_spec(
    workers: Annotated[int, typer.Option(help="Dask workers.")] = 4,
    namespace: Annotated[str, typer.Option(help="Kubernetes namespace.")] = "aic-ai-ml",
    image: Annotated[
        str, typer.Option(help="Worker and scheduler image (pinned).")
    ] = "ghcr.io/dask/dask:2026.8.0-py3.11",
) -> None:
    """Print the DaskCluster resource the ingest flow uses with cluster=kubernetes, validated offline."""
    from aicml.data.parallel import ClusterOptions, render_kubernetes_spec, validate_kubernetes_spec

    spec = render_kubernetes_spec(
        ClusterOptions(kind="kubernetes", workers=workers, namespace=namespace, image=image)
    )
    problems = validate_kubernetes_spec(spec)
    typer.echo(json.dumps(spec, indent=2))
    if problems:
        typer.secho("\n".join(problems), fg=typer.colors.RED, err=True)
        raise typer.Exit(1)


if __name__ == "__main__":
    app()
