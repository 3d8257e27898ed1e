"""The handler target: one client query, Handler.handle end to end, upstream replies from the
fuzzer's bytes.

Input layout:

    byte 0      options: bit 0 the client is on TCP, bit 1 the hook makes the reply wait,
                bit 2 a breakout link is usable (policy names go to the breakout resolvers,
                chains into them are spliced), bit 3 the client is outside the ACL, bit 4
                budgets on (1 upstream query/s, burst 2), bits 5-7 seconds the clock moves
                before the query is asked the third time (x 20)
    2 bytes     length of the query, then the query
    then items  each a kind byte: bit 0 "no reply" (the attempt times out), else a 2-byte
                length and a datagram; bit 1 keeps the datagram's id as it is (otherwise it
                is set to the id of the query it answers)

Each upstream attempt (UDP, or TCP after TC) takes items until one is a reply to it or the
items run out (a timeout). The handler is given `FeedTransport` (exchange.Transport, through
Handler's `transport` parameter: no module attribute is patched), whose attempts
(`Feed.attempt`) do with each item what the real ones do with a datagram:
`replies.accept_reply` (counted dropped or malformed when refused), then `exchange.cut`;
everything above them (upstream sets, health, the forwarder, splicing, the
cache, tagging, the handler) is the real code.

The query is asked three times (a miss, a hit, a hit or miss after the clock moved), each
under its own id; every reply is checked (checks.check_reply) and nothing may be left over: no
waiter, no task, no query counted in flight, no cache beyond its cap, no error logged.
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import dataclasses
import logging
import struct
from collections.abc import Callable, Iterator
from typing import Any

from policy.matcher import Matcher
from policy.model import Rule
from resolver.config import (
    BreakoutConfig,
    CacheConfig,
    Config,
    ForwardConfig,
    Mode,
    RateLimitConfig,
)
from resolver.dns import exchange, messages, replies, wire
from resolver.dns.handler import MEMO_MAX, Handler
from resolver.hooks import Epoch, Pending, Tagged, iter_packed
from tests.fuzz.checks import Violation, check_reply, dnslib_agrees, dnslib_question, require
from tests.later import Later

CACHE_MAX = 4
MAX_PENDING = 4
MAX_TTL = 86_400
CLIENT_IN = ("127.0.0.1", 5353)
CLIENT_OUT = ("198.51.100.9", 5353)
RULES = (
    Rule(row=1, purpose="Exchange", required=True, patterns=("outlook.office.com", "*.office.com")),
    Rule(row=2, purpose="SharePoint", required=True, patterns=("*.sharepoint.com",)),
)
MATCHER = Matcher(RULES)


def _config(budgets: bool) -> Config:
    base = Config(
        upstreams=(("192.0.2.53", 53), ("192.0.2.54", 53)),
        listen=(("127.0.0.1", 53),),
        forward_zones={"corp.example": (("192.0.2.55", 53),)},
    )
    qps = 1.0 if budgets else 0.0
    return dataclasses.replace(
        base,
        cache=CacheConfig(max_entries=CACHE_MAX, max_ttl=MAX_TTL),
        forward=ForwardConfig(timeout=0.05, max_pending=MAX_PENDING),
        ratelimit=RateLimitConfig(qps=qps, burst=2, share=0.5, routes=2.0),
        breakout=BreakoutConfig(mode=Mode.DRY_RUN, resolvers=(("192.0.2.56", 53),)),
    )


CONFIGS = {False: _config(False), True: _config(True)}


class Feed:
    """The upstream datagrams of one input, in order, and whether dnslib reads them all."""

    def __init__(self, items: list[tuple[int, bytes]]) -> None:
        self.items = items
        self.at = 0
        self.qid = 0
        self.readable = True  # dnslib reads every reply accepted as we do (checks.py)

    def next(self) -> tuple[int, bytes] | None:
        if self.at >= len(self.items):
            return None
        self.at += 1
        return self.items[self.at - 1]

    def attempt(self, up: exchange.Peer, question: bytes, do: bool, cd: bool, edns: bool) -> Any:
        """One attempt: our query is built as exchange builds it; the first datagram that is
        a reply to it is the answer; 'no reply' or the end of the items is a timeout."""
        self.qid = (self.qid + 0x2B3D) & 0xFFFF
        messages.build_query(self.qid, question, do, cd, edns)
        while True:
            item = self.next()
            if item is None or item[0] & 1:
                return None
            kind, data = item
            if not kind & 2 and len(data) >= 2:
                data = struct.pack("!H", self.qid) + data[2:]
            try:
                layout = replies.accept_reply(data, self.qid, question)
            except wire.WireError:
                up.stats["malformed"] += 1
                continue
            if layout is None:
                up.stats["dropped"] += 1
                continue
            self.readable = self.readable and dnslib_agrees(data[: layout.end])
            return layout, data


FEED = Feed([])


class FeedTransport:
    """The exchange.Transport of the fuzz runs: each attempt takes its reply from FEED, as the
    real one would from the socket (accept_reply, then exchange.cut). Injected through
    Handler(transport=...), so it works on compiled code too."""

    def udp(
        self, up: exchange.Peer, question: bytes, do: bool, cd: bool, edns: bool,
        timeout: float, done: Callable[[exchange.Reply | None], None],
    ) -> exchange.Attempt:  # fmt: skip
        """exchange.Transport.udp's contract: `done` later, with the reply or None (timeout)."""
        got = FEED.attempt(up, question, do, cd, edns)
        reply = None if got is None else exchange.cut(up, got[1], got[0])
        return asyncio.get_running_loop().call_soon(done, reply)

    async def tcp(
        self, up: exchange.Peer, question: bytes, do: bool, cd: bool, edns: bool, timeout: float
    ) -> exchange.Reply | None:
        got = FEED.attempt(up, question, do, cd, edns)
        if got is None:
            raise exchange.TcpFailed(True)
        layout, data = got
        if layout.truncated:
            up.stats["malformed"] += 1
            return None
        return exchange.cut(up, data, layout)

    def close(self) -> None:
        pass


