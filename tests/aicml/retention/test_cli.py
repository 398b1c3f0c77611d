"""`aicml gc`: a dry run prints what would go and why, a run deletes it, a bad policy is refused by field."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from aicml.retention.cli import app


@pytest.fixture
def backups(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("AIC_HOME", str(tmp_path / "home"))
    root = tmp_path / "backups"
    for stamp in ("20260101T023000Z", "20260102T023000Z", "20261205T023000Z"):
        (root / stamp).mkdir(parents=True)
        (root / stamp / "manifest.json").write_text("{}")
    return root


def test_dry_run_then_run_of_backups_needs_no_services(backups: Path, tmp_path: Path) -> None:
    runner = CliRunner()
    policy = tmp_path / "policy.yaml"
    policy.write_text("kinds:\n  backups: {keep_last: 1, keep_days: 14}\n")
    args = [
        "--kind",
        "backups",
        "--backups-dir",
        str(backups),
        "--policy",
        str(policy),
        "--now",
        "2026-12-06T00:00:00",
    ]
    dry = runner.invoke(app, ["--dry-run", *args])
    assert dry.exit_code == 0, dry.output
    assert "would delete 2 item(s)" in dry.output and "20260101T023000Z" in dry.output
    assert "not among the newest 1 of backups" in dry.output and "dry run: nothing deleted" in dry.output
    assert len(list(backups.iterdir())) == 3
    done = runner.invoke(app, ["--json", *args])
    assert done.exit_code == 0, done.output
    summary = json.loads(done.output)
    assert sorted(d["id"] for d in summary["deleted"]) == ["20260101T023000Z", "20260102T023000Z"]
    assert [p.name for p in backups.iterdir()] == ["20261205T023000Z"]
    audit = (tmp_path / "home" / "audit" / "retention.jsonl").read_text().splitlines()
    assert len(audit) == 2 and json.loads(audit[0])["action"] == "retention.delete"


def test_bad_policy_and_unknown_kind_are_named(backups: Path, tmp_path: Path) -> None:
    policy = tmp_path / "policy.yaml"
    policy.write_text("kinds:\n  backups: {keep_last: many}\n")
    result = CliRunner().invoke(app, ["--dry-run", "--kind", "backups", "--policy", str(policy)])
    assert result.exit_code == 2
    assert "kinds.backups.keep_last" in result.output
    result = CliRunner().invoke(app, ["--dry-run", "--kind", "bakups", "--backups-dir", str(backups)])
    assert result.exit_code == 1 and "Unknown kind(s) bakups" in result.output
