"""Publication order survives a power loss: every file is fsynced before the rename that publishes it,
and its directory before the manifest (or ledger record) that points at it. Real writes (an ingest
into a partitioned Parquet sink, a pg_dump backup), with os.fsync/os.replace/os.link recorded."""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from aicml.data.connectors import FileConnector
from aicml.data.integration import IngestJob, run_ingest
from aicml.data.parallel import ClusterOptions
from aicml.data.sinks import ParquetSink
from aicml.durable import publish_once, write_durably
from tests.services import Postgres

Event = tuple[str, str, str]  # (operation, path or source, destination or "")


@pytest.fixture
def calls(monkeypatch: pytest.MonkeyPatch) -> list[Event]:
    """A log of fsyncs (by the path their descriptor names), renames and links, in order."""
    log: list[Event] = []
    real_fsync, real_replace, real_link = os.fsync, os.replace, os.link

    def fsync(fd: int) -> None:
        real_fsync(fd)
        log.append(("fsync", os.readlink(f"/proc/self/fd/{fd}"), ""))

    def replace(src: str | os.PathLike[str], dst: str | os.PathLike[str], **kwargs: object) -> None:
        real_replace(src, dst, **kwargs)  # type: ignore[arg-type]
        log.append(("rename", os.path.abspath(src), os.path.abspath(dst)))

    def link(src: str | os.PathLike[str], dst: str | os.PathLike[str], **kwargs: object) -> None:
        real_link(src, dst, **kwargs)  # type: ignore[arg-type]
        log.append(("link", os.path.abspath(src), os.path.abspath(dst)))

    if not Path("/proc/self/fd").is_dir():
        pytest.skip("needs /proc to name the file an fsync flushed")
    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "replace", replace)
    monkeypatch.setattr(os, "link", link)
    return log


def _position(log: list[Event], op: str, dst: Path) -> int:
    """Where ``dst`` was published (renamed or linked to)."""
    matches = [i for i, (o, _, d) in enumerate(log) if o == op and d == str(dst)]
    assert len(matches) == 1, f"{dst} published {len(matches)} times: {log}"
    return matches[0]


def _fsynced(log: list[Event], path: str, after: int, before: int) -> bool:
    return any(o == "fsync" and p == path for o, p, _ in log[after + 1 : before])


def _fsynced_before(log: list[Event], path: str, before: int) -> bool:
    return _fsynced(log, path, -1, before)


def test_a_partitioned_sink_write_is_durable_before_its_manifest(tmp_path: Path, calls: list[Event]) -> None:
    src, out = tmp_path / "landing", tmp_path / "out"
    src.mkdir()
    for index in range(2):
        ids = np.arange(index * 200, index * 200 + 200)
        pd.DataFrame({"id": ids, "region": np.where(ids % 2, "north", "south")}).to_csv(
            src / f"f{index}.csv", index=False
        )
    job = IngestJob(
        "landing",
        FileConnector(str(src / "*.csv")),
        ParquetSink(str(out), partition_by=("region",)),
        str(tmp_path / "work"),
        cluster=ClusterOptions(kind="sync"),
    )
    assert run_ingest(job).committed_rows == 400

    manifests = sorted((out / "_manifests").glob("*.json"))
    assert len(manifests) == 2
    for manifest_path in manifests:
        claimed = _position(calls, "link", manifest_path)
        manifest_tmp = calls[claimed][1]
        assert _fsynced_before(calls, manifest_tmp, claimed), "manifest linked before its bytes were flushed"
        assert _fsynced(calls, str(manifest_path.parent), claimed, len(calls)), "manifest's name not flushed"
        files = [out / f for f in json.loads(manifest_path.read_text())["files"]]
        assert len(files) == 2  # one per region
        for file in files:
            renamed = _position(calls, "rename", file)
            staged = calls[renamed][1]
            assert _fsynced_before(calls, staged, renamed), f"{file} renamed in before it was flushed"
            # Its name (and the hive directory's own name) on the disk before the manifest points at it.
            assert _fsynced(calls, str(file.parent), renamed, claimed), f"{file.parent} not flushed"
            assert _fsynced(calls, str(out), renamed, claimed), f"{out} not flushed"
    # Every Parquet file, staged or published, was written through a temporary file flushed first.
    for position, (op, source, dst) in enumerate(calls):
        if op == "rename" and dst.endswith(".parquet"):
            assert _fsynced_before(calls, source, position), f"{dst} renamed from an unflushed file"
    # Per file, not per row: a few dozen fsyncs for 400 rows in 4 files.
    assert sum(1 for o, _, _ in calls if o == "fsync") < 60


def test_write_durably_and_publish_once(tmp_path: Path, calls: list[Event]) -> None:
    target = tmp_path / "record.json"
    assert write_durably(target, b"first", once=True)
    assert not write_durably(target, b"second", once=True)  # first writer wins
    assert target.read_bytes() == b"first"
    assert write_durably(target, b"third")  # a plain write replaces
    assert target.read_bytes() == b"third"
    assert [p.name for p in tmp_path.iterdir()] == ["record.json"]  # no temporary left behind
    tmp = tmp_path / "tmp"
    tmp.write_bytes(b"x")
    assert not publish_once(tmp, target) and not tmp.exists()
    for position, (op, source, dst) in enumerate(calls):
        if op in ("rename", "link"):
            assert _fsynced_before(calls, source, position)
            assert _fsynced(calls, str(Path(dst).parent), position, len(calls))


@pytest.fixture
def database(postgres: Postgres) -> Iterator[str]:
    if shutil.which("pg_dump") is None:
        pytest.skip("pg_dump not installed (Debian: postgresql-client)")
    with postgres.database("aicml_durable") as name:
        yield name


def test_a_backup_is_durable_before_its_manifest_and_its_rename(
    tmp_path: Path, postgres: Postgres, database: str, calls: list[Event]
) -> None:
    from aicml.stack.backup import MANIFEST, backup_databases

    final = backup_databases(postgres.server_url, [database], tmp_path / "backups")
    partial = final.with_name(final.name + ".partial")
    dump_in_partial = str(partial / f"{database}.dump")
    manifest_at = _position(calls, "rename", partial / MANIFEST)
    published = _position(calls, "rename", final)
    assert manifest_at < published
    # The dump, and its name in the directory, on the disk before the manifest that lists it.
    assert _fsynced_before(calls, dump_in_partial, manifest_at)
    assert _fsynced_before(calls, str(partial), manifest_at)
    assert _fsynced_before(calls, calls[manifest_at][1], manifest_at)  # the manifest's bytes
    # The whole directory flushed before the rename that makes it a backup; the rename itself after.
    assert _fsynced(calls, str(partial / MANIFEST), manifest_at, published)
    assert _fsynced(calls, str(partial), manifest_at, published)
    assert _fsynced(calls, str(final.parent), published, len(calls))