class FuzzHook:
    """A breakout hook that checks what it is given; it may make the reply wait a turn."""

    epoch = Epoch()

    def __init__(self, ready: bool, wait: bool) -> None:
        self.ready = ready
        self.wait = wait
        self.calls = 0

    def on_answer(
        self, tagged: Tagged, ttl: int, client: str = "", installed: list[bytes] | None = None
    ) -> Pending | None:
        self.calls += 1
        require(0 <= ttl <= MAX_TTL, f"hook TTL {ttl}")
        blob = tagged.addresses
        require(all(len(a) in (4, 16) for a in iter_packed(blob)), "packed addresses")
        require(sum(1 + len(a) for a in iter_packed(blob)) == len(blob), "packed length")
        require(MATCHER.match(tagged.via) is not None, "tagged through a name the policy lacks")
        return Later(0.0) if self.wait else None


class FuzzConn:
    """The handler's Conn: records the deferred replies."""

    def __init__(self, tcp: bool) -> None:
        self.tcp = tcp
        self.sent: list[bytes] = []

    def send(self, data: bytes, addr: Any) -> None:
        self.sent.append(data)


class Errors(logging.Handler):
    """Any error logged (an exception the handler caught and turned into SERVFAIL) is a bug."""

    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


class Clock:
    def __init__(self) -> None:
        self.now = 10_000.0

    def __call__(self) -> float:
        return self.now


ERRORS = Errors()
_LOOP: list[asyncio.AbstractEventLoop] = []


@contextlib.contextmanager
def _collected() -> Iterator[None]:
    """Errors collected and not printed; put back after (the replay test runs in the same
    process as the integration tier)."""
    log = logging.getLogger("resolver")
    saved = log.propagate
    log.addHandler(ERRORS)
    log.propagate = False
    try:
        yield
    finally:
        log.propagate = saved
        log.removeHandler(ERRORS)


