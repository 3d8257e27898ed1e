"""What to answer to a query: the protocol logic, apart from the sockets (udp.py, tcp.py).

`Handler.handle(data, addr, sink, tcp)` (TCP; `handle_udp` for UDP) is called for every query
and does bounded work: it returns the reply bytes to send at once, `DEFERRED` (empty bytes)
when the reply comes later through `sink.send` (a cache miss, or a breakout hook that must be
awaited), or None when the query is dropped. So `if reply:` sends, and a TCP connection can
count what it still owes. `udp_reader` builds the read callback udp.py registers for a UDP
socket: it answers repeat hits itself and hands everything else to `handle_udp`.

Order of checks: rate limit, ACL, then the answer. A UDP cache hit goes through `_memo` first:
a map from the query bytes after the id to the reply body they got last time, valid until the
entry's age reaches its next whole second. A repeated query therefore costs one dict lookup,
one clock read and one concatenation, no parsing (the bytes were fully checked the first time)
and no TTL patching. Recency for the LRU is recorded when the memo is refreshed, so at most
once a second per query: LRU at one-second granularity (and an entry the LRU has just evicted
may still be served from the memo until that second is over; never past its TTL).
A miss is coalesced with identical questions in flight (one upstream query, several waiters)
and resolved in a task; the pending table is bounded by `forward.max_pending`.

Over UDP a query over the rate limit or beyond the pending table is dropped. Over TCP it is
answered instead (REFUSED, SERVFAIL; see `_tcp_refusal`), since a TCP client waits for an
answer or the close of the connection, and a close would lose the other queries pipelined on
it.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import socket
import time
from collections.abc import Awaitable, Callable
from typing import Any, Protocol

from resolver.config import Config
from resolver.dns import wire
from resolver.dns.cache import Cache, Entry, NameMatcher, build_entry
from resolver.dns.hook import BreakoutHook, Tagged
from resolver.dns.ratelimit import RateLimiter
from resolver.dns.upstream import Forwarder

log = logging.getLogger(__name__)

TCP_LIMIT = 65535
MEMO_MAX = 16_384  # remembered query byte strings; the map is emptied when full
ACL_CACHE_MAX = 16_384  # remembered ACL decisions per client address
MAX_WAITERS = 256  # clients waiting for one coalesced question
DEFERRED = b""  # handle(): the reply will come through sink.send

COUNTER_KEYS = (
    "total",
    "noerror",
    "nxdomain",
    "servfail",
    "refused",
    "formerr",
    "notimp",
    "other",
    "dropped",
    "ratelimited",
    "pending_full",
    "tagged",
    "hits",
    "misses",
    "hook_errors",
)

_QTYPES = {1: "A", 2: "NS", 5: "CNAME", 6: "SOA", 12: "PTR", 15: "MX", 16: "TXT", 28: "AAAA"}


class Sink(Protocol):
    """Where a deferred reply goes: the UDP listener or the TCP connection it came in on."""

    def send(self, data: bytes, addr: Any) -> None: ...


class UdpSink(Sink, Protocol):
    send_dropped: int
    errors: int


Waiter = tuple[Sink, Any, bytes, int, bool, int]  # sink, addr, query, qend, edns, limit


class Memo:
    """A reply body (everything after the id) for one query byte string, valid until `until`
    (the end of the current second of the entry's age, or its expiry)."""

    __slots__ = ("body", "el", "entry", "hits", "until")

    def __init__(self, entry: Entry, until: float, body: bytes, el: int) -> None:
        self.entry = entry
        self.until = until
        self.body = body
        self.el = el
        self.hits = 0  # answered from this record and not yet added to the counters


class Handler:
    """Answers queries from the cache or through the forwarder; see the module docstring."""

    def __init__(
        self,
        config: Config,
        matcher: NameMatcher,
        hook: BreakoutHook,
        *,
        clock: Callable[[], float] = time.monotonic,
        probe_interval: float = 5.0,
    ) -> None:
        self._clock = clock
        self._counters: dict[str, int] = dict.fromkeys(COUNTER_KEYS, 0)
        self.tagged_by_row: dict[int, int] = {}
        self.cache = Cache(config.cache.max_entries)
        self.forwarder = Forwarder(
            config.upstreams, config.forward.timeout, probe_interval=probe_interval
        )
        self.pending: dict[bytes, list[Waiter]] = {}
        self.tasks: set[asyncio.Task[None]] = set()
        self.closing = False
        self._memo: dict[bytes, Memo] = {}
        self._acl_cache: dict[str, bool] = {}
        self._allow: list[ipaddress.IPv4Network | ipaddress.IPv6Network] = []
        self._limiter: RateLimiter | None = None
        self._on_answer = hook.on_answer
        self.matcher = matcher
        self.max_pending = config.forward.max_pending
        self.max_ttl = config.cache.max_ttl
        self.max_negative_ttl = config.cache.max_negative_ttl
        self._debug = False
        self._fast = False  # the UDP reader may answer repeat hits itself (no limit, no log)
        self.configure(config, matcher)

    # -- configuration ---------------------------------------------------------------------
    def configure(self, config: Config, matcher: NameMatcher) -> None:
        """Apply a (re)loaded config: upstreams, ACL, rate limit, cache size, the policy."""
        self.forwarder.configure(config.upstreams, config.forward.timeout)
        self._allow = [ipaddress.ip_network(n, strict=False) for n in config.allow]
        self._acl_cache.clear()
        rl = config.ratelimit
        if rl.qps > 0:
            if self._limiter is None:
                self._limiter = RateLimiter(rl.qps, rl.burst, clock=self._clock)
            else:
                self._limiter.configure(rl.qps, rl.burst)
        else:
            self._limiter = None
        self.max_pending = config.forward.max_pending
        self.max_ttl = config.cache.max_ttl
        self.max_negative_ttl = config.cache.max_negative_ttl
        self.cache.resize(config.cache.max_entries)
        self._clear_memo()
        if matcher is not self.matcher:
            self.matcher = matcher
            tagged = self.cache.retag(matcher)
            log.info("policy changed: %d of %d cached answers tagged", tagged, len(self.cache))
        self.refresh_log_level()

    @property
    def counters(self) -> dict[str, int]:
        """Queries by result, drops, cache hits and misses, tagged answers (a live dict; the
        memo's own hit counts are added in first)."""
        self._fold_all()
        return self._counters

    def _fold_all(self) -> None:
        for memo in self._memo.values():
            if memo.hits:
                self._fold(memo)

    def _fold(self, memo: Memo) -> None:
        counters, hits = self._counters, memo.hits
        counters["total"] += hits
        counters["hits"] += hits
        counters[memo.entry.result] += hits
        memo.hits = 0

    def _clear_memo(self) -> None:
        self._fold_all()
        self._memo.clear()

    def set_hook(self, hook: BreakoutHook) -> None:
        self._on_answer = hook.on_answer

    def refresh_log_level(self) -> None:
        """The query log is paid for only when debug logging is on; call after changing it."""
        self._debug = log.isEnabledFor(logging.DEBUG)
        self._fast = self._limiter is None and not self._debug

    # -- the hot path ----------------------------------------------------------------------
    def handle_udp(self, data: bytes, addr: Any, sink: Sink) -> bytes | None:
        """`handle` for UDP, with the memo fast path: a query whose bytes (after the id) were
        answered from the cache within the same second of the entry's age gets the same reply
        body again, behind its own id."""
        host = addr[0]
        limiter = self._limiter
        if limiter is not None and not limiter.allow(host):
            self._counters["total"] += 1
            self._counters["ratelimited"] += 1
            return None
        allowed = self._acl_cache.get(host)
        if allowed is None:
            allowed = self._acl_check(host)
        if not allowed:
            self._counters["total"] += 1
            return self._refuse(data)
        memo = self._memo.get(data[2:])
        if memo is not None and self._clock() < memo.until:
            entry = memo.entry
            memo.hits += 1  # total, hits and the result: added up in `counters`
            if entry.tag is None:
                if self._debug:
                    self._log_query(data, entry.qend, addr, entry, "hit")
                return data[:2] + memo.body
            return self._tagged_hit(entry, memo.el, data[:2] + memo.body, addr, sink)
        self._counters["total"] += 1
        return self._slow(data, addr, sink, False)

    def udp_reader(
        self, sock: socket.socket, sink: UdpSink, batch: int, max_size: int
    ) -> Callable[[], None]:
        """The read callback for a UDP socket (for `loop.add_reader`): reads up to `batch`
        datagrams, answers repeat hits right there (the memo path of `handle_udp` with every
        name a local), hands the rest to `handle_udp`. A reply the kernel will not take now is
        dropped and counted in `sink.send_dropped`, never queued."""
        recvfrom, sendto = sock.recvfrom, sock.sendto
        memo_get, acl_get, clock = self._memo.get, self._acl_cache.get, self._clock
        handle = self.handle_udp

        def readable() -> None:
            for _ in range(batch):
                try:
                    data, addr = recvfrom(max_size)
                except (BlockingIOError, InterruptedError):
                    return
                except OSError as err:  # e.g. an ICMP error queued on the socket
                    sink.errors += 1
                    log.debug("UDP receive error: %s", err)
                    continue
                memo = memo_get(data[2:])
                if (
                    memo is not None
                    and memo.entry.tag is None
                    and self._fast
                    and acl_get(addr[0])
                    and clock() < memo.until
                ):
                    memo.hits += 1
                    reply: bytes | None = data[:2] + memo.body
                else:
                    reply = handle(data, addr, sink)
                if reply:  # neither dropped (None) nor deferred (b"")
                    try:
                        sendto(reply, addr)
                    except (BlockingIOError, InterruptedError):
                        sink.send_dropped += 1
                    except OSError as err:
                        sink.errors += 1
                        log.debug("UDP send to %s failed: %s", addr, err)

        return readable

    def handle(self, data: bytes, addr: Any, sink: Sink, tcp: bool) -> bytes | None:
        """The reply to send now, DEFERRED (sent later through `sink`) or None (dropped)."""
        if not tcp:
            return self.handle_udp(data, addr, sink)
        counters = self._counters
        counters["total"] += 1
        host = addr[0]
        limiter = self._limiter
        if limiter is not None and not limiter.allow(host):
            counters["ratelimited"] += 1
            return self._tcp_refusal(data, wire.REFUSED)
        allowed = self._acl_cache.get(host)
        if allowed is None:
            allowed = self._acl_check(host)
        if not allowed:
            return self._refuse(data)
        return self._slow(data, addr, sink, True)

    def _tcp_refusal(self, data: bytes, rcode: int) -> bytes | None:
        """The answer to a TCP query we will not work on (`rcode` REFUSED over the rate limit;
        `_slow` answers SERVFAIL itself when the pending table is full). Over UDP such a query
        is dropped, but a TCP client waits for an answer or the close of the connection
        (RFC 7766), and a close would also cut off every other query pipelined on it, answered
        or still owed, so we answer. The source of a TCP query is not spoofed (the handshake),
        so the answer amplifies nothing. Counted under its cause (ratelimited, pending_full)
        only, not as a result."""
        try:
            qend, _qtype, flags, _limit = wire.parse_query(data)
        except wire.WireError as err:
            if err.rcode is None:
                return None  # not a query at all (short, QR set): nothing to answer
            return wire.error_reply(data, rcode, err.qend, err.edns, err.do)
        return wire.error_reply(
            data, rcode, qend, bool(flags & wire.EDNS), bool(flags & wire.DO_BIT)
        )

    def _slow(self, data: bytes, addr: Any, sink: Sink, tcp: bool) -> bytes | None:
        """Everything that is not a repeated cache hit: parse, look up, or forward."""
        counters = self._counters
        try:
            qend, qtype, flags, limit = wire.parse_query(data)
        except wire.WireError as err:
            if err.rcode is None:
                counters["dropped"] += 1
                return None
            counters[wire.RCODE_NAMES.get(err.rcode, "other")] += 1
            if self._debug:
                log.debug("query from %s: %s -> rcode %d", addr[0], err, err.rcode)
            return wire.error_reply(data, err.rcode, err.qend, err.edns, err.do)
        edns = bool(flags & wire.EDNS)
        do = bool(flags & wire.DO_BIT)
        if qtype == wire.T_AXFR or qtype == wire.T_IXFR:
            counters["refused"] += 1
            return wire.error_reply(data, wire.REFUSED, qend, edns, do)
        if self.closing:
            counters["dropped"] += 1
            return None
        key = wire.question_key(data, qend, flags)
        now = self._clock()
        entry = self.cache.get(key, now)
        if entry is not None:
            counters["hits"] += 1
            counters[entry.result] += 1
            reply = entry.reply(data, qend, edns, TCP_LIMIT if tcp else limit, now)
            if not tcp:
                memo = self._memo
                if len(memo) >= MEMO_MAX:
                    self._clear_memo()
                old = memo.get(data[2:])
                if old is not None and old.hits:
                    self._fold(old)
                el = entry.el
                until = entry.stored + el + 1
                memo[data[2:]] = Memo(
                    entry, until if until < entry.expires else entry.expires, reply[2:], el
                )
            if entry.tag is not None:
                sent = self._tagged_hit(entry, entry.el, reply, addr, sink)
                if sent is None and tcp:  # no room to wait for the hook
                    return wire.error_reply(data, wire.SERVFAIL, qend, edns, do)
                return sent
            if self._debug:
                self._log_query(data, qend, addr, entry, "hit")
            return reply
        counters["misses"] += 1
        waiter = (sink, addr, data, qend, edns, TCP_LIMIT if tcp else limit)
        waiters = self.pending.get(key)
        if waiters is not None:
            if len(waiters) >= MAX_WAITERS:
                counters["pending_full"] += 1
                return wire.error_reply(data, wire.SERVFAIL, qend, edns, do) if tcp else None
            waiters.append(waiter)
            return DEFERRED
        if len(self.pending) >= self.max_pending:
            counters["pending_full"] += 1
            return wire.error_reply(data, wire.SERVFAIL, qend, edns, do) if tcp else None
        self.pending[key] = [waiter]
        self._spawn(self._resolve(key, do, bool(flags & wire.CD_BIT)))
        return DEFERRED

    def _tagged_hit(
        self, entry: Entry, el: int, reply: bytes, addr: Any, sink: Sink
    ) -> bytes | None:
        tag = entry.tag
        assert tag is not None
        self._count_tag(tag, 1)
        if self._debug:
            self._log_query(reply, entry.qend, addr, entry, "hit")
        if not entry.addresses:
            return reply
        try:
            waiting = self._on_answer(tag, entry.addr_ttl(el))
        except Exception:
            self._counters["hook_errors"] += 1
            log.exception("breakout hook failed for %s", tag.qname)
            return reply
        if waiting is None:
            return reply
        if len(self.tasks) >= self.max_pending:
            self._counters["pending_full"] += 1
            self._discard(waiting)
            return None
        self._spawn(self._send_after(waiting, sink, reply, addr))
        return DEFERRED

    # -- the miss path ---------------------------------------------------------------------
    def _spawn(self, coro: Any) -> None:
        task: asyncio.Task[None] = asyncio.get_running_loop().create_task(coro)
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    async def _send_after(
        self, waiting: Awaitable[None], sink: Sink, reply: bytes, addr: Any
    ) -> None:
        await self._await_hook(waiting)
        sink.send(reply, addr)

    async def _await_hook(self, waiting: Awaitable[None]) -> None:
        try:
            await waiting
        except asyncio.CancelledError:
            raise
        except Exception:
            self._counters["hook_errors"] += 1
            log.exception("breakout hook failed")

    def _discard(self, waiting: Awaitable[None]) -> None:
        """An awaitable we will not wait for: make sure a coroutine does not warn."""
        close = getattr(waiting, "close", None)
        if callable(close):
            close()

    async def _resolve(self, key: bytes, do: bool, cd: bool) -> None:
        """Ask the upstreams, cache the answer, call the hook, answer every waiter."""
        entry: Entry | None = None
        try:
            reply = await self.forwarder.resolve(key[:-1], do, cd)
            if reply is not None:
                entry = self._entry(key, reply, do)
            if entry is not None and entry.tag is not None and entry.addresses:
                try:
                    waiting = self._on_answer(entry.tag, entry.addr_ttl(0))
                except Exception:
                    self._counters["hook_errors"] += 1
                    log.exception("breakout hook failed for %s", entry.tag.qname)
                else:
                    if waiting is not None:
                        await self._await_hook(waiting)
        except asyncio.CancelledError:
            self.pending.pop(key, None)
            raise
        except Exception:
            log.exception("internal error while resolving; answering SERVFAIL")
            entry = None
        waiters = self.pending.pop(key, [])
        self._answer_waiters(entry, waiters, do)

    def _entry(self, key: bytes, reply: tuple[bytes, wire.Layout], do: bool) -> Entry | None:
        data, layout = reply
        try:
            entry = build_entry(
                key,
                data,
                layout,
                self._clock(),
                do,
                self.max_ttl,
                self.max_negative_ttl,
                self.matcher,
            )
        except wire.WireError as err:
            log.debug("unusable upstream reply: %s", err)
            return None
        if entry.ttl > 0:
            self.cache.put(entry)
        return entry

    def _answer_waiters(self, entry: Entry | None, waiters: list[Waiter], do: bool) -> None:
        counters = self._counters
        now = self._clock()
        tag = entry.tag if entry is not None else None
        if tag is not None:
            self._count_tag(tag, len(waiters))
        for sink, addr, data, qend, edns, limit in waiters:
            if entry is None:
                counters["servfail"] += 1
                reply = wire.error_reply(data, wire.SERVFAIL, qend, edns, do)
            else:
                counters[entry.result] += 1
                reply = entry.reply(data, qend, edns, limit, now)
            if self._debug:
                self._log_query(data, qend, addr, entry, "miss")
            sink.send(reply, addr)

    # -- helpers ---------------------------------------------------------------------------
    def _count_tag(self, tag: Tagged, n: int) -> None:
        self._counters["tagged"] += n
        row = tag.match.rule.row
        self.tagged_by_row[row] = self.tagged_by_row.get(row, 0) + n

    def _acl_check(self, host: str) -> bool:
        try:
            ip = ipaddress.ip_address(host.partition("%")[0])
        except ValueError:
            allowed = False
        else:
            if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
                ip = ip.ipv4_mapped
            allowed = any(ip in net for net in self._allow if net.version == ip.version)
        cache = self._acl_cache
        if len(cache) >= ACL_CACHE_MAX:
            cache.clear()
        cache[host] = allowed
        return allowed

    def _refuse(self, data: bytes) -> bytes | None:
        counters = self._counters
        if len(data) < 12 or data[2] & 0x80:
            counters["dropped"] += 1
            return None
        counters["refused"] += 1
        # RA clear: recursion is not available to a client the ACL refuses.
        try:
            qend, _qtype, flags, _limit = wire.parse_query(data)
        except wire.WireError as err:
            return wire.error_reply(data, wire.REFUSED, err.qend, err.edns, err.do, ra=False)
        return wire.error_reply(
            data, wire.REFUSED, qend, bool(flags & wire.EDNS), bool(flags & wire.DO_BIT), ra=False
        )

    def _log_query(self, data: bytes, qend: int, addr: Any, entry: Entry | None, how: str) -> None:
        name = wire.name_text(data[12 : qend - 4])
        qtype = (data[qend - 4] << 8) | data[qend - 3]
        result = "servfail" if entry is None else entry.result
        tag = entry.tag if entry is not None else None
        log.debug(
            "query %s %s from %s: %s (%s)%s",
            name,
            _QTYPES.get(qtype, str(qtype)),
            addr[0],
            result,
            how,
            "" if tag is None else f" tagged row {tag.match.rule.row} via {tag.name}",
        )

    # -- shutdown --------------------------------------------------------------------------
    async def drain(self, timeout: float) -> int:
        """Stop taking new misses, wait up to `timeout` for those in flight, cancel the rest.
        Returns how many were cancelled."""
        self.closing = True
        tasks = set(self.tasks)
        if tasks:
            _done, left = await asyncio.wait(tasks, timeout=timeout)
            for task in left:
                task.cancel()
            if left:
                await asyncio.wait(left, timeout=1.0)
        else:
            left = set()
        await self.forwarder.close()
        return len(left)
