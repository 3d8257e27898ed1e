"""Odd upstream replies, crafted byte by byte by a raw upstream: what is accepted, retried,
passed on, cached, and how it moves the upstream in the health order."""

from __future__ import annotations

import time

import pytest
from dnslib import DNSRecord

from resolver.dns.upstream import SOFT_HALF_LIFE, Upstream
from tests.integration.conftest import FakeClock, opt_of, query_bytes, rcode
from tests.integration.rawupstream import (
    A_1,
    PTR_Q,
    RawEnv,
    has_opt,
    header,
    opt,
    qid,
    question,
    rr,
    soa,
)

pytestmark = pytest.mark.integration

NOERROR, FORMERR, SERVFAIL, NXDOMAIN, NOTIMP = 0, 1, 2, 3, 4
T_A, T_SOA = 1, 6


def answer(query: bytes, ttl: int = 60, flags: int = 0x8180) -> bytes:
    """One A record (192.0.2.1) for the question of `query`."""
    return header(qid(query), flags, 1, 1, 0, 0) + question(query) + rr(PTR_Q, T_A, ttl, A_1)


def bare(query: bytes, flags: int) -> bytes:
    """The header (with `flags`) and question of `query`, no records."""
    return header(qid(query), flags, 1, 0, 0, 0) + question(query)


# -- acceptance -------------------------------------------------------------------------------


async def test_truncated_reply_cut_inside_its_records_is_fetched_over_tcp() -> None:
    """A TC reply whose counts run past its end (cut at a byte, RFC 2181 9) is accepted on its
    header and question and fetched again over TCP at once, not dropped as malformed."""

    def respond(query: bytes, transport: str) -> list[bytes]:
        if transport == "udp":  # TC, ANCOUNT 3, and the first record cut after one byte
            return [header(qid(query), 0x8380, 1, 3, 0, 0) + question(query) + PTR_Q[:1]]
        return [answer(query)]

    async with RawEnv([respond], forward={"timeout": 0.5}) as env:
        started = time.monotonic()
        reply = await env.ask("www.example.test")
        assert time.monotonic() - started < 0.4
        assert rcode(reply) == NOERROR and [str(r.rdata) for r in reply.rr] == ["192.0.2.1"]
        assert env.raws[0].transports() == ["udp", "tcp"]
        stats = env.srv.upstream_stats()[0]
        assert stats["tcp"] == 1 and stats["malformed"] == 0


async def test_trailing_bytes_after_a_reply_are_cut_off_and_counted() -> None:
    def respond(query: bytes, transport: str) -> list[bytes]:
        return [answer(query) + b"\0junk"]

    async with RawEnv([respond]) as env:
        data = query_bytes("www.example.test")
        first = await env.udp(data)
        second = await env.udp(data)  # from the cache
        assert first is not None and second is not None
        assert rcode(DNSRecord.parse(first)) == NOERROR
        assert first.endswith(A_1) and second.endswith(A_1)  # nothing after the record
        stats = env.srv.upstream_stats()[0]
        assert stats["trailing"] == 1 and stats["malformed"] == 0
        assert len(env.raws[0].queries) == 1


async def test_compression_pointer_into_the_header_is_malformed() -> None:
    def respond(query: bytes, transport: str) -> list[bytes]:
        into_header = b"\xc0\x04"  # the owner name: a pointer to offset 4, QDCOUNT
        return [
            header(qid(query), 0x8180, 1, 1, 0, 0) + question(query) + rr(into_header, 1, 60, A_1)
        ]

    async with RawEnv([respond]) as env:
        assert rcode(await env.ask("www.example.test")) == SERVFAIL
        assert env.srv.upstream_stats()[0]["malformed"] == 1


async def test_tc_over_tcp_is_never_used() -> None:
    """A TCP reply with TC set is no complete answer: not cached, not handed out with TC;
    the next upstream is asked, and SERVFAIL when there is none."""

    def respond(query: bytes, transport: str) -> list[bytes]:
        if transport == "udp":
            return [bare(query, 0x8380)]
        return [answer(query, flags=0x8380)]

    async with RawEnv([respond]) as env:
        reply = await env.ask("www.example.test", tcp=True)
        assert rcode(reply) == SERVFAIL and not reply.header.tc
        assert len(env.srv.handler.cache) == 0
        assert env.srv.upstream_stats()[0]["malformed"] == 1
    async with RawEnv([respond, "fake"]) as env:
        reply = await env.ask("www.example.test")
        assert not reply.header.tc and [str(r.rdata) for r in reply.rr] == ["192.0.2.10"]


