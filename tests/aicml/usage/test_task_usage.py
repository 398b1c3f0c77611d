"""Usage per task run: the flow's samples shared out among its task runs (alone, side by side, with gaps
that stay with the flow), and a real flow run on the session's stack whose CPU-burning task gets its CPU
seconds and whose sleeping task gets none, in the store, as MLflow-style metrics, in the artifact and in
`aicml usage --by task`."""

from __future__ import annotations

import itertools
import json
import random
import time
import uuid
from pathlib import Path

import pytest
from prefect import flow, task
from typer.testing import CliRunner

from aicml.usage.accounting import account_usage, task_metrics
from aicml.usage.cli import app
from aicml.usage.meter import Sample
from aicml.usage.store import UsageRecord, UsageStore, summarise
from aicml.usage.tasks import Span, metered, task_usage


def _samples(cpu_per_s: float, until: int) -> list[Sample]:
    return [
        Sample(at=float(t), cpu_s=cpu_per_s * t, gpu_s=0.0, rss=(100 + t) * 2**20) for t in range(until + 1)
    ]


def test_a_task_alone_gets_its_stretch_and_the_rest_stays_with_the_flow() -> None:
    samples = _samples(1.0, 10)  # one CPU second per second for 10 s
    [use] = task_usage(samples, [Span("a", "f", "train", 2.0, 6.5)])
    assert use.wall_s == 4.5 and use.cpu_s == pytest.approx(4.5)
    assert use.peak_memory_bytes == 106 * 2**20  # the last look inside the run


def test_task_runs_side_by_side_split_the_stretch() -> None:
    samples = _samples(2.0, 4)
    uses = task_usage(samples, [Span("a", "f", "trial", 0.0, 4.0), Span("b", "f", "trial", 0.0, 2.0)])
    by_id = {u.task_run_id: u.cpu_s for u in uses}
    # 0-2 s: both ran, 2 CPU s each; 2-4 s: a alone, 4 CPU s.
    assert by_id == {"a": pytest.approx(6.0), "b": pytest.approx(2.0)}
    assert sum(by_id.values()) == pytest.approx(samples[-1].cpu_s)


def test_a_run_shorter_than_the_sampling_interval_gets_the_memory_around_it() -> None:
    [use] = task_usage(_samples(1.0, 3), [Span("a", "f", "quick", 1.2, 1.4)])
    assert use.cpu_s == pytest.approx(0.2) and use.peak_memory_bytes == 102 * 2**20


def _quadratic_reference(samples: list[Sample], spans: list[Span]) -> dict[str, tuple[float, int]]:
    """The rule written the slow, obvious way: every stretch against every span."""
    cpu = dict.fromkeys((s.task_run_id for s in spans), 0.0)
    for a, b in itertools.pairwise(samples):
        overlaps = {s.task_run_id: min(b.at, s.end) - max(a.at, s.start) for s in spans}
        overlaps = {k: v for k, v in overlaps.items() if v > 0}
        whole = max(b.at - a.at, sum(overlaps.values()), 1e-12)
        for key, overlap in overlaps.items():
            cpu[key] += (b.cpu_s - a.cpu_s) * overlap / whole
    out = {}
    for s in spans:
        seen = [x.rss for x in samples if s.start <= x.at <= s.end]
        around = [x.rss for x in samples if x.at < s.start][-1:] + [x.rss for x in samples if x.at > s.end][
            :1
        ]
        out[s.task_run_id] = (cpu[s.task_run_id], max(seen or around or [0]))
    return out


def test_the_bisecting_attribution_agrees_with_the_obvious_rule_on_random_runs() -> None:
    rng = random.Random(7)
    for _ in range(50):
        at, cpu, samples = 0.0, 0.0, []
        for _ in range(rng.randint(0, 40)):
            samples.append(Sample(at=at, cpu_s=cpu, gpu_s=0.0, rss=rng.randint(1, 10**9)))
            at += rng.choice([0.5, 0.5, 0.25, 1.0])
            cpu += rng.uniform(0.0, 2.0)
        spans = []
        for k in range(rng.randint(0, 12)):
            start = rng.uniform(-1.0, at + 1.0)
            spans.append(Span(f"t{k}", "f", "task", start, start + rng.choice([0.01, 0.3, 2.0, 7.0])))
        got = {u.task_run_id: (u.cpu_s, u.peak_memory_bytes) for u in task_usage(samples, spans)}
        want = _quadratic_reference(samples, spans)
        assert got.keys() == want.keys()
        for key, (cpu_s, peak) in want.items():
            assert got[key][0] == pytest.approx(cpu_s, abs=1e-9) and got[key][1] == peak


def test_by_task_sums_task_rows_and_the_other_groupings_ignore_them() -> None:
    now = time.time()
    flow_row = UsageRecord(flow="f", started=now, wall_s=10, cpu_s=8, peak_memory_bytes=1, team="t")
    tasks = [
        UsageRecord(flow="f", started=now, wall_s=3, cpu_s=3, peak_memory_bytes=1, team="t", task="train"),
        UsageRecord(flow="f", started=now, wall_s=2, cpu_s=2, peak_memory_bytes=5, team="t", task="train"),
    ]
    [team] = summarise([flow_row, *tasks], "team")
    assert team["runs"] == 1 and team["cpu_h"] == pytest.approx(8 / 3600)
    [by_task] = summarise([flow_row, *tasks], "task")
    assert (
        by_task["task"] == "f/train" and by_task["runs"] == 2 and by_task["cpu_h"] == pytest.approx(5 / 3600)
    )
    metrics = task_metrics(tasks)
    assert metrics["usage.task.train.cpu_seconds"] == 5 and metrics["usage.task.train.peak_memory_bytes"] == 5


