"""EDNS0 sizes, TC to clients, DO/CD/AD and RRSIGs passed through, BADVERS."""

from __future__ import annotations

import pytest
from dnslib import EDNS0, QTYPE, DNSRecord

from tests.integration.conftest import DnsEnv, opt_of, query_bytes, rcode

pytestmark = pytest.mark.integration

RRSIG = 46


async def test_plain_client_gets_512_at_most_then_tcp_from_cache() -> None:
    async with DnsEnv() as env:
        reply = await env.ask("medium.example.test", "TXT")
        assert reply.header.tc == 1
        assert not reply.rr and not reply.auth and not reply.ar  # header + question only
        assert str(reply.q.qname) == "medium.example.test."
        raw = await env.udp(query_bytes("medium.example.test", "TXT"))
        assert raw is not None and len(raw) <= 512
        full = await env.ask("medium.example.test", "TXT", tcp=True)
        assert full.header.tc == 0 and len(full.rr) == 12
        assert opt_of(full) is None
        assert len(env.fake.received) == 1  # the retry over TCP came from the cache


async def test_edns_client_gets_up_to_1232_with_our_opt() -> None:
    async with DnsEnv() as env:
        reply = await env.ask("medium.example.test", "TXT", edns=1232)
        assert reply.header.tc == 0 and len(reply.rr) == 12
        opt = opt_of(reply)
        assert opt is not None and opt.rclass == 1232 and (opt.ttl >> 16) & 0xFF == 0
        small = await env.ask("medium.example.test", "TXT", edns=600)
        assert small.header.tc == 1 and not small.rr
        assert opt_of(small) is not None and opt_of(small).rclass == 1232
        tiny = await env.ask("medium.example.test", "TXT", edns=100)  # below 512 counts as 512
        assert tiny.header.tc == 1
        assert len(env.fake.received) == 1


async def test_edns_size_is_capped_at_1232() -> None:
    async with DnsEnv() as env:
        reply = await env.ask("big.example.test", "TXT", edns=4096)
        assert reply.header.tc == 1 and not reply.rr
        raw = await env.udp(query_bytes("big.example.test", "TXT", edns=4096))
        assert raw is not None and len(raw) <= 1232
        full = await env.ask("big.example.test", "TXT", edns=4096, tcp=True)
        assert full.header.tc == 0 and len(full.rr) == 30
        assert opt_of(full) is not None
        # the upstream's UDP answer was truncated: fetched over TCP once, then cached
        assert [r.transport for r in env.fake.received] == ["udp", "tcp"]


async def test_plain_and_edns_clients_share_one_upstream_query() -> None:
    async with DnsEnv() as env:
        plain = await env.ask("www.example.test")
        edns = await env.ask("www.example.test", edns=1232)
        assert opt_of(plain) is None and opt_of(edns) is not None
        plain2 = await env.ask("www.example.test")
        assert opt_of(plain2) is None
        assert len(env.fake.received) == 1
        edns_first = await env.ask("n5.example.test", edns=1400)
        plain_next = await env.ask("n5.example.test")
        assert opt_of(edns_first) is not None and opt_of(plain_next) is None
        assert len(env.fake.received) == 2


async def test_do_and_cd_are_forwarded_and_dnssec_passes_through() -> None:
    async with DnsEnv() as env:
        env.fake.dnssec = True
        plain = await env.ask("www.example.test", edns=1232)
        assert not any(r.rtype == RRSIG for r in plain.rr)
        secure = await env.ask("www.example.test", edns=1232, do=True, cd=True)
        sigs = [r for r in secure.rr if r.rtype == RRSIG]
        assert len(sigs) == 1
        assert secure.header.ad == 1 and secure.header.cd == 1
        assert opt_of(secure).ttl & 0x8000  # DO echoed in our OPT
        received = env.fake.received
        assert [(r.do, r.cd) for r in received] == [(False, False), (True, True)]
        again = await env.ask("www.example.test", edns=1232, do=True, cd=True)  # cached
        assert len(env.fake.received) == 2
        assert [str(r.rdata) for r in again.rr if r.rtype == RRSIG] == [str(sigs[0].rdata)]
        assert again.header.ad == 1


async def test_do_without_cd_is_a_separate_cache_entry() -> None:
    async with DnsEnv() as env:
        await env.ask("www.example.test", do=True)
        await env.ask("www.example.test", do=True, cd=True)
        await env.ask("www.example.test", do=True)
        assert [(r.do, r.cd) for r in env.fake.received] == [(True, False), (True, True)]


async def test_edns_version_1_gets_badvers() -> None:
    async with DnsEnv() as env:
        q = DNSRecord.question("www.example.test", "A")
        q.add_ar(EDNS0(udp_len=1232, version=1))
        raw = await env.udp(bytes(q.pack()))
        assert raw is not None
        reply = DNSRecord.parse(raw)
        opt = opt_of(reply)
        assert opt is not None
        assert ((opt.ttl >> 24) << 4 | rcode(reply)) == 16  # BADVERS
        assert (opt.ttl >> 16) & 0xFF == 0  # we speak version 0
        assert reply.header.id == q.header.id
        assert env.fake.received == []


async def test_non_edns_client_never_gets_opt() -> None:
    async with DnsEnv() as env:
        for name, qtype in (("www.example.test", "A"), ("nope.example.test", "A")):
            reply = await env.ask(name, qtype)
            assert opt_of(reply) is None
            assert all(r.rtype != QTYPE.OPT for r in reply.ar)


@pytest.mark.parametrize("do", [False, True])
async def test_errors_to_an_edns_query_carry_our_opt(do: bool) -> None:
    """RFC 6891 6.1.1: NOTIMP for an opcode (checked before the OPT is reached), FORMERR for
    bytes after the OPT or a second question: each reply has an OPT, DO echoed."""
    query = query_bytes("www.example.test", edns=1232, do=do)
    notimp = bytearray(query)
    notimp[2] = (notimp[2] & 0x87) | (15 << 3)
    qend = len(query) - 11  # the OPT record is the last 11 bytes
    two_questions = query[:5] + b"\x02" + query[6:qend] + query[12:]  # the question twice
    cases = {
        "notimp": (bytes(notimp), 4),
        "trailing": (query + b"\0", 1),
        "qdcount": (two_questions, 1),
    }
    async with DnsEnv() as env:
        for case, (data, want) in cases.items():
            raw = await env.udp(data)
            assert raw is not None, case
            reply = DNSRecord.parse(raw)
            assert rcode(reply) == want and reply.header.id == DNSRecord.parse(query).header.id
            opt = opt_of(reply)
            assert opt is not None, case
            assert bool(opt.ttl & 0x8000) == do, case
        plain = bytearray(query_bytes("www.example.test"))
        plain[2] = (plain[2] & 0x87) | (15 << 3)
        raw = await env.udp(bytes(plain))
        assert raw is not None and opt_of(DNSRecord.parse(raw)) is None
        assert env.fake.received == []
