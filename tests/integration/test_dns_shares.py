"""What one client can take of the pending table (misses.py, ratelimit.Budgets): a client
waiting for a question another client asked holds a place in its own share like a question
of its own; the waits of all clients together are bounded by `forward.max_pending`; an IPv6
client is its /64 for every budget, as for the TCP limits and the holds.

Other clients are other loopback addresses (127.0.0.2 and up: all of 127/8 is local).
"""

from __future__ import annotations

import asyncio

import pytest

from resolver.dns import wire
from resolver.dns.exchange import Reply
from resolver.dns.misses import Misses
from resolver.dns.query import Query
from resolver.dns.ratelimit import WAITS_PER_QUESTION
from tests.integration.conftest import DnsEnv, RecordingHook, StubMatcher, query_bytes

pytestmark = pytest.mark.integration

NOERROR, SERVFAIL = 0, 2


def outcome(reply: bytes | None) -> str:
    assert reply is not None, "no reply"
    if reply[2] & 0x02:
        return "tc"
    return {NOERROR: "answer", SERVFAIL: "servfail"}[reply[3] & 0x0F]


async def test_waits_for_a_question_in_flight_count_against_the_clients_share() -> None:
    # max_pending 8, share 0.5: a client holds 4 places, its own questions and waits together.
    budgets = {"qps": 1000.0, "burst": 1000, "share": 0.5}
    async with DnsEnv(forward={"max_pending": 8, "timeout": 2.0}, ratelimit=budgets) as env:
        env.fake.delay = 0.3
        flood = [
            env.udp(query_bytes("n1.example.test"), source="127.0.0.2", timeout=2.0)
            for _ in range(6)
        ]
        other = env.udp(query_bytes("n1.example.test"), source="127.0.0.3", timeout=2.0)
        results = await asyncio.gather(*flood, other)
        assert sorted(outcome(r) for r in results[:6]) == ["answer"] * 4 + ["tc"] * 2
        assert outcome(results[6]) == "answer"  # another client: its own share
        assert len(env.fake.received) == 1  # one upstream query for all of them
        assert env.counters["ratelimited"] == 2
        assert env.srv.handler.misses.budgets.in_flight == {}  # every place given back
        assert env.srv.handler.misses.coalesced == 0


async def test_the_waits_of_all_clients_are_bounded_by_max_pending() -> None:
    async with DnsEnv(forward={"max_pending": 4, "timeout": 2.0}) as env:  # no budgets
        env.fake.delay = 0.3
        asks = [
            env.udp(query_bytes("n1.example.test"), source=f"127.0.0.{i}", timeout=2.0)
            for i in range(2, 9)
        ]
        results = await asyncio.gather(*asks)
        # The first asks, four wait, the other two get SERVFAIL at once.
        assert sorted(outcome(r) for r in results) == ["answer"] * 5 + ["servfail"] * 2
        assert env.counters["pending_full"] == 2
        assert (await env.ask("n2.example.test")).rr  # room again
        assert env.srv.handler.misses.coalesced == 0


class Silent:
    """A transport whose upstream never answers (the questions stay in flight)."""

    def udp(self, *args: object) -> Silent:
        return self

    async def tcp(self, *args: object) -> Reply | None:
        raise AssertionError("no TCP here")

    def cancel(self) -> None:
        pass

    def close(self) -> None:
        pass


class Sink:
    tcp = False

    def send(self, data: bytes, addr: object) -> None:
        pass


def query(misses: Misses, name: str, host: str) -> bytes | None:
    data = query_bytes(name)
    qend, _qtype, flags, limit = wire.parse_query(data)
    q = Query(data, (host, 5353, 0, 0), Sink(), qend, flags, limit)
    return misses.miss(wire.question_key(data, qend, flags), q)


async def test_two_addresses_of_one_ipv6_64_share_one_budget() -> None:
    budgets = {"qps": 100_000.0, "burst": 100_000, "share": 0.25}
    async with DnsEnv(forward={"max_pending": 8}, ratelimit=budgets) as env:
        misses = env.srv.handler.misses
        misses.forwarder.default.transport = Silent()
        a, b, other = "2001:db8:1:2::a", "2001:db8:1:2:ffff::b", "2001:db8:1:3::a"
        assert [query(misses, f"a{i}.example.test", a) for i in range(2)] == [b"", b""]
        refused = query(misses, "b0.example.test", b)  # the same /64: its share is used
        assert outcome(refused) == "tc"
        assert query(misses, "c0.example.test", other) == b""  # another /64: its own
        assert misses.budgets.in_flight == {
            bytes.fromhex("20010db800010002"): 2,
            bytes.fromhex("20010db800010003"): 1,
        }
        await misses.drain(0.0)


