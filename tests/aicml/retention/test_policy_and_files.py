"""The retention policy file and the file kinds (snapshots, quarantine, checkpoints, prediction logs, Data Docs,
backups), planned and applied on a real directory tree with an injected clock; a kill mid-way then a rerun."""

from __future__ import annotations

import json
import os
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from aicml.retention.engine import References, apply, collect_references, plan
from aicml.retention.files import (
    MARK,
    Backups,
    Checkpoints,
    DataDocs,
    PredictionLogs,
    Quarantine,
    Snapshots,
)
from aicml.retention.policy import DEFAULT_POLICY_FILE, PolicyError, load_policy, parse_policy
from aicml.rollout.audit import read_audit
from aicml.serving.predlog import SummaryStore
from tests.services import Postgres

NOW = datetime(2026, 12, 6, 12, 0, tzinfo=UTC)
REPO = Path(__file__).resolve().parents[3]


def _age(path: Path, days: float) -> Path:
    stamp = (NOW - timedelta(days=days)).timestamp()
    for dirpath, _dirs, files in os.walk(path) if path.is_dir() else []:
        for name in files:
            os.utime(os.path.join(dirpath, name), (stamp, stamp))
    os.utime(path, (stamp, stamp))
    return path


def _file(path: Path, days: float, text: str = "x") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return _age(path, days)


def test_shipped_policy_validates_and_bad_fields_are_named(tmp_path: Path) -> None:
    policy = load_policy(None)
    assert policy.kinds.mlflow_runs.purge_after_days == 7
    assert policy.kinds.model_versions.min_versions == 3
    assert policy.legal_hold_tag == "aicml.legal_hold"
    assert DEFAULT_POLICY_FILE.is_file()
    with pytest.raises(PolicyError, match=r"kinds\.snapshots\.keep_dayz: Extra inputs"):
        parse_policy({"kinds": {"snapshots": {"keep_dayz": 3}}})
    with pytest.raises(
        PolicyError, match=r"kinds\.backups\.keep_last: Input should be greater than or equal to 0"
    ):
        parse_policy({"kinds": {"backups": {"keep_last": -1}}})
    with pytest.raises(PolicyError, match=r"kinds\.mlflow_run: Extra inputs"):
        parse_policy({"kinds": {"mlflow_run": {}}})
    bad = tmp_path / "p.yaml"
    bad.write_text("kinds: [1\n")
    with pytest.raises(PolicyError, match="not valid YAML"):
        load_policy(bad)
    with pytest.raises(PolicyError, match="Cannot read retention policy"):
        load_policy(tmp_path / "missing.yaml")


def test_references_name_paths_ids_and_model_versions() -> None:
    strings, pairs = collect_references(
        [
            {"params": {"source": "/h/snapshots/ds/abc.parquet", "model_name": "churn", "version": 3}},
            {"x": [7]},
        ]
    )
    assert "/h/snapshots/ds/abc.parquet" in strings
    assert pairs == {("churn", "3")}


def _summary_row(path: Path) -> dict[str, object]:
    day = datetime.fromisoformat(path.parent.name.removeprefix("date=")).replace(tzinfo=UTC)
    return {"batch_id": path.stem[-32:], "version": "1", "arm": "stable", "model": "churn", "window_start": day,
            "window_end": day, "count": 1, "requests": 1, "errors": 0, "latency_p50_ms": 1.0,
            "latency_p95_ms": 1.0, "latency_p99_ms": 1.0, "sample": 1.0, "path": str(path), "written_at": day}  # fmt: skip


