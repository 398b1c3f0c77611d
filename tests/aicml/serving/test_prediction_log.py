"""Prediction logging of the real `aicml serve` process: logged and read back, sampling, a stuck writer, load."""

from __future__ import annotations

import asyncio
import datetime as dt
import re
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from aicml.serving.predlog import SUMMARY_TABLE, SummaryStore, read_predictions
from tests.services import Postgres, wait_for
from tests.serving_support import Registered, RunningServer, start_server, stop_server

pytestmark = pytest.mark.timeout(400)


def log_env(monkeypatch: pytest.MonkeyPatch, root: Path, database: str, **extra: str) -> None:
    monkeypatch.setenv("AIC_PREDICTION_LOG", str(root))
    monkeypatch.setenv("AIC_PREDICTION_LOG_DB", database)
    monkeypatch.setenv("AIC_PREDICTION_LOG_FLUSH_SECONDS", "0.2")
    for name, value in extra.items():
        monkeypatch.setenv(f"AIC_PREDICTION_LOG_{name}", value)


def log_counts(server: RunningServer, model: str) -> dict[str, float]:
    """The prediction log's counters and queue gauge from /metrics."""
    text = httpx.get(f"{server.url}/metrics").text
    counts = {
        outcome: float(value)
        for outcome, value in re.findall(
            rf'aicml_prediction_log_records_total{{model="{re.escape(model)}",outcome="(\w+)"}} (\S+)', text
        )
    }
    queue = re.search(rf'aicml_prediction_log_queue_rows{{model="{re.escape(model)}"}} (\S+)', text)
    counts["queue_rows"] = float(queue.group(1)) if queue else 0.0
    return counts


def one_row(registered: Registered, i: int) -> dict[str, object]:
    frame = registered.frame.astype(object).where(registered.frame.notna(), None)
    return {"dataframe_records": [frame.iloc[i % len(frame)].to_dict()]}


def window() -> tuple[dt.datetime, dt.datetime]:
    now = dt.datetime.now(dt.UTC)
    return now - dt.timedelta(hours=1), now + dt.timedelta(hours=1)


def settled(server: RunningServer, model: str, answered: float) -> dict[str, float]:
    """Wait until every sampled request is written or counted as dropped."""

    def done() -> dict[str, float] | None:
        counts = log_counts(server, model)
        total = counts.get("written", 0) + counts.get("dropped", 0) + counts.get("failed", 0)
        return counts if total >= answered and counts["queue_rows"] == 0 else None

    return wait_for(done, 30, "the prediction log to write every queued prediction")


@pytest.fixture(scope="module")
def logged_server(
    registered: Registered, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[RunningServer, Path]]:
    tmp = tmp_path_factory.mktemp("predlog")
    root = tmp / "predictions"
    with pytest.MonkeyPatch.context() as monkeypatch:
        log_env(monkeypatch, root, f"sqlite:///{tmp / 'deployment.db'}", MAX_QUEUE="2000")
        running = start_server(f"models:/{registered.name}@champion", tmp, "--poll-seconds", "0")
    yield running, tmp
    stop_server(running)


