"""Per-client token buckets: `qps` tokens a second, at most `burst` saved up.

The table of clients is bounded: when it is full the client seen longest ago (by first
insertion) is forgotten, which only gives that client a full bucket again. A spoofed flood from
many addresses therefore costs a bounded amount of memory and cannot lock anybody out.
"""

from __future__ import annotations

import time
from collections.abc import Callable

DEFAULT_MAX_CLIENTS = 65_536


class RateLimiter:
    """`allow(client)` is True while the client has a token; qps 0 lets everything through."""

    __slots__ = ("_buckets", "_clock", "burst", "max_clients", "qps")

    def __init__(
        self,
        qps: float,
        burst: int,
        max_clients: int = DEFAULT_MAX_CLIENTS,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.qps = qps
        self.burst = float(max(burst, 1))
        self.max_clients = max_clients
        self._clock = clock
        self._buckets: dict[str, list[float]] = {}  # client -> [tokens, time of last refill]

    @property
    def enabled(self) -> bool:
        return self.qps > 0

    def __len__(self) -> int:
        return len(self._buckets)

    def allow(self, client: str) -> bool:
        if self.qps <= 0:
            return True
        now = self._clock()
        bucket = self._buckets.get(client)
        if bucket is None:
            buckets = self._buckets
            if len(buckets) >= self.max_clients:
                del buckets[next(iter(buckets))]
            buckets[client] = [self.burst - 1.0, now]
            return True
        tokens = bucket[0] + (now - bucket[1]) * self.qps
        if tokens > self.burst:
            tokens = self.burst
        bucket[1] = now
        if tokens < 1.0:
            bucket[0] = tokens
            return False
        bucket[0] = tokens - 1.0
        return True

    def configure(self, qps: float, burst: int) -> None:
        """New limits for every client; the buckets start full again."""
        self.qps = qps
        self.burst = float(max(burst, 1))
        self._buckets.clear()
