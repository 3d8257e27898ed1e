"""The kernel side of the holds: installs batched per loop iteration, refreshes, removals.

`Installs.enqueue` queues a hold; the first one of a loop iteration schedules a flush with
`call_soon`, so the answers handled in the same iteration share one batch: every route message,
then every set entry, each kind in one sendmsg (netlink.Channel). The batch's future completes
when the kernel has acknowledged them all, or after `ack_timeout` (counted in `ack_timeouts`).
Set-entry refreshes are collected and sent every REFRESH_DELAY, off the reply path. Deletions
are remembered until their RTM_DELROUTE comes back, so that the monitor can tell them from
deletions made by someone else.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import os
import socket
import time
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from resolver.net.errors import BreakoutError
from resolver.net.holds import Hold
from resolver.net.kernel import KernelLike, set_timeout
from resolver.net.prefixes import CidrRoute
from resolver.net.ratelog import RateLimitedLog
from resolver.net.routes import AF, HOST_LEN, Route

log = logging.getLogger(__name__)

REFRESH_DELAY = 0.5  # set-entry timeout refreshes wait this long, to go out together
LATENCY_SAMPLES = 1024
IGNORED_DELETE = (0, errno.ESRCH, errno.ENOENT)  # gone already: not an error


@dataclass(eq=False)
class InstallBatch:
    """Holds whose routes and set entries go to the kernel in one flush."""

    future: asyncio.Future[None]
    holds: list[Hold] = field(default_factory=list)
    waiters: int = 0  # answers waiting on it
    parts: int = 0  # kernel batches not settled yet
    timed_out: bool = False
    started: float = 0.0
    timer: asyncio.TimerHandle | None = None


def strerror(code: int) -> str:
    return f"ipset error {code}" if code >= 4096 else os.strerror(code)


class Installs:
    """Sends what the holds need to the kernel, in batches, and keeps the books on it."""

    def __init__(
        self,
        holds: dict[str, Hold],
        counters: dict[str, int],
        clock: Callable[[], float],
        ack_timeout: float,
    ) -> None:
        self.holds = holds  # shared with the breakout: "is this hold still current?"
        self.counters = counters
        self.clock = clock
        self.ack_timeout = ack_timeout
        self.kernel: KernelLike | None = None
        self.loop: asyncio.AbstractEventLoop | None = None
        self.rules_ok = False
        self._pending: InstallBatch | None = None
        self._refresh: dict[str, Hold] = {}
        self._refresh_handle: asyncio.TimerHandle | None = None
        self._rule_task: asyncio.Task[None] | None = None
        self._own_deletes: dict[str, int] = {}  # "dst/len" -> deletions not yet echoed
        self._latency: deque[float] = deque(maxlen=LATENCY_SAMPLES)
        self._latency_count = 0
        self._latency_sum = 0.0
        self.ratelog = RateLimitedLog(log)

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
        kernel = self.kernel
        holds = [h for h in batch.holds if h.batch is batch and self.holds.get(h.address) is h]
        for h in batch.holds:
            if h.batch is batch and self.holds.get(h.address) is not h:
                h.batch = None
        if kernel is None or not holds:
            self._release(batch)
            return
        assert self.loop is not None
        now = self.clock()
        batch.started = time.perf_counter()
        batch.timer = self.loop.call_later(self.ack_timeout, self._ack_timeout, batch)
        batch.parts = 2
        if not self.rules_ok:
            batch.parts += 1
            self._ensure_rules_then(lambda: self._part_done(batch))
        entries = [(h.family, h.packed, set_timeout(h.expires, now)) for h in holds]
        expires = [h.expires for h in holds]
        kernel.add_routes(
            [(h.family, h.packed, HOST_LEN[h.family]) for h in holds],
            lambda errors: self._routes_added(batch, holds, errors),
        )
        if kernel.has_sets:
            kernel.add_entries(
                entries, lambda errors: self._entries_added(batch, holds, expires, errors)
            )
        else:
            self._part_done(batch)

    def _routes_added(self, batch: InstallBatch, holds: list[Hold], errors: list[int]) -> None:
        elapsed = time.perf_counter() - batch.started
        self._latency.append(elapsed)
        self._latency_count += 1
        self._latency_sum += elapsed
        for h, code in zip(holds, errors, strict=True):
            if h.batch is batch:
                h.batch = None
            if code == 0:
                if self.holds.get(h.address) is h and not h.installed:
                    h.installed = True
                    self.counters["installed"] += 1
            else:
                self.counters["netlink_errors"] += 1
                self.ratelog.log(
                    logging.WARNING, f"route-{code}", "cannot install route for %s: %s",
                    h.address, os.strerror(code),
                )  # fmt: skip
        self._part_done(batch)

    def _entries_added(
        self, batch: InstallBatch, holds: list[Hold], expires: list[float], errors: list[int]
    ) -> None:
        for h, exp, code in zip(holds, expires, errors, strict=True):
            if code == 0:
                h.set_expires = max(h.set_expires, exp)
            else:
                self.counters["netlink_errors"] += 1
                self.ratelog.log(
                    logging.WARNING, f"set-{code}", "cannot add set entry for %s: %s",
                    h.address, strerror(code),
                )  # fmt: skip
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
        batch.timed_out = True
        batch.future.set_result(None)
        if not batch.waiters:
            return  # a restore or reconcile batch: no answer is waiting on it
        self.counters["ack_timeouts"] += batch.waiters
        self.ratelog.log(
            logging.WARNING, "ack-timeout",
            "kernel slower than breakout.ack_timeout (%.0f ms): %d answers sent before their "
            "routes were acknowledged", self.ack_timeout * 1000, batch.waiters,
        )  # fmt: skip

    def _ensure_rules_then(self, done: Callable[[], None]) -> None:
        """After a flush the rules are gone; the next install puts them back before releasing."""
        assert self.loop is not None
        if self._rule_task is None or self._rule_task.done():
            self._rule_task = self.loop.create_task(self._restore_rules())
        self._rule_task.add_done_callback(lambda _t: done())

    async def _restore_rules(self) -> None:
        assert self.kernel is not None
        try:
            await self.kernel.ensure_rules()
            self.rules_ok = True
        except (BreakoutError, OSError) as err:
            self.counters["netlink_errors"] += 1
            log.error("cannot restore the ip rules: %s", err)

    # -- set-entry refreshes ----------------------------------------------------------------

    def queue_refresh(self, h: Hold) -> None:
        if self.kernel is None or not self.kernel.has_sets:
            h.set_expires = h.expires  # nothing to refresh: routes do not expire by themselves
            return
        self._refresh[h.address] = h
        if self._refresh_handle is None and self.loop is not None:
            self._refresh_handle = self.loop.call_later(REFRESH_DELAY, self.flush_refresh)

    def forget(self, h: Hold) -> None:
        self._refresh.pop(h.address, None)

    def flush_refresh(self) -> None:
        self._refresh_handle = None
        queued, self._refresh = self._refresh, {}
        if self.kernel is None:
            return
        now = self.clock()
        holds = [h for h in queued.values() if self.holds.get(h.address) is h and h.installed]
        if not holds:
            return
        expires = [h.expires for h in holds]

        def settled(errors: list[int]) -> None:
            for h, exp, code in zip(holds, expires, errors, strict=True):
                if code == 0:
                    h.set_expires = max(h.set_expires, exp)
                    self.counters["refreshed"] += 1
                else:
                    self.counters["netlink_errors"] += 1
                    self.ratelog.log(
                        logging.WARNING, f"refresh-{code}", "cannot refresh set entry for %s: %s",
                        h.address, strerror(code),
                    )  # fmt: skip

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

    def delete_routes(self, holds: list[Hold]) -> None:
        """Remove the host routes of `holds` (a route gone already is fine)."""
        if not holds or self.kernel is None:
            return
        keys = [f"{h.address}/{HOST_LEN[h.family]}" for h in holds]
        for key in keys:
            self.expect_delete(key)

        def settled(errors: list[int]) -> None:
            for key, code in zip(keys, errors, strict=True):
                if code:  # no RTM_DELROUTE will come for it
                    self.own_delete(key)
                if code not in IGNORED_DELETE:
                    self.counters["netlink_errors"] += 1
                    self.ratelog.log(
                        logging.WARNING, f"del-{code}", "cannot remove route %s: %s",
                        key, os.strerror(code),
                    )  # fmt: skip

        self.kernel.del_routes([(h.family, h.packed, HOST_LEN[h.family]) for h in holds], settled)

    def delete_entries(self, holds: Iterable[Hold], now: float) -> None:
        """Remove the set entries of `holds` that have not timed out in the kernel yet."""
        if self.kernel is None or not self.kernel.has_sets:
            return
        live = [(h.family, h.packed, 0) for h in holds if h.set_expires > now]
        if live:
            self.kernel.del_entries(live, self.count_errors("remove set entries"))

    def delete_table_routes(self, routes: list[Route]) -> asyncio.Future[list[int]]:
        """Remove routes found in the table (stale ones, or all of ours on flush)."""
        assert self.loop is not None and self.kernel is not None
        fut: asyncio.Future[list[int]] = self.loop.create_future()
        keys = [f"{r.dst}/{r.dst_len}" for r in routes]
        for key in keys:
            self.expect_delete(key)

        def settled(errors: list[int]) -> None:
            for key, code in zip(keys, errors, strict=True):
                if code:
                    self.own_delete(key)
            fut.set_result(errors)

        items = [(r.family, socket.inet_pton(AF[r.family], r.dst), r.dst_len) for r in routes]
        self.kernel.del_routes(items, settled)
        return fut

    def count_errors(self, what: str) -> Callable[[list[int]], None]:
        def settled(errors: list[int]) -> None:
            bad = [e for e in errors if e not in IGNORED_DELETE]
            if bad:
                self.counters["netlink_errors"] += len(bad)
                self.ratelog.log(
                    logging.WARNING, f"{what}-{bad[0]}", "%s: %d failed (%s)", what, len(bad),
                    strerror(bad[0]),
                )  # fmt: skip

        return settled

    # -- policy prefixes --------------------------------------------------------------------

    def install_prefixes(self, cidrs: Iterable[CidrRoute]) -> asyncio.Future[None]:
        assert self.loop is not None
        fut: asyncio.Future[None] = self.loop.create_future()
        todo = list(cidrs)
        if self.kernel is None or not todo:
            fut.set_result(None)
            return fut

        def settled(errors: list[int]) -> None:
            for c, code in zip(todo, errors, strict=True):
                c.installed = code == 0
                if code:
                    self.counters["netlink_errors"] += 1
                    log.warning("cannot install policy prefix %s: %s", c.cidr, os.strerror(code))
            fut.set_result(None)

        self.kernel.add_routes([(c.family, c.packed, c.length) for c in todo], settled)
        return fut

    def remove_prefixes(self, cidrs: Iterable[CidrRoute]) -> asyncio.Future[None]:
        assert self.loop is not None
        fut: asyncio.Future[None] = self.loop.create_future()
        todo = list(cidrs)
        if self.kernel is None or not todo:
            fut.set_result(None)
            return fut
        for c in todo:
            self.expect_delete(c.cidr)

        def settled(errors: list[int]) -> None:
            for c, code in zip(todo, errors, strict=True):
                c.installed = False
                if code:
                    self.own_delete(c.cidr)
                    if code not in IGNORED_DELETE:
                        self.counters["netlink_errors"] += 1
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
