"""What to answer to a query: the protocol logic, apart from the sockets (udp.py, tcp.py).

`Handler.handle(data, addr, conn)` is the one entry for both transports. It does bounded work
and returns the reply bytes to send at once, `DEFERRED` (empty bytes) when the reply comes
later through `conn.send` (a cache miss, or a breakout hook that must be awaited), or None when
the query is dropped. So `if reply:` sends, and a TCP connection can count what it owes.

The steps, in order:
1. the memo (UDP): a map from the query bytes after the id to the reply body they got last
   time, valid until the cached entry's age reaches its next whole second and while the
   breakout's `epoch` is unchanged (no route the answer needs has gone since). A repeated
   query costs one dict lookup, one clock read, the ACL and one concatenation: no parsing,
   no TTL patching, no hook call, tagged or not. Recency for the LRU is recorded when the
   memo is refreshed, at most once a second per query;
2. the prologue: the ACL (REFUSED, with RA clear), then the query checks (FORMERR, NOTIMP,
   BADVERS as the query deserves; AXFR/IXFR REFUSED), the canaries (NXDOMAIN from here);
3. a cache hit: the stored reply, re-stamped; a tagged one extends its holds through the hook
   (and is sent once new routes are in, when some must go in first: that wait is a place in
   the pending table, charged to the client's share like a miss's, and refused like one);
4. a miss: handed to `Misses` (misses.py), which owns the questions in flight: coalesced with
   identical ones (a wait, charged to the client's share of the pending table), else charged
   to the client's budgets (ratelimit.Budgets: over them a UDP
   query gets TC, a TCP query SERVFAIL) and resolved by a state machine (resolution.py:
   upstream attempts moved on by socket and timer callbacks), then cached, tagged
   (tagging.tag), handed to the hook, and every waiter's reply sent.
The query is read once into a `Query` record (query.py), which goes along until its reply is
sent. A reply that waits for the kernel (the hook's Pending) is sent from its callback: no
task or future per answer.
Nothing is dropped at the defaults but malformed input and queries during shutdown: a full
pending table is answered SERVFAIL.
"""

from __future__ import annotations

import ipaddress
import logging
import time
from collections.abc import Callable
from typing import Any, Final

from resolver.clients import charge_key, client_ip
from resolver.config import Config
from resolver.dns import events, messages, wire
from resolver.dns.cache import Entry, shared_int
from resolver.dns.counts import Counts
from resolver.dns.events import Tracer
from resolver.dns.exchange import Transport
from resolver.dns.forwarder import Forwarder
from resolver.dns.misses import DEFERRED, Misses
from resolver.dns.query import Conn, Query
from resolver.dns.ratelimit import Budgets
from resolver.dns.store import Cache
from resolver.dns.tagging import NameMatcher, tag
from resolver.hooks import BreakoutHook

log = logging.getLogger(__name__)

TCP_LIMIT: Final = 65535
MEMO_MAX: Final = 4096  # remembered query byte strings (a hot set); the map is emptied when full
ACL_CACHE_MAX: Final = 16_384  # remembered ACL decisions per client address


class Memo:
    """A reply body for one query byte string, valid until `until` at breakout epoch `epoch`."""

    __slots__ = ("body", "entry", "epoch", "hits", "until")

    def __init__(self, entry: Entry, until: float, body: bytes, epoch: int) -> None:
        self.entry, self.until, self.body, self.epoch = entry, until, body, epoch
        self.hits = 0  # answered from this record and not yet added to the counters


