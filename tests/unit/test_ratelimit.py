"""resolver.dns.ratelimit: token buckets per client, bounded table."""

from __future__ import annotations

import pytest

from resolver.dns.ratelimit import RateLimiter

pytestmark = pytest.mark.unit


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_burst_then_refill() -> None:
    clock = Clock()
    limiter = RateLimiter(qps=2.0, burst=3, clock=clock)
    assert [limiter.allow("a") for _ in range(5)] == [True, True, True, False, False]
    assert limiter.allow("b")  # per client
    clock.now = 0.5  # one token back
    assert limiter.allow("a") and not limiter.allow("a")
    clock.now = 100.0  # never more than the burst
    assert [limiter.allow("a") for _ in range(4)] == [True, True, True, False]


def test_zero_qps_is_off() -> None:
    limiter = RateLimiter(qps=0.0, burst=1)
    assert not limiter.enabled
    assert all(limiter.allow("a") for _ in range(1000))
    assert len(limiter) == 0


def test_table_is_bounded() -> None:
    clock = Clock()
    limiter = RateLimiter(qps=1.0, burst=1, max_clients=100, clock=clock)
    for i in range(1000):
        limiter.allow(f"10.0.{i // 256}.{i % 256}")
    assert len(limiter) == 100


def test_configure_resets() -> None:
    limiter = RateLimiter(qps=1.0, burst=1, clock=Clock())
    assert limiter.allow("a") and not limiter.allow("a")
    limiter.configure(qps=10.0, burst=5)
    assert all(limiter.allow("a") for _ in range(5)) and not limiter.allow("a")
