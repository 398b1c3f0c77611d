"""Near-real-time ingestion: notice files landing in a directory and announce each as a Prefect
event (``aicml.data.file.landed``), which the `ingest-flow/on-file-landed` deployment's trigger turns
into a flow run for that file.

A file counts as landed once its size and mtime are unchanged between two polls (a writer that is
still copying it is not picked up half-way); names starting with '.' or '_' are ignored.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from aicml.data.readers import FORMATS

if TYPE_CHECKING:
    from blocks.settings import AicSettings

EVENT = "aicml.data.file.landed"


def resource_for(path: Path) -> dict[str, str]:
    resolved = path.resolve()
    return {
        "prefect.resource.id": f"aicml.landing.{resolved}",
        "aicml.path": str(resolved),
        "aicml.directory": str(resolved.parent),
    }


def emit_file_landed(path: Path) -> Any:
    """Emit the landing event for ``path`` (through Prefect's event client, to PREFECT_API_URL)."""
    from prefect.events import emit_event

    stat = path.stat()
    return emit_event(
        event=EVENT,
        resource=resource_for(path),
        payload={"size": stat.st_size, "mtime_ns": stat.st_mtime_ns, "emitted_at": time.time()},
    )


def _is_data(path: Path) -> bool:
    name = path.name.lower().removesuffix(".gz")
    return not path.name.startswith((".", "_")) and any(name.endswith(s) for s in FORMATS)


@dataclass
class LandingWatcher:
    """Poll ``directory`` and call ``on_landed`` once per stable new (or changed) file."""

    directory: Path
    on_landed: Callable[[Path], Any] = emit_file_landed
    seen: dict[str, tuple[int, int]] = field(default_factory=dict)
    pending: dict[str, tuple[int, int]] = field(default_factory=dict)

    def poll(self) -> list[Path]:
        landed = []
        for path in sorted(self.directory.glob("*")):
            if not path.is_file() or not _is_data(path):
                continue
            stat = path.stat()
            signature = (stat.st_size, stat.st_mtime_ns)
            key = str(path)
            if self.seen.get(key) == signature:
                continue
            if self.pending.get(key) == signature:
                self.seen[key] = signature
                del self.pending[key]
                self.on_landed(path)
                landed.append(path)
            else:
                self.pending[key] = signature
        return landed

    def run(self, interval_s: float = 1.0, max_polls: int | None = None) -> None:
        polls = 0
        while max_polls is None or polls < max_polls:
            self.poll()
            polls += 1
            time.sleep(interval_s)


def landing_directory(current: AicSettings | None = None) -> Path:
    """The watched landing directory: ``AIC_LANDING_DIR``, else ``<home>/landing``."""
    from blocks.settings import AicSettings

    current = current or AicSettings()
    return (current.landing_dir or current.root / "landing").resolve()


def check_landed(path: str, directory: Path | None = None) -> Path:
    """The real path of a landed-file event's file, if it lies in the watched landing directory.

    The event's ``aicml.path`` becomes the flow run's ``source``; whoever can emit events must not
    be able to point the run at any other file (symlinks and '..' are resolved before the check).
    """
    from aicml.errors import ConfigurationError

    root = (directory or landing_directory()).resolve()
    if "\x00" in path:
        raise ConfigurationError(f"Landed file {path!r} contains a NUL byte.")
    resolved = Path(path).resolve()
    if resolved != root and root not in resolved.parents:
        shown = "" if str(resolved) == path else f" (resolves to {str(resolved)!r})"
        raise ConfigurationError(
            f"Landed file {path!r}{shown} is not inside the watched landing directory {str(root)!r}; "
            "landed-file events are accepted only for files in it (AIC_LANDING_DIR)."
        )
    return resolved
