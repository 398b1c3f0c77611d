"""Flow-run heartbeats that stop the moment the flow ends.

Prefect 3.9's heartbeat thread sleeps in one-second steps, and a synchronous flow joins that thread
when it finishes: every sync flow run (and every subflow) ends up to a second late. On a 10-million-row
ingest that was a quarter of the flow's wall time. ``flow_heartbeats`` is a heartbeat loop with the
same behaviour (first beat at once, then one per ``heartbeat_seconds``, none after a final state)
that waits on its stop event, so joining it is immediate. Crash detection is unchanged: the crash
automation still sees a beat every interval. ``aicml.compat.install()`` puts it in Prefect's place, where a
process that runs flows starts (it is a patch of Prefect's private ``flow_engine._send_heartbeats``).
"""

from __future__ import annotations

import contextlib
import contextvars
import threading
from collections.abc import Iterator
from typing import Any


@contextlib.contextmanager
def flow_heartbeats(engine: Any, join_on_exit: bool = True) -> Iterator[None]:
    """Emit ``engine``'s flow-run heartbeat every ``engine.heartbeat_seconds`` while the body runs."""
    seconds = engine.heartbeat_seconds
    if seconds is None:
        yield
        return
    resource, related = engine._build_heartbeat_event_template()
    stop = threading.Event()

    def beat() -> None:
        while not stop.is_set():
            run = getattr(engine, "flow_run", None)
            if run is not None and run.state is not None and run.state.is_final():
                return
            try:
                engine._emit_flow_run_heartbeat(resource, related)
            except Exception:  # a missed beat must never fail the flow
                engine.logger.debug("Failed to emit heartbeat", exc_info=True)
            if stop.wait(seconds):
                return

    # The thread sees the caller's settings context (the API URL), as Prefect's own loop does.
    context = contextvars.copy_context()
    thread = threading.Thread(target=context.run, args=(beat,), daemon=True, name="aicml-flow-heartbeat")
    thread.start()
    try:
        yield
    finally:
        stop.set()
        if join_on_exit:
            thread.join(timeout=2)