def test_file_kinds_plan_exactly_then_apply_then_a_killed_run_converges(tmp_path: Path) -> None:
    home = tmp_path / "home"
    snaps, validated, ckpt, docs, preds, backups = (
        home / n for n in ("snapshots", "validated", "checkpoints", "data-docs", "predictions", "backups")
    )
    # Snapshots of dataset "churn": 4 old ones, 1 new; the newest 2 are kept by keep_last, one old one is
    # held by a running flow, one is under legal hold.
    s = {
        i: _file(snaps / "churn" / f"fp{i:02d}{'0' * 40}.parquet", days)
        for i, days in enumerate([60, 50, 40, 35, 1])
    }
    _file(snaps / "held" / "aicml.legal_hold", 0)
    held = _file(snaps / "held" / f"old{'0' * 40}.parquet", 90)
    # Quarantine of load "orders": an old manifest and its file, a new one.
    q = validated / "orders" / "quarantine"
    for ident, days in (("old", 40), ("new", 1)):
        _file(q / f"part-{ident}-r1.parquet", days)
        _file(
            q / "_manifests" / f"{ident}.json",
            days,
            json.dumps({"identity": ident, "files": [f"part-{ident}-r1.parquet"],
                        "committed_at": (NOW - timedelta(days=days)).timestamp()}),
        )  # fmt: skip
    ck_old = _age(_file(ckpt / "job-a" / "epoch=0.ckpt", 30).parent, 30)
    _file(ckpt / "job-b" / "epoch=0.ckpt", 1)
    d_old = _age(_file(docs / "orders" / "run-1" / "index.html", 45).parent, 45)
    _file(docs / "orders" / "run-2" / "index.html", 1)
    p_old = _file(preds / "model=churn" / "date=2026-08-01" / "part-a.parquet", 0).parent
    p_new = _file(preds / "model=churn" / "date=2026-12-05" / "part-b.parquet", 0)
    # The model server's summary rows of those files: the old day's go with its files.
    summary_url = f"sqlite:///{tmp_path / 'deployment.db'}"
    SummaryStore(summary_url).insert([_summary_row(p_old / "part-a.parquet"), _summary_row(p_new)])
    b_old = [
        _file(backups / stamp / "manifest.json", 0).parent
        for stamp in ("20261001T023000Z", "20261010T023000Z")
    ]
    _file(backups / "20261205T023000Z" / "manifest.json", 0)
    _file(backups / "20261001T023000Z.partial" / "mlflow_db.dump", 0)

    policy = parse_policy(
        {"kinds": {"snapshots": {"keep_last": 2, "keep_days": 30}, "quarantine": {"keep_days": 30},
                   "checkpoints": {"keep_last": 1, "keep_days": 14}, "data_docs": {"keep_last": 1, "keep_days": 30},
                   "prediction_logs": {"keep_days": 90}, "backups": {"keep_last": 1, "keep_days": 14}}}
    )  # fmt: skip
    tag = policy.legal_hold_tag
    inventories = [
        Snapshots(snaps, tag), Quarantine(validated, tag), Checkpoints(ckpt, tag), DataDocs(docs, tag),
        PredictionLogs(preds, tag, summary_url), Backups(backups, tag),
    ]  # fmt: skip
    running = References(frozenset({str(s[1]), "unrelated"}))
    first = plan(inventories, policy, running, now=NOW)
    expected = {
        ("snapshots", "churn/" + s[0].name), ("snapshots", "churn/" + s[2].name),
        ("quarantine", "orders/quarantine/_manifests/old.json"), ("checkpoints", "job-a"),
        ("data_docs", "orders/run-1"), ("prediction_logs", "model=churn/date=2026-08-01"),
        ("backups", "20261001T023000Z"), ("backups", "20261010T023000Z"), ("backups", "20261001T023000Z.partial"),
    }  # fmt: skip
    assert {(c.kind, c.id) for c in first.delete} == expected
    kept = {(k.kind, k.id): k.reason for k in first.protected}
    assert kept[("snapshots", "churn/" + s[1].name)] == "named by a running or scheduled flow run"
    assert kept[("snapshots", "held/" + held.name)] == "legal hold (aicml.legal_hold)"
    assert kept[("backups", "20261205T023000Z")] == "the newest complete backup"
    reasons = {c.id: c for c in first.delete}
    assert "60.0 days old (> 30) and not among the newest 2 of churn" in reasons["churn/" + s[0].name].reason
    assert reasons["churn/" + s[0].name].rule == "keep_last=2, keep_days=30"

    # Killed after the third item was marked (renamed) but before it was removed.
    class Killed(BaseException):
        pass

    def kill(candidate, step) -> None:  # type: ignore[no-untyped-def]
        kill.n += step == "marked"  # type: ignore[attr-defined]
        if kill.n == 3:  # type: ignore[attr-defined]
            raise Killed

    kill.n = 0  # type: ignore[attr-defined]
    with pytest.raises(Killed):
        apply(first, inventories, home, on_step=kill)
    assert len(read_audit(home / "audit" / "retention.jsonl")) == 2
    marked = list(q.glob(f"_manifests/.*{MARK}"))
    assert marked, "the quarantine manifest was marked before the kill"
    assert not (q / "_manifests" / "old.json").exists()  # readers no longer see it

    second = plan(inventories, policy, running, now=NOW)
    finish = {(c.kind, c.id) for c in second.delete if c.action == "finish"}
    assert finish == {("quarantine", "orders/quarantine/_manifests/old.json")}
    assert {(c.kind, c.id) for c in second.delete} == expected - {(c.kind, c.id) for c in first.delete[:2]}
    outcome = apply(second, inventories, home)
    assert not outcome.failed
    # Converged: nothing left to do, exactly the expected set gone, everything else there.
    assert plan(inventories, policy, running, now=NOW).delete == []
    assert not s[0].exists() and not s[2].exists() and s[1].exists() and s[3].exists() and s[4].exists()
    assert held.exists() and not (q / "part-old-r1.parquet").exists() and (q / "part-new-r1.parquet").exists()
    assert (
        not ck_old.exists()
        and (ckpt / "job-b").is_dir()
        and not d_old.exists()
        and (docs / "orders/run-2").is_dir()
    )
    assert not p_old.exists() and (preds / "model=churn" / "date=2026-12-05").is_dir()
    assert list(SummaryStore(summary_url).read("churn")["path"]) == [str(p_new)]
    assert not any(b.exists() for b in b_old) and (backups / "20261205T023000Z").is_dir()
    assert not list(home.rglob(f"*{MARK}"))
    audit = read_audit(home / "audit" / "retention.jsonl")
    assert sorted((a["model"], a["version"]) for a in audit) == sorted(expected)
    assert {a["action"] for a in audit} == {"retention.delete", "retention.finish"}