# -- FORMERR, NOTIMP, extended rcodes: retried without EDNS or elsewhere ------------------------


async def test_formerr_without_question_moves_on_at_once() -> None:
    """FORMERR with QDCOUNT 0 (a classic EDNS-intolerant server) is accepted on id, QR and
    opcode: asked once more without OPT, then the next upstream, with no timeout."""

    def respond(query: bytes, transport: str) -> list[bytes]:
        return [header(qid(query), 0x8181, 0, 0, 0, 0)]

    async with RawEnv([respond, "fake"], forward={"timeout": 1.0}) as env:
        started = time.monotonic()
        reply = await env.ask("www.example.test")
        assert time.monotonic() - started < 0.5
        assert rcode(reply) == NOERROR and [str(r.rdata) for r in reply.rr] == ["192.0.2.10"]
        assert [has_opt(q) for _t, q in env.raws[0].queries] == [True, False]
        stats = env.srv.upstream_stats()[0]
        assert stats["timeouts"] == 0 and stats["no_edns"] == 1 and stats["formerr"] == 2


async def test_upstream_formerr_is_not_handed_to_the_client() -> None:
    """The client's query was well-formed: an upstream's FORMERR means the next upstream."""

    def respond(query: bytes, transport: str) -> list[bytes]:
        return [bare(query, 0x8181)]

    async with RawEnv([respond, "fake"]) as env:
        assert rcode(await env.ask("www.example.test")) == NOERROR
    async with RawEnv([respond]) as env:
        assert rcode(await env.ask("www.example.test")) == SERVFAIL


@pytest.mark.parametrize("refusal", [0x8181, 0x8184], ids=["formerr", "notimp"])
async def test_edns_intolerant_upstream_is_asked_again_without_opt(refusal: int) -> None:
    """The only upstream refuses queries with an OPT and answers plain ones: the plain answer
    is used, cached, and handed out per the client's EDNS (our OPT, DO echoed, for an EDNS
    client; none for a plain one)."""

    def respond(query: bytes, transport: str) -> list[bytes]:
        return [bare(query, refusal) if has_opt(query) else answer(query)]

    async with RawEnv([respond]) as env:
        secure = await env.ask("www.example.test", edns=1232, do=True)
        assert rcode(secure) == NOERROR and [str(r.rdata) for r in secure.rr] == ["192.0.2.1"]
        assert opt_of(secure) is not None and opt_of(secure).ttl & 0x8000
        plain = await env.ask("www.example.test")
        assert rcode(plain) == NOERROR and opt_of(plain) is None
        assert [has_opt(q) for _t, q in env.raws[0].queries] == [True, False, True, False]
        again = await env.ask("www.example.test", edns=1232, do=True)  # cached
        assert [str(r.rdata) for r in again.rr] == ["192.0.2.1"]
        assert len(env.raws[0].queries) == 4


@pytest.mark.parametrize("edns", [None, 1232])
async def test_extended_rcode_from_upstream_is_never_handed_on_mangled(edns: int | None) -> None:
    """Rcode 23 (BADCOOKIE: 7 in the header, 1 in the OPT) is a failure of that upstream: the
    next one is asked, SERVFAIL without one; no client ever sees rcode 7 (YXRRSET)."""

    def respond(query: bytes, transport: str) -> list[bytes]:
        return [header(qid(query), 0x8187, 1, 0, 0, 1) + question(query) + opt(ext_rcode=1)]

    async with RawEnv([respond]) as env:
        raw = await env.udp(query_bytes("www.example.test", edns=edns))
        assert raw is not None
        reply = DNSRecord.parse(raw)
        ext = opt_of(reply).ttl >> 24 if edns else 0
        assert ext << 4 | rcode(reply) == SERVFAIL
        assert env.srv.upstream_stats()[0]["extended"] == 1
    async with RawEnv([respond, "fake"]) as env:
        reply = await env.ask("www.example.test", edns=edns)
        assert rcode(reply) == NOERROR and [str(r.rdata) for r in reply.rr] == ["192.0.2.10"]


