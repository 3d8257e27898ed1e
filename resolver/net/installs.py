"""The kernel side of the holds: installs batched per loop iteration, refreshes, removals.

`Installs.enqueue` queues a hold; the first one of a loop iteration schedules a flush with
`call_soon`, so the answers handled in the same iteration share one batch: the journal records
them (one write), then every route message, then every set entry, each kind in one netlink
batch. The batch's future completes when the kernel has acknowledged them all, or after
`ack_timeout` (counted in `ack_timeouts`). A timer that fires late because the whole process
stood still (a garbage-collection pass, a long loop iteration; the netlink thread cannot read
an ack without the interpreter lock either) waits STALL_GRACE more, once, so that an ack already
in the kernel is not taken for a slow kernel: uvloop runs due timers before the callbacks the
netlink thread queued meanwhile. Set-entry refreshes are collected and sent every REFRESH_DELAY,
off the reply path. Deletions are remembered until their RTM_DELROUTE comes back, so that the
monitor can tell them from deletions made by someone else.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from resolver.net.errors import GONE, Errnos
from resolver.net.holds import Hold, Ledger
from resolver.net.journal import Journal
from resolver.net.kernel import KernelLike, set_timeout
from resolver.net.prefixes import CidrRoute
from resolver.net.routes import Route

REFRESH_DELAY = 0.5  # set-entry timeout refreshes wait this long, to go out together
STALL = 0.01  # an ack timer this late means the process itself was stopped
STALL_GRACE = 0.01  # then: two of the interpreter's switch intervals for the netlink thread
LATENCY_SAMPLES = 1024


@dataclass(eq=False)
class InstallBatch:
    """Holds whose routes and set entries go to the kernel in one flush."""

    future: asyncio.Future[None]
    holds: list[Hold] = field(default_factory=list)
    waiters: int = 0  # answers waiting on it
    parts: int = 0  # kernel batches not settled yet
    timed_out: bool = False
    stalled: bool = False  # the ack timer fired late once and was given STALL_GRACE
    started: float = 0.0
    timer: asyncio.TimerHandle | None = None


class Installs:
    """Sends what the holds need to the kernel, in batches, and keeps the books on it."""

    def __init__(
        self,
        ledger: Ledger,
        kernel: KernelLike,
        journal: Journal,
        clock: Callable[[], float],
        ack_timeout: float,
    ) -> None:
        self.ledger = ledger
        self.counters = ledger.counters
        self.kernel = kernel
        self.journal = journal
        self.clock = clock
        self.ack_timeout = ack_timeout
        self.errnos = Errnos(ledger.counters)
        self.loop: asyncio.AbstractEventLoop | None = None
        self.rules_ok = False
        self.ensure_rules: Callable[[], asyncio.Future[None]] | None = None
        self._pending: InstallBatch | None = None
        self._refresh: dict[bytes, Hold] = {}
        self._refresh_handle: asyncio.TimerHandle | None = None
        self._own_deletes: dict[str, int] = {}  # "dst/len" -> deletions not yet echoed
        self._latency: deque[float] = deque(maxlen=LATENCY_SAMPLES)
        self._latency_count = 0
        self._latency_sum = 0.0

    def close(self) -> None:
        if self._refresh_handle is not None:
            self._refresh_handle.cancel()
            self._refresh_handle = None

    # -- installs ---------------------------------------------------------------------------

    def enqueue(self, h: Hold) -> InstallBatch:
        batch = self._pending
        if batch is None:
            assert self.loop is not None
            batch = self._pending = InstallBatch(self.loop.create_future())
            self.loop.call_soon(self._flush)
        batch.holds.append(h)
        h.batch = batch
        return batch

    def flush_now(self) -> asyncio.Future[None] | None:
        """Send what is queued now; the future to await, or None when nothing was queued."""
        if self._pending is None:
            return None
        fut = self._pending.future
        self._flush()
        return fut

    def _flush(self) -> None:
        batch, self._pending = self._pending, None
        if batch is None:
            return
        current = self.ledger.current
        holds = [h for h in batch.holds if h.batch is batch and current(h)]
        for h in batch.holds:
            if h.batch is batch and not current(h):
                h.batch = None
        if not holds:
            self._release(batch)
            return
        assert self.loop is not None
        now = self.clock()
        self.journal.note(holds)  # before the routes: a kill after them must know them
        batch.started = time.perf_counter()
        batch.timer = self.loop.call_later(self.ack_timeout, self._ack_timeout, batch)
        batch.parts = 2
        if not self.rules_ok and self.ensure_rules is not None:
            batch.parts += 1
            self.ensure_rules().add_done_callback(lambda _f: self._part_done(batch))
        expires = [h.expires for h in holds]
        self.kernel.add_routes(
            [(h.family, h.packed, h.prefix_len) for h in holds],
            lambda errors: self._routes_added(batch, holds, errors),
        )
        if self.kernel.has_sets:
            self.kernel.add_entries(
                [(h.family, h.packed, set_timeout(h.expires, now)) for h in holds],
                lambda errors: self._entries_added(batch, holds, expires, errors),
            )
        else:
            for h in holds:
                h.set_expires = h.expires
            self._part_done(batch)

    def _routes_added(self, batch: InstallBatch, holds: list[Hold], errors: list[int]) -> None:
        elapsed = time.perf_counter() - batch.started
        self._latency.append(elapsed)
        self._latency_count += 1
        self._latency_sum += elapsed
        current = self.ledger.current
        for h, code in zip(holds, errors, strict=True):
            if h.batch is batch:
                h.batch = None
            if code == 0:
                if current(h) and not h.installed:
                    h.installed = True
                    self.counters["installed"] += 1
            else:
                self.errnos.failed("install route for", code, h.address)
        self._part_done(batch)

    def _entries_added(
        self, batch: InstallBatch, holds: list[Hold], expires: list[float], errors: list[int]
    ) -> None:
        for h, exp, code in zip(holds, expires, errors, strict=True):
            if code == 0:
                h.set_expires = max(h.set_expires, exp)
            else:
                self.errnos.failed("add set entry for", code, h.address)
        self._part_done(batch)

    def _part_done(self, batch: InstallBatch) -> None:
        batch.parts -= 1
        if batch.parts <= 0:
            self._release(batch)

    def _release(self, batch: InstallBatch) -> None:
        if batch.timer is not None:
            batch.timer.cancel()
            batch.timer = None
        if not batch.future.done():
            batch.future.set_result(None)

    def _ack_timeout(self, batch: InstallBatch) -> None:
        batch.timer = None
        if batch.future.done():
            return
        late = time.perf_counter() - batch.started - self.ack_timeout
        if late > STALL and not batch.stalled and self.loop is not None:
            batch.stalled = True
            batch.timer = self.loop.call_later(STALL_GRACE, self._ack_timeout, batch)
            return
        batch.timed_out = True
        batch.future.set_result(None)
        if batch.waiters:  # a restore or reconcile batch has no answer waiting on it
            self.counters["ack_timeouts"] += batch.waiters
            self.errnos.ratelog.log(
                30, "ack-timeout", "kernel slower than breakout.ack_timeout (%.0f ms): %d "
                "answers sent before their routes were acknowledged",
                self.ack_timeout * 1000, batch.waiters,
            )  # fmt: skip

    # -- set-entry refreshes ----------------------------------------------------------------

    def queue_refresh(self, h: Hold) -> None:
        if not self.kernel.has_sets:
            h.set_expires = h.expires  # nothing to refresh: routes do not expire by themselves
            self.counters["refreshed"] += 1
            return
        self._refresh[h.packed] = h
        if self._refresh_handle is None and self.loop is not None:
            self._refresh_handle = self.loop.call_later(REFRESH_DELAY, self.flush_refresh)

    def forget(self, h: Hold) -> None:
        self._refresh.pop(h.packed, None)

    def flush_refresh(self) -> None:
        self._refresh_handle = None
        queued, self._refresh = self._refresh, {}
        now = self.clock()
        current = self.ledger.current
        holds = [h for h in queued.values() if current(h) and h.installed]
        if not holds:
            return
        expires = [h.expires for h in holds]

        def settled(errors: list[int]) -> None:
            for h, exp, code in zip(holds, expires, errors, strict=True):
                if code == 0:
                    h.set_expires = max(h.set_expires, exp)
                    self.counters["refreshed"] += 1
                else:
                    self.errnos.failed("refresh set entry for", code, h.address)

        self.kernel.add_entries(
            [(h.family, h.packed, set_timeout(h.expires, now)) for h in holds], settled
        )

    # -- removals ---------------------------------------------------------------------------

    def expect_delete(self, key: str) -> None:
        self._own_deletes[key] = self._own_deletes.get(key, 0) + 1

    def own_delete(self, key: str) -> bool:
        """True (and forget it) when an RTM_DELROUTE for `key` is one of our own deletions."""
        n = self._own_deletes.get(key, 0)
        if n <= 0:
            return False
        if n == 1:
            del self._own_deletes[key]
        else:
            self._own_deletes[key] = n - 1
        return True

    def forget_own_deletes(self) -> None:
        self._own_deletes.clear()

    def delete_routes(self, items: list[tuple[int, bytes, int]], keys: list[str]) -> None:
        """Remove routes (a route gone already is fine); `keys` are their "dst/len"."""
        if not items:
            return
        for key in keys:
            self.expect_delete(key)
        check = self.errnos.settle("remove routes", GONE)

        def settled(errors: list[int]) -> None:
            for key, code in zip(keys, errors, strict=True):
                if code:  # no RTM_DELROUTE will come for it
                    self.own_delete(key)
            check(errors)

        self.kernel.del_routes(items, settled)

    def delete_holds(self, holds: Iterable[Hold]) -> None:
        holds = list(holds)
        self.delete_routes(
            [(h.family, h.packed, h.prefix_len) for h in holds],
            [f"{h.address}/{h.prefix_len}" for h in holds],
        )

    def delete_entries(self, holds: Iterable[Hold], now: float) -> None:
        """Remove the set entries of `holds` that have not timed out in the kernel yet."""
        if not self.kernel.has_sets:
            return
        live = [(h.family, h.packed, 0) for h in holds if h.set_expires > now]
        if live:
            self.kernel.del_entries(live, self.errnos.settle("remove set entries", GONE))

    def delete_table_routes(self, routes: list[Route]) -> asyncio.Future[list[int]]:
        """Remove routes found in the table (stale ones, or all of ours on flush)."""
        assert self.loop is not None
        fut: asyncio.Future[list[int]] = self.loop.create_future()
        keys = [f"{r.dst}/{r.dst_len}" for r in routes]
        for key in keys:
            self.expect_delete(key)

        def settled(errors: list[int]) -> None:
            for key, code in zip(keys, errors, strict=True):
                if code:
                    self.own_delete(key)
            fut.set_result(errors)

        self.kernel.del_table_routes(routes, settled)
        return fut

    # -- the config's routes ----------------------------------------------------------------

    def install_prefixes(self, cidrs: Iterable[CidrRoute]) -> asyncio.Future[None]:
        assert self.loop is not None
        fut: asyncio.Future[None] = self.loop.create_future()
        todo = list(cidrs)
        if not todo:
            fut.set_result(None)
            return fut

        def settled(errors: list[int]) -> None:
            for c, code in zip(todo, errors, strict=True):
                c.installed = code == 0
                if code:
                    self.errnos.failed(f"install {c.kind}", code, c.cidr)
            fut.set_result(None)

        self.kernel.add_routes([(c.family, c.packed, c.length) for c in todo], settled)
        return fut

    def remove_prefixes(self, cidrs: Iterable[CidrRoute]) -> asyncio.Future[None]:
        assert self.loop is not None
        fut: asyncio.Future[None] = self.loop.create_future()
        todo = list(cidrs)
        if not todo:
            fut.set_result(None)
            return fut
        for c in todo:
            self.expect_delete(c.cidr)
        check = self.errnos.settle("remove prefixes", GONE)

        def settled(errors: list[int]) -> None:
            for c, code in zip(todo, errors, strict=True):
                c.installed = False
                if code:
                    self.own_delete(c.cidr)
            check(errors)
            fut.set_result(None)

        self.kernel.del_routes([(c.family, c.packed, c.length) for c in todo], settled)
        return fut

    # -- figures ----------------------------------------------------------------------------

    def latency(self) -> tuple[int, float]:
        return self._latency_count, self._latency_sum

    def latency_percentiles(self) -> dict[str, float]:
        samples = sorted(self._latency)
        if not samples:
            return {"samples": 0, "p50_ms": 0.0, "p99_ms": 0.0, "max_ms": 0.0}

        def pick(q: float) -> float:
            return round(samples[min(len(samples) - 1, int(q * len(samples)))] * 1000, 3)

        return {
            "samples": len(samples),
            "p50_ms": pick(0.5),
            "p99_ms": pick(0.99),
            "max_ms": pick(1.0),
        }
