"""The stack's Prefect server takes concurrency slots under SQLite's write lock.

Unpatched, a write committed by another connection between the slot endpoint's read of the limits and its
update fails the acquisition with "database is locked" (a 503 the client retries after 2 s): the pipeline's
`training-slot` task then started 2 s late in half the benchmark's runs. The scenario runs in a child process
(it sets Prefect's server database and wraps a server function) on a throwaway SQLite file.
"""

from __future__ import annotations

import asyncio
import json
import os
import sqlite3
import subprocess
import sys
from pathlib import Path
from typing import Any

from blocks.settings import AicSettings

REPO = Path(__file__).resolve().parents[3]


def test_the_stack_starts_prefect_through_the_patched_launcher(tmp_path: Path) -> None:
    from aicml.stack.local import LocalStack

    spec = next(s for s in LocalStack(AicSettings(home=tmp_path)).specs() if s.name == "prefect-server")
    assert list(spec.command[:3]) == [sys.executable, "-m", "aicml.stack.prefect_server"]
    assert list(spec.command[3:5]) == ["server", "start"]


def test_the_installed_prefect_still_has_the_function_the_fix_wraps() -> None:
    from aicml.compat import take_slots_under_write_lock

    # Child process: the wrap replaces a function of Prefect's server module for the whole process.
    done = subprocess.run(
        [sys.executable, "-c", "from aicml.compat import take_slots_under_write_lock as t; "
         "assert t() and t(), 'not applied'"],
        env={**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])},
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    assert callable(take_slots_under_write_lock)


def test_a_write_between_read_and_update_waits_instead_of_failing_the_acquisition(tmp_path: Path) -> None:
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]),
        "PREFECT_HOME": str(tmp_path / "prefect"),
        "PREFECT_API_DATABASE_CONNECTION_URL": f"sqlite+aiosqlite:///{tmp_path / 'prefect.db'}",
    }
    done = subprocess.run(
        [sys.executable, __file__, str(tmp_path / "prefect.db")],
        env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-4000:]
    results = json.loads(done.stdout.strip().splitlines()[-1])
    unpatched, patched = results["unpatched"], results["patched"]
    # Prefect 3.9 as it is: the other connection commits in between and the update fails.
    assert unpatched == {"other_writer_committed": True, "error": "database is locked"}, unpatched
    # With the stack's launcher: the acquisition holds the write lock from its first read, so the other
    # writer waits (here: gives up after its 0.2 s timeout) and the slot is taken.
    assert patched == {"other_writer_committed": False, "acquired": True}, patched


async def _scenario(db_file: str) -> dict[str, Any]:
    from prefect.server import models, schemas
    from prefect.server.api import concurrency_limits_v2 as api
    from prefect.server.database import provide_database_interface

    from aicml.compat import take_slots_under_write_lock

    db = provide_database_interface()
    engine = await db.engine()
    async with engine.begin() as connection:
        await connection.run_sync(db.ConcurrencyLimitV2.__table__.create)
    async with db.session_context(begin_transaction=True) as session:
        await models.concurrency_limits_v2.create_concurrency_limit(
            session=session, concurrency_limit=schemas.core.ConcurrencyLimitV2(name="tag:slot", limit=4)
        )
    raw = sqlite3.connect(db_file)
    raw.execute("CREATE TABLE other_writer (n INTEGER)")
    raw.commit()
    raw.close()

    increment = models.concurrency_limits_v2.bulk_increment_active_slots

    async def acquire() -> dict[str, Any]:
        outcome: dict[str, Any] = {}

        async def write_in_between(*args: Any, **kwargs: Any) -> Any:
            # Another connection (the server's services, the log endpoint, ...) commits a write after the
            # endpoint has read the limits and before it updates them.
            other = sqlite3.connect(db_file, timeout=0.2)
            try:
                other.execute("INSERT INTO other_writer VALUES (1)")
                other.commit()
                outcome["other_writer_committed"] = True
            except sqlite3.OperationalError:
                outcome["other_writer_committed"] = False
            finally:
                other.close()
            return await increment(*args, **kwargs)

        models.concurrency_limits_v2.bulk_increment_active_slots = write_in_between
        try:
            async with db.session_context(begin_transaction=True) as session:
                _, acquired = await api._acquire_concurrency_slots(
                    session=session, names=["tag:slot"], slots=1, mode="concurrency"
                )
            outcome["acquired"] = acquired
        except Exception as exc:  # the API turns this into a 503
            outcome["error"] = "database is locked" if "database is locked" in str(exc) else repr(exc)
        finally:
            models.concurrency_limits_v2.bulk_increment_active_slots = increment
        return outcome

    unpatched = await acquire()
    assert take_slots_under_write_lock()
    patched = await acquire()
    return {"unpatched": unpatched, "patched": patched}


if __name__ == "__main__":
    print(json.dumps(asyncio.run(_scenario(sys.argv[1]))))
