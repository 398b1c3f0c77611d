"""Plan, then act: which items of each kind a retention policy deletes and why, and the deletion itself.

Inventories (files, MLflow, Prefect) list what exists as `Item`s and delete one item idempotently; this module
decides. An item goes only when nothing protects it (an alias, the newest versions of a model, a legal hold,
a running or scheduled flow run naming it) and the policy's rule for its kind lets it go. Every deletion is
one line in ``<home>/audit/retention.jsonl``. Deletions are resumable: each inventory marks an item before it
removes it (a rename, a soft delete) and lists marked items again as unfinished, so a run killed half-way is
finished by the next one.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Protocol

from aicml.errors import AicError
from aicml.retention.policy import KINDS, Kind, KindRule, RetentionPolicy
from aicml.rollout.audit import AuditRecord, append_audit

log = logging.getLogger(__name__)

AUDIT_FILE = Path("audit") / "retention.jsonl"
ACTOR = "aicml gc"
# A reference shorter than this (a job id like "7") names an item only when a parameter equals it exactly.
_MIN_SUBSTRING_REF = 12


class RetentionError(AicError):
    """A retention run could not plan, or some of its deletions failed (each named)."""


@dataclass(frozen=True)
class Item:
    """Something an inventory found: what it is, when it was made, and what may protect it."""

    kind: Kind
    id: str
    group: str
    created: datetime
    location: str = ""
    refs: frozenset[str] = frozenset()  # names a flow run's parameters may use for it
    protected: str | None = None  # why the inventory itself keeps it (an alias, ...)
    held: bool = False  # under legal hold
    action: str = "delete"  # what deleting it means: delete, soft-delete, purge, finish
    ranked: bool = True  # counts towards keep_last of its group (a soft-deleted run does not)
    age_from: datetime | None = None  # the age the rule reads when not `created` (a purge: when soft-deleted)
    age_days: float | None = None  # the rule's keep_days for this item when not the kind's (a purge)
    handle: Any = field(default=None, compare=False, repr=False)


@dataclass(frozen=True)
class Candidate:
    """One planned deletion: what, why, and by which rule."""

    kind: str
    id: str
    action: str
    reason: str
    rule: str
    group: str
    created: str
    location: str

    def as_dict(self) -> dict[str, str]:
        return asdict(self)


@dataclass(frozen=True)
class Kept:
    kind: str
    id: str
    reason: str


@dataclass
class Plan:
    """What a run would delete (and, for the report, what it keeps and why, protected items only)."""

    now: datetime
    delete: list[Candidate] = field(default_factory=list)
    protected: list[Kept] = field(default_factory=list)
    counts: dict[str, int] = field(default_factory=dict)  # items seen per kind
    items: dict[tuple[str, str], Item] = field(default_factory=dict, repr=False)

    def rows(self) -> list[dict[str, str]]:
        return [c.as_dict() for c in self.delete]


@dataclass
class Outcome:
    """What `apply` did."""

    deleted: list[Candidate] = field(default_factory=list)
    failed: list[tuple[Candidate, str]] = field(default_factory=list)

    def rows(self) -> list[dict[str, str]]:
        done = [c.as_dict() | {"outcome": "deleted"} for c in self.deleted]
        return done + [c.as_dict() | {"outcome": f"failed: {error}"} for c, error in self.failed]


class Inventory(Protocol):
    kind: Kind

    def items(self, now: datetime) -> list[Item]:
        """Everything of this kind, unfinished deletions included (action ``finish``)."""
        ...

    def delete(self, item: Item, step: Callable[[str], None]) -> None:
        """Delete one item; idempotent (a second call, or one after a crash mid-way, finishes the job).
        ``step(name)`` is called between the marking and the removal (tests kill the process there)."""
        ...


@dataclass(frozen=True)
class References:
    """What running, pending and scheduled flow runs name in their parameters."""

    strings: frozenset[str] = frozenset()
    model_versions: frozenset[tuple[str, str]] = frozenset()
    runs: tuple[str, ...] = ()  # the flow runs read, for the report

    def names(self, item: Item) -> bool:
        if (
            item.kind == "model_versions"
            and isinstance(item.handle, tuple)
            and (str(item.handle[0]), str(item.handle[1])) in self.model_versions
        ):
            return True
        for ref in item.refs:
            if ref in self.strings:
                return True
            if (len(ref) >= _MIN_SUBSTRING_REF or "/" in ref) and any(ref in s for s in self.strings):
                return True
        return False


def collect_references(parameters: Iterable[Any]) -> tuple[set[str], set[tuple[str, str]]]:
    """Every string in some parameters (nested), and (model, version) pairs from mappings that hold both."""
    strings: set[str] = set()
    pairs: set[tuple[str, str]] = set()

    def walk(value: Any) -> None:
        if isinstance(value, str):
            strings.add(value)
        elif isinstance(value, dict):
            name = value.get("model_name", value.get("model"))
            version = value.get("version", value.get("model_version"))
            if isinstance(name, str) and isinstance(version, str | int) and not isinstance(version, bool):
                pairs.add((name, str(version)))
            for inner in value.values():
                walk(inner)
        elif isinstance(value, list | tuple | set):
            for inner in value:
                walk(inner)
        elif value is not None and not isinstance(value, bool | int | float):
            strings.add(str(value))

    for p in parameters:
        walk(p)
    return strings, pairs


def _describe_rule(rule: KindRule, item: Item) -> str:
    parts = []
    if item.ranked and rule.keep_last is not None:
        parts.append(f"keep_last={rule.keep_last}")
    days = item.age_days if item.age_days is not None else rule.keep_days
    if days is not None:
        parts.append(f"{'purge_after_days' if item.age_days is not None else 'keep_days'}={days:g}")
    return ", ".join(parts)


def decide(
    items: Sequence[Item], rule: KindRule, hold_tag: str, references: References, now: datetime
) -> tuple[list[tuple[Item, str]], list[tuple[Item, str]]]:
    """(deleted, reason) and (protected, reason) of one kind's items under its rule."""
    go: list[tuple[Item, str]] = []
    keep: list[tuple[Item, str]] = []
    groups: dict[str, list[Item]] = {}
    for item in items:
        if item.ranked and item.action != "finish":
            groups.setdefault(item.group, []).append(item)
    rank: dict[tuple[str, str], int] = {}
    for members in groups.values():
        for i, item in enumerate(sorted(members, key=lambda it: (it.created, it.id), reverse=True)):
            rank[(item.kind, item.id)] = i
    for item in items:
        if item.action == "finish":
            go.append((item, "finishing a deletion an earlier run started"))
            continue
        if item.held:
            keep.append((item, f"legal hold ({hold_tag})"))
            continue
        if item.protected:
            keep.append((item, item.protected))
            continue
        if references.names(item):
            keep.append((item, "named by a running or scheduled flow run"))
            continue
        days = item.age_days if item.age_days is not None else rule.keep_days
        if item.ranked and rule.keep_last is None and days is None:
            continue  # no rule: kept
        position = rank.get((item.kind, item.id))
        if item.ranked and rule.keep_last is not None and position is not None and position < rule.keep_last:
            continue
        since = item.age_from or item.created
        age = now - since
        if days is not None and age < timedelta(days=days):
            continue
        why = []
        if days is not None:
            aged = "soft-deleted {:.1f} days ago" if item.age_from else "{:.1f} days old"
            why.append(f"{aged.format(age.total_seconds() / 86400)} (> {days:g})")
        if item.ranked and rule.keep_last is not None:
            why.append(f"not among the newest {rule.keep_last} of {item.group}")
        go.append((item, " and ".join(why)))
    return go, keep