@pytest.mark.parametrize("budgets_on", [True, False], ids=["budgets", "qps-0"])
async def test_one_client_holds_at_most_its_share_of_a_questions_waiting_places(
    budgets_on: bool,
) -> None:
    """A question in flight takes MAX_WAITERS waiting clients; one client (the shipped
    budgets) may hold WAITS_PER_QUESTION of them, its own ask included, so that it cannot fill
    them and leave every other client asking that name a SERVFAIL. With the budgets off (qps
    0), no share."""
    shipped = {"qps": 20_000.0, "burst": 40_000, "share": 0.5}  # README's defaults
    async with DnsEnv(ratelimit=shipped if budgets_on else {"qps": 0}) as env:
        misses = env.srv.handler.misses
        misses.forwarder.default.transport = Silent()
        flood, other, third = "192.0.2.7", "192.0.2.8", "192.0.2.9"
        assert query(misses, "n1.example.test", other) == b""  # asks upstream
        waits = [query(misses, "n1.example.test", flood) for _ in range(WAITS_PER_QUESTION + 9)]
        mine = [query(misses, "n1.example.test", other) for _ in range(WAITS_PER_QUESTION)]
        if budgets_on:
            assert waits[:WAITS_PER_QUESTION] == [b""] * WAITS_PER_QUESTION
            assert [outcome(r) for r in waits[WAITS_PER_QUESTION:]] == ["tc"] * 9
            # The asker's own ask is one of its places: 31 more waits, then over.
            assert mine[: WAITS_PER_QUESTION - 1] == [b""] * (WAITS_PER_QUESTION - 1)
            assert outcome(mine[-1]) == "tc"
            assert env.counters["ratelimited"] == 10
        else:
            assert waits + mine == [b""] * (2 * WAITS_PER_QUESTION + 9)
        assert query(misses, "n2.example.test", flood) == b""  # another question: its own
        assert query(misses, "n1.example.test", third) == b""  # another client: its own
        await misses.drain(0.0)
        assert misses.waits == {} and misses.coalesced == 0
        assert misses.budgets.in_flight == {}


async def test_cached_answers_waiting_for_the_kernel_count_against_the_clients_share() -> None:
    """A cached Microsoft 365 answer whose routes are not in yet waits for them: a place in the
    pending table. One client flooding such hits holds at most its share (max_pending 8 x 0.5),
    and another client's hit of the same answer still waits for its routes and is answered."""
    budgets = {"qps": 1000.0, "burst": 1000, "share": 0.5}
    hook = RecordingHook(delay=0.3)  # every answer's routes take 0.3 s to go in
    matcher = StubMatcher({"www.example.test": 4})
    async with DnsEnv(
        hook=hook, matcher=matcher, forward={"max_pending": 8, "timeout": 2.0}, ratelimit=budgets
    ) as env:
        first = await env.udp(query_bytes("www.example.test"), timeout=2.0)
        assert outcome(first) == "answer" and len(env.fake.received) == 1  # cached now
        flood = [
            env.udp(query_bytes("www.example.test"), source="127.0.0.2", timeout=2.0)
            for _ in range(10)
        ]
        await asyncio.sleep(0.05)  # the flood's hits are waiting
        other = env.udp(query_bytes("www.example.test"), source="127.0.0.3", timeout=2.0)
        results = await asyncio.gather(*flood, other)
        assert sorted(outcome(r) for r in results[:10]) == ["answer"] * 4 + ["tc"] * 6
        assert outcome(results[10]) == "answer"  # another client: its own share
        assert len(env.fake.received) == 1  # all from the cache
        assert env.counters["ratelimited"] == 6 and env.counters["pending_full"] == 0
        assert env.counters["tagged"] == 6  # the answers sent tagged, not the ones refused
        assert env.srv.handler.misses.budgets.in_flight == {}  # every place given back
        assert env.srv.handler.misses.waiting == 0
