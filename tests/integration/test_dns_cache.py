"""The cache through the server: countdown, negative caching, LRU bound, letter case."""

from __future__ import annotations

import asyncio
import logging

import pytest
from dnslib import QTYPE, DNSRecord

from tests.integration.conftest import DnsEnv, FakeClock, query_bytes, rcode

pytestmark = pytest.mark.integration

NXDOMAIN, SERVFAIL = 3, 2


async def test_positive_answer_cached_with_ttl_counting_down() -> None:
    clock = FakeClock()
    async with DnsEnv(clock=clock) as env:
        first = await env.ask("two.example.test")
        assert sorted(r.ttl for r in first.rr) == [40, 100]
        clock.advance(10.4)
        second = await env.ask("two.example.test")
        assert sorted(r.ttl for r in second.rr) == [30, 90]
        clock.advance(0.5)  # same whole second of age: same TTLs
        assert sorted(r.ttl for r in (await env.ask("two.example.test")).rr) == [30, 90]
        assert len(env.fake.received) == 1
        # 66 bytes: header 12, question 22, two A records of 16 (owner compressed).
        assert env.srv.status()["cache"] == {
            "entries": 1, "hits": 2, "misses": 1, "evicted": 0, "bytes": 66, "client_evicted": 0,
        }  # fmt: skip
        clock.advance(30)  # the smallest TTL (40) has run out: asked again
        third = await env.ask("two.example.test")
        assert sorted(r.ttl for r in third.rr) == [40, 100]
        assert len(env.fake.received) == 2


async def test_positive_ttl_is_capped_at_max_ttl() -> None:
    clock = FakeClock()
    async with DnsEnv(clock=clock, cache={"max_ttl": 300}) as env:
        assert [r.ttl for r in (await env.ask("long.example.test")).rr] == [300]
        clock.advance(299)
        assert [r.ttl for r in (await env.ask("long.example.test")).rr] == [1]
        clock.advance(1)
        await env.ask("long.example.test")
        assert len(env.fake.received) == 2


async def test_nxdomain_cached_for_soa_negative_ttl() -> None:
    clock = FakeClock()
    async with DnsEnv(clock=clock) as env:
        reply = await env.ask("nope.example.test")
        assert rcode(reply) == NXDOMAIN
        assert [r.rtype for r in reply.auth] == [QTYPE.SOA]
        assert reply.auth[0].ttl == 30  # the fake's negative TTL
        clock.advance(20)
        again = await env.ask("nope.example.test")
        assert rcode(again) == NXDOMAIN and again.auth[0].ttl == 10
        assert len(env.fake.received) == 1
        clock.advance(10)
        await env.ask("nope.example.test")
        assert len(env.fake.received) == 2
        assert env.counters["nxdomain"] == 3


async def test_nodata_cached_and_capped_by_max_negative_ttl() -> None:
    clock = FakeClock()
    async with DnsEnv(clock=clock, cache={"max_negative_ttl": 5}) as env:
        reply = await env.ask("www.example.test", "TXT")  # the name exists, no TXT
        assert rcode(reply) == 0 and not reply.rr and reply.auth[0].ttl == 5
        clock.advance(4)
        assert (await env.ask("www.example.test", "TXT")).auth[0].ttl == 1
        assert len(env.fake.received) == 1
        clock.advance(1)
        await env.ask("www.example.test", "TXT")
        assert len(env.fake.received) == 2


async def test_servfail_and_ttl_zero_are_not_cached() -> None:
    async with DnsEnv() as env:
        env.fake.mode = "servfail"
        assert rcode(await env.ask("www.example.test")) == SERVFAIL
        env.fake.mode = "normal"
        assert (await env.ask("www.example.test")).rr
        for _ in range(2):
            reply = await env.ask("zero.example.test")
            assert [r.ttl for r in reply.rr] == [0]
        zero_queries = [r for r in env.fake.received if r.qname == "zero.example.test"]
        assert len(zero_queries) == 2
        assert len(env.srv.handler.cache) == 1


async def test_lru_bound() -> None:
    async with DnsEnv(cache={"max_entries": 3, "client_share": 1}) as env:  # one client
        for i in range(3):
            await env.ask(f"n{i}.example.test")
        await env.ask("n0.example.test")  # n0 is now the most recently used
        await env.ask("n3.example.test")  # evicts n1, the least recently used
        assert len(env.srv.handler.cache) == 3
        before = len(env.fake.received)
        await env.ask("n0.example.test")
        await env.ask("n2.example.test")
        assert len(env.fake.received) == before
        await env.ask("n1.example.test")
        assert len(env.fake.received) == before + 1
        assert len(env.srv.handler.cache) == 3


async def test_client_letter_case_echoed_on_miss_and_hit() -> None:
    async with DnsEnv() as env:
        for name in ("wWw.ExAmPlE.tEsT", "WWW.EXAMPLE.TEST", "www.example.test"):
            reply = await env.ask(name)
            assert str(reply.q.qname) == name + "."
            assert [str(r.rdata) for r in reply.rr] == ["192.0.2.10"]
        assert len(env.fake.received) == 1


