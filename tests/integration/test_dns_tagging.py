"""Tagging along the CNAME chain, the breakout hook before the reply, hits, re-tagging."""

from __future__ import annotations

import asyncio
import time

import pytest

from resolver.hooks import Epoch, address_texts
from tests.integration.conftest import DnsEnv, FakeClock, RecordingHook, StubMatcher

pytestmark = pytest.mark.integration


async def test_cname_target_on_the_chain_is_tagged_with_chain_addresses() -> None:
    hook = RecordingHook()
    matcher = StubMatcher({"edge.cdn.test": 7})
    async with DnsEnv(hook=hook, matcher=matcher) as env:
        reply = await env.ask("Alias.Example.test")
        assert [str(r.rdata) for r in reply.rr][-1] == "198.51.100.7"
        assert len(hook.calls) == 1
        tagged, ttl = hook.calls[0]
        assert tagged.qname == "alias.example.test"
        assert tagged.via == "edge.cdn.test"
        assert tagged.match.rule.row == 7
        assert address_texts(tagged.addresses) == ["198.51.100.7"]
        assert ttl == 30  # the address record's TTL, not the CNAMEs'
        assert env.counters["tagged"] == 1
        assert env.srv.tagged_by_row == {7: 1}


async def test_unrelated_records_are_ignored() -> None:
    hook = RecordingHook()
    matcher = StubMatcher({"www.example.test": 3, "evil.example.test": 9})
    async with DnsEnv(hook=hook, matcher=matcher) as env:
        env.fake.set_extra(
            answer={"evil.example.test": [{"type": "A", "value": "203.0.113.250", "ttl": 5}]},
            additional={"www.example.test": [{"type": "AAAA", "value": "2001:db8::bad", "ttl": 5}]},
        )
        reply = await env.ask("www.example.test")
        assert len(reply.rr) == 2  # the unrelated record reached the client untouched
        tagged, ttl = hook.calls[0]
        assert tagged.via == "www.example.test" and tagged.match.rule.row == 3
        assert address_texts(tagged.addresses) == ["192.0.2.10"]
        assert ttl == 60
        hook.calls.clear()
        await env.ask("n7.example.test")  # answer contains evil.example.test, chain does not
        assert hook.calls == []


async def test_cname_loop_in_answer_is_safe() -> None:
    hook = RecordingHook()
    async with DnsEnv(hook=hook, matcher=StubMatcher({"loop2.example.test": 1})) as env:
        reply = await env.ask("loop1.example.test")
        assert len(reply.rr) == 2
        assert env.counters["tagged"] == 1
        assert hook.calls == []  # tagged, but no address to route


async def test_hook_is_awaited_before_the_reply_is_sent() -> None:
    hook = RecordingHook(delay=0.2)
    async with DnsEnv(hook=hook, matcher=StubMatcher({"www.example.test": 2})) as env:
        started = time.monotonic()
        reply = await env.ask("www.example.test")
        received = time.monotonic()
        assert reply.rr
        assert received - started >= 0.2
        assert hook.finished and hook.finished[0] <= received
        # a cache hit with a slow hook waits too
        started = time.monotonic()
        await env.ask("www.example.test")
        received = time.monotonic()
        assert received - started >= 0.2 and len(hook.finished) == 2
        assert hook.finished[1] <= received


async def test_hook_returning_none_means_an_immediate_reply() -> None:
    hook = RecordingHook(delay=0.0)
    async with DnsEnv(hook=hook, matcher=StubMatcher({"www.example.test": 2})) as env:
        await env.ask("www.example.test")
        started = time.monotonic()
        await env.ask("www.example.test")
        assert time.monotonic() - started < 0.1
        assert len(hook.calls) == 2


async def test_hook_called_on_cache_hits_with_remaining_ttl() -> None:
    clock = FakeClock()
    hook = RecordingHook()
    async with DnsEnv(hook=hook, matcher=StubMatcher({"two.example.test": 4}), clock=clock) as env:
        await env.ask("two.example.test")
        clock.advance(15)
        reply = await env.ask("two.example.test", edns=1232)
        assert sorted(r.ttl for r in reply.rr) == [25, 85]
        assert [ttl for _t, ttl in hook.calls] == [40, 25]  # the smallest address TTL left
        assert address_texts(hook.calls[1][0].addresses) == ["192.0.2.21", "192.0.2.22"]
        assert env.counters["tagged"] == 2 and env.srv.tagged_by_row == {4: 2}


async def test_coalesced_waiters_share_one_hook_call() -> None:
    hook = RecordingHook(delay=0.05)
    async with DnsEnv(hook=hook, matcher=StubMatcher({"www.example.test": 1})) as env:
        env.fake.delay = 0.1
        replies = await asyncio.gather(*(env.ask("www.example.test") for _ in range(4)))
        assert all(r.rr for r in replies)
        assert len(hook.calls) == 1
        assert env.counters["tagged"] == 4


async def test_reconfigure_retags_the_cache() -> None:
    hook = RecordingHook()
    async with DnsEnv(hook=hook) as env:
        await env.ask("alias.example.test")
        assert hook.calls == [] and env.counters["tagged"] == 0
        env.srv.reconfigure(env.config, StubMatcher({"node.cdn.test": 11}))
        await env.ask("alias.example.test")  # a hit: no new upstream query, tagged now
        assert len(env.fake.received) == 1
        assert [(t.via, t.match.rule.row) for t, _ttl in hook.calls] == [("node.cdn.test", 11)]
        env.srv.reconfigure(env.config, StubMatcher({}))
        await env.ask("alias.example.test")
        assert len(hook.calls) == 1


async def test_set_hook_swaps_the_hook() -> None:
    first, second = RecordingHook(), RecordingHook()
    async with DnsEnv(hook=first, matcher=StubMatcher({"www.example.test": 1})) as env:
        await env.ask("www.example.test")
        env.srv.set_hook(second)
        await env.ask("www.example.test")
        assert len(first.calls) == 1 and len(second.calls) == 1


async def test_failing_hook_still_answers() -> None:
    class Broken:
        epoch = Epoch()
        ready = False

        def on_answer(self, tagged: object, ttl: int, client: str, installed: object) -> None:
            raise RuntimeError("boom")

    async with DnsEnv(hook=Broken(), matcher=StubMatcher({"www.example.test": 1})) as env:
        assert (await env.ask("www.example.test")).rr
        assert (await env.ask("www.example.test")).rr
        assert env.counters["hook_errors"] == 2


async def test_a_tagged_answer_routes_its_first_64_addresses_and_counts_the_rest() -> None:
    """A 64 KB answer could carry 4,000 addresses and take a twelfth of the holds: the hook
    gets the first MAX_ADDRESSES distinct ones; the client gets the whole answer."""
    many = [{"type": "A", "value": f"203.0.113.{i}", "ttl": 60} for i in range(1, 201)]
    many += many[100:110]  # repeated ones are one address each
    hook = RecordingHook()
    matcher = StubMatcher({"many.example.test": 5})
    async with DnsEnv({"many.example.test": many}, hook=hook, matcher=matcher) as env:
        reply = await env.ask("many.example.test", tcp=True)
        assert len(reply.rr) == 210
        [(tagged, _ttl)] = hook.calls
        assert address_texts(tagged.addresses) == [f"203.0.113.{i}" for i in range(1, 65)]
        assert env.srv.status()["forwarding"]["addresses_capped"] == 136