def test_predictions_are_logged_and_read_back(
    logged_server: tuple[RunningServer, Path], registered: Registered
) -> None:
    server, tmp = logged_server
    before = log_counts(server, registered.name)
    sent = []
    for i in range(20):
        response = httpx.post(
            f"{server.url}/invocations",
            json=one_row(registered, i),
            headers={**server.headers(), "x-request-id": f"req-{i}"},
        )
        assert response.status_code == 200, response.text
        assert response.headers["x-request-id"] == f"req-{i}"
        sent.append(f"req-{i}")
    # No header: the server makes one up and says which.
    response = httpx.post(f"{server.url}/invocations", json=one_row(registered, 3), headers=server.headers())
    generated = response.headers["x-request-id"]
    assert re.fullmatch(r"[0-9a-f]{32}", generated)
    # A request of 8 rows is 8 logged rows under one id.
    frame = registered.frame.astype(object).where(registered.frame.notna(), None)
    response = httpx.post(
        f"{server.url}/invocations",
        json={"dataframe_records": frame.to_dict(orient="records")},
        headers={**server.headers(), "x-request-id": "batch-8"},
    )
    assert response.json()["predictions"] == registered.expected_v1
    # A bad id is refused by name, and nothing is logged for it.
    bad = httpx.post(
        f"{server.url}/invocations",
        json=one_row(registered, 0),
        headers={**server.headers(), "x-request-id": "x" * 200},
    )
    assert bad.status_code == 400 and "x-request-id" in bad.text
    counts = settled(server, registered.name, before.get("written", 0) + 22)
    assert counts.get("dropped", 0) == before.get("dropped", 0)

    logged = read_predictions(str(tmp / "predictions"), registered.name, *window())
    ours = logged[logged["request_id"].isin([*sent, generated, "batch-8"])]
    assert len(ours) == 20 + 1 + 8
    assert set(ours["version"]) == {registered.v1}
    assert set(ours["arm"]) == {"champion"}
    assert set(ours["model"]) == {registered.name}
    assert (ours["latency_ms"] > 0).all() and not ours["error"].any()
    assert list(logged.columns[:8]) == [
        "request_id",
        "row",
        "ts",
        "model",
        "version",
        "arm",
        "latency_ms",
        "error",
    ]
    assert list(logged.columns[8:]) == [*registered.frame.columns, "prediction"]
    for i in range(20):
        row = ours[ours["request_id"] == f"req-{i}"].iloc[0]
        source = registered.frame.iloc[i % len(registered.frame)]
        assert row["a"] == pytest.approx(source["a"]) and row["n"] == source["n"]
        assert row["prediction"] == registered.expected_v1[i % len(registered.frame)]
    batch = ours[ours["request_id"] == "batch-8"]
    assert batch["row"].tolist() == list(range(8))
    assert batch["prediction"].tolist() == registered.expected_v1
    # Outside the window: nothing.
    early = read_predictions(str(tmp / "predictions"), registered.name, "2020-01-01", "2020-01-02")
    assert early.empty and list(early.columns)[:8] == list(logged.columns[:8])

    # A file's summary row is recorded just after the file: wait until every logged row is summarised.
    store = SummaryStore(f"sqlite:///{tmp / 'deployment.db'}")

    def summarised() -> tuple[Any] | None:
        summary = store.read(registered.name)
        return (summary,) if summary["count"].sum() >= len(logged) else None

    (summary,) = wait_for(summarised, 30, "a summary row for every logged file")
    assert summary["count"].sum() == len(logged)
    assert set(summary["version"]) == {registered.v1}
    assert (summary["latency_p99_ms"] >= summary["latency_p50_ms"]).all()
    files = sorted((tmp / "predictions").glob(f"model={registered.name}/date=*/part-*.parquet"))
    assert set(summary["path"]) == {str(f) for f in files}


def test_logging_under_load_accounts_for_every_prediction(
    logged_server: tuple[RunningServer, Path], registered: Registered
) -> None:
    """16 connections for 10 s at 100% sampling: no failed request, every prediction written or counted as
    dropped, the queue within its bound (2000 rows)."""
    server, tmp = logged_server
    before = log_counts(server, registered.name)
    rows_before = len(read_predictions(str(tmp / "predictions"), registered.name, *window()))
    payloads = [one_row(registered, i) for i in range(8)]
    statuses: list[int] = []
    queue_seen: list[float] = []

    async def drive() -> None:
        limits = httpx.Limits(max_connections=16, max_keepalive_connections=16)
        stop_at = time.monotonic() + 10
        async with httpx.AsyncClient(headers=server.headers(), timeout=30, limits=limits) as client:

            async def connection(k: int) -> None:
                i = 0
                while time.monotonic() < stop_at:
                    response = await client.post(f"{server.url}/invocations", json=payloads[(k + i) % 8])
                    statuses.append(response.status_code)
                    i += 1

            async def watch_queue() -> None:
                while time.monotonic() < stop_at:
                    queue_seen.append(log_counts(server, registered.name)["queue_rows"])
                    await asyncio.sleep(0.5)

            await asyncio.gather(watch_queue(), *(connection(k) for k in range(16)))

    asyncio.run(drive())
    answered = len(statuses)
    assert answered > 100, f"only {answered} requests in 10 s"
    assert statuses.count(200) == answered, f"failed requests: {set(statuses) - {200}}"
    counts = settled(server, registered.name, before.get("written", 0) + before.get("dropped", 0) + answered)
    enqueued = counts["enqueued"] - before.get("enqueued", 0)
    written = counts["written"] - before.get("written", 0)
    dropped = counts.get("dropped", 0) - before.get("dropped", 0)
    assert counts.get("failed", 0) == 0
    assert enqueued + dropped == answered  # every answered request was sampled (100%)
    assert written == enqueued
    assert max(queue_seen) <= 2000
    logged_rows = len(read_predictions(str(tmp / "predictions"), registered.name, *window()))
    assert logged_rows - rows_before == written  # one row per request: what was counted is on disk
    print(f"\nload: {answered} requests in 10 s, written {written:.0f}, dropped {dropped:.0f}")