def test_a_store_made_before_task_rows_gains_the_columns(tmp_path: Path) -> None:
    import sqlalchemy as sa

    url = f"sqlite:///{tmp_path}/old.db"
    engine = sa.create_engine(url)
    with engine.begin() as conn:  # the table as the first release made it
        conn.execute(sa.text("CREATE TABLE aic_usage (id VARCHAR(64) PRIMARY KEY, flow VARCHAR(256) NOT NULL, "
                             "started FLOAT NOT NULL, wall_s FLOAT NOT NULL, cpu_s FLOAT NOT NULL, "
                             "peak_memory_bytes BIGINT NOT NULL)"))  # fmt: skip
        conn.execute(sa.text("INSERT INTO aic_usage VALUES ('old', 'f', 1.0, 2.0, 3.0, 4)"))
    engine.dispose()
    store = UsageStore(url)
    try:
        store.append(UsageRecord(flow="f", started=5.0, wall_s=1, cpu_s=1, peak_memory_bytes=1, task="train"))
        old, new = store.read(0)
    finally:
        store.close()
    assert (old.id, old.cpu_s, old.task, old.gpu_s, old.team) == ("old", 3.0, "", 0.0, "")
    assert new.task == "train"


BURN_S = 1.5


@metered
@task(name="burn")
def _burn(seconds: float) -> None:
    end = time.process_time() + seconds
    while time.process_time() < end:
        pass


@metered
@task(name="idle")
def _idle(seconds: float) -> None:
    time.sleep(seconds)


@pytest.mark.slow
def test_a_flow_runs_task_runs_get_what_they_used(stack: object) -> None:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId, ArtifactFilterKey

    from blocks.settings import AicSettings

    name = f"usage-tasks-{uuid.uuid4().hex[:6]}"
    url = AicSettings().usage_store_url()

    @flow(name=name)
    def metered_flow() -> str:
        with account_usage(name, team="unit", store_url=url, interval=0.1) as account:
            _burn(BURN_S)
            _idle(BURN_S)
        assert account.record is not None
        return account.record.flow_run_id

    since = time.time()
    flow_run_id = metered_flow()
    store = UsageStore(url)
    try:
        rows = [r for r in store.read(since - 1) if r.flow == name]
    finally:
        store.close()
    [whole] = [r for r in rows if not r.task]
    tasks = {r.task: r for r in rows if r.task}
    assert set(tasks) == {"burn", "idle"} and whole.flow_run_id == flow_run_id
    assert {r.flow_run_id for r in tasks.values()} == {flow_run_id}
    burn, idle = tasks["burn"], tasks["idle"]
    assert burn.wall_s == pytest.approx(BURN_S, abs=0.5) and idle.wall_s == pytest.approx(BURN_S, abs=0.5)
    # Other threads of this process (earlier tests' clients, Prefect's workers) add to both alike.
    assert burn.cpu_s >= BURN_S - 0.35
    assert burn.cpu_s - idle.cpu_s >= BURN_S - 0.7
    assert burn.cpu_s + idle.cpu_s <= whole.cpu_s * 1.001

    with get_client(sync_client=True) as client:
        [artifact] = client.read_artifacts(
            artifact_filter=ArtifactFilter(
                key=ArtifactFilterKey(any_=[f"usage-{name}"]),
                flow_run_id=ArtifactFilterFlowRunId(any_=[flow_run_id]),
            )
        )
    table = artifact.data if isinstance(artifact.data, list) else json.loads(artifact.data)
    assert [row["task"] for row in table] == ["(whole run)", "burn", "idle"]

    out = json.loads(CliRunner().invoke(app, ["--since", "1h", "--by", "task", "--json"]).output)
    [group] = [g for g in out["groups"] if g["task"] == f"{name}/burn"]
    assert group["runs"] == 1 and group["cpu_h"] == pytest.approx(burn.cpu_s / 3600)


def test_a_workers_task_runs_are_shared_out_when_the_last_ends_and_taken_once() -> None:
    """`_RemoteUse` as a Dask worker runs it: one sampler for two overlapping task runs, nothing to take while
    one still runs, then both with the CPU burnt between them, taken once and forgotten."""
    from aicml.usage import tasks

    remote = tasks._RemoteUse(interval=0.05)
    now = time.time()
    with tasks._lock:
        tasks._spans["run-a"] = tasks.Span("run-a", "flow-x", "burn", now)
        tasks._spans["run-b"] = tasks.Span("run-b", "flow-x", "idle", now)
    remote.begin("run-a")
    remote.begin("run-b")
    start = time.process_time()
    while time.process_time() - start < 0.4:
        pass
    burnt = time.process_time() - start
    with tasks._lock:
        tasks._spans["run-a"] = tasks.Span("run-a", "flow-x", "burn", now, time.time())
    remote.end("run-a")
    assert remote.running("flow-x") and remote.take("flow-x", wait_s=0) == []
    with tasks._lock:
        tasks._spans["run-b"] = tasks.Span("run-b", "flow-x", "idle", now, time.time())
    remote.end("run-b")
    uses = remote.take("flow-x", wait_s=1)
    assert sorted(u.task_run_id for u in uses) == ["run-a", "run-b"]
    assert sum(u.cpu_s for u in uses) == pytest.approx(burnt, rel=0.25, abs=0.05)
    assert remote.take("flow-x", wait_s=0) == [] and "run-a" not in tasks._spans