# -- TTLs, negative caching, header bits ------------------------------------------------------


async def test_ttl_with_the_top_bit_set_counts_as_zero() -> None:
    """RFC 2181 8: 0x80000000 is 0, not a huge TTL capped at max_ttl; the answer is handed
    out with TTL 0 and not cached. The same for an SOA MINIMUM with the top bit set."""

    def respond(query: bytes, transport: str) -> list[bytes]:
        if b"nope" in query:
            return [
                header(qid(query), 0x8183, 1, 0, 1, 0)
                + question(query)
                + rr(b"\0", T_SOA, 3600, soa(0x80000000))
            ]
        return [answer(query, ttl=0x80000000)]

    async with RawEnv([respond]) as env:
        for _ in range(2):
            reply = await env.ask("www.example.test")
            assert [r.ttl for r in reply.rr] == [0]
            assert rcode(await env.ask("nope.example.test")) == NXDOMAIN
        assert len(env.raws[0].queries) == 4
        assert len(env.srv.handler.cache) == 0


async def test_positive_answer_with_soa_in_authority_keeps_its_ttl() -> None:
    """An SOA in the authority section does not make an answer of the asked type negative:
    its TTLs are not cut to the SOA minimum (5 s), and it is cached for its own TTL."""

    def respond(query: bytes, transport: str) -> list[bytes]:
        return [
            header(qid(query), 0x8180, 1, 1, 1, 0)
            + question(query)
            + rr(PTR_Q, T_A, 3600, A_1)
            + rr(b"\0", T_SOA, 3600, soa(5))
        ]

    clock = FakeClock()
    async with RawEnv([respond], clock=clock) as env:
        reply = await env.ask("www.example.test")
        assert [r.ttl for r in reply.rr] == [3600] and [r.ttl for r in reply.auth] == [3600]
        clock.advance(10)
        again = await env.ask("www.example.test")
        assert [r.ttl for r in again.rr] == [3590]
        assert len(env.raws[0].queries) == 1


async def test_our_answers_claim_no_authority_and_offer_recursion() -> None:
    """An upstream authoritative for its zone (a domain controller) sets AA and clears RA: we
    are neither authoritative nor without recursion, on a miss or a hit."""

    def respond(query: bytes, transport: str) -> list[bytes]:
        return [answer(query, flags=0x8500)]

    async with RawEnv([respond]) as env:
        for _ in range(2):
            reply = await env.ask("dc.corp.test")
            assert not reply.header.aa and reply.header.ra and reply.header.rd
        assert len(env.raws[0].queries) == 1


# -- health order -----------------------------------------------------------------------------


async def test_refusing_upstream_falls_behind_a_healthy_one() -> None:
    """An upstream that answers SERVFAIL to everything (its own upstream is gone) is fast and
    never times out, but its soft failures put it behind the healthy one."""

    def respond(query: bytes, transport: str) -> list[bytes]:
        return [bare(query, 0x8182)]

    async with RawEnv([respond, "fake"]) as env:
        for i in range(20):
            assert rcode(await env.ask(f"n{i}.example.test")) == NOERROR
        assert len(env.raws[0].queries) == 1
        bad, good = env.srv.upstream_stats()
        assert bad["healthy"] and bad["failures"] == 0 and bad["servfail"] == 1
        assert bad["soft_score"] > 0 and good["soft_score"] == 0


def test_soft_failure_score_decays_and_answers_lower_it() -> None:
    fast, slow = Upstream("192.0.2.1", 53, 0), Upstream("192.0.2.2", 53, 1)
    fast.answered(0.005)
    slow.answered(0.050)
    fast.graded(False, 100.0)
    assert fast.sort_key(100.0) > slow.sort_key(100.0)  # behind the slower healthy one
    later = 100.0 + 10 * SOFT_HALF_LIFE
    assert fast.soft_score(later) < 0.001
    assert fast.sort_key(later) < slow.sort_key(later)  # tried again, by its RTT
    fast.graded(False, 100.0)
    before = fast.soft_score(100.0)
    fast.graded(True, 100.0)
    assert fast.soft_score(100.0) < before
