"""Bounded retries for the platform's clients of MLflow, Prefect and PostgreSQL, and the error when they run out.

MLflow's and Prefect's clients retry by themselves; the platform only sets how long (``CLIENT_RETRY_ENV``,
given to every process the stack starts and to the pods through the ``aic-ml-config`` ConfigMap), so
that a server restart of 10-20 s is ridden out and a server that stays down is reported after about a
minute, by name and address, with what to run next.
"""

from __future__ import annotations

import functools
import itertools
import math
import random
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, Concatenate, ParamSpec, TypeVar

from aicml.errors import ServiceUnavailableError
from aicml.redaction import redact

T = TypeVar("T")

# MLflow (urllib3 Retry, every method): sleeps 0, 2, 4, 8, 16, 32 s between 7 attempts (factor 1 is
# the smallest non-zero one; it is an int), plus up to 1 s jitter each: about 62-67 s before giving
# up on a server that refuses connections. The default (7 retries, factor 2) waits about 4 minutes.
# A request timeout of 60 s (default 120) bounds one attempt on a server that accepts and hangs.
MLFLOW_RETRY_ENV = {
    "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "6",
    "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
    "MLFLOW_HTTP_REQUEST_BACKOFF_JITTER": "1.0",
    "MLFLOW_HTTP_REQUEST_TIMEOUT": "60",
}
# Prefect (httpx): sleeps 2, 4, 8, 16, 32 s (+-20 %) between 6 attempts, about 62 s in all; it retries
# a refused connection only once the client has reached the server, so a wrong URL fails at once.
# These are Prefect's defaults, set explicitly so that a changed default does not change the bound.
PREFECT_RETRY_ENV = {
    "PREFECT_CLIENT_MAX_RETRIES": "5",
    "PREFECT_CLIENT_RETRY_JITTER_FACTOR": "0.2",
    "PREFECT_API_REQUEST_TIMEOUT": "60",
}
CLIENT_RETRY_ENV = {**MLFLOW_RETRY_ENV, **PREFECT_RETRY_ENV}
GIVE_UP_SECONDS = 70  # about how long either client keeps trying a server that is down


def _transport_errors() -> tuple[type[BaseException], ...]:
    """Exception types that mean "no answer from the server", from the client libraries loaded here."""
    found: list[type[BaseException]] = [ConnectionError, TimeoutError]
    if "requests" in sys.modules:
        import requests

        found += [requests.exceptions.ConnectionError, requests.exceptions.Timeout]
        found.append(requests.exceptions.RetryError)  # only 5xx answers until the retries ran out
    if "urllib3" in sys.modules:
        import urllib3

        found.append(urllib3.exceptions.MaxRetryError)
    if "httpx" in sys.modules:
        import httpx

        found.append(httpx.TransportError)
    return tuple(found)


# PostgreSQL SQLSTATEs of a server out of reach for now: class 08 (connection exceptions), the server shutting
# down or starting up (57P01-57P03), too many connections (53300). Not refusals: bad password, missing database.
_PG_TRANSIENT = ("57P01", "57P02", "57P03", "53300")


def _database_unreachable(exc: BaseException, sqlite_busy: bool) -> bool:
    """A database connection failure or shutdown (psycopg, or SQLAlchemy's invalidated connection); with
    ``sqlite_busy`` also a SQLite file that stays locked past its busy timeout."""
    if "sqlalchemy" in sys.modules:
        from sqlalchemy.exc import DBAPIError

        if isinstance(exc, DBAPIError) and exc.connection_invalidated:
            return True
    if sqlite_busy and "sqlite3" in sys.modules:
        import sqlite3

        if isinstance(exc, sqlite3.OperationalError) and ("locked" in str(exc) or "busy" in str(exc)):
            return True
    if "psycopg" not in sys.modules:
        return False
    import psycopg

    if not isinstance(exc, psycopg.OperationalError):
        return False
    state = getattr(exc, "sqlstate", None)
    return state is None or state.startswith("08") or state in _PG_TRANSIENT


def is_unreachable(exc: BaseException, *, sqlite_busy: bool = False) -> bool:
    """True when ``exc`` or what it wraps (cause or context, a few levels deep) says the server is out of reach
    for now: a transport failure (MLflow, Prefect, HTTP clients), a database connection lost or refused.

    MLflow raises ``MlflowException("API request to ... failed ...")`` from inside its handler of the
    ``requests`` error, trainers wrap that again, and SQLAlchemy wraps the driver's error, so the chain is
    walked, not only ``exc`` itself. ``sqlite_busy``: a SQLite file locked past its busy timeout counts too.
    """
    kinds = _transport_errors()
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen and len(seen) < 12:
        if isinstance(current, ServiceUnavailableError):
            return False  # already reported
        if isinstance(current, kinds) or _database_unreachable(current, sqlite_busy):
            return True
        seen.add(id(current))
        current = current.__cause__ or current.__context__
    return False