async def test_rd_bit_echoed_from_the_client() -> None:
    async with DnsEnv() as env:
        assert (await env.ask("www.example.test", rd=False)).header.rd == 0
        assert (await env.ask("www.example.test", rd=True)).header.rd == 1
        assert (await env.ask("www.example.test", rd=False)).header.rd == 0


async def test_hit_reply_is_byte_identical_apart_from_id() -> None:
    async with DnsEnv() as env:
        data = query_bytes("alias.example.test", edns=1232)
        first = await env.udp(data)
        second = await env.udp(data)
        assert first is not None and second is not None
        assert first[2:] == second[2:]
        assert first[:2] == second[:2] == data[:2]


async def test_cname_chain_ending_in_no_data_is_kept_for_the_negative_ttl() -> None:
    """RFC 2308: CNAMEs (TTL 300, 120) to a name without AAAA, SOA negative TTL 30: kept 30 s."""
    clock = FakeClock()
    async with DnsEnv(clock=clock) as env:
        reply = await env.ask("alias.example.test", "AAAA")
        assert rcode(reply) == 0 and [r.rtype for r in reply.rr] == [QTYPE.CNAME] * 2
        assert max(r.ttl for r in reply.rr) <= 30 and reply.auth[0].ttl == 30
        clock.advance(29)
        await env.ask("alias.example.test", "AAAA")
        assert len(env.fake.received) == 1
        clock.advance(1)
        await env.ask("alias.example.test", "AAAA")
        assert len(env.fake.received) == 2


async def test_memo_ttl_steps_at_whole_seconds_and_stops_at_expiry() -> None:
    """Repeat hits come from the memo: the TTL counts down at whole seconds of the entry's
    age, and the memo never outlives the entry (asked again at 60 s)."""
    clock = FakeClock()
    async with DnsEnv(clock=clock) as env:
        data = query_bytes("www.example.test")
        seen = []
        for step in (0, 0.5, 0.25, 0.25, 0.75, 57.0, 1.0, 0.5):
            clock.advance(step)
            raw = await env.udp(data)
            assert raw is not None
            seen.append(DNSRecord.parse(raw).rr[0].ttl)
        assert seen == [60, 60, 60, 59, 59, 2, 1, 60]
        assert len(env.fake.received) == 2


async def test_coalesced_waiters_get_their_own_id_and_case() -> None:
    async with DnsEnv() as env:
        env.fake.delay = 0.2
        names = ("WWW.example.TEST", "www.EXAMPLE.test", "wWw.ExAmPlE.tEsT")
        queries = [query_bytes(name) for name in names]
        raws = await asyncio.gather(*(env.udp(q) for q in queries))
        assert len(env.fake.received) == 1
        for query, raw in zip(queries, raws, strict=True):
            assert raw is not None
            assert raw[:2] == query[:2] and raw[12 : len(query)] == query[12:]


async def test_root_name_query() -> None:
    async with DnsEnv() as env:
        assert rcode(await env.ask(".", "NS")) in (0, NXDOMAIN)
        assert rcode(await env.ask(".", "NS")) in (0, NXDOMAIN)
        assert env.fake.received[0].qname == ""
        assert len(env.fake.received) == 1  # the second came from the cache


async def test_one_client_asking_new_names_cycles_its_own_share_of_the_cache(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """cache.client_share: a client that asks for ever new names evicts its own oldest answers,
    and another client's answer stays cached (127.0.0.2 and .3 are two clients). The operator
    is told once, with the setting a branch's own DNS server (one client for all) needs."""
    caplog.set_level(logging.WARNING, logger="resolver.dns.handler")
    async with DnsEnv(cache={"max_entries": 8, "client_share": 0.25}) as env:
        assert (await env.udp(query_bytes("theirs.example.test"), source="127.0.0.3")) is not None
        for i in range(20):
            reply = await env.udp(query_bytes(f"f{i}.example.test"), source="127.0.0.2")
            assert reply is not None  # NXDOMAIN with an SOA: cached too
        asked = len(env.fake.received)
        assert (await env.udp(query_bytes("theirs.example.test"), source="127.0.0.3")) is not None
        assert (await env.udp(query_bytes("f19.example.test"), source="127.0.0.2")) is not None
        assert len(env.fake.received) == asked  # both from the cache
        await env.udp(query_bytes("f0.example.test"), source="127.0.0.2")
        assert len(env.fake.received) == asked + 1  # f0 went long ago: its share is f18, f19
        cache = env.srv.status()["cache"]
        assert cache["entries"] == 3 and cache["client_evicted"] == 19 and cache["evicted"] == 0
        said = [r.getMessage() for r in caplog.records if "share of the cache" in r.getMessage()]
        assert said == [
            "client 127.0.0.2 holds its share of the cache (cache.client_share: 2 answers or "
            "2464 bytes, of 8 and 9856): its new answers evict its own oldest "
            "(cache.client_evicted; said once until a reload or a policy update). If it is a DNS "
            "server asking for the branch, set cache.client_share: 1"
        ]
        env.srv.reconfigure(env.config, env.matcher)  # a reload: said again when it happens
        await env.udp(query_bytes("f20.example.test"), source="127.0.0.2")
        assert sum("share of the cache" in r.getMessage() for r in caplog.records) == 2
