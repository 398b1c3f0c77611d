"""The usage store: one row per accounted flow run, in a table of the stack's deployment database (SQLite
under the home on a laptop, the model deployment database on Kubernetes), and the grouped summary with
costs that `aicml usage` prints."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field, fields
from typing import Any, Literal

from aicml.errors import ConfigurationError

TABLE = "aic_usage"
GROUPS = ("flow", "model", "team", "deployment", "task")
GroupBy = Literal["flow", "model", "team", "deployment", "task"]
GIB = 2.0**30


@dataclass(frozen=True)
class UsageRecord:
    """What one flow run (or, with ``task`` set, one of its task runs) used, and what it requested on
    Kubernetes (zero elsewhere)."""

    flow: str
    started: float
    wall_s: float
    cpu_s: float
    peak_memory_bytes: int
    gpu_s: float = 0.0
    gpu_memory_bytes: int = 0
    requested_cpu: float = 0.0
    requested_memory_bytes: float = 0.0
    requested_gpu: float = 0.0
    deployment: str = ""
    team: str = ""
    model: str = ""
    flow_run_id: str = ""
    mlflow_run_id: str = ""
    outcome: str = "success"
    # A task run's row (`aicml.usage.tasks`): the task's name and the run's id; empty on a flow run's row.
    task: str = ""
    task_run_id: str = ""
    id: str = field(default_factory=lambda: uuid.uuid4().hex)

    @property
    def requested_cpu_s(self) -> float:
        return self.requested_cpu * self.wall_s

    @property
    def requested_gpu_s(self) -> float:
        return self.requested_gpu * self.wall_s

    @property
    def requested_memory_gib_s(self) -> float:
        return self.requested_memory_bytes / GIB * self.wall_s

    def resource_seconds(self) -> dict[str, float]:
        """The seconds of each resource, as the Prometheus counter counts them."""
        figures = {"wall": self.wall_s, "cpu": self.cpu_s, "gpu": self.gpu_s}
        if self.requested_cpu or self.requested_gpu or self.requested_memory_bytes:
            figures |= {
                "requested_cpu": self.requested_cpu_s,
                "requested_gpu": self.requested_gpu_s,
                "requested_memory_gib": self.requested_memory_gib_s,
            }
        return figures

    def metrics(self) -> dict[str, float]:
        """The figures logged as MLflow metrics (``usage.*``)."""
        return {
            "usage.wall_seconds": self.wall_s,
            "usage.cpu_seconds": self.cpu_s,
            "usage.peak_memory_bytes": float(self.peak_memory_bytes),
            "usage.gpu_seconds": self.gpu_s,
            "usage.gpu_memory_bytes": float(self.gpu_memory_bytes),
            "usage.requested_cpu_seconds": self.requested_cpu_s,
            "usage.requested_gpu_seconds": self.requested_gpu_s,
            "usage.requested_memory_gib_seconds": self.requested_memory_gib_s,
        }


def _table(metadata: Any) -> Any:
    import sqlalchemy as sa

    columns = [sa.Column("id", sa.String(64), primary_key=True)]
    for f in fields(UsageRecord):
        if f.name == "id":
            continue
        kind = {"float": sa.Float, "int": sa.BigInteger}.get(str(f.type), sa.String(256))
        columns.append(sa.Column(f.name, kind, nullable=False, index=f.name == "started"))
    return sa.Table(TABLE, metadata, *columns)


def _add_missing_columns(engine: Any, table: Any) -> None:
    """A table made by an earlier release gains the columns added since (empty text, zero figures)."""
    import sqlalchemy as sa

    present = {c["name"] for c in sa.inspect(engine).get_columns(TABLE)}
    with engine.begin() as conn:
        for column in table.columns:
            if column.name in present:
                continue
            default = "''" if isinstance(column.type, sa.String) else "0"
            kind = column.type.compile(dialect=engine.dialect)
            conn.execute(
                sa.text(f"ALTER TABLE {TABLE} ADD COLUMN {column.name} {kind} NOT NULL DEFAULT {default}")
            )


@dataclass(frozen=True)
class Prices:
    """Price of one resource-hour; None where none is configured."""

    cpu_hour: float | None = None
    gpu_hour: float | None = None
    memory_gb_hour: float | None = None

    @property
    def any(self) -> bool:
        return any(p is not None for p in (self.cpu_hour, self.gpu_hour, self.memory_gb_hour))

    def cost(self, r: UsageRecord) -> tuple[float, str]:
        """The cost of ``r`` and its basis: what its job requested on Kubernetes, else what it used (CPU
        seconds, GPU seconds, peak memory for the wall time)."""
        requested = bool(r.requested_cpu or r.requested_gpu or r.requested_memory_bytes)
        if requested:
            cpu_h, gpu_h, mem_h = (
                r.requested_cpu_s / 3600,
                r.requested_gpu_s / 3600,
                r.requested_memory_gib_s / 3600,
            )
        else:
            cpu_h, gpu_h = r.cpu_s / 3600, r.gpu_s / 3600
            mem_h = r.peak_memory_bytes / GIB * r.wall_s / 3600
        total = (
            cpu_h * (self.cpu_hour or 0.0)
            + gpu_h * (self.gpu_hour or 0.0)
            + mem_h * (self.memory_gb_hour or 0.0)
        )
        return total, "requested" if requested else "used"


class UsageStore:
    """The usage rows in the database at ``url`` (SQLite or PostgreSQL); the table is created on first use."""

    def __init__(self, url: str) -> None:
        self.url = url
        self._engine: Any = None

    def _connect(self) -> Any:
        if self._engine is None:
            import sqlalchemy as sa

            engine = sa.create_engine(self.url)
            if engine.dialect.name == "sqlite":

                @sa.event.listens_for(engine, "connect")
                def _connect(dbapi: Any, _record: Any) -> None:
                    dbapi.execute("PRAGMA busy_timeout = 30000")

            metadata = sa.MetaData()
            table = _table(metadata)
            metadata.create_all(engine)
            _add_missing_columns(engine, table)
            self._engine = engine
        return self._engine

    def append(self, *records: UsageRecord) -> None:
        """Write ``records`` in one transaction (a record already written, by id, is left as it is)."""
        import sqlalchemy as sa

        if not records:
            return
        table = _table(sa.MetaData())
        with self._connect().begin() as conn:
            ids = [r.id for r in records]
            present = set(conn.execute(sa.select(table.c.id).where(table.c.id.in_(ids))).scalars())
            new = {r.id: asdict(r) for r in records if r.id not in present}  # by id: a repeat counts once
            if new:
                conn.execute(table.insert(), list(new.values()))

    def read(self, since: float, until: float | None = None) -> list[UsageRecord]:
        """Rows of flow runs that started at or after ``since`` (epoch seconds), oldest first."""
        import sqlalchemy as sa

        table = _table(sa.MetaData())
        query = sa.select(table).where(table.c.started >= since).order_by(table.c.started)
        if until is not None:
            query = query.where(table.c.started < until)
        with self._connect().connect() as conn:
            return [UsageRecord(**dict(row._mapping)) for row in conn.execute(query)]

    def close(self) -> None:
        if self._engine is not None:
            self._engine.dispose()
            self._engine = None


def summarise(records: Iterable[UsageRecord], by: str, prices: Prices | None = None) -> list[dict[str, Any]]:
    """One row per value of ``by`` (flow, model, team, deployment or task): runs and summed figures, in
    hours, with the cost when ``prices`` has any; the largest CPU user first. Flow runs' rows are summed, except
    by task, where the task runs' rows are (``flow/task``): a task run's use is already in its flow run's."""
    if by not in GROUPS:
        raise ConfigurationError(f"--by must be one of {', '.join(GROUPS)}, not {by!r}.")
    groups: dict[str, dict[str, Any]] = {}
    for r in records:
        if bool(r.task) != (by == "task"):
            continue
        key = f"{r.flow}/{r.task}" if by == "task" else getattr(r, by) or "-"
        row = groups.setdefault(
            key,
            {by: key, "runs": 0, "wall_h": 0.0, "cpu_h": 0.0, "gpu_h": 0.0, "peak_memory_gib": 0.0,
             "gpu_memory_gib": 0.0, "requested_cpu_h": 0.0, "requested_gpu_h": 0.0,
             "requested_memory_gib_h": 0.0},
        )  # fmt: skip
        row["runs"] += 1
        row["wall_h"] += r.wall_s / 3600
        row["cpu_h"] += r.cpu_s / 3600
        row["gpu_h"] += r.gpu_s / 3600
        row["peak_memory_gib"] = max(row["peak_memory_gib"], r.peak_memory_bytes / GIB)
        row["gpu_memory_gib"] = max(row["gpu_memory_gib"], r.gpu_memory_bytes / GIB)
        row["requested_cpu_h"] += r.requested_cpu_s / 3600
        row["requested_gpu_h"] += r.requested_gpu_s / 3600
        row["requested_memory_gib_h"] += r.requested_memory_gib_s / 3600
        if prices is not None and prices.any:
            cost, basis = prices.cost(r)
            row["cost"] = row.get("cost", 0.0) + cost
            bases = set(row.get("cost_basis", "").split("+")) - {""}
            row["cost_basis"] = "+".join(sorted(bases | {basis}))
    return sorted(groups.values(), key=lambda row: (-row["cpu_h"], str(row[by])))


def parse_since(value: str, now: float | None = None) -> float:
    """``7d``, ``12h``, ``30m``, ``90s`` or ``2w`` before ``now``, as epoch seconds."""
    import re

    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([smhdw])\s*", value or "")
    if not match:
        raise ConfigurationError(
            f"--since {value!r} is not a duration: give a number and a unit, e.g. 90s, 30m, 12h, 7d or 2w."
        )
    seconds = float(match.group(1)) * {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}[match.group(2)]
    return (time.time() if now is None else now) - seconds


def as_rows(records: Sequence[UsageRecord]) -> list[dict[str, Any]]:
    return [asdict(r) for r in records]