def current_flow_run_id() -> str | None:
    """The id of the Prefect flow run this code runs in, for the `aicml resume` hint; None outside one."""
    if "prefect" not in sys.modules:
        return None
    from prefect.runtime import flow_run

    run_id = flow_run.get_id()
    return str(run_id) if run_id else None


@contextmanager
def reporting_unreachable(server: str, url: str, doing: str) -> Iterator[None]:
    """Turn a client's give-up on ``server`` at ``url`` into a ``ServiceUnavailableError``; others pass."""
    try:
        yield
    except Exception as exc:
        if not is_unreachable(exc):
            raise
        raise ServiceUnavailableError(
            server, redact(url), doing, f"{type(exc).__name__}: {exc}"[:300], current_flow_run_id()
        ) from exc


def retrying(
    call: Callable[[], T],
    *,
    retry_on: Callable[[BaseException], bool] = is_unreachable,
    attempts: int | None = None,
    budget_s: float | None = None,
    first_delay: float = 1.0,
    max_delay: float = math.inf,
    jitter: bool = False,
    sleep: Callable[[float], None] = time.sleep,
    on_retry: Callable[[BaseException, float], None] | None = None,
) -> T:
    """The one backoff loop: ``call()`` again while it raises what ``retry_on`` accepts, then the last error.

    Waits ``first_delay``, doubling up to ``max_delay`` (each wait times 0.5-1.5 with ``jitter``), for at most
    ``attempts`` tries and, with ``budget_s``, while the next wait still ends within ``budget_s`` seconds of
    the start. Other errors are raised at once. ``call`` must be idempotent: safe to run twice.
    """
    deadline = None if budget_s is None else time.monotonic() + budget_s
    delay = first_delay
    for attempt in itertools.count(1):
        try:
            return call()
        except Exception as exc:
            if not retry_on(exc):
                raise
            if attempt == attempts or (deadline is not None and time.monotonic() + delay > deadline):
                raise
            if on_retry is not None:
                on_retry(exc, delay)
        sleep(delay * (0.5 + random.random()) if jitter else delay)
        delay = min(delay * 2, max_delay)
    raise AssertionError("unreachable")  # the loop returns or raises


Owner = TypeVar("Owner")
P = ParamSpec("P")


def idempotent(method: Callable[Concatenate[Owner, P], T]) -> Callable[Concatenate[Owner, P], T]:
    """Retry ``method`` (one whole transaction) with its owner's ``retrying(work)``: the object's own, or that
    of its ``store`` (``AgentStore.retrying`` retries while agent_db is unavailable, within ``retry_s``).

    Only for operations that may run twice: after a commit whose answer was lost, the second run must find
    the work done and do nothing more (no second audit row, no second lease).
    """

    @functools.wraps(method)
    def retried(self: Owner, *args: P.args, **kwargs: P.kwargs) -> T:
        owner: Any = getattr(self, "store", self)
        result: T = owner.retrying(lambda: method(self, *args, **kwargs))
        return result

    return retried


def retry_idempotent(
    call: Callable[[], T],
    *,
    server: str,
    url: str,
    doing: str,
    attempts: int = 5,
    first_delay: float = 1.0,
    sleep: Callable[[float], None] = time.sleep,
) -> T:
    """Run ``call`` (idempotent: safe to repeat) until it does not fail for want of the server.

    Waits ``first_delay``, doubling, between ``attempts`` tries (1, 2, 4, 8 s by default: 15 s plus the
    calls' own timeouts), then raises ``ServiceUnavailableError``. Errors that are not transport
    failures are raised at once.
    """
    try:
        return retrying(call, attempts=attempts, first_delay=first_delay, sleep=sleep)
    except Exception as exc:
        if not is_unreachable(exc):
            raise
        raise ServiceUnavailableError(
            server,
            redact(url),
            doing,
            f"{attempts} attempts over {first_delay * (2 ** (attempts - 1) - 1):.0f}s; "
            f"last: {type(exc).__name__}: {exc}"[:300],
            current_flow_run_id(),
        ) from exc
