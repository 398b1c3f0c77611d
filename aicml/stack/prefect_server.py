"""The local stack's Prefect server: ``prefect server start``, with concurrency slots taken under SQLite's
write lock.

Prefect 3.9's slot endpoints (``/v2/concurrency_limits/increment`` and ``increment-with-lease``, called by
every task run whose tag has a concurrency limit, such as the pipeline's ``training-slot``) read the limits and
then update them in one deferred transaction. On SQLite (WAL) a write committed by another connection between
that read and the update makes the update fail at once with "database is locked" (the read snapshot is stale,
so SQLite does not wait out its busy timeout); the API answers 503 and the client retries after its back-off
of 2 s (+-20%). The server's own services write all the time (task-run states from events, logs), so a tagged
task started, now and then, 2 s late: half the runs of the pipeline benchmark.

Prefect's other read-then-write transactions (task- and flow-run state changes, triggers) begin with
``BEGIN IMMEDIATE`` on SQLite. ``take_slots_under_write_lock`` does the same for slot acquisition: it waits for
the lock (milliseconds) instead of failing. The begin mode is SQLite-only; on PostgreSQL nothing changes.
"""

from __future__ import annotations

import functools
import sys
from typing import Any

_MARK = "_aicml_begin_immediate"


def take_slots_under_write_lock() -> bool:
    """Begin slot acquisition with ``BEGIN IMMEDIATE`` on SQLite; True when applied (idempotent).

    False when this Prefect has no such function to wrap (it changed): the server then runs unchanged.
    """
    from prefect.server.api import concurrency_limits_v2 as api
    from prefect.server.database.configurations import SQLITE_BEGIN_MODE

    acquire = getattr(api, "_acquire_concurrency_slots", None)
    if acquire is None:
        return False
    if getattr(acquire, _MARK, False):
        return True

    @functools.wraps(acquire)
    async def acquire_immediately(*args: Any, **kwargs: Any) -> Any:
        # The endpoint's session connects, and so emits BEGIN, at the first statement, which runs in here.
        token = SQLITE_BEGIN_MODE.set("IMMEDIATE")
        try:
            return await acquire(*args, **kwargs)
        finally:
            SQLITE_BEGIN_MODE.reset(token)

    setattr(acquire_immediately, _MARK, True)
    api._acquire_concurrency_slots = acquire_immediately
    return True


def main() -> None:
    """``python -m aicml.stack.prefect_server server start ...``: the ``prefect`` CLI, patched first."""
    if not take_slots_under_write_lock():
        print(
            "aicml: this Prefect has no _acquire_concurrency_slots; slot acquisition runs unpatched",
            file=sys.stderr,
        )
    from prefect.cli import app

    sys.argv[0] = "prefect"
    app()


if __name__ == "__main__":
    main()
