"""File-based kinds under the stack's home: snapshots, quarantine, checkpoints, prediction logs, Data Docs,
backups. A file or directory is deleted by renaming it to ``.<name>.aicml-deleting`` beside itself (atomic:
readers stop seeing it at once) and then removing it; a marked name left by a killed run is listed again
and finished."""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

from aicml.durable import fsync_dir
from aicml.retention.engine import Item
from aicml.retention.policy import Kind
from aicml.serving.predlog import SummaryStore
from aicml.stack.backup import _STAMP, STAMP_FORMAT
from aicml.stack.backup import MANIFEST as BACKUP_MANIFEST

MARK = ".aicml-deleting"
PARTIAL_GRACE = timedelta(days=1)


def marked_name(path: Path) -> Path:
    return path.with_name(f".{path.name}{MARK}")


def unmarked_name(path: Path) -> Path:
    return path.with_name(path.name[1 : -len(MARK)])


def remove_path(path: Path, step: Callable[[str], None]) -> None:
    """Mark ``path`` (rename), then remove it; a path already marked is only removed. Idempotent."""
    target = path if path.name.endswith(MARK) else marked_name(path)
    if path != target and path.exists():
        os.replace(path, target)
        fsync_dir(path.parent)
    step("marked")
    if target.is_dir() and not target.is_symlink():
        shutil.rmtree(target, ignore_errors=False)
    else:
        target.unlink(missing_ok=True)


def _mtime(path: Path) -> datetime:
    """The newest modification time in a file or directory tree."""
    newest = path.stat().st_mtime
    if path.is_dir():
        for dirpath, _dirs, files in os.walk(path):
            for name in files:
                try:
                    newest = max(newest, os.stat(os.path.join(dirpath, name)).st_mtime)
                except FileNotFoundError:
                    continue
    return datetime.fromtimestamp(newest, UTC)


def _held(path: Path, stop: Path, tag: str) -> bool:
    """A file named like the legal-hold tag in the item's directory (or the item itself, a directory)."""
    here = path if path.is_dir() else path.parent
    while True:
        if (here / tag).exists():
            return True
        if here == stop or here.parent == here:
            return False
        here = here.parent


def _refs(path: Path, root: Path, *extra: str) -> frozenset[str]:
    return frozenset({str(path), str(path.resolve()), str(path.relative_to(root)), path.name, *extra})


@dataclass
class FileInventory:
    """One kind laid out under ``root``; ``entries`` says where its items sit (a glob per level)."""

    kind: Kind
    root: Path
    pattern: str  # glob of items relative to root, e.g. "*/*.parquet"
    group_depth: int  # how many leading path parts name the group (0: one group, the kind)
    hold_tag: str = "aicml.legal_hold"

    def _created(self, path: Path) -> datetime:
        return _mtime(path)

    def _group(self, path: Path) -> str:
        parts = path.relative_to(self.root).parts
        return "/".join(parts[: self.group_depth]) if self.group_depth else self.kind

    def _extra(self, path: Path) -> tuple[str, ...]:
        return (path.stem,)

    def _accept(self, path: Path) -> bool:
        return True

    def _finished(self) -> Iterator[Path]:
        if self.root.is_dir():
            yield from self.root.glob(
                self.pattern.rsplit("/", 1)[0] + f"/.*{MARK}" if "/" in self.pattern else f".*{MARK}"
            )

    def items(self, now: datetime) -> list[Item]:
        found: list[Item] = []
        if not self.root.is_dir():
            return found
        for path in sorted(self.root.glob(self.pattern)):
            if path.name.startswith(".") or not self._accept(path):
                continue
            found.append(
                Item(
                    kind=self.kind, id=str(path.relative_to(self.root)), group=self._group(path),
                    created=self._created(path), location=str(path),
                    refs=_refs(path, self.root, *self._extra(path)),
                    held=_held(path, self.root, self.hold_tag), handle=path,
                )
            )  # fmt: skip
        for marked in sorted(self._finished()):
            original = unmarked_name(marked)
            found.append(
                Item(
                    kind=self.kind, id=str(original.relative_to(self.root)), group=self._group(original),
                    created=datetime.fromtimestamp(marked.lstat().st_mtime, UTC), location=str(marked),
                    action="finish", handle=marked,
                )
            )  # fmt: skip
        return found

    def delete(self, item: Item, step: Callable[[str], None]) -> None:
        remove_path(Path(item.handle), step)


class Snapshots(FileInventory):
    """``<home>/snapshots/<dataset>/<fingerprint>.parquet``, grouped by dataset."""

    def __init__(self, root: Path, hold_tag: str) -> None:
        super().__init__("snapshots", root, "*/*.parquet", 1, hold_tag)


class Checkpoints(FileInventory):
    """Training jobs' checkpoint directories ``<checkpoint root>/<job id>/``, one group."""

    def __init__(self, root: Path, hold_tag: str) -> None:
        super().__init__("checkpoints", root, "*", 0, hold_tag)

    def _accept(self, path: Path) -> bool:
        return path.is_dir()


class DataDocs(FileInventory):
    """Great Expectations sites ``<home>/data-docs/<load>/<run>/``, grouped by load."""

    def __init__(self, root: Path, hold_tag: str) -> None:
        super().__init__("data_docs", root, "*/*", 1, hold_tag)

    def _accept(self, path: Path) -> bool:
        return path.is_dir()


