"""The miss path of the handler (step 4 of `handler`'s docstring), and what both paths share.

A miss is coalesced with identical questions in flight (at most MAX_WAITERS clients wait for
one), else charged to the client's budgets and resolved in a task: the forwarder, the cache,
tagging, the breakout hook (awaited when new routes must go in first), then every waiter's
reply. `MissPath` is mixed into `handler.Handler`: the state it names below is the handler's,
set up in `Handler.__init__` and `configure`.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any, Protocol

from resolver.dns import events, wire
from resolver.dns.cache import Cache, Entry, build_entry, shared_int
from resolver.dns.forwarder import Forwarder
from resolver.dns.ratelimit import Budgets
from resolver.dns.tagging import NameMatcher, tag
from resolver.hooks import BreakoutHook, Tagged, iter_packed

log = logging.getLogger("resolver.dns.handler")

MAX_WAITERS = 256  # clients waiting for one coalesced question
DEFERRED = b""  # handle(): the reply will come through conn.send


class Conn(Protocol):
    """Where a query came from and where its deferred reply goes: a UDP listener or a TCP
    connection."""

    tcp: bool

    def send(self, data: bytes, addr: Any) -> None: ...


class Waiter:
    """A client waiting for a question in flight."""

    __slots__ = ("addr", "conn", "data", "edns", "limit", "qend")

    def __init__(self, conn: Conn, addr: Any, data: bytes, qend: int, edns: bool, limit: int):
        self.conn, self.addr, self.data = conn, addr, data
        self.qend, self.edns, self.limit = qend, edns, limit


class MissPath:
    """The handler's miss path, its hook calls and its tracing (see the module docstring)."""

    _counters: dict[str, int]
    _clock: Callable[[], float]
    _trace: bool
    tagged_by_row: dict[int, int]
    pending: dict[bytes, list[Waiter]]
    tasks: set[asyncio.Task[None]]
    closing: bool
    budgets: Budgets
    hook: BreakoutHook
    matcher: NameMatcher
    forwarder: Forwarder
    cache: Cache
    observer: events.Observer | None
    max_pending: int
    max_ttl: int
    max_negative_ttl: int

    def _miss(
        self, key: bytes, data: bytes, addr: Any, conn: Conn, qend: int, edns: bool, limit: int,
        flags: int,
    ) -> bytes | None:  # fmt: skip
        counters = self._counters
        counters["misses"] += 1
        do = bool(flags & wire.DO_BIT)
        waiters = self.pending.get(key)
        if waiters is not None and len(waiters) < MAX_WAITERS:
            waiters.append(Waiter(conn, addr, data, qend, edns, limit))
            return DEFERRED
        if waiters is not None or len(self.pending) >= self.max_pending:
            counters["pending_full"] += 1
            self._traced(data, qend, addr[0], wire.SERVFAIL, "local", None)
            return wire.error_reply(data, wire.SERVFAIL, qend, edns, do)
        host = addr[0]
        if not self.budgets.take_query(host):
            counters["ratelimited"] += 1
            self._traced(data, qend, host, wire.SERVFAIL, "local", None)
            if conn.tcp:
                return wire.error_reply(data, wire.SERVFAIL, qend, edns, do)
            return wire.error_reply(data, wire.NOERROR, qend, edns, do, tc=True)
        self.pending[key] = [Waiter(conn, addr, data, qend, edns, limit)]
        self._spawn(self._resolve(key, do, bool(flags & wire.CD_BIT), host))
        return DEFERRED

    def _call_hook(
        self, tagged: Tagged, ttl: int, client: str, installed: list[bytes] | None
    ) -> Awaitable[None] | None:
        try:
            return self.hook.on_answer(tagged, ttl, client, installed)
        except Exception:
            self._counters["hook_errors"] += 1
            log.exception("breakout hook failed for %s", tagged.qname)
            return None

    # -- the miss path ---------------------------------------------------------------------
    def _spawn(self, coro: Any) -> None:
        task: asyncio.Task[None] = asyncio.get_running_loop().create_task(coro)
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    async def _send_after(
        self, waiting: Awaitable[None], conn: Conn, reply: bytes, addr: Any, qend: int,
        tagged: Tagged | None, installed: list[bytes] | None,
    ) -> None:  # fmt: skip
        started = time.perf_counter()
        await self._await_hook(waiting)
        conn.send(reply, addr)
        waited = time.perf_counter() - started
        self._traced(reply, qend, addr[0], reply[3] & 0xF, "cache", tagged, installed, waited)

    async def _await_hook(self, waiting: Awaitable[None]) -> None:
        try:
            await waiting
        except asyncio.CancelledError:
            raise
        except Exception:
            self._counters["hook_errors"] += 1
            log.exception("breakout hook failed")

    async def _resolve(self, key: bytes, do: bool, cd: bool, client: str) -> None:
        """Ask the upstreams, cache and tag the answer, call the hook, answer every waiter."""
        entry: Entry | None = None
        source = "local"
        installed: list[bytes] | None = [] if self.observer is not None else None
        waited = 0.0
        try:
            resolved = await self.forwarder.resolve(key[:-1], do, cd, self.matcher, self.hook.ready)
            if resolved is not None:
                source = resolved.upstream.text
                entry = self._entry(key, resolved.data, resolved.layout, resolved.origin)
            tagged = entry.tag if entry is not None else None
            if tagged is not None and tagged.addresses:
                if self.budgets.take_routes(client, sum(1 for _ in iter_packed(tagged.addresses))):
                    waiting = self._call_hook(tagged, entry.addr_ttl(0), client, installed)  # type: ignore[union-attr]
                    if waiting is not None:
                        started = time.perf_counter()
                        await self._await_hook(waiting)
                        waited = time.perf_counter() - started
                else:
                    self._counters["routes_deferred"] += 1
        except asyncio.CancelledError:
            self.pending.pop(key, None)
            self.budgets.done_query(client)
            raise
        except Exception:
            log.exception("internal error while resolving; answering SERVFAIL")
            entry = None
        self.budgets.done_query(client)
        self._answer_waiters(entry, self.pending.pop(key, []), do, source, installed, waited)

    def _entry(self, key: bytes, data: bytes, layout: Any, origin: object) -> Entry | None:
        try:
            entry, chain = build_entry(
                key, data, layout, self._clock(), self.max_ttl, self.max_negative_ttl
            )
        except wire.WireError as err:
            log.debug("unusable upstream reply: %s", err)
            return None
        entry.origin = origin
        entry.tag = tag(chain, self.matcher)
        entry.addr_base = shared_int(chain.addr_ttl)
        if entry.ttl > 0:
            self.cache.put(entry)
        return entry

    def _answer_waiters(
        self, entry: Entry | None, waiters: list[Waiter], do: bool, source: str,
        installed: list[bytes] | None, waited: float,
    ) -> None:  # fmt: skip
        counters = self._counters
        now = self._clock()
        tagged = entry.tag if entry is not None else None
        if tagged is not None:
            self._count_tag(tagged, len(waiters))
        for w in waiters:
            if entry is None:
                counters["servfail"] += 1
                reply = wire.error_reply(w.data, wire.SERVFAIL, w.qend, w.edns, do)
            else:
                counters[entry.result] += 1
                reply = entry.reply(w.data, w.qend, w.edns, w.limit, now)
            w.conn.send(reply, w.addr)
            self._traced(
                reply, w.qend, w.addr[0], reply[3] & 0xF, source, tagged, installed, waited
            )

    def _count_tag(self, tagged: Tagged, n: int) -> None:
        self._counters["tagged"] += n
        row = tagged.match.rule.row
        self.tagged_by_row[row] = self.tagged_by_row.get(row, 0) + n

    def _traced(
        self, data: bytes, qend: int, client: str, rcode: int, source: str,
        tagged: Tagged | None, installed: list[bytes] | None = None, waited: float = 0.0,
    ) -> None:  # fmt: skip
        """Tell the observer and the debug log about an answered query, when they want it."""
        if not self._trace:
            return
        e = events.event(data, qend, client, rcode, source, tagged, installed, waited)
        if log.isEnabledFor(logging.DEBUG):
            fmt, args = events.log_line(e)
            log.debug(fmt, *args)
        observer = self.observer
        if observer is not None:
            observer(e)

    # -- shutdown --------------------------------------------------------------------------
    async def drain(self, timeout: float) -> int:
        """Stop taking new misses, wait up to `timeout` for those in flight, cancel the rest.
        Returns how many were cancelled."""
        self.closing = True
        tasks = set(self.tasks)
        left: set[asyncio.Task[None]] = set()
        if tasks:
            _done, left = await asyncio.wait(tasks, timeout=timeout)
            for task in left:
                task.cancel()
            if left:
                await asyncio.wait(left, timeout=1.0)
        await self.forwarder.close()
        return len(left)


def discard(waiting: Awaitable[None]) -> None:
    """An awaitable we will not wait for: make sure a coroutine does not warn."""
    close = getattr(waiting, "close", None)
    if callable(close):
        close()
