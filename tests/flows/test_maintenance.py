"""The `maintenance` flow on the real stack: a dry run publishes the plan as the table artifact `maintenance`,
a run deletes it (audited), and a policy file outside the stack's home is refused by name."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from aicml.rollout.audit import read_audit
from flows.maintenance import MaintenanceParams, maintenance


def _artifacts(flow_run_id: Any) -> list[Any]:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    with get_client(sync_client=True) as client:
        return list(
            client.read_artifacts(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id])))
        )


def test_maintenance_plans_then_deletes_and_publishes_the_table(stack: Any, tmp_path: Path) -> None:
    home: Path = stack.home
    tag = uuid.uuid4().hex[:8]
    data_docs = home / "data-docs" / f"retention-{tag}"
    for run in ("run-1", "run-2", "run-3"):
        (data_docs / run).mkdir(parents=True)
        (data_docs / run / "index.html").write_text(run)
    policy = home / f"retention-{tag}.yaml"
    # Only this test's load can go: every other load keeps its newest 1000 sites.
    policy.write_text("kinds:\n  data_docs: {keep_last: 1, keep_days: 0}\n")
    params = MaintenanceParams(
        dry_run=True, kinds=["data_docs"], policy_file=policy.name, now=datetime(2100, 1, 1, tzinfo=UTC)
    )
    # Older sites of other tests' loads may also be listed; this test's load must be exactly its two oldest.
    state = maintenance(params, return_state=True)
    result = state.result()
    mine = {row["id"] for row in result.rows if row["id"].startswith(f"retention-{tag}/")}
    assert result.dry_run and mine == {f"retention-{tag}/run-1", f"retention-{tag}/run-2"}
    assert all((data_docs / r).is_dir() for r in ("run-1", "run-2", "run-3"))
    (artifact,) = [a for a in _artifacts(state.state_details.flow_run_id) if a.key == "maintenance"]
    assert artifact.type == "table" and f"retention-{tag}/run-1" in str(artifact.data)

    # The real run, with one field overridden; other tests' sites are held for its length.
    others = [p for p in (home / "data-docs").glob("*/*") if not p.is_relative_to(data_docs)]
    for other in others:  # other tests' sites stay: held for the length of this run
        (other / "aicml.legal_hold").touch()
    try:
        done = maintenance(params, overrides={"dry_run": False})
    finally:
        for other in others:
            (other / "aicml.legal_hold").unlink(missing_ok=True)
    assert not done.dry_run and done.deleted == 2 and done.failed == 0
    assert sorted(p.name for p in data_docs.iterdir()) == ["run-3"]
    assert all(o.exists() for o in others)
    lines = [
        a
        for a in read_audit(home / "audit" / "retention.jsonl")
        if a["version"].startswith(f"retention-{tag}/")
    ]
    assert sorted(a["version"] for a in lines) == [f"retention-{tag}/run-1", f"retention-{tag}/run-2"]
    assert all(a["actor"].startswith("maintenance flow run ") for a in lines)


def test_a_policy_file_outside_the_home_is_refused_by_name(stack: Any) -> None:
    from aicml.errors import ConfigurationError

    with pytest.raises(
        ConfigurationError, match=r"policy_file '\.\./\.\./etc/passwd' is outside the stack's home"
    ):
        maintenance(MaintenanceParams(dry_run=True, kinds=["data_docs"], policy_file="../../etc/passwd"))
