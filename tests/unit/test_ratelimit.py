"""resolver.dns.ratelimit: token buckets per client, a bounded table, the budgets on costs."""

from __future__ import annotations

import pytest

from resolver.dns.ratelimit import Budgets, TokenBucket

pytestmark = pytest.mark.unit


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_burst_then_refill() -> None:
    clock = Clock()
    bucket = TokenBucket(rate=2.0, burst=3, clock=clock)
    assert [bucket.take(b"a") for _ in range(5)] == [True, True, True, False, False]
    assert bucket.take(b"b")  # per client
    clock.now = 0.5  # one token back
    assert bucket.take(b"a") and not bucket.take(b"a")
    clock.now = 100.0  # never more than the burst
    assert [bucket.take(b"a") for _ in range(4)] == [True, True, True, False]


def test_zero_rate_is_off() -> None:
    bucket = TokenBucket(rate=0.0, burst=1)
    assert all(bucket.take(b"a") for _ in range(1000))
    assert len(bucket) == 0


def test_table_is_bounded() -> None:
    clock = Clock()
    bucket = TokenBucket(rate=1.0, burst=1, max_clients=100, clock=clock)
    for i in range(1000):
        bucket.take(bytes((10, 0, i // 256, i % 256)))
    assert len(bucket) == 100


def test_a_charge_of_several_tokens() -> None:
    bucket = TokenBucket(rate=1.0, burst=4, clock=Clock())
    assert bucket.take(b"a", 3) and not bucket.take(b"a", 2) and bucket.take(b"a", 1)


def test_budgets_limit_queries_in_flight_per_client() -> None:
    budgets = Budgets(qps=1000, burst=1000, share=0.5, routes=10, max_pending=8, clock=Clock())
    assert [budgets.take_query(b"a") for _ in range(5)] == [True] * 4 + [False]
    assert budgets.take_query(b"b")  # another client has its own share
    budgets.done_query(b"a")
    assert budgets.take_query(b"a") and not budgets.take_query(b"a")


def test_budgets_limit_the_upstream_query_rate_and_new_routes() -> None:
    clock = Clock()
    budgets = Budgets(qps=2, burst=2, share=1.0, routes=3, max_pending=100, clock=clock)
    assert [budgets.take_query(b"a") for _ in range(3)] == [True, True, False]
    assert budgets.take_routes(b"a", 6) and not budgets.take_routes(b"a", 1)
    clock.now = 1.0
    assert budgets.take_query(b"a") and budgets.take_routes(b"a", 3)


def test_qps_zero_turns_every_budget_off() -> None:
    budgets = Budgets(qps=0, burst=1, share=0.01, routes=1, max_pending=1, clock=Clock())
    assert all(budgets.take_query(b"a") for _ in range(100))
    assert all(budgets.take_routes(b"a", 100) for _ in range(100))
    for _ in range(100):
        budgets.done_query(b"a")
    assert budgets.in_flight == {}


def test_waits_for_questions_in_flight_count_against_the_share_but_spend_no_tokens() -> None:
    budgets = Budgets(qps=1, burst=1, share=0.5, routes=10, max_pending=8, clock=Clock())
    assert budgets.take_query(b"a") and not budgets.take_query(b"a")  # the token is spent
    assert [budgets.take_wait(b"a") for _ in range(4)] == [True, True, True, False]
    assert budgets.take_wait(b"b")  # another client has its own share
    budgets.done_query(b"a")
    assert budgets.take_wait(b"a") and not budgets.take_wait(b"a")
    off = Budgets(qps=0, burst=1, share=0.01, routes=1, max_pending=1, clock=Clock())
    assert all(off.take_wait(b"a") for _ in range(100))