class PredictionLogs(FileInventory):
    """Day partitions ``<root>/model=<name>/date=<YYYY-MM-DD>/`` of the model servers' prediction logs
    (aicml.serving.predlog), grouped by model; a day is as old as its end."""

    def __init__(self, root: Path, hold_tag: str, summary_url: str | None = None) -> None:
        super().__init__("prediction_logs", root, "model=*/date=*", 1, hold_tag)
        # The summary rows' database (``prediction_log_batches``), one store for all the days of a run.
        self._summary = SummaryStore(summary_url) if summary_url else None

    def close(self) -> None:
        """Let go of the summary database's connections (gc calls it at the end of a run)."""
        if self._summary is not None:
            self._summary.close()

    def delete(self, item: Item, step: Callable[[str], None]) -> None:
        """The day's summary rows first, then its files: killed in between, the day is still listed and the
        next run finishes the job."""
        path = Path(item.handle)
        day = (
            path.with_name(path.name.removeprefix(".").removesuffix(MARK))
            if path.name.endswith(MARK)
            else path
        )
        if self._summary is not None:
            self._summary.delete_under(day)
        step("summary-deleted")
        remove_path(path, step)

    def _accept(self, path: Path) -> bool:
        try:
            date.fromisoformat(path.name.removeprefix("date="))
        except ValueError:
            return False
        return path.is_dir()

    def _created(self, path: Path) -> datetime:
        day = date.fromisoformat(path.name.removeprefix("date="))
        return datetime(day.year, day.month, day.day, tzinfo=UTC) + timedelta(days=1)

    def _extra(self, path: Path) -> tuple[str, ...]:
        return ()


class Backups(FileInventory):
    """Complete backups ``<backups>/<UTC stamp>/`` (aicml.stack.backup), dated by their stamp; the newest is
    always kept, and ``.partial`` directories of interrupted backups go after a day."""

    def __init__(self, root: Path, hold_tag: str) -> None:
        super().__init__("backups", root, "*", 0, hold_tag)

    def _accept(self, path: Path) -> bool:
        return path.is_dir() and (
            (_STAMP.match(path.name) is not None and (path / BACKUP_MANIFEST).is_file())
            or (
                path.name.endswith(".partial")
                and _STAMP.match(path.name.removesuffix(".partial")) is not None
            )
        )

    def _created(self, path: Path) -> datetime:
        return datetime.strptime(path.name.removesuffix(".partial"), STAMP_FORMAT).replace(tzinfo=UTC)

    def items(self, now: datetime) -> list[Item]:
        found = super().items(now)
        complete = [i for i in found if i.action == "delete" and not i.id.endswith(".partial")]
        newest = max(complete, key=lambda i: i.created, default=None)
        out = []
        for item in found:
            if item.id.endswith(".partial") and item.action == "delete":
                # Never counted as a backup; goes once surely abandoned (a backup runs for hours at most).
                old = now - item.created >= PARTIAL_GRACE
                item = Item(
                    kind=item.kind, id=item.id, group="interrupted", created=item.created,
                    location=item.location, refs=item.refs, held=item.held, ranked=False, age_days=1.0,
                    protected=None if old else "an interrupted backup younger than a day (may be running)",
                    handle=item.handle,
                )  # fmt: skip
            elif newest is not None and item is newest:
                item = Item(
                    kind=item.kind, id=item.id, group=item.group, created=item.created,
                    location=item.location, refs=item.refs, held=item.held,
                    protected="the newest complete backup", handle=item.handle,
                )  # fmt: skip
            out.append(item)
        return out


class Quarantine(FileInventory):
    """Quarantined rows of ingest loads: ``<validated>/<load>/quarantine/`` holds Parquet files named by
    manifests ``_manifests/<identity>.json``; an item is one manifest and its files, grouped by load, dated
    by its commit. The manifest is marked first (readers go by manifests, so the rows vanish at once), then
    the files it names are removed, then the manifest."""

    def __init__(self, root: Path, hold_tag: str) -> None:
        super().__init__("quarantine", root, "*/quarantine/_manifests/*.json", 1, hold_tag)

    def _created(self, path: Path) -> datetime:
        try:
            return datetime.fromtimestamp(float(json.loads(path.read_text())["committed_at"]), UTC)
        except (OSError, ValueError, KeyError, TypeError):
            return _mtime(path)

    def _finished(self) -> Iterator[Path]:
        if self.root.is_dir():
            yield from self.root.glob(f"*/quarantine/_manifests/.*{MARK}")

    def delete(self, item: Item, step: Callable[[str], None]) -> None:
        path = Path(item.handle)
        marked = path if path.name.endswith(MARK) else marked_name(path)
        if path != marked and path.exists():
            os.replace(path, marked)
            fsync_dir(path.parent)
        step("marked")
        if marked.exists():
            try:
                files = json.loads(marked.read_text()).get("files", [])
            except ValueError:
                files = []
            dataset = marked.parent.parent
            for name in files:
                target = (dataset / name).resolve()
                if dataset.resolve() in target.parents:
                    target.unlink(missing_ok=True)
            marked.unlink()
