"""Forwarding: fresh ids and ports, reply acceptance, TC -> TCP, failover, health, coalescing."""

from __future__ import annotations

import asyncio

import pytest

from resolver.dns import sockets
from tests.integration.conftest import DnsEnv, rcode

pytestmark = pytest.mark.integration

SERVFAIL, NXDOMAIN, REFUSED = 2, 3, 5


async def test_random_ids_and_ports_each_port_bounded() -> None:
    """Sockets are shared by a few queries (sockets.py); the spread over thousands of queries
    is in test_upstream_sockets.py."""
    async with DnsEnv() as env:
        for i in range(40):
            assert (await env.ask(f"n{i}.example.test")).rr
        got = env.fake.received
        assert len(got) == 40
        assert len({r.qid for r in got}) >= 38  # 16 random bits: a collision or two at most
        by_port: dict[int, list[int]] = {}
        for r in got:
            by_port.setdefault(r.source[1], []).append(r.qid)
        assert len(by_port) >= -(-40 // sockets.MAX_QUERIES)
        assert max(len(ids) for ids in by_port.values()) <= sockets.MAX_QUERIES
        assert all(len(set(ids)) == len(ids) for ids in by_port.values())  # unique per socket
        assert all(r.transport == "udp" and r.rd for r in got)
        assert all(r.qname == r.qname.lower() for r in got)


@pytest.mark.parametrize(
    ("mode", "counter"),
    [
        ("wrong_id", "dropped"),
        ("wrong_source", None),  # the kernel drops it: the socket is connected
        ("garbage", "dropped"),
        ("mismatch", "dropped"),
        ("no_qr", "dropped"),
        ("loop", "malformed"),
    ],
)
async def test_bad_reply_is_dropped_and_waiting_continues(mode: str, counter: str | None) -> None:
    async with DnsEnv() as env:
        env.fake.mode, env.fake.spoof_first = mode, True  # the bad reply, then the good one
        reply = await env.ask("www.example.test")
        assert [str(r.rdata) for r in reply.rr] == ["192.0.2.10"]
        stats = env.srv.upstream_stats()[0]
        if counter is None:
            assert stats["dropped"] == stats["malformed"] == 0
        else:
            assert stats[counter] == 1
        assert stats["answers"] == 1


@pytest.mark.parametrize("mode", ["wrong_id", "wrong_source", "garbage", "mismatch", "loop"])
async def test_only_bad_replies_mean_servfail(mode: str) -> None:
    async with DnsEnv() as env:
        env.fake.mode = mode
        reply = await env.ask("www.example.test")
        assert rcode(reply) == SERVFAIL
        assert env.counters["servfail"] == 1
        env.fake.mode = "normal"
        assert (await env.ask("www.example.test")).rr  # SERVFAIL was not cached


async def test_truncated_answer_is_fetched_again_over_tcp() -> None:
    async with DnsEnv() as env:
        env.fake.mode = "tc"
        reply = await env.ask("www.example.test", tcp=False)
        assert [str(r.rdata) for r in reply.rr] == ["192.0.2.10"]
        assert [r.transport for r in env.fake.received] == ["udp", "tcp"]
        udp, tcp = env.fake.received
        assert udp.qid != tcp.qid
        assert env.srv.upstream_stats()[0]["tcp"] == 1


async def test_timeout_moves_to_next_upstream() -> None:
    async with DnsEnv(upstreams=2) as env:
        first, second = env.fakes
        first.mode = "timeout"
        reply = await env.ask("www.example.test")
        assert [str(r.rdata) for r in reply.rr] == ["192.0.2.10"]
        assert len(first.received) == 1 and len(second.received) == 1
        stats = env.srv.upstream_stats()
        assert stats[0]["timeouts"] == 1 and stats[1]["answers"] == 1


async def test_all_upstreams_time_out_gives_servfail_never_nxdomain() -> None:
    async with DnsEnv(upstreams=2) as env:
        for fake in env.fakes:
            fake.mode = "timeout"
        started = asyncio.get_running_loop().time()
        reply = await env.ask("www.example.test")
        assert rcode(reply) == SERVFAIL
        assert rcode(reply) != NXDOMAIN
        assert asyncio.get_running_loop().time() - started < 1.5  # 2 x 0.25 s
        assert env.srv.status()["queries"]["servfail"] == 1


async def test_refused_and_servfail_upstreams_are_skipped() -> None:
    for mode in ("refused", "servfail"):
        async with DnsEnv(upstreams=2) as env:
            env.fakes[0].mode = mode
            reply = await env.ask("www.example.test")
            assert [str(r.rdata) for r in reply.rr] == ["192.0.2.10"]
            assert len(env.fakes[1].received) == 1
    async with DnsEnv() as env:
        env.fake.mode = "refused"
        assert rcode(await env.ask("www.example.test")) == SERVFAIL


async def test_upstreams_ordered_by_health() -> None:
    async with DnsEnv(upstreams=2) as env:
        slow, fast = env.fakes
        slow.delay = 0.08
        for i in range(6):
            await env.ask(f"n{i}.example.test")
        # the first query went to the first upstream; then the faster one is preferred
        assert len(fast.received) >= 4
        up = env.srv.status()["upstreams"]
        rtt_first, rtt_second = up[0]["rtt_ms"], up[1]["rtt_ms"]
        assert rtt_first is not None and rtt_second is not None and rtt_first > rtt_second
        assert all(u["healthy"] for u in up)


async def test_dead_upstream_is_skipped_then_probed_back() -> None:
    async with DnsEnv(upstreams=2, probe_interval=0.2) as env:
        bad, good = env.fakes
        bad.mode = "timeout"
        assert (await env.ask("n0.example.test")).rr  # bad fails once, good answers
        good.mode = "timeout"  # now both fail: the less failed one is tried first each time
        for i in (1, 2):
            assert rcode(await env.ask(f"n{i}.example.test")) == SERVFAIL
        good.mode = "normal"
        assert env.srv.upstream_stats()[0]["failures"] == 3  # 3 in a row: dead
        assert env.srv.status()["upstreams"][0]["healthy"] is False
        before = len(bad.received)
        for i in range(3, 6):
            assert (await env.ask(f"n{i}.example.test")).rr
        assert len(bad.received) == before  # skipped (probes go out only every 0.2 s)
        assert env.srv.status()["upstreams"][0]["healthy"] is False
        bad.mode = "normal"
        for _ in range(30):
            await asyncio.sleep(0.05)
            if env.srv.status()["upstreams"][0]["healthy"]:
                break
        assert env.srv.status()["upstreams"][0]["healthy"] is True
        probes = [r for r in bad.received if r.qname == "" and r.qtype == "NS"]
        assert probes, "the dead upstream was probed with '. NS'"


async def test_identical_questions_in_flight_are_coalesced() -> None:
    async with DnsEnv() as env:
        env.fake.delay = 0.15
        replies = await asyncio.gather(
            *(env.ask("www.example.test") for _ in range(5)),
            env.ask("WWW.example.TEST"),
        )
        assert all(r.rr for r in replies)
        assert len(env.fake.received) == 1
        assert str(replies[-1].q.qname) == "WWW.example.TEST."
        assert env.counters["misses"] == 6 and env.counters["noerror"] == 6


async def test_upstream_query_uses_edns_1232_always() -> None:
    async with DnsEnv() as env:
        await env.ask("www.example.test")  # client without EDNS
        await env.ask("n1.example.test", edns=4096)
        assert len(env.fake.received) == 2
        assert all(r.edns and r.udp_size == 1232 for r in env.fake.received)


async def test_ipv6_upstream_with_source_check() -> None:
    async with DnsEnv(upstream_host="::1") as env:
        env.fake.mode, env.fake.spoof_first = "wrong_source", True
        reply = await env.ask("www.example.test")
        assert [str(r.rdata) for r in reply.rr] == ["192.0.2.10"]
        stats = env.srv.upstream_stats()[0]
        assert stats["address"] == env.fake.text and env.fake.text.startswith("[::1]:")
        # The spoofed reply never reached us: the kernel drops it for the connected socket.
        assert stats["dropped"] == 0 and stats["answers"] == 1
        env.fake.mode = "tc"
        assert len((await env.ask("big.example.test", "TXT", tcp=True)).rr) == 30
        assert env.fake.received[-1].transport == "tcp"
