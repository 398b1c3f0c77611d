"""Each coordination as an MLflow trace: a root span for the coordination and one span per agent call.

The router records call timings while it runs (cheap: a few floats per call); the trace is built from
them afterwards with explicit timestamps, so MLflow never sits on the request path. ``background=True``
exports on a worker thread (the server); ``background=False`` exports before the reply returns and puts
the trace id on it (the demo, tests).
"""

from __future__ import annotations

import logging
import queue
import threading
from typing import Any

from aicml.agents.graph import Coordination
from aicml.agents.messages import AgentMessage, AgentReply, Outcome

log = logging.getLogger(__name__)


class MlflowTraceExporter:
    """A router completion hook that writes traces to an MLflow tracking server."""

    def __init__(self, tracking_uri: str, experiment: str, background: bool = True, max_queue: int = 10_000):
        from aicml.registry.tracking import Tracking

        self.experiment_id = Tracking(uri=tracking_uri, experiment=experiment).experiment_id()
        self.background = background
        self._queue: queue.Queue[tuple[Coordination, AgentMessage, AgentReply, int] | None] = queue.Queue(
            max_queue
        )
        self._thread: threading.Thread | None = None
        self.dropped = 0
        if background:
            self._thread = threading.Thread(target=self._drain, name="agent-trace-export", daemon=True)
            self._thread.start()

    def __call__(
        self, coordination: Coordination, message: AgentMessage, reply: AgentReply, wall_ns: int
    ) -> None:
        if not self.background:
            import mlflow

            reply.trace_id = self.export(coordination, message, reply, wall_ns)
            mlflow.flush_trace_async_logging()  # readable as soon as the reply is
            return
        try:
            self._queue.put_nowait((coordination, message, reply, wall_ns))
        except queue.Full:  # tracing must never slow requests down: drop and count
            self.dropped += 1

    def export(
        self, coordination: Coordination, message: AgentMessage, reply: AgentReply, wall_ns: int
    ) -> str:
        """Write one trace; return its id."""
        import mlflow

        ok = reply.outcome in (Outcome.SUCCESS, Outcome.PARTIAL)
        root = mlflow.start_span_no_context(
            name=f"coordination:{coordination.name}",
            span_type="CHAIN",
            inputs=message.payload,
            attributes={
                "pattern": coordination.graph.pattern,
                "correlation_id": message.correlation_id,
                "message_id": message.id,
                "outcome": reply.outcome.value,
            },
            tags={"correlation_id": message.correlation_id, "coordination": coordination.name},
            experiment_id=self.experiment_id,
            start_time_ns=wall_ns,
        )
        for call in reply.calls:
            start = wall_ns + int(call.started_ms * 1e6)
            span = mlflow.start_span_no_context(
                name=f"agent:{call.agent}",
                span_type="AGENT",
                parent_span=root,
                attributes={"agent": call.agent, "version": call.version, "attempts": str(call.attempts)},
                start_time_ns=start,
            )
            span.end(
                attributes={"error": call.error} if call.error else None,
                status="OK" if call.ok else "ERROR",
                end_time_ns=start + int(call.duration_ms * 1e6),
            )
        root.end(
            outputs=reply.payload if ok else {"errors": reply.errors},
            status="OK" if ok else "ERROR",
            end_time_ns=wall_ns + int(reply.duration_ms * 1e6),
        )
        return str(root.trace_id)

    def _drain(self) -> None:
        while True:
            item = self._queue.get()
            if item is None:
                return
            try:
                self.export(*item)
            except Exception as exc:  # a tracking server hiccup must not kill the exporter
                log.warning("Could not export the trace of %s: %s", item[1].correlation_id, exc)
            finally:
                self._queue.task_done()

    def flush(self, timeout_s: float = 30.0) -> None:
        """Wait until queued traces are written (tests, shutdown)."""
        if self._thread is None:
            return
        done = threading.Event()

        def wait() -> None:
            self._queue.join()
            done.set()

        threading.Thread(target=wait, daemon=True).start()
        done.wait(timeout_s)
        import mlflow

        mlflow.flush_trace_async_logging()

    def close(self) -> None:
        if self._thread is not None:
            self.flush()
            self._queue.put(None)
            self._thread.join(5)


def describe_trace(reply: AgentReply, coordination: Coordination | None = None) -> str:
    """A text rendering of a reply's calls, for the CLI: one line per span with its offset and duration."""
    lines = [
        f"coordination {coordination.name if coordination else reply.sender} "
        f"[{coordination.graph.pattern if coordination else '?'}] correlation={reply.correlation_id} "
        f"outcome={reply.outcome.value} {reply.duration_ms:.2f} ms"
        + (f" trace={reply.trace_id}" if reply.trace_id else "")
    ]
    for call in reply.calls:
        bar = "ok " if call.ok else "ERR"
        extra = f"  ({call.error})" if call.error else ""
        retry = f" x{call.attempts}" if call.attempts > 1 else ""
        lines.append(
            f"  {bar} +{call.started_ms:8.2f} ms  {call.duration_ms:8.2f} ms  {call.agent}@{call.version}{retry}{extra}"
        )
    return "\n".join(lines)


def trace_summary(trace: Any) -> list[tuple[str, str | None]]:
    """(span name, parent span name) pairs of an MLflow trace, for checks."""
    spans = trace.data.spans
    names = {s.span_id: s.name for s in spans}
    return [(s.name, names.get(s.parent_id)) for s in spans]
