"""DnsServer's lifecycle and reporting: status, reconfigure, stop with draining."""

from __future__ import annotations

import asyncio
import dataclasses
import logging

import pytest

from resolver.config import CacheConfig, RateLimitConfig
from tests.fakeupstream import FakeUpstream
from tests.integration.conftest import ZONE, DnsEnv, StubMatcher, query_bytes, rcode

pytestmark = pytest.mark.integration


async def test_status_has_the_contract_keys() -> None:
    async with DnsEnv(matcher=StubMatcher({"www.example.test": 1})) as env:
        await env.ask("www.example.test")
        await env.ask("www.example.test")
        status = env.srv.status()
        assert set(status) == {
            "listen", "upstreams", "cache", "queries", "forwarding", "udp", "tcp",
        }  # fmt: skip
        assert status["listen"] == [
            f"127.0.0.1:{env.address()[1]}",
            f"[::1]:{env.address(v6=True)[1]}",
        ]
        [up] = status["upstreams"]
        assert set(up) == {"address", "healthy", "rtt_ms", "role"} and up["role"] == "default"
        assert up["address"] == env.fake.text and up["healthy"] is True
        assert isinstance(up["rtt_ms"], float)
        # 50 bytes: header 12, question 22, one A record of 16 (owner compressed).
        assert status["cache"] == {
            "entries": 1, "hits": 1, "misses": 1, "evicted": 0, "bytes": 50, "client_evicted": 0,
        }  # fmt: skip
        assert status["udp"] == {"send_dropped": 0, "errors": 0}
        q = status["queries"]
        assert {"total", "tagged", "refused", "servfail"} <= set(q)
        assert q["total"] == 2 and q["tagged"] == 2 and q["noerror"] == 2
        for key in ("dropped", "ratelimited", "pending_full", "formerr", "notimp", "nxdomain"):
            assert q[key] == 0
        stats = env.srv.upstream_stats()[0]
        assert stats["queries"] == 1 and stats["answers"] == 1
        assert env.srv.tcp_stats()["connections"] == 0


async def test_reconfigure_swaps_upstreams_acl_ratelimit_and_cache_size(
    caplog: pytest.LogCaptureFixture,
) -> None:
    async with DnsEnv() as env:
        other = await FakeUpstream(ZONE).start()
        try:
            for i in range(4):
                await env.ask(f"n{i}.example.test")
            new = dataclasses.replace(
                env.config,
                upstreams=(other.address,),
                cache=CacheConfig(max_entries=2, client_share=1),  # one client
                listen=(("127.0.0.1", 5353),),
            )
            with caplog.at_level(logging.WARNING):
                env.srv.reconfigure(new, env.matcher)
            assert "restart" in caplog.text
            assert len(env.srv.handler.cache) == 2
            await env.ask("n9.example.test")
            assert len(other.received) == 1 and len(env.fake.received) == 4
            assert [u["address"] for u in env.srv.status()["upstreams"]] == [other.text]
            env.srv.reconfigure(dataclasses.replace(new, allow=("10.0.0.0/8",)), env.matcher)
            assert rcode(await env.ask("n9.example.test")) == 5
            limited = dataclasses.replace(new, ratelimit=RateLimitConfig(qps=0.5, burst=1))
            env.srv.reconfigure(limited, env.matcher)
            assert (await env.ask("n8.example.test")).rr
            assert (await env.ask("n7.example.test")).header.tc == 1  # over the budget
            assert env.counters["ratelimited"] == 1
        finally:
            await other.stop()


async def test_stop_drains_queries_in_flight() -> None:
    async with DnsEnv() as env:
        env.fake.delay = 0.15
        pending = asyncio.ensure_future(env.udp(query_bytes("www.example.test"), timeout=1.0))
        await asyncio.sleep(0.05)
        await env.srv.stop(drain_timeout=1.0)
        raw = await pending
        assert raw is not None and raw[3] & 0x0F == 0  # answered during the drain
        assert env.srv.handler.misses.resolving == 0
        env.server = None  # already stopped


async def test_stop_cancels_what_outlives_the_drain() -> None:
    async with DnsEnv(forward={"timeout": 2.0}) as env:
        env.fake.mode = "timeout"
        pending = asyncio.ensure_future(env.udp(query_bytes("www.example.test"), timeout=0.6))
        await asyncio.sleep(0.05)
        started = asyncio.get_running_loop().time()
        await env.srv.stop(drain_timeout=0.1)
        assert asyncio.get_running_loop().time() - started < 1.0
        assert await pending is None
        assert env.srv.handler.misses.resolving == 0 and env.srv.handler.misses.pending == {}
        env.server = None


async def test_stopped_server_releases_its_ports() -> None:
    async with DnsEnv() as env:
        port = env.address()[1]
        await env.srv.stop(0.1)
        env.server = None
        other = await FakeUpstream({}, port=port).start()  # UDP and TCP free again
        await other.stop()
