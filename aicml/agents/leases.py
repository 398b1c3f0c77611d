"""Leases on scarce resources in agent_db: GPU slots, concurrent calls per agent, token budgets.

Never double-allocated: every grant happens in a transaction that first locks the resource's row
(``SELECT ... FOR UPDATE`` on PostgreSQL; ``BEGIN IMMEDIATE`` on SQLite), then counts the live leases.
Fair under contention: a client that cannot be served at once takes a ticket (``agent_lease_waiters``,
an autoincrement id); a grant needs free units for the client *and* for everyone queued before it, so
no client starves behind luckier pollers or bigger requests.
Leases expire so a crashed holder frees its units: an agent call's leases live for the longest the call
may take (``timeout_s`` x (1 + ``retries``) + ``backoff_s`` x ``retries``) plus ``margin_s`` (default 30 s,
``AIC_AGENTS_LEASE_MARGIN_S``); a replica killed with leases held loses them to the others within that TTL.
A waiter that stops polling stops blocking the queue. Token budgets are leases that are not returned: they
lapse after the window. Every lease row names its holder's replica (``host/pid``) first; a replica that stops
gracefully gives back whatever it still holds (``release_held``).
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import os
import random
import socket
import threading
import time
import uuid

from sqlalchemy import delete, func, select
from sqlalchemy.orm import Session

from aicml.agents.errors import AgentConfigurationError, AgentStoreUnavailable, LeaseTimeout
from aicml.agents.schema import LeaseRow, ResourceRow, WaiterRow, utcnow
from aicml.agents.spec import AgentSpec
from aicml.agents.store import AgentStore
from aicml.retry import idempotent

log = logging.getLogger(__name__)

GPU_RESOURCE = "gpu"


class LeaseManager:
    """Acquire and release leases; safe to use from many threads, processes and hosts at once."""

    def __init__(
        self, store: AgentStore, poll_s: float = 0.01, default_ttl_s: float = 300.0, margin_s: float = 30.0
    ) -> None:
        """``margin_s``: added to the longest an agent call may take to make its leases' TTL."""
        self.store = store
        self.poll_s = poll_s
        self.default_ttl_s = default_ttl_s
        self.margin_s = margin_s
        # Who holds a lease, first in its holder column: the pod (hostname) and process.
        self.replica = f"{socket.gethostname()}/{os.getpid()}"
        # Lease ids this process holds or may hold (a grant in flight); what release_held gives back.
        self._held: set[str] = set()
        self._held_lock = threading.Lock()
        # Resources declared by this process (and their capacity), so the hot path does not write each call.
        self._declared: dict[str, tuple[int, float | None]] = {}

    @idempotent
    def ensure_resource(self, name: str, capacity: int, window_s: float | None = None) -> None:
        """Create ``name`` with ``capacity`` units, or set its capacity (and budget window)."""
        if capacity < 1:
            raise AgentConfigurationError(
                f"Resource {name!r} needs a capacity of at least 1, got {capacity}."
            )
        from sqlalchemy.dialects import postgresql, sqlite

        # An upsert: many router replicas may declare the same resource at the same moment.
        insert = postgresql.insert if self.store.is_postgres else sqlite.insert
        statement = insert(ResourceRow).values(name=name, capacity=capacity, window_s=window_s)
        statement = statement.on_conflict_do_update(
            index_elements=[ResourceRow.name], set_={"capacity": capacity, "window_s": window_s}
        )
        with self.store.transaction() as s:
            s.execute(statement)

    @idempotent
    def in_use(self, resource: str) -> int:
        """Units currently held (live leases)."""
        with self.store.transaction() as s:
            return int(
                s.scalar(
                    select(func.coalesce(func.sum(LeaseRow.units), 0)).where(
                        LeaseRow.resource == resource, LeaseRow.expires_at > utcnow()
                    )
                )
                or 0
            )

    def acquire(
        self, resource: str, holder: str, units: int = 1, wait_s: float = 30.0, ttl_s: float | None = None
    ) -> str:
        """Block until ``units`` of ``resource`` are granted (in ticket order); return the lease id."""
        deadline, lease_id, ttl = time.monotonic() + wait_s, uuid.uuid4().hex, ttl_s or self.default_ttl_s
        ticket: int | None = None
        try:
            while True:
                granted, ticket = self._try_once(resource, holder, units, ticket, lease_id, ttl)
                if granted:
                    ticket = None
                    return lease_id
                if time.monotonic() >= deadline:
                    raise _timeout(resource, holder, units, wait_s)
                # Jitter keeps pollers from waking in lockstep and queueing on the row lock together.
                time.sleep(self.poll_s * (0.5 + random.random()))
        finally:
            if ticket is not None:  # gave up (timeout or error): leave the queue
                self._leave_queue(ticket)

    async def acquire_async(
        self, resource: str, holder: str, units: int = 1, wait_s: float = 30.0, ttl_s: float | None = None
    ) -> str:
        """``acquire`` for the router: each try is one short transaction in a thread; waiting holds no thread."""
        deadline, lease_id, ttl = time.monotonic() + wait_s, uuid.uuid4().hex, ttl_s or self.default_ttl_s
        ticket: int | None = None
        # Held from the first try: a caller cancelled while its grant commits in a thread never learns the
        # id, and the lease would sit until its TTL; release_held gives it back.
        self._hold(lease_id)
        granted = False
        try:
            while True:
                granted, ticket = await asyncio.to_thread(
                    self._try_once, resource, holder, units, ticket, lease_id, ttl
                )
                if granted:
                    ticket = None
                    return lease_id
                if time.monotonic() >= deadline:
                    raise _timeout(resource, holder, units, wait_s)
                await asyncio.sleep(self.poll_s * (0.5 + random.random()))
        except (LeaseTimeout, AgentConfigurationError):
            self._unhold([lease_id])  # answered: nothing was granted
            raise
        finally:
            if ticket is not None:
                await asyncio.to_thread(self._leave_queue_quietly, ticket)

    @idempotent
    def _try_once(
        self, resource: str, holder: str, units: int, ticket: int | None, lease_id: str, ttl: float
    ) -> tuple[bool, int | None]:
        with self.store.transaction() as s:
            return self._try_grant(s, resource, holder, units, ticket, lease_id, ttl)

    @idempotent
    def _leave_queue(self, ticket: int) -> None:
        with self.store.transaction() as s:
            s.execute(delete(WaiterRow).where(WaiterRow.id == ticket))

    def _leave_queue_quietly(self, ticket: int) -> None:
        try:
            self._leave_queue(ticket)
        except AgentStoreUnavailable as exc:  # the ticket lapses by itself within seconds
            log.warning("Leaving the lease queue failed (%s); the ticket lapses by itself", exc)

    def _hold(self, lease_id: str) -> None:
        with self._held_lock:
            self._held.add(lease_id)

    def _unhold(self, lease_ids: list[str]) -> None:
        with self._held_lock:
            self._held.difference_update(lease_ids)

    def held(self) -> list[str]:
        """Lease ids this process holds (or may hold: a grant in flight when its caller was cancelled)."""
        with self._held_lock:
            return sorted(self._held)

    def _try_grant(
        self,
        s: Session,
        resource: str,
        holder: str,
        units: int,
        ticket: int | None,
        lease_id: str,
        ttl: float,
    ) -> tuple[bool, int | None]:
        row = s.get(ResourceRow, resource, with_for_update=True)  # the lock every allocator queues on
        if s.get(LeaseRow, lease_id) is not None:
            # Granted by a try whose commit succeeded but whose answer was lost (the database restarted).
            return True, ticket
        if row is None:
            raise AgentConfigurationError(
                f"Resource {resource!r} is not declared; declare it with LeaseManager.ensure_resource()."
            )
        if units > row.capacity:
            raise AgentConfigurationError(
                f"{holder} asks for {units} unit(s) of {resource!r}, which has only {row.capacity}."
            )
        now = utcnow()
        used = int(
            s.scalar(
                select(func.coalesce(func.sum(LeaseRow.units), 0)).where(
                    LeaseRow.resource == resource, LeaseRow.expires_at > now
                )
            )
            or 0
        )
        # First come, first served without idling: a client may go ahead while the units still free cover
        # every earlier waiter too, so nobody queued before it is ever deprived (strict FIFO would leave a
        # freed slot idle until the head of the queue happens to poll).
        ahead_query = select(func.coalesce(func.sum(WaiterRow.units), 0)).where(
            WaiterRow.resource == resource, WaiterRow.alive_until > now
        )
        if ticket is not None:
            ahead_query = ahead_query.where(WaiterRow.id < ticket)
        ahead = int(s.scalar(ahead_query) or 0)
        if used + ahead + units <= row.capacity:
            expires = now + dt.timedelta(seconds=row.window_s if row.window_s else ttl)
            s.add(LeaseRow(id=lease_id, resource=resource, holder=holder[:128], units=units,
                           acquired_at=now, expires_at=expires))  # fmt: skip
            if ticket is not None:
                s.execute(delete(WaiterRow).where(WaiterRow.id == ticket))
            # Expired leases and dead waiters are swept by whoever holds the lock anyway.
            s.execute(delete(LeaseRow).where(LeaseRow.resource == resource, LeaseRow.expires_at <= now))
            s.execute(delete(WaiterRow).where(WaiterRow.resource == resource, WaiterRow.alive_until <= now))
            return True, ticket
        alive = now + dt.timedelta(seconds=max(2.0, 50 * self.poll_s))
        if ticket is None:
            waiter = WaiterRow(resource=resource, holder=holder[:128], units=units, alive_until=alive)
            s.add(waiter)
            s.flush()
            return False, waiter.id
        waiter_row = s.get(WaiterRow, ticket)
        if waiter_row is None:  # swept while we slept too long: queue again at the back
            waiter = WaiterRow(resource=resource, holder=holder[:128], units=units, alive_until=alive)
            s.add(waiter)
            s.flush()
            return False, waiter.id
        waiter_row.alive_until = alive
        return False, ticket

    @idempotent
    def release(self, lease_ids: list[str]) -> None:
        """Give units back; budget leases stay until their window lapses (that is what a budget is)."""
        if not lease_ids:
            return
        with self.store.transaction() as s:
            budgets = select(ResourceRow.name).where(ResourceRow.window_s.is_not(None))
            s.execute(
                delete(LeaseRow).where(LeaseRow.id.in_(lease_ids), LeaseRow.resource.not_in(budgets)),
            )
        self._unhold(lease_ids)

    def release_held(self) -> int:
        """Give back every lease this process still holds (a replica stopping); the number of ids released.

        agent_db out of reach: logged; those leases lapse by their TTL.
        """
        held = self.held()
        try:
            self.release(held)
        except AgentStoreUnavailable as exc:
            log.warning(
                "Could not release %d lease(s) at shutdown (%s); they lapse by their TTL", len(held), exc
            )
            return 0
        return len(held)

    # --- what an agent call needs --------------------------------------------------------------------
    async def acquire_for(self, spec: AgentSpec, holder: str, wait_s: float) -> list[str]:
        """Every lease ``spec`` declares, in one global order (no deadlock between callers): budgets first,
        so a caller out of budget never sits on a GPU or call slot while it waits, then GPU, then calls."""
        wanted, ttl = await asyncio.to_thread(self._needs, spec)
        deadline = time.monotonic() + wait_s
        taken: list[str] = []
        holder = f"{self.replica} {holder}"
        try:
            for resource, units in sorted(wanted, key=_lease_order):
                left = max(0.0, deadline - time.monotonic())
                taken.append(await self.acquire_async(resource, holder, units, wait_s=left, ttl_s=ttl))
        except BaseException:
            await self.release_async(taken)
            raise
        return taken

    async def release_async(self, lease_ids: list[str]) -> None:
        """``release`` in a thread; agent_db out of reach is logged, not raised: the call that held the leases
        is done, and they are given back by ``release_held`` at shutdown or lapse by their TTL."""
        try:
            await asyncio.to_thread(self.release, lease_ids)
        except AgentStoreUnavailable as exc:
            log.warning("Releasing %d lease(s) failed (%s); they lapse by their TTL", len(lease_ids), exc)

    def _needs(self, spec: AgentSpec) -> tuple[list[tuple[str, int]], float]:
        needs = spec.resources
        wanted: list[tuple[str, int]] = []
        if needs.gpu_slots:
            wanted.append((GPU_RESOURCE, needs.gpu_slots))
        if needs.max_concurrency:
            name = f"calls:{spec.name}"
            self._ensure_once(name, needs.max_concurrency, None)
            wanted.append((name, 1))
        if needs.token_budget and needs.tokens_per_call:
            name = f"tokens:{spec.name}"
            self._ensure_once(name, needs.token_budget, needs.budget_window_s)
            wanted.append((name, needs.tokens_per_call))
        return wanted, self.lease_ttl_s(spec)

    def lease_ttl_s(self, spec: AgentSpec) -> float:
        """How long one call's leases live: the longest the call may take, plus ``margin_s``."""
        policy = spec.policy
        return policy.timeout_s * (1 + policy.retries) + policy.backoff_s * policy.retries + self.margin_s

    def _ensure_once(self, name: str, capacity: int, window_s: float | None) -> None:
        if self._declared.get(name) != (capacity, window_s):
            self.ensure_resource(name, capacity, window_s)
            self._declared[name] = (capacity, window_s)


def _timeout(resource: str, holder: str, units: int, wait_s: float) -> LeaseTimeout:
    return LeaseTimeout(
        f"No {units} unit(s) of resource {resource!r} for {holder} within {wait_s:.1f}s; "
        "raise its capacity or the wait, or lower the load."
    )


def _lease_order(item: tuple[str, int]) -> tuple[int, str]:
    name = item[0]
    rank = 0 if name.startswith("tokens:") else 1 if name == GPU_RESOURCE else 2
    return rank, name
