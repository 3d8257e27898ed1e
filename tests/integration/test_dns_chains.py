"""Long CNAME chains and loops from an upstream: an answer or SERVFAIL, promptly; tagging,
routing and splicing read the chain only up to wire.MAX_CHAIN (16 CNAMEs from the name)."""

from __future__ import annotations

import asyncio
import dataclasses
import itertools
import socket
import time
from collections.abc import Callable, Mapping

import pytest
from dnslib import DNSRecord

from resolver.config import Config
from resolver.dns import wire
from resolver.hooks import address_texts
from tests.integration.conftest import RecordingHook, query_bytes
from tests.integration.rawupstream import RawEnv, header, qid, question, rr
from tests.unit.breakout_fakes import MATCHER

pytestmark = pytest.mark.integration

ADDRESS = socket.inet_aton("52.96.7.7")


def wire_name(text: str) -> bytes:
    return wire.encode_name(text)


def chain_reply(query: bytes, names: list[str], loop_to: str | None = None) -> bytes:
    """The answer to `query` (about names[0]): names[i] CNAME names[i + 1] all the way, then
    either an A record for the last name or (loop_to) a CNAME from it back to `loop_to`."""
    records = [
        rr(wire_name(owner), wire.T_CNAME, 60, wire_name(target))
        for owner, target in itertools.pairwise(names)
    ]
    if loop_to is None:
        records.append(rr(wire_name(names[-1]), wire.T_A, 60, ADDRESS))
    else:
        records.append(rr(wire_name(names[-1]), wire.T_CNAME, 60, wire_name(loop_to)))
    return header(qid(query), 0x8180, 1, len(records), 0, 0) + question(query) + b"".join(records)


Chains = Mapping[str, tuple[list[str], str | None]]  # query name -> (chain, loops back to)


def responder(chains: Chains) -> Callable[[bytes, str], list[bytes]]:
    def respond(query: bytes, transport: str) -> list[bytes]:
        name = DNSRecord.parse(query).q.qname.idna().rstrip(".").lower()
        names, loop_to = chains[name]
        return [chain_reply(query, names, loop_to)]

    return respond


def deep(prefix: str, count: int, suffix: str) -> list[str]:
    return [f"{prefix}{i}.{suffix}" for i in range(count)]


async def ask(env: RawEnv, name: str, tcp: bool = False) -> tuple[DNSRecord, float]:
    started = time.perf_counter()
    reply = await env.ask(name, edns=4096, tcp=tcp, timeout=3.0)
    return reply, time.perf_counter() - started


async def test_a_40_deep_chain_is_answered_and_tagged_without_its_unreachable_address() -> None:
    """c0.office.com -> ... -> c39.office.com A: the client gets the records as they came;
    the tag is the query name's, and the address, 39 CNAMEs down, is past the cap: no route."""
    names = deep("c", 40, "office.com")
    hook = RecordingHook()
    async with RawEnv([responder({names[0]: (names, None)})], hook=hook, matcher=MATCHER) as env:
        for tcp in (False, True):  # over UDP the 2.4 KB answer is cut (TC); TCP has it all
            reply, took = await ask(env, names[0], tcp=tcp)
            assert reply.header.rcode == 0 and took < 1.0
            assert len(reply.rr) == (40 if tcp else 0) and bool(reply.header.tc) != tcp
        assert env.counters["tagged"] == 2 and hook.calls == []  # tagged; nothing to route


@pytest.mark.parametrize(("cnames", "routed"), [(16, True), (17, False)])
async def test_the_chain_is_followed_to_the_cap_for_tagging_and_routing(
    cnames: int, routed: bool
) -> None:
    """deep0.example.test -> ... -> x.office.com A: the policy name is found and its address
    routed when it is at most MAX_CHAIN CNAMEs from the query name, not beyond."""
    assert wire.MAX_CHAIN == 16
    names = [*deep("deep", cnames, "example.test"), "x.office.com"]
    hook = RecordingHook()
    async with RawEnv([responder({names[0]: (names, None)})], hook=hook, matcher=MATCHER) as env:
        reply, took = await ask(env, names[0])
        assert reply.header.rcode == 0 and len(reply.rr) == cnames + 1 and took < 1.0
        if routed:
            tagged, _ttl = hook.calls[0]
            assert tagged.via == "x.office.com" and address_texts(tagged.addresses) == ["52.96.7.7"]
        else:
            assert hook.calls == [] and env.counters["tagged"] == 0


@pytest.mark.parametrize("length", [2, 40])
async def test_a_cname_loop_is_answered_promptly_and_cached_as_nothing(length: int) -> None:
    """l0 -> l1 -> ... -> l0: no address anywhere. The client gets the loop as it came
    (NOERROR, no A: a stub gives up), within the forward timeout; it is not cached (a NODATA
    without SOA), so the next query asks again; nothing is routed."""
    names = deep("l", length, "office.com")
    hook = RecordingHook()
    respond = responder({names[0]: (names, names[0])})
    async with RawEnv([respond], hook=hook, matcher=MATCHER) as env:
        for _ in range(2):
            reply, took = await ask(env, names[0], tcp=True)
            assert reply.header.rcode == 0 and len(reply.rr) == length and took < 1.0
            assert not [r for r in reply.rr if r.rtype == wire.T_A]
        assert len(env.raws[0].queries) == 2  # not cached
        assert hook.calls == [] and len(env.srv.handler.cache) == 0


async def test_many_clients_on_a_looping_chain_at_once_all_get_an_answer() -> None:
    names = deep("m", 40, "office.com")
    async with RawEnv([responder({names[0]: (names, names[5])})], matcher=MATCHER) as env:
        replies = await asyncio.gather(*(env.tcp([query_bytes(names[0])]) for _ in range(30)))
        assert all(DNSRecord.parse(r[0]).header.rcode == 0 for r in replies)
        assert not env.srv.handler.misses.pending and not env.srv.handler.misses.resolving


async def test_a_chain_into_a_policy_name_past_the_cap_is_not_spliced() -> None:
    """A zone's answer whose chain reaches the policy only past the cap is passed on as it
    came: the breakout resolvers are not asked, nothing is spliced or routed."""
    names = [*deep("z", 20, "corp.example"), "outlook.office.com"]
    hook = RecordingHook()
    hook.ready = True
    chains = {names[0]: (names, None)}
    async with RawEnv(
        [responder(chains), responder(chains)],
        hook=hook,
        matcher=MATCHER,
    ) as env:
        env.srv.reconfigure(
            _with_breakout(env, env.raws[1].address), MATCHER
        )  # the second raw upstream is the ISP's resolver
        reply, took = await ask(env, names[0], tcp=True)
        assert reply.header.rcode == 0 and len(reply.rr) == 21 and took < 1.0
        assert env.srv.handler.forwarder.spliced == 0 and hook.calls == []
        assert env.raws[1].queries == []


def _with_breakout(env: RawEnv, resolver: tuple[str, int]) -> Config:
    config = env.config
    breakout = dataclasses.replace(config.breakout, resolvers=(resolver,))
    return dataclasses.replace(config, breakout=breakout, upstreams=(env.raws[0].address,))