def parse(data: bytes) -> tuple[int, bytes, list[tuple[int, bytes]]] | None:
    if len(data) < 3:
        return None
    options, size = data[0], struct.unpack_from("!H", data, 1)[0]
    query = data[3 : 3 + size]
    items: list[tuple[int, bytes]] = []
    at = 3 + size
    while at < len(data):
        kind = data[at]
        at += 1
        if kind & 1:
            items.append((kind, b""))
            continue
        if at + 2 > len(data):
            break
        length = struct.unpack_from("!H", data, at)[0]
        items.append((kind, data[at + 2 : at + 2 + length]))
        at += 2 + length
    return options, query, items


def run(data: bytes) -> None:
    parsed = parse(data)
    if parsed is None:
        return
    options, query, items = parsed
    global FEED
    FEED = Feed(items)
    ERRORS.records.clear()
    if not _LOOP:
        _LOOP.append(asyncio.new_event_loop())
        atexit.register(_LOOP[0].close)
    with _collected():
        _LOOP[0].run_until_complete(_scenario(options, query))
    left = asyncio.all_tasks(_LOOP[0])
    require(not left, f"tasks left on the loop: {left!r}"[:300])
    if ERRORS.records:
        record = ERRORS.records[0]
        raise Violation(f"logged: {record.getMessage()} {record.exc_info!r}")


async def _scenario(options: int, query: bytes) -> None:
    tcp, ready = bool(options & 1), bool(options & 4)
    clock = Clock()
    hook = FuzzHook(ready, bool(options & 2))
    handler = Handler(
        CONFIGS[bool(options & 16)], MATCHER, hook, clock=clock, transport=FeedTransport()
    )
    conn = FuzzConn(tcp)
    addr = CLIENT_OUT if options & 8 else CLIENT_IN
    try:
        for round_ in range(3):
            if round_ == 2:
                clock.now += 20 * (options >> 5)
            asked = struct.pack("!H", (0x1111 * (round_ + 1)) & 0xFFFF) + query[2:]
            if len(query) < 2:
                asked = query
            await _ask(handler, conn, addr, asked)
        require(len(handler.cache) <= CACHE_MAX, "cache over its cap")
        require(len(getattr(handler, "_memo", ())) <= MEMO_MAX, "memo over its cap")
    finally:
        await handler.drain(0.0)
    require(not handler.misses.pending, "waiters left in the pending table")
    require(not handler.misses.resolving, "misses left in flight")
    require(not handler.misses.budgets.in_flight, "queries still counted in flight")


async def _ask(handler: Handler, conn: FuzzConn, addr: Any, query: bytes) -> None:
    """One query: the reply now or, once the misses are over, exactly one deferred reply."""
    before = len(conn.sent)
    spliced = handler.forwarder.spliced
    reply = handler.handle(query, addr, conn)
    misses = handler.misses
    for _ in range(200):
        if not misses.resolving and not misses.waiting:
            break
        await asyncio.sleep(0)
    require(
        not misses.resolving and not misses.waiting,
        "a query still in the works after 200 turns of the loop",
    )
    if reply is None:
        require(len(conn.sent) == before, "a dropped query got a reply")
        return
    if reply:
        require(len(conn.sent) == before, "an immediate reply and a deferred one")
    else:
        require(len(conn.sent) == before + 1, "a deferred reply never sent, or sent twice")
        reply = conn.sent[-1]
    try:
        qend, _qtype, _flags, limit = wire.parse_query(query)
    except wire.WireError as err:
        qend, limit = err.qend, wire.PLAIN_SIZE
    strict = FEED.readable and dnslib_question(query, qend)
    layout = check_reply(
        reply, query, qend, limit=None if conn.tcp else limit, strict=strict, max_ttl=MAX_TTL
    )
    if handler.forwarder.spliced != spliced:
        require(layout.rcode == wire.NOERROR, "a spliced answer that is no NOERROR")