def test_sampling_half_logs_about_half(
    registered: Registered, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    log_env(monkeypatch, tmp_path / "predictions", "off", SAMPLE="0.5")
    server = start_server(f"models:/{registered.name}@champion", tmp_path, "--poll-seconds", "0")
    try:
        with httpx.Client(headers=server.headers()) as client:
            for i in range(400):
                assert (
                    client.post(f"{server.url}/invocations", json=one_row(registered, i)).status_code == 200
                )
        wait_for(
            lambda: (
                log_counts(server, registered.name).get("enqueued", 0) > 0
                and log_counts(server, registered.name)["queue_rows"] == 0
            ),
            30,
            "the writer to take the queue",
        )
    finally:
        stop_server(server)  # flushes on stop
    logged = read_predictions(str(tmp_path / "predictions"), registered.name, *window())
    # Binomial(400, 0.5): sd 10; 140..260 is six standard deviations either way.
    assert 140 <= len(logged) <= 260, len(logged)
    assert "Prediction log of" in server.log.read_text()  # the shutdown line with the counts


def test_a_stuck_writer_never_fails_a_request(
    registered: Registered, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, postgres: Postgres
) -> None:
    """The summary table is locked by another session, so the writer hangs on its INSERT: requests still
    answer 200, the queue stays within 50 rows and the overflow is counted as dropped; once the lock goes,
    everything queued is written."""
    with postgres.database("aic_deployment_db") as database:
        log_env(monkeypatch, tmp_path / "predictions", postgres.url(database), MAX_QUEUE="50")
        server = start_server(f"models:/{registered.name}@champion", tmp_path, "--poll-seconds", "0")
        try:
            with httpx.Client(headers=server.headers()) as client:
                assert (
                    client.post(f"{server.url}/invocations", json=one_row(registered, 0)).status_code == 200
                )
                summaries = SummaryStore(postgres.url(database))
                wait_for(lambda: len(summaries.read()) == 1, 30, "the first summary row")  # the table exists
                summaries.close()
                with postgres.connect(database) as lock:
                    lock.autocommit = False
                    lock.execute(f"LOCK TABLE {SUMMARY_TABLE} IN ACCESS EXCLUSIVE MODE")
                    client.post(f"{server.url}/invocations", json=one_row(registered, 1))
                    time.sleep(1.0)  # the writer takes it and hangs on the INSERT
                    started = time.monotonic()
                    codes = [
                        client.post(f"{server.url}/invocations", json=one_row(registered, i)).status_code
                        for i in range(300)
                    ]
                    elapsed = time.monotonic() - started
                    stuck = log_counts(server, registered.name)
                    lock.rollback()
            assert codes == [200] * 300
            assert elapsed < 30, f"300 requests took {elapsed:.1f} s with the writer stuck"
            assert stuck.get("dropped", 0) >= 300 - 50
            assert stuck["queue_rows"] <= 50
            counts = settled(server, registered.name, 302)
            assert counts["written"] == counts["enqueued"] and counts["written"] + counts["dropped"] == 302
        finally:
            stop_server(server)
        logged = read_predictions(str(tmp_path / "predictions"), registered.name, *window())
        assert len(logged) == counts["written"]
