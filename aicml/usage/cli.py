"""`aicml usage`: what flow runs used since a time, grouped by flow, model, team or deployment, with the
request-based cost when prices per resource-hour are set (AIC_PRICE_CPU_HOUR, AIC_PRICE_GPU_HOUR,
AIC_PRICE_MEMORY_GB_HOUR)."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Annotated, Any

import typer

COLUMNS = (
    ("runs", "runs", "{:d}"),
    ("wall_h", "wall h", "{:.3f}"),
    ("cpu_h", "CPU h", "{:.4f}"),
    ("gpu_h", "GPU h", "{:.4f}"),
    ("peak_memory_gib", "peak GiB", "{:.2f}"),
    ("gpu_memory_gib", "GPU GiB", "{:.2f}"),
    ("requested_cpu_h", "req CPU h", "{:.4f}"),
    ("requested_gpu_h", "req GPU h", "{:.4f}"),
    ("requested_memory_gib_h", "req GiB h", "{:.4f}"),
)


def render_table(rows: list[dict[str, Any]], by: str) -> str:
    """The grouped rows as a text table (a cost column when the rows have one)."""
    columns = [(by, by, "{}"), *COLUMNS]
    if any("cost" in row for row in rows):
        columns += [("cost", "cost", "{:.4f}"), ("cost_basis", "basis", "{}")]
    cells = [[title for _, title, _ in columns]]
    for row in rows:
        cells.append([fmt.format(row[key]) if key in row else "-" for key, _, fmt in columns])
    widths = [max(len(line[i]) for line in cells) for i in range(len(columns))]
    lines = [
        "  ".join(
            cell.ljust(w) if i == 0 else cell.rjust(w)
            for i, (cell, w) in enumerate(zip(line, widths, strict=True))
        )
        for line in cells
    ]
    return "\n".join([lines[0], "  ".join("-" * w for w in widths), *lines[1:]])


def usage(
    since: Annotated[str, typer.Option(help="How far back: 90s, 30m, 12h, 7d, 2w.")] = "7d",
    by: Annotated[
        str, typer.Option(help="Group by flow, model, team, deployment or task (a flow's task runs).")
    ] = "flow",
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")] = False,
) -> None:
    """What flow runs used (wall, CPU, GPU, memory; requested on Kubernetes) and cost, grouped."""
    from pydantic import ValidationError

    from aicml.errors import ConfigurationError
    from aicml.usage.store import GROUPS, Prices, UsageStore, parse_since, summarise
    from blocks.settings import AicSettings

    try:
        start = parse_since(since)
        if by not in GROUPS:
            raise ConfigurationError(f"--by must be one of {', '.join(GROUPS)}, not {by!r}.")
        s = AicSettings()
    except (ConfigurationError, ValidationError) as exc:
        typer.secho(str(exc), fg=typer.colors.RED, err=True)
        raise typer.Exit(2) from None
    prices = Prices(s.price_cpu_hour, s.price_gpu_hour, s.price_memory_gb_hour)
    store = UsageStore(s.usage_store_url())
    try:
        records = store.read(start)
    finally:
        store.close()
    rows = summarise(records, by, prices)
    if as_json:
        typer.echo(
            json.dumps(
                {
                    "since": datetime.fromtimestamp(start, UTC).isoformat(),
                    "by": by,
                    "runs": sum(1 for r in records if not r.task),
                    "prices": {
                        "cpu_hour": prices.cpu_hour,
                        "gpu_hour": prices.gpu_hour,
                        "memory_gb_hour": prices.memory_gb_hour,
                    },
                    "groups": rows,
                },
                indent=2,
            )
        )
        return
    if not rows:
        typer.echo(f"No flow runs accounted since {datetime.fromtimestamp(start, UTC):%Y-%m-%d %H:%M} UTC.")
        return
    typer.echo(render_table(rows, by))
    if not prices.any:
        typer.echo(
            "(no prices set: AIC_PRICE_CPU_HOUR, AIC_PRICE_GPU_HOUR, AIC_PRICE_MEMORY_GB_HOUR give costs)"
        )


app = typer.Typer(help="Cost and usage of flow runs.")
app.command("usage")(usage)
