"""Budgets on what costs, per client: upstream queries, queries in flight, new routes.

A client is `clients.client_key`: an IPv4 address, or an IPv6 /64. Cached answers cost nothing
and are never limited, unless one must wait for the kernel to route its addresses. A cache
miss costs an upstream query: each client has a token bucket of `qps` a second (at most
`burst` saved up) and may hold at most `share` of the pending table in flight, counting its
questions asked upstream, its waits for a question another client asked (coalesced: no query
of its own, but a place in the table all the same) and its cached answers waiting for the
kernel (the same: a place in the table until the routes are in), and of one
question's waiting places at most WAITS_PER_QUESTION, its own ask included. A tagged answer
fetched from upstream costs its addresses in route tokens (`routes` a second, twice that saved
up). What the handler does with a refusal is its business (TC over UDP, SERVFAIL over TCP; no
route for this answer).

The table of clients is bounded: when it is full the client seen longest ago (by first
insertion) is forgotten, which only gives that client full buckets again. A spoofed flood from
many addresses therefore costs a bounded amount of memory and cannot lock anybody out.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable
from typing import Final

# Clients a bucket table remembers. A branch has hundreds; past this many the one seen first is
# forgotten (full buckets again), which gives a flood from spoofed addresses nothing it would
# not get from the addresses themselves. 65,536 took 23-29 MiB of RSS in both tables, past the
# unit's MemoryHigh with the other caps filled (tests/bench/test_memory_caps.py); this 4-5.
DEFAULT_MAX_CLIENTS: Final = 16_384
# Of a question's waiting places (misses.MAX_WAITERS: 256), per client
WAITS_PER_QUESTION: Final = 32


class _Bucket:
    """One client's tokens and when they were last refilled. A class, not a list of two:
    compiled, its floats are held unboxed (56 bytes against a list's 72 and two float
    objects' 48, with no float made at each take); interpreted, 24 bytes less."""

    __slots__ = ("at", "tokens")

    def __init__(self, tokens: float, at: float) -> None:
        self.tokens = tokens
        self.at = at


class TokenBucket:
    """`take(client, n)` is True while the client has `n` tokens; rate 0 lets all through."""

    __slots__ = ("_buckets", "_clock", "burst", "max_clients", "rate")

    def __init__(
        self,
        rate: float,
        burst: float,
        max_clients: int = DEFAULT_MAX_CLIENTS,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.rate = rate
        self.burst = max(float(burst), 1.0)
        self.max_clients = max_clients
        self._clock = clock
        # client -> its bucket; ordered, not a dict: a dict's first key is found by skipping
        # over every key deleted before it (14 us a new client when full)
        self._buckets: OrderedDict[bytes, _Bucket] = OrderedDict()

    def __len__(self) -> int:
        return len(self._buckets)

    def take(self, client: bytes, n: float = 1.0) -> bool:
        if self.rate <= 0:
            return True
        now = self._clock()
        bucket = self._buckets.get(client)
        if bucket is None:
            buckets = self._buckets
            if len(buckets) >= self.max_clients:
                buckets.popitem(last=False)
            bucket = buckets[client] = _Bucket(self.burst, now)
        tokens = bucket.tokens + (now - bucket.at) * self.rate
        if tokens > self.burst:
            tokens = self.burst
        bucket.at = now
        if tokens < n:
            bucket.tokens = tokens
            return False
        bucket.tokens = tokens - n
        return True


class Budgets:
    """The per-client budgets of one configuration (see the module docstring)."""

    def __init__(
        self,
        qps: float,
        burst: int,
        share: float,
        routes: float,
        max_pending: int,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.on = qps > 0
        self.queries = TokenBucket(qps, burst, clock=clock)
        self.routes = TokenBucket(routes if self.on else 0.0, 2 * routes, clock=clock)
        self.max_in_flight = max(1, int(max_pending * share))
        self.in_flight: dict[bytes, int] = {}

    def take_query(self, client: bytes) -> bool:
        """A cache miss by `client`: True when it may send an upstream query (then it must
        call `done_query` when that query is over)."""
        if not self.on:
            self.in_flight[client] = self.in_flight.get(client, 0) + 1
            return True
        held = self.in_flight.get(client, 0)
        if held >= self.max_in_flight or not self.queries.take(client):
            return False
        self.in_flight[client] = held + 1
        return True

    def take_wait(self, client: bytes, on_question: int = 0) -> bool:
        """`client`, which holds `on_question` places of a question in flight already (its
        ask included), waits for it too: True when it may (then it must call `done_query`
        when its answer is sent)."""
        held = self.in_flight.get(client, 0)
        if self.on and (held >= self.max_in_flight or on_question >= WAITS_PER_QUESTION):
            return False
        self.in_flight[client] = held + 1
        return True

    def done_query(self, client: bytes) -> None:
        """A query or a wait taken by `client` is over."""
        held = self.in_flight.get(client, 0) - 1
        if held > 0:
            self.in_flight[client] = held
        else:
            self.in_flight.pop(client, None)

    def take_routes(self, client: bytes, addresses: int) -> bool:
        """A tagged answer from upstream with `addresses` addresses for `client`."""
        return self.routes.take(client, addresses)
