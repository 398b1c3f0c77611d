"""Durable publication of files: what a manifest, ledger record or rename points at survives a power loss.

A rename is atomic but not durable: after a crash the new name can point at a file whose blocks never
reached the disk. Every place that publishes data (ingest sinks, snapshots, checkpoints, backups) writes
a temporary file, fsyncs it, renames it into place and fsyncs the directory, in that order, before any
record that points at it is written.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator
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


def publish_once(tmp: str | os.PathLike[str], final: str | os.PathLike[str]) -> bool:
    """Publish the file ``tmp`` at ``final`` unless ``final`` already exists; True when this call did.

    First writer wins, across processes and machines sharing the filesystem: a hard link is created
    atomically and fails when the name exists (a rename would silently replace the winner). ``tmp`` is
    removed either way. This is the compare-and-commit of a record that must be written once (a manifest).
    """
    tmp_path, final_path = Path(tmp), Path(final)
    try:
        fsync_file(tmp_path)
        try:
            os.link(tmp_path, final_path)
        except FileExistsError:
            return False
    finally:
        tmp_path.unlink(missing_ok=True)
    fsync_dir(final_path.parent)
    return True


@contextlib.contextmanager
def publishing(target: Path) -> Iterator[str]:
    """A temporary sibling of ``target`` for the block to write; when the block returns it is made
    durable and renamed to ``target`` (``publish``), when it raises it is removed.

    The one way to publish a file written by a library that wants a path (pyarrow,
    pandas): ``target`` is whole or absent, and durable before the caller returns a reference to it.
    """
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=".tmp-", suffix=target.suffix)
    os.close(fd)
    try:
        yield tmp
        publish(tmp, target)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def _sibling_tmp(final: Path) -> Path:
    """A temporary name next to ``final``, unique across processes and threads."""
    fd, name = tempfile.mkstemp(dir=final.parent, prefix=f".{final.name}.", suffix=".tmp")
    os.close(fd)
    return Path(name)


def write_durably(path: str | os.PathLike[str], data: bytes, *, once: bool = False) -> bool:
    """Write ``data`` to ``path`` through a temporary sibling, fsync it, rename it into place and fsync
    the directory. With ``once``, an existing ``path`` is kept (see ``publish_once``) and False returned."""
    final = Path(path)
    tmp = _sibling_tmp(final)
    try:
        with open(tmp, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        if once:
            return publish_once(tmp, final)
        os.replace(tmp, final)
    finally:
        tmp.unlink(missing_ok=True)
    fsync_dir(final.parent)
    return True
