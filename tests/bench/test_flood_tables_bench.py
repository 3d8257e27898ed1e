"""What a flood costs per query in the two tables it cycles (make bench, figures: -s).

- `cache.Cache`: one client asking for ever new names evicts its own least recently used
  answer at each miss once it holds its client_share (12,500 of the shipped 100,000);
- `ratelimit.TokenBucket`: a flood from ever new source addresses forgets the client seen
  longest ago at each query once the table holds DEFAULT_MAX_CLIENTS (16,384).

Both take the oldest of an insertion-ordered table. In a plain dict that is O(keys deleted
before it): 3 us an eviction in the cache's share and 14 us a new client in the buckets, the
compiled build, before the shares became lists linked through their entries and the buckets
an OrderedDict. What is asserted is that the cost does not
grow with the table: at the shipped sizes it is within GROWTH_LIMIT of the cost at a table
64 times smaller, medians of ROUNDS, on the build that runs the bench.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable

import pytest

from resolver import buildinfo
from resolver.config import CacheConfig
from resolver.dns.cache import Entry
from resolver.dns.ratelimit import DEFAULT_MAX_CLIENTS, TokenBucket
from resolver.dns.store import Cache

pytestmark = pytest.mark.bench

ROUNDS = 5
GROWTH_LIMIT = 3.0  # measured 1.2-1.5 (memory caches) since; 5.7-37 with dicts
CLIENT = bytes([192, 0, 2, 1])
WIRE = bytes(100)  # an answer's bytes: their content is not read


def _cache_flood(max_entries: int) -> float:
    """ns per put of a new answer by one client past its share, the shipped share."""
    cache = Cache(max_entries, CacheConfig().client_share)
    entries = [Entry(b"n%d" % i, WIRE, b"", 20, 300, 100.0) for i in range(max_entries)]
    for entry in entries:
        entry.owner = CLIENT
    for entry in entries[: cache.per_client]:
        cache.put(entry)  # the share is full
    flood = entries[cache.per_client :]
    start = time.perf_counter()
    for entry in flood:
        cache.put(entry)
    took = time.perf_counter() - start
    assert cache.owned(CLIENT) == cache.per_client and cache.client_evicted == len(flood)
    return took / len(flood) * 1e9


def _bucket_flood(max_clients: int) -> float:
    """ns per query from a new client once the table is full (the shipped qps and burst)."""
    buckets = TokenBucket(20_000.0, 40_000, max_clients=max_clients)
    clients = [i.to_bytes(4, "big") for i in range(3 * max_clients)]
    for client in clients[:max_clients]:
        buckets.take(client)
    flood = clients[max_clients:]
    start = time.perf_counter()
    for client in flood:
        buckets.take(client)
    took = time.perf_counter() - start
    assert len(buckets) == max_clients
    return took / len(flood) * 1e9


@pytest.mark.parametrize(
    ("table", "flood", "shipped"),
    [("cache share", _cache_flood, 100_000), ("rate buckets", _bucket_flood, DEFAULT_MAX_CLIENTS)],
)
def test_a_flood_costs_the_same_per_query_at_any_table_size(
    table: str, flood: Callable[[int], float], shipped: int
) -> None:
    small, full = [], []
    for _ in range(ROUNDS):  # alternating, so that a busy moment hits both
        small.append(flood(shipped // 64))
        full.append(flood(shipped))
    small_ns, full_ns = statistics.median(small), statistics.median(full)
    print(
        f"\n[flood] {table} ({buildinfo.build()} build): {full_ns:,.0f} ns a query at "
        f"{shipped:,}, {small_ns:,.0f} ns at {shipped // 64:,}: x{full_ns / small_ns:.2f} "
        f"(limit x{GROWTH_LIMIT})"
    )
    assert full_ns <= small_ns * GROWTH_LIMIT
