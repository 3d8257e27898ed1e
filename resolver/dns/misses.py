"""The miss path (step 4 of `handler`'s docstring): questions asked of the upstreams.

`Misses` owns what a miss needs and nothing else does: the questions in flight and the clients
waiting for each (coalescing: at most MAX_WAITERS per question, and `max_pending` in all, each
charged to its client's share of the table like a question of its own, and of the question's
places: `ratelimit.WAITS_PER_QUESTION`), the clients' budgets, the
forwarder, and the replies waiting for the kernel. A miss is charged to its client's budgets,
resolved by a `resolution.Resolution` (a state machine moved on by socket, timer and hook
callbacks: no task and no future per miss), then cached and tagged here (`_resolved`), and
answered, every waiter at once, when the breakout hook has its routes in (its Pending's
callback: nothing waits for the kernel) or at once when there is nothing to wait for.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from typing import Final

from resolver.clients import charge_key, charge_text
from resolver.dns import messages, wire
from resolver.dns.cache import Entry, build_entry, shared_int
from resolver.dns.counts import Counts
from resolver.dns.events import Tracer
from resolver.dns.forwarder import Forwarder, Resolved
from resolver.dns.query import Query
from resolver.dns.ratelimit import Budgets
from resolver.dns.resolution import Resolution
from resolver.dns.store import Cache
from resolver.dns.tagging import NameMatcher, tag
from resolver.hooks import BreakoutHook, Pending, Tagged, iter_packed
from resolver.logsetup import REPEATS

log = logging.getLogger("resolver.dns.handler")

MAX_WAITERS: Final = 256  # clients waiting for one coalesced question
DEFERRED: Final = b""  # handle(): the reply will come through conn.send
DRAIN_POLL: Final = 0.01  # seconds between looks while draining (shutdown only)


def charge_of(q: Query) -> bytes:
    """Whose budgets `q` is charged to (`clients.charge_key`)."""
    return charge_key(q.client)


class Misses:
    """The miss path of one handler (see the module docstring)."""

    def __init__(
        self, counts: Counts, tracer: Tracer, cache: Cache, forwarder: Forwarder,
        hook: BreakoutHook, matcher: NameMatcher, clock: Callable[[], float],
    ) -> None:  # fmt: skip
        self.counts = counts
        self.tracer = tracer
        self.cache = cache
        self.forwarder = forwarder
        self.hook = hook
        self.matcher = matcher
        self.clock = clock
        self.pending: dict[bytes, Resolution] = {}  # questions in flight or waiting the kernel
        self.resolving = 0  # those still asking upstreams
        self.coalesced = 0  # clients waiting for a question another client asked
        self.waits: dict[tuple[bytes, bytes], int] = {}  # (question, client): its waits there
        self.waiting = 0  # replies waiting for the kernel (hits and misses)
        self.budgets = Budgets(0, 1, 1.0, 0, 1)
        self.closing = False
        self.max_pending = 1
        self.max_ttl = self.max_negative_ttl = 0
        self.share_said = False  # a client at its share of the cache: said once per config

    @property
    def busy(self) -> bool:
        """No more work may be taken on (the pending table's bound, `forward.max_pending`)."""
        return self.resolving + self.waiting >= self.max_pending

    def miss(self, key: bytes, q: Query) -> bytes | None:
        """The reply now (an error), or DEFERRED: it comes through `q.conn` later."""
        counters = self.counts.values
        counters["misses"] += 1
        res = self.pending.get(key)
        if res is not None:
            if len(res.waiters) >= MAX_WAITERS or self.coalesced >= self.max_pending:
                return self._full(q)
            charged = charge_of(q)
            mine = (key, charged)
            held = self.waits.get(mine, 0)  # its waits there, and its own ask if it asked
            if not self.budgets.take_wait(charged, held + (charged == res.charged)):
                return self.ratelimited(q)
            self.waits[mine] = held + 1
            res.waiters.append(q)
            self.coalesced += 1
            return DEFERRED
        if len(self.pending) >= self.max_pending:
            return self._full(q)
        charged = charge_of(q)
        if not self.budgets.take_query(charged):
            return self.ratelimited(q)
        res = Resolution(
            key, q, charged, self.forwarder, self.matcher, self.hook.ready, self._resolved
        )
        self.pending[key] = res
        self.resolving += 1
        res.start()  # sends the first query; finishes later, from a callback
        return DEFERRED

    def _full(self, q: Query) -> bytes:
        self.counts.values["pending_full"] += 1
        self.tracer.answered(q, wire.SERVFAIL, "local")
        return q.error(wire.SERVFAIL)

    def ratelimited(self, q: Query) -> bytes:
        """`q` is over its client's budgets: TC over UDP (a real client retries over TCP),
        SERVFAIL over TCP."""
        self.counts.values["ratelimited"] += 1
        self.tracer.answered(q, wire.SERVFAIL, "local")
        if q.conn.tcp:
            return q.error(wire.SERVFAIL)
        return q.error(wire.NOERROR, tc=True)

    def hook_answer(
        self, tagged: Tagged, ttl: int, client: str, installed: list[bytes] | None
    ) -> Pending | None:
        """The breakout hook for an answer; a failure of its own is counted and logged, and
        the answer goes out without waiting."""
        try:
            return self.hook.on_answer(tagged, ttl, client, installed)
        except Exception:
            self.counts.values["hook_errors"] += 1
            log.exception("breakout hook failed for %s", tagged.qname, extra=REPEATS)
            return None

    def _resolved(self, res: Resolution, resolved: Resolved | None) -> None:
        """`res` is over (its `finish`): cache and tag the answer, call the hook; answer every
        waiter now, or when the kernel has the routes."""
        self.resolving -= 1
        key, client, charged = res.key, res.client, res.charged
        entry: Entry | None = None
        source = "local"
        installed: list[bytes] | None = [] if self.tracer.observer is not None else None
        pending: Pending | None = None
        try:
            if resolved is not None:
                source = resolved.upstream.text
                entry = self._entry(key, resolved, charged, res.qname)
            tagged = entry.tag if entry is not None else None
            if entry is not None and tagged is not None and tagged.addresses:
                if self.budgets.take_routes(charged, sum(1 for _ in iter_packed(tagged.addresses))):
                    pending = self.hook_answer(tagged, entry.addr_ttl(0), client, installed)
                else:
                    self.counts.values["routes_deferred"] += 1
        except Exception:
            log.exception("internal error while resolving; answering SERVFAIL", extra=REPEATS)
            entry = None
        self.budgets.done_query(charged)
        do = res.do
        if pending is None:
            self._answer(key, entry, do, source, installed, 0.0)
            return
        self.waiting += 1
        started = time.perf_counter()

        def routed() -> None:
            self.waiting -= 1
            self._answer(key, entry, do, source, installed, time.perf_counter() - started)

        pending.then(routed)

    def _entry(self, key: bytes, resolved: Resolved, owner: bytes, qname: str) -> Entry | None:
        """The entry for an upstream answer to `qname`, cached and charged to `owner` when it
        may be."""
        try:
            entry, chain = build_entry(
                key, resolved.data, resolved.layout, self.clock(), self.max_ttl,
                self.max_negative_ttl, qname,
            )  # fmt: skip
        except wire.WireError as err:
            log.debug("unusable upstream reply: %s", err)
            return None
        entry.origin = resolved.origin
        entry.owner = owner
        entry.tag = tag(chain, self.matcher)
        if chain.capped and entry.tag is not None:
            self.counts.values["addresses_capped"] += chain.capped
        entry.addr_base = shared_int(chain.addr_ttl)
        if entry.ttl > 0:
            cache = self.cache
            evicted = cache.client_evicted
            cache.put(entry)
            if cache.client_evicted != evicted and not self.share_said:
                self.share_said = True
                log.warning(
                    "client %s holds its share of the cache (cache.client_share: %d answers or "
                    "%d bytes, of %d and %d): its new answers evict its own oldest "
                    "(cache.client_evicted; said once until a reload or a policy update). If it "
                    "is a DNS server asking for the branch, set cache.client_share: 1",
                    charge_text(owner), cache.per_client, cache.per_client_bytes,
                    cache.max_entries, cache.max_bytes,
                )  # fmt: skip
        return entry

    def _answer(
        self, key: bytes, entry: Entry | None, do: bool, source: str,
        installed: list[bytes] | None, waited: float,
    ) -> None:  # fmt: skip
        """Every client waiting for the question `key`: its reply, SERVFAIL without `entry`."""
        res = self.pending.pop(key, None)
        waiters = res.waiters if res is not None else []
        self._release(key, waiters)
        counts, tracer = self.counts, self.tracer
        counters = counts.values
        now = self.clock()
        tagged = entry.tag if entry is not None else None
        if tagged is not None:
            counts.tagged(tagged, len(waiters))
        for q in waiters:
            if entry is None:
                counters["servfail"] += 1
                reply = messages.error_reply(q.data, wire.SERVFAIL, q.qend, q.edns, do)
            else:
                counters[entry.result] += 1
                reply = entry.reply(q.data, q.qend, q.edns, q.limit, now)
            q.send(reply)
            tracer.answered(q, reply[3] & 0xF, source, tagged, installed, waited)

    def _release(self, key: bytes, waiters: list[Query]) -> None:
        """The coalesced waiters (all but the first) of the question `key` are answered or
        cancelled: their places in their clients' shares are free again."""
        if len(waiters) > 1:
            self.coalesced -= len(waiters) - 1
            waits = self.waits
            for q in waiters[1:]:
                charged = charge_of(q)
                self.budgets.done_query(charged)
                waits.pop((key, charged), None)  # the question is over for every waiter

    # -- shutdown --------------------------------------------------------------------------
    async def drain(self, timeout: float) -> int:
        """Stop taking new misses, wait up to `timeout` for those in flight (and for the
        replies waiting for the kernel, which it bounds), cancel the rest (their clients get
        no reply). Returns how many were cancelled."""
        self.closing = True
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while self.resolving and loop.time() < deadline:
            await asyncio.sleep(DRAIN_POLL)
        left = [res for res in self.pending.values() if res.in_flight]
        tcp = {res.tcp for res in left if res.tcp is not None}
        for res in left:
            res.cancel()
            del self.pending[res.key]
            self.resolving -= 1
            self.budgets.done_query(res.charged)
            self._release(res.key, res.waiters)
        if tcp:  # TCP retries, cancelled: let them close their connections
            await asyncio.wait(tcp, timeout=1.0)
        while self.waiting and loop.time() < deadline:
            await asyncio.sleep(DRAIN_POLL)
        await self.forwarder.close()
        return len(left)
