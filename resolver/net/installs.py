"""The kernel side of the holds: installs batched per loop iteration, refreshes, removals.

`Installs.enqueue` queues a hold; the first one of a loop iteration schedules a flush with
`call_soon`, so the answers handled in the same iteration share one batch: the journal records
them (one write), then every route message, then every set entry, each kind in one netlink
batch. The batch's future completes when the kernel has acknowledged them all, or after
`ack_timeout` (counted in `ack_timeouts`). A timer that fires late because the whole process
stood still (a garbage-collection pass, a long loop iteration; the netlink thread cannot read
an ack without the interpreter lock either) waits STALL_GRACE more, once, so that an ack already
in the kernel is not taken for a slow kernel: uvloop runs due timers before the completions the
netlink thread signalled meanwhile. Set-entry refreshes are collected and sent every REFRESH_DELAY,
off the reply path. Deletions are remembered until their RTM_DELROUTE comes back, so that the
monitor can tell them from deletions made by someone else.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Iterable
from typing import Final

from resolver.net.accountingapi import AccountingLike, NullAccounting
from resolver.net.batches import InstallBatch
from resolver.net.errors import GONE, Errnos
from resolver.net.holds import Hold
from resolver.net.journalapi import JournalLike
from resolver.net.kernelapi import KernelLike, RouteItem, Settled, set_timeout, settled_future
from resolver.net.latency import AckLatency
from resolver.net.ledger import Ledger
from resolver.net.prefixes import CidrRoute
from resolver.net.routes import Route

log = logging.getLogger(__name__)

REFRESH_DELAY: Final = 0.5  # set-entry timeout refreshes wait this long, to go out together
STALL: Final = 0.01  # an ack timer this late means the process itself was stopped
STALL_GRACE: Final = 0.01  # then: two of the interpreter's switch intervals for the netlink thread


class Installs:
    """Sends what the holds need to the kernel, in batches; every change of a hold's kernel
    state goes through the ledger."""

    def __init__(
        self,
        ledger: Ledger,
        kernel: KernelLike,
        journal: JournalLike,
        clock: Callable[[], float],
        ack_timeout: float,
        accounting: AccountingLike | None = None,
    ) -> None:
        self.ledger = ledger
        # The traffic counters' elements and the conntrack flush (none: counts nothing).
        self.accounting = accounting if accounting is not None else NullAccounting()
        self.counters = ledger.counters
        self.kernel = kernel
        self.journal = journal
        self.clock = clock
        self.ack_timeout = ack_timeout
        self.errnos = Errnos(ledger.counters)
        self.loop: asyncio.AbstractEventLoop | None = None
        self.rules_ok = False  # our ip rules are in place (a flush removes them)
        # Puts the rules back and calls its argument when done (repairs.Repairs sets it).
        self.ensure_rules: Callable[[Callable[[], None]], None] | None = None
        self._pending: InstallBatch | None = None
        self._refresh: dict[bytes, Hold] = {}
        self._refresh_handle: asyncio.TimerHandle | None = None
        self._own_deletes: dict[str, int] = {}  # "dst/len" -> deletions not yet echoed
        self.acks = AckLatency()  # the status's netlink_latency, the metrics' totals

    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop

    def use_kernel(self, kernel: KernelLike) -> None:
        """Send through `kernel` from now on (a reload moved to a new kernel side)."""
        self.kernel = kernel

    def close(self) -> None:
        if self._refresh_handle is not None:
            self._refresh_handle.cancel()
            self._refresh_handle = None

    # -- installs ---------------------------------------------------------------------------

    def enqueue(self, h: Hold) -> InstallBatch:
        batch = self._pending
        if batch is None:
            assert self.loop is not None
            batch = self._pending = InstallBatch()
            self.loop.call_soon(self._flush)
        batch.holds.append(h)
        self.ledger.sending(h, batch)
        return batch

    def flush_now(self) -> InstallBatch | None:
        """Send what is queued now; the batch to wait on, or None when nothing was queued."""
        batch = self._pending
        if batch is None:
            return None
        self._flush()
        return batch

    def _flush(self) -> None:
        batch, self._pending = self._pending, None
        if batch is None:
            return
        ledger = self.ledger
        holds = []
        for h in batch.holds:
            if h.batch is not batch:
                continue
            if ledger.current(h):
                holds.append(h)
            else:
                ledger.unsent(h, batch)
        if not holds:
            batch.release()
            return
        assert self.loop is not None
        now = self.clock()
        self.journal.note(holds)  # before the routes: a kill after them must know them
        batch.started = time.perf_counter()
        batch.timer = self.loop.call_later(self.ack_timeout, self._ack_timeout, batch)
        batch.parts = 2
        if not self.rules_ok and self.ensure_rules is not None:
            batch.parts += 1
            self.ensure_rules(lambda: self._part_done(batch))
        expires = [h.expires for h in holds]
        self.kernel.add_routes(
            [(h.family, h.packed, h.prefix_len) for h in holds],
            lambda errors: self._routes_added(batch, holds, errors),
        )
        if self.accounting.counting:  # nothing waits on the counters (COUNT_DELAY)
            self.accounting.count(
                [(h.family, h.packed, set_timeout(h.expires, now), h.row) for h in holds]
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
        self.acks.record(time.perf_counter() - batch.started)
        ledger = self.ledger
        for h, code in zip(holds, errors, strict=True):
            if code == 0:
                ledger.installed(h, batch)
            else:
                ledger.failed(h, batch)
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
        batch.release()

    def _ack_timeout(self, batch: InstallBatch) -> None:
        batch.timer = None
        if batch.done:
            return
        late = time.perf_counter() - batch.started - self.ack_timeout
        if late > STALL and not batch.stalled and self.loop is not None:
            batch.stalled = True
            batch.timer = self.loop.call_later(STALL_GRACE, self._ack_timeout, batch)
            return
        batch.timed_out = True
        batch.release()
        if batch.waiters:  # a restore or reconcile batch has no answer waiting on it
            self.counters["ack_timeouts"] += batch.waiters
            self.errnos.ratelog.log(
                30, "ack-timeout", "kernel slower than breakout.ack_timeout (%.0f ms): %d "
                "answers sent before their routes were acknowledged",
                self.ack_timeout * 1000, batch.waiters,
            )  # fmt: skip

    def count_held(self) -> None:
        """Hand every installed hold to the counters (counting just turned on)."""
        now = self.clock()
        self.accounting.count(
            [(h.family, h.packed, set_timeout(h.expires, now), h.row)
             for h in self.ledger if h.installed]
        )  # fmt: skip

    # -- set-entry refreshes ----------------------------------------------------------------

    def queue_refresh(self, h: Hold) -> None:
        if not self.kernel.has_sets:
            h.set_expires = h.expires  # nothing to refresh: routes do not expire by themselves
            self.counters["refreshed"] += 1
            if not self.accounting.counting:
                return
        self._refresh[h.packed] = h
        if self._refresh_handle is None and self.loop is not None:
            self._refresh_handle = self.loop.call_later(REFRESH_DELAY, self.flush_refresh)

    def flush_refresh(self) -> None:
        self._refresh_handle = None
        queued, self._refresh = self._refresh, {}
        now = self.clock()
        current = self.ledger.current
        holds = [h for h in queued.values() if current(h) and h.installed]
        if not holds:
            return
        if self.accounting.counting:
            self.accounting.count(
                [(h.family, h.packed, set_timeout(h.expires, now), h.row) for h in holds]
            )
        if not self.kernel.has_sets:
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

    def remove(self, holds: list[Hold], reason: str) -> None:
        """Forget `holds` and remove their routes and set entries from the kernel."""
        now = self.clock()
        self.forget_holds(holds, reason)
        routed = self.ledger.config_routes.routed  # a policy /32 for the address keeps its route
        self.delete_holds(
            h for h in holds
            if (h.installed or h.batch is not None) and f"{h.address}/{h.prefix_len}" not in routed
        )  # fmt: skip
        self.delete_entries(holds, now)  # those whose hold ran out timed out already
        self.accounting.release((h.family, h.packed) for h in holds)
        self.ledger.withdrawn(holds)
        self.ledger.moved()

    def forget_holds(self, holds: list[Hold], reason: str) -> None:
        """Forget `holds` in the books and the journal (the kernel is the caller's business)."""
        note = self.kernel.note
        for h in holds:
            self._refresh.pop(h.packed, None)
            note("remove", h.packed, h.live_names(self.clock()), reason)
        self.ledger.forget(holds)
        self.journal.removed(holds)
        log.debug("removing %d holds: %s", len(holds), reason)

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

    def delete_routes(
        self, items: list[tuple[int, bytes, int]], keys: list[str],
        then: Callable[[], None] | None = None,
    ) -> None:  # fmt: skip
        """Remove routes (a route gone already is fine); `keys` are their "dst/len"; `then`
        is called once the kernel has settled them."""
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
            if then is not None:
                then()

        self.kernel.del_routes(items, settled)

    def delete_holds(self, holds: Iterable[Hold], then: Callable[[], None] | None = None) -> None:
        holds = list(holds)
        self.delete_routes(
            [(h.family, h.packed, h.prefix_len) for h in holds],
            [f"{h.address}/{h.prefix_len}" for h in holds],
            then,
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
        keys = [f"{r.dst}/{r.dst_len}" for r in routes]
        for key in keys:
            self.expect_delete(key)

        def settled(errors: list[int]) -> None:
            for key, code in zip(keys, errors, strict=True):
                if code:
                    self.own_delete(key)

        return settled_future(lambda done: self.kernel.del_table_routes(routes, done), settled)

    # -- the config's routes ----------------------------------------------------------------

    def install_prefixes(self, cidrs: Iterable[CidrRoute]) -> asyncio.Future[list[int]]:
        todo = list(cidrs)

        def settled(errors: list[int]) -> None:
            for c, code in zip(todo, errors, strict=True):
                c.installed = code == 0
                if code:
                    self.errnos.failed(f"install {c.kind}", code, c.cidr)

        items = [(c.family, c.packed, c.length) for c in todo]
        return settled_future(lambda done: self._routes(items, done, add=True), settled)

    def remove_prefixes(self, cidrs: Iterable[CidrRoute]) -> asyncio.Future[list[int]]:
        todo = list(cidrs)
        for c in todo:
            self.expect_delete(c.cidr)
        check = self.errnos.settle("remove prefixes", GONE)

        def settled(errors: list[int]) -> None:
            for c, code in zip(todo, errors, strict=True):
                c.installed = False
                if code:
                    self.own_delete(c.cidr)
            check(errors)

        items = [(c.family, c.packed, c.length) for c in todo]
        return settled_future(lambda done: self._routes(items, done, add=False), settled)

    def _routes(self, items: list[RouteItem], done: Settled, add: bool) -> None:
        if not items:
            done([])
        elif add:
            self.kernel.add_routes(items, done)
        else:
            self.kernel.del_routes(items, done)
