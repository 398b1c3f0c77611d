"""Graceful drain on SIGTERM for the uvicorn services (model server, agent service), one mechanism for both.

SIGTERM: readiness answers 503 at once and the server keeps answering for ``drain_s`` (the time the
Service needs to stop routing here), responses close their connections, then it stops accepting, finishes
what is in flight and the process exits 0 within ``grace_s``, below Kubernetes' default
terminationGracePeriodSeconds of 30.
"""

from __future__ import annotations

import logging
import os
import signal
import threading
import time
from collections.abc import Awaitable, Callable, MutableMapping
from dataclasses import dataclass
from typing import Any

from aicml.errors import ConfigurationError

log = logging.getLogger(__name__)

# Kept after the in-flight requests for the service's own cleanup (unload models, release leases) and for
# leaving the process, out of the grace period.
EXIT_RESERVE_S = 2.0

Message = MutableMapping[str, Any]
Send = Callable[[Message], Awaitable[None]]


@dataclass(frozen=True)
class DrainPolicy:
    """How long a service keeps answering after SIGTERM (``drain_s``) and by when it is gone (``grace_s``)."""

    drain_s: float = 5.0
    grace_s: float = 25.0

    def __post_init__(self) -> None:
        if self.drain_s < 0 or self.grace_s - self.drain_s < EXIT_RESERVE_S + 1:
            raise ConfigurationError(
                f"The grace period ({self.grace_s:g} s) must exceed the drain ({self.drain_s:g} s) by at "
                f"least {EXIT_RESERVE_S + 1:g} s: in-flight requests need time to finish after the drain. "
                "Lower --drain-seconds or raise --grace-seconds (and the pod's terminationGracePeriodSeconds)."
            )

    @property
    def in_flight_s(self) -> float:
        """What in-flight requests get once the listener closes: uvicorn's ``timeout_graceful_shutdown``."""
        return self.grace_s - self.drain_s - EXIT_RESERVE_S


def closing(send: Send) -> Send:
    """``send`` with ``Connection: close`` on the response: a draining server keeps no idle connection for a
    client to reuse at the moment the server closes it."""

    async def closing_send(message: Message) -> None:
        if message["type"] == "http.response.start":
            message = {**message, "headers": [*message.get("headers", []), (b"connection", b"close")]}
        await send(message)

    return closing_send


def draining_server(uvicorn: Any, on_drain: Callable[[], None], policy: DrainPolicy) -> Any:
    """uvicorn's Server class, with SIGTERM draining first (uvicorn alone stops accepting at once, while the
    Service still routes here, and then dies by the re-raised signal rather than exiting 0).

    ``on_drain`` runs in the signal handler: it only flips the service's readiness.
    """

    class DrainingServer(uvicorn.Server):  # type: ignore[misc,name-defined]
        stop_at: float | None = None

        def handle_exit(self, sig: int, frame: Any) -> None:
            if sig != signal.SIGTERM:
                super().handle_exit(sig, frame)  # Ctrl-C: uvicorn's own behaviour
            elif self.stop_at is None:
                on_drain()
                self.stop_at = time.monotonic() + policy.drain_s
                exit_by(time.monotonic() + policy.grace_s)
            else:
                self.stop_at = time.monotonic()  # a second SIGTERM: stop accepting now

        async def on_tick(self, counter: int) -> bool:
            if self.stop_at is not None and time.monotonic() >= self.stop_at:
                self.should_exit = True
            return bool(await super().on_tick(counter))

    return DrainingServer


def exit_by(deadline: float) -> None:
    """Leave at ``deadline`` whatever still runs (a call stuck in a thread would hold the exit)."""

    def watchdog() -> None:
        time.sleep(max(deadline - time.monotonic(), 0))
        log.error("The server did not stop within its grace period; exiting.")
        os._exit(1)

    threading.Thread(target=watchdog, name="grace-watchdog", daemon=True).start()
