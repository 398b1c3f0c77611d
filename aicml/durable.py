"""Durable publication of files: what a manifest, ledger record or rename points at survives a power loss.

A rename is atomic but not durable: after a crash the new name can point at a file whose blocks never
reached the disk. Every place that publishes data (ingest sinks, snapshots, checkpoints, backups) writes
a temporary file, fsyncs it, renames it into place and fsyncs the directory, in that order, before any
record that points at it is written.
"""

from __future__ import annotations

import os
from pathlib import Path


def fsync_file(path: str | os.PathLike[str]) -> None:
    """Flush a file's data and metadata to the disk."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_dir(path: str | os.PathLike[str]) -> None:
    """Flush a directory's entries (names created, renamed or removed in it) to the disk."""
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_tree(root: str | os.PathLike[str]) -> None:
    """fsync every file and directory under ``root`` (a staged directory about to be renamed into place)."""
    for dirpath, _dirnames, filenames in os.walk(root):
        for name in filenames:
            fsync_file(os.path.join(dirpath, name))
        fsync_dir(dirpath)


def publish(tmp: str | os.PathLike[str], final: str | os.PathLike[str]) -> None:
    """Make ``tmp`` (a file or a directory) durable, rename it to ``final``, and make the rename durable."""
    tmp_path, final_path = Path(tmp), Path(final)
    if tmp_path.is_dir():
        fsync_tree(tmp_path)
    else:
        fsync_file(tmp_path)
    os.replace(tmp_path, final_path)
    fsync_dir(final_path.parent)


def write_durably(path: str | os.PathLike[str], data: bytes) -> None:
    """Write ``data`` to ``path`` through a temporary sibling, published with ``publish``."""
    final = Path(path)
    tmp = final.with_name(f".{final.name}.{os.getpid()}.tmp")
    with open(tmp, "wb") as handle:
        handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, final)
    fsync_dir(final.parent)