def plan(
    inventories: Sequence[Inventory],
    policy: RetentionPolicy,
    references: References,
    *,
    now: datetime | None = None,
) -> Plan:
    """Exactly what `apply` would delete, and why."""
    now = _utc(now)
    result = Plan(now=now)
    for inventory in sorted(inventories, key=lambda inv: KINDS.index(inv.kind)):
        rule = policy.kinds.rule(inventory.kind)
        if not rule.enabled:
            continue
        items = inventory.items(now)
        result.counts[inventory.kind] = len(items)
        go, keep = decide(items, rule, policy.legal_hold_tag, references, now)
        for item, reason in go:
            result.delete.append(
                Candidate(
                    kind=item.kind, id=item.id, action=item.action, reason=reason,
                    rule=_describe_rule(rule, item) if item.action != "finish" else "resume",
                    group=item.group, created=item.created.isoformat(), location=item.location,
                )
            )  # fmt: skip
            result.items[(item.kind, item.id)] = item
        result.protected.extend(Kept(item.kind, item.id, reason) for item, reason in keep)
    return result


def apply(
    the_plan: Plan,
    inventories: Sequence[Inventory],
    home: Path,
    *,
    actor: str = ACTOR,
    on_step: Callable[[Candidate, str], None] | None = None,
    max_deletions: int | None = None,
) -> Outcome:
    """Delete what `the_plan` lists, each item on its own: a failure is recorded and the rest goes on.

    Every deletion appends an audit line. A process killed half-way leaves marked items that the next
    plan lists again (action ``finish``).
    """
    by_kind = {inv.kind: inv for inv in inventories}
    outcome = Outcome()
    audit = home / AUDIT_FILE
    for count, candidate in enumerate(the_plan.delete):
        if max_deletions is not None and count >= max_deletions:
            log.warning("Stopped after %d deletions (max_deletions); the next run goes on", count)
            break
        item = the_plan.items[(candidate.kind, candidate.id)]
        inventory = by_kind[item.kind]

        def step(name: str, candidate: Candidate = candidate) -> None:
            if on_step is not None:
                on_step(candidate, name)

        try:
            inventory.delete(item, step)
        except Exception as exc:  # one item's failure must not stop the others; it is reported
            log.warning("Could not delete %s %s: %s", candidate.kind, candidate.id, exc)
            outcome.failed.append((candidate, f"{type(exc).__name__}: {exc}"))
            continue
        append_audit(
            audit,
            AuditRecord(
                model=candidate.kind, version=candidate.id, action=f"retention.{candidate.action}",
                reason=candidate.reason, actor=actor,
                evidence={"rule": candidate.rule, "group": candidate.group, "created": candidate.created,
                          "location": candidate.location},
                previous_champion=None, champion_after=None,
            ),
        )  # fmt: skip
        outcome.deleted.append(candidate)
        step("done")
    return outcome


def _utc(now: datetime | None) -> datetime:
    if now is None:
        return datetime.now(UTC)
    return now.replace(tzinfo=UTC) if now.tzinfo is None else now.astimezone(UTC)


def table(rows: Sequence[dict[str, str]], columns: Sequence[str]) -> str:
    """A plain text table for the terminal."""
    if not rows:
        return "(nothing)"
    widths = {c: max(len(c), *(len(str(r.get(c, ""))) for r in rows)) for c in columns}
    widths = {c: min(w, 80) for c, w in widths.items()}
    head = "  ".join(c.upper().ljust(widths[c]) for c in columns)
    lines = [head]
    for r in rows:
        lines.append("  ".join(str(r.get(c, ""))[: widths[c]].ljust(widths[c]) for c in columns).rstrip())
    return "\n".join(lines)