class Handler:
    """Answers queries from the cache or through `Misses`; see the module docstring."""

    def __init__(
        self,
        config: Config,
        matcher: NameMatcher,
        hook: BreakoutHook,
        *,
        clock: Callable[[], float] = time.monotonic,
        probe_interval: float = 5.0,
        transport: Transport | None = None,
    ) -> None:
        self._clock = clock
        self.counts = Counts()
        self._counters = self.counts.values
        self.tracer = Tracer()
        self._trace = False  # tracer.on, read on the hot path (refresh_log_level)
        self.cache = Cache(config.cache.max_entries, config.cache.client_share)
        self.forwarder = Forwarder(config, probe_interval=probe_interval, transport=transport)
        self.hook = hook
        self._epoch = hook.epoch
        self.matcher = matcher
        self.misses = Misses(
            self.counts, self.tracer, self.cache, self.forwarder, hook, matcher, clock
        )
        self._memo: dict[bytes, Memo] = {}
        self._acl_cache: dict[str, bool] = {}
        self._allow: list[ipaddress.IPv4Network | ipaddress.IPv6Network] = []
        self._canaries: frozenset[bytes] = frozenset()
        self.configure(config, matcher)

    @property
    def tagged_by_row(self) -> dict[int, int]:
        return self.counts.by_row

    @property
    def observer(self) -> events.Observer | None:
        """The monitor, while somebody watches (then every query takes the full path)."""
        return self.tracer.observer

    @observer.setter
    def observer(self, observer: events.Observer | None) -> None:
        self.tracer.observer = observer

    # -- configuration ---------------------------------------------------------------------
    def configure(self, config: Config, matcher: NameMatcher) -> None:
        """Apply a (re)loaded config: upstream sets, ACL, budgets, cache size, the policy."""
        rerouted = self.forwarder.configure(config)
        self._allow = [ipaddress.ip_network(n, strict=False) for n in config.allow]
        self._acl_cache.clear()
        self._canaries = frozenset(wire.encode_name(name) for name in config.canaries)
        rl, fwd, misses = config.ratelimit, config.forward, self.misses
        budgets = Budgets(rl.qps, rl.burst, rl.share, rl.routes, fwd.max_pending, self._clock)
        budgets.in_flight = misses.budgets.in_flight  # queries in flight keep their count
        misses.budgets = budgets
        misses.max_pending = fwd.max_pending
        misses.max_ttl = config.cache.max_ttl
        misses.max_negative_ttl = config.cache.max_negative_ttl
        self.cache.resize(config.cache.max_entries, config.cache.client_share)
        misses.share_said = False
        self._clear_memo()
        retag = matcher is not self.matcher
        self.matcher = misses.matcher = matcher
        if retag or rerouted:
            self._review_cache(retag, rerouted)
        self.refresh_log_level()

    def _review_cache(self, retag: bool, rerouted: bool) -> None:
        """A new policy re-tags the cache (no upstream query); new upstream sets drop the
        answers that came from a set that no longer applies to their name."""
        dropped = tagged = 0
        forwarder, matcher = self.forwarder, self.matcher
        for entry in self.cache:
            question = entry.key[:-1]
            qname = wire.read_name(question, 0)
            if rerouted and (
                not forwarder.origin_ok(entry.origin, question, qname, matcher)
                or forwarder.would_splice(entry.origin, entry.tag, qname)
            ):
                self.cache.drop(entry)
                dropped += 1
                continue
            if retag:
                chain = entry.chain()
                entry.tag = tag(chain, matcher)
                entry.addr_base = shared_int(chain.addr_ttl)
            tagged += entry.tag is not None
        log.info(
            "cache reviewed: %d answers kept (%d tagged), %d dropped for their upstream set",
            len(self.cache), tagged, dropped,
        )  # fmt: skip

    @property
    def counters(self) -> dict[str, int]:
        """Queries by result, drops, cache hits and misses, tagged answers (a live dict; the
        memo's own hit counts are added in first)."""
        for memo in self._memo.values():
            if memo.hits:
                self._fold(memo)
        return self._counters

    def _fold(self, memo: Memo) -> None:
        counters, hits, entry = self._counters, memo.hits, memo.entry
        counters["total"] += hits
        counters["hits"] += hits
        counters[entry.result] += hits
        if entry.tag is not None:
            self.counts.tagged(entry.tag, hits)
        memo.hits = 0

    def _clear_memo(self) -> None:
        self.counters  # noqa: B018 - folds the memo's counts before it goes
        self._memo.clear()

    def set_hook(self, hook: BreakoutHook) -> None:
        self.hook = self.misses.hook = hook
        self._epoch = hook.epoch
        self._clear_memo()

    def refresh_log_level(self) -> None:
        """Per-query logs and events are paid for only when wanted; call after changing."""
        self.tracer.refresh()
        self._trace = self.tracer.on
        if self._trace:
            self._clear_memo()

    async def drain(self, timeout: float) -> int:
        """Stop taking new misses, wait for those in flight (bounded), cancel the rest."""
        return await self.misses.drain(timeout)

    # -- the hot path ----------------------------------------------------------------------
    def handle(self, data: bytes, addr: Any, conn: Conn) -> bytes | None:
        """The reply to send now, DEFERRED (sent later through `conn`) or None (dropped)."""
        host = addr[0]
        if not self._trace and not conn.tcp:
            memo = self._memo.get(data[2:])
            if (
                memo is not None
                and memo.epoch == self._epoch.value
                and self._clock() < memo.until
                and self._acl_cache.get(host)
            ):
                memo.hits += 1  # total, hits, result and tag: added up in `counters`
                return data[:2] + memo.body
        counters = self._counters
        counters["total"] += 1
        allowed = self._acl_cache.get(host)
        if allowed is None:
            allowed = self._acl_check(host)
        if not allowed:
            return self._refuse(data, addr, conn)
        try:
            qend, qtype, flags, limit = wire.parse_query(data)
        except wire.WireError as err:
            if err.rcode is None:
                counters["dropped"] += 1
                return None
            counters[wire.RCODE_NAMES.get(err.rcode, "other")] += 1
            q = Query(data, addr, conn, err.qend, 0, wire.PLAIN_SIZE)
            self.tracer.answered(q, err.rcode, "local")
            return messages.error_reply(data, err.rcode, err.qend, err.edns, err.do)
        q = Query(data, addr, conn, qend, flags, TCP_LIMIT if conn.tcp else limit)
        if qtype == wire.T_AXFR or qtype == wire.T_IXFR:
            counters["refused"] += 1
            self.tracer.answered(q, wire.REFUSED, "local")
            return q.error(wire.REFUSED)
        if self.misses.closing:
            counters["dropped"] += 1
            return None
        key = wire.question_key(data, qend, flags)
        if key[:-5] in self._canaries:
            counters["nxdomain"] += 1
            counters["canaries"] += 1
            self.tracer.answered(q, wire.NXDOMAIN, "local")
            return q.error(wire.NXDOMAIN)
        now = self._clock()
        entry = self.cache.get(key, now)
        if entry is not None:
            return self._hit(entry, q, now)
        return self.misses.miss(key, q)

    def _hit(self, entry: Entry, q: Query, now: float) -> bytes | None:
        counters = self._counters
        counters["hits"] += 1
        el = int(now - entry.stored)
        reply = entry.reply(q.data, q.qend, q.edns, q.limit, now)
        epoch = self._epoch.value
        pending = None
        installed: list[bytes] | None = [] if self.tracer.observer is not None else None
        tagged = entry.tag
        if tagged is not None and tagged.addresses:
            # Also when the wait below is refused: the client's retry (over TCP after TC) will
            # be sent these addresses, and their routes are on their way by then.
            pending = self.misses.hook_answer(tagged, entry.addr_ttl(el), q.client, installed)
        if pending is None:
            counters[entry.result] += 1
            if tagged is not None:
                self.counts.tagged(tagged, 1)
            if not q.conn.tcp and not self.tracer.on:
                self._remember(q.data, entry, el, reply, epoch)
            self.tracer.answered(q, reply[3] & 0xF, "cache", tagged, installed)
            return reply
        misses = self.misses
        if misses.busy:
            counters["pending_full"] += 1
            return messages.error_reply(
                q.data, wire.SERVFAIL, q.qend, q.edns, bool(entry.key[-1] & 2)
            )
        charged = charge_key(q.client)
        if not misses.budgets.take_wait(charged):
            return misses.ratelimited(q)
        misses.waiting += 1
        started = time.perf_counter()

        def routed() -> None:
            misses.waiting -= 1
            misses.budgets.done_query(charged)  # the budgets of now: a reload keeps the counts
            counters[entry.result] += 1
            if tagged is not None:
                self.counts.tagged(tagged, 1)
            q.send(reply)
            waited = time.perf_counter() - started
            self.tracer.answered(q, reply[3] & 0xF, "cache", tagged, installed, waited)

        pending.then(routed)
        return DEFERRED

    def _remember(self, data: bytes, entry: Entry, el: int, reply: bytes, epoch: int) -> None:
        """The memo: this query's reply body until the entry's age reaches its next second."""
        memo = self._memo
        if len(memo) >= MEMO_MAX:
            self._clear_memo()
        old = memo.get(data[2:])
        if old is not None and old.hits:
            self._fold(old)
        until = entry.stored + el + 1
        until = until if until < entry.expires else entry.expires
        memo[data[2:]] = Memo(entry, until, reply[2:], epoch)

    # -- the ACL -----------------------------------------------------------------------------
    def _acl_check(self, host: str) -> bool:
        ip = client_ip(host)
        allowed = ip is not None and any(
            ip in net for net in self._allow if net.version == ip.version
        )
        cache = self._acl_cache
        if len(cache) >= ACL_CACHE_MAX:
            cache.clear()
        cache[host] = allowed
        return allowed

    def _refuse(self, data: bytes, addr: Any, conn: Conn) -> bytes | None:
        """The one refusal path: REFUSED, RA clear (no recursion for a client the ACL refuses);
        something that is no query at all gets nothing."""
        counters = self._counters
        if len(data) < 12 or data[2] & 0x80:
            counters["dropped"] += 1
            return None
        counters["refused"] += 1
        try:
            qend, _qtype, flags, _limit = wire.parse_query(data)
        except wire.WireError as err:
            return messages.error_reply(data, wire.REFUSED, err.qend, err.edns, err.do, ra=False)
        q = Query(data, addr, conn, qend, flags, 0)
        self.tracer.answered(q, wire.REFUSED, "local")
        return messages.error_reply(data, wire.REFUSED, qend, q.edns, q.do, ra=False)