def test_k8s_backup_cronjob_prunes_through_gc() -> None:
    import yaml

    docs = list(yaml.safe_load_all((REPO / "k8s" / "base" / "backup.yaml").read_text()))
    cron = next(d for d in docs if d and d["kind"] == "CronJob")
    spec = cron["spec"]["jobTemplate"]["spec"]["template"]["spec"]
    assert not any(a.startswith("--retention-days") for a in spec["containers"][0]["command"])
    prune = spec["initContainers"][0]["command"]
    assert prune[:2] == ["aicml", "gc"] and "--kind=backups" in prune and "--backups-dir=/backups" in prune
    env = {e["name"]: e.get("value") for e in spec["initContainers"][0]["env"]}
    assert env["AIC_HOME"].startswith(
        "/backups/"
    )  # the audit persists on the volume (the root fs is read-only)


def test_summary_rows_go_by_day_prefix_and_a_database_without_the_table_is_left_alone(tmp_path: Path) -> None:
    import sqlalchemy as sa

    from aicml.serving.predlog import SUMMARY_TABLE

    empty = tmp_path / "empty.db"
    store = SummaryStore(f"sqlite:///{empty}")
    assert store.delete_under(tmp_path / "model=churn" / "date=2026-01-01") == 0
    store.close()
    assert not sa.inspect(sa.create_engine(f"sqlite:///{empty}")).has_table(SUMMARY_TABLE)  # no table made

    # A day whose name holds LIKE's wildcards: only rows under exactly that directory go.
    day = tmp_path / "model=ch_rn%" / "date=2026-01-01"
    look_alike = tmp_path / "model=chXrnY" / "date=2026-01-01"
    url = f"sqlite:///{tmp_path / 'deployment.db'}"
    SummaryStore(url).insert(
        [_summary_row(day / "part-a.parquet"), _summary_row(look_alike / "part-b.parquet")]
    )
    store = SummaryStore(url)
    assert store.delete_under(day) == 1
    assert store.delete_under(day) == 0  # again: nothing left, no error
    store.close()
    assert list(SummaryStore(url).read("churn")["path"]) == [str(look_alike / "part-b.parquet")]


def test_prediction_log_days_leave_the_postgresql_summary_through_the_gc_inventory(
    tmp_path: Path, postgres: Postgres
) -> None:
    """On a cluster the summary rows live in PostgreSQL (the model deployment database): the gc's
    prediction-log inventory deletes a day's rows there, by exact directory prefix (LIKE's wildcards in
    the name match only themselves), and a database without the table is left without one."""
    import sqlalchemy as sa

    from aicml.serving.predlog import SUMMARY_TABLE

    preds = tmp_path / "predictions"
    old = preds / "model=ch_rn%" / "date=2026-01-01"
    look_alike = preds / "model=chXrnY" / "date=2026-01-01"
    new = preds / "model=ch_rn%" / "date=2026-12-05"
    files = [_file(day / f"part-{n}.parquet", 0) for n, day in enumerate((old, look_alike, new))]
    with postgres.database("aicml_summary") as name, postgres.database("aicml_nosummary") as bare:
        url = postgres.url(name)
        SummaryStore(url).insert([_summary_row(f) for f in files])  # batch ids differ: the file names

        inventory = PredictionLogs(preds, "legal-hold", url)
        try:
            [item] = [i for i in inventory.items(NOW) if Path(i.handle) == old]
            steps: list[str] = []
            inventory.delete(item, steps.append)
        finally:
            inventory.close()
        assert steps[0] == "summary-deleted" and not old.exists() and look_alike.exists() and new.exists()
        engine = sa.create_engine(url)
        try:
            with engine.connect() as conn:
                left = (
                    conn.execute(sa.text(f"SELECT path FROM {SUMMARY_TABLE} ORDER BY path")).scalars().all()
                )
        finally:
            engine.dispose()
        assert left == sorted(str(f) for f in files[1:])

        empty = PredictionLogs(preds, "legal-hold", postgres.url(bare))
        try:
            [item] = [i for i in empty.items(NOW) if Path(i.handle) == look_alike]
            empty.delete(item, lambda step: None)
        finally:
            empty.close()
        engine = sa.create_engine(postgres.url(bare))
        try:
            assert not sa.inspect(engine).has_table(SUMMARY_TABLE)  # nothing created there
        finally:
            engine.dispose()
