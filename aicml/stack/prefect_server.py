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
``BEGIN IMMEDIATE`` on SQLite. ``aicml.compat.take_slots_under_write_lock`` (a patch of a private Prefect
function, fenced to the Prefect versions it was written for) does the same for slot acquisition: it waits for
the lock (milliseconds) instead of failing. The begin mode is SQLite-only; on PostgreSQL nothing changes.
This launcher installs it before starting Prefect's CLI.
"""

from __future__ import annotations

import sys

from aicml.compat import take_slots_under_write_lock
from aicml.errors import ConfigurationError


def main() -> None:
    """``python -m aicml.stack.prefect_server server start ...``: the ``prefect`` CLI, patched first."""
    try:
        patched = take_slots_under_write_lock()
    except ConfigurationError as exc:
        # An untested Prefect: one clear line in the server's log, not a traceback.
        print(f"aicml: {exc}", file=sys.stderr)
        sys.exit(1)
    if not patched:
        print("aicml: concurrency-slot acquisition runs unpatched (see the CompatWarning)", file=sys.stderr)
    from prefect.cli import app

    sys.argv[0] = "prefect"
    app()


if __name__ == "__main__":
    main()
