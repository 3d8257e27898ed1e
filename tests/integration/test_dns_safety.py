"""ACL, rate limit, malformed queries, pending-table bound, no tracebacks for client input."""

from __future__ import annotations

import asyncio
import logging
import struct

import pytest
from dnslib import EDNS0, DNSRecord

from tests.integration.conftest import DnsEnv, opt_of, query_bytes, rcode

pytestmark = pytest.mark.integration

NOERROR, FORMERR, NOTIMP, REFUSED = 0, 1, 4, 5


def _header(qid: int, flags: int, qd: int = 1, an: int = 0, ns: int = 0, ar: int = 0) -> bytes:
    return struct.pack("!HHHHHH", qid, flags, qd, an, ns, ar)


QUESTION = b"\x03www\x07example\x04test\x00\x00\x01\x00\x01"
OPT = b"\x00\x00\x29\x04\xd0\x00\x00\x00\x00\x00\x00"

FORMERR_CASES = {
    "qdcount 0": _header(0x1111, 0x0100, qd=0),
    "qdcount 2": _header(0x1111, 0x0100, qd=2) + QUESTION + QUESTION,
    "truncated question": _header(0x1111, 0x0100) + QUESTION[:-3],
    "label runs past end": _header(0x1111, 0x0100) + b"\x3fabc",
    "pointer in question": _header(0x1111, 0x0100) + b"\x03www\xc0\x0c\x00\x01\x00\x01",
    "extended label": _header(0x1111, 0x0100) + b"\x41abc\x00\x00\x01\x00\x01",
    "name over 255": _header(0x1111, 0x0100) + b"\x3f" + b"a" * 63 + b"\x3f" + b"b" * 63
    + b"\x3f" + b"c" * 63 + b"\x3f" + b"d" * 63 + b"\x00\x00\x01\x00\x01",
    "two OPT": _header(0x1111, 0x0100, ar=2) + QUESTION + OPT + OPT,
    "OPT not at root": _header(0x1111, 0x0100, ar=1) + QUESTION + b"\x01x" + OPT[1:],
    "OPT in answer": _header(0x1111, 0x0100, an=1) + QUESTION + OPT,
    "trailing garbage": _header(0x1111, 0x0100) + QUESTION + b"junk",
    "trailing after OPT": _header(0x1111, 0x0100, ar=1) + QUESTION + OPT + b"x",
    "record truncated": _header(0x1111, 0x0100, ar=1) + QUESTION + OPT[:7],
}  # fmt: skip


@pytest.mark.parametrize("tcp", [False, True])
async def test_clients_outside_allow_are_refused(tcp: bool) -> None:
    async with DnsEnv(allow=("10.0.0.0/8", "2001:db8::/32")) as env:
        data = query_bytes("www.example.test", edns=1232)
        raw = (await env.tcp([data]))[0] if tcp else await env.udp(data)
        assert raw is not None
        reply = DNSRecord.parse(raw)
        assert rcode(reply) == REFUSED and reply.header.id == DNSRecord.parse(data).header.id
        assert str(reply.q.qname) == "www.example.test."
        assert env.fake.received == []
        assert env.counters["refused"] == 1


async def test_acl_allows_ipv6_loopback_by_default() -> None:
    async with DnsEnv() as env:
        assert (await env.ask("www.example.test", v6=True)).rr
        assert (await env.ask("www.example.test", v6=True, tcp=True)).rr


async def test_the_budget_limits_upstream_queries_not_cached_answers() -> None:
    """A client over its budget of upstream queries gets TC over UDP (a real client asks
    again over TCP; a spoofed one cannot), never silence; its cached answers are not limited."""
    async with DnsEnv(ratelimit={"qps": 1.0, "burst": 3}) as env:
        await env.ask("www.example.test")
        for _ in range(20):
            assert (await env.ask("www.example.test")).rr  # cached: never limited
        answers = [await env.ask(f"n{i}.example.test") for i in range(4)]
        assert [bool(a.rr) for a in answers] == [True, True, False, False]
        assert [a.header.tc for a in answers] == [0, 0, 1, 1]
        assert env.counters["ratelimited"] == 2
        assert len(env.fake.received) == 3  # no upstream query for what was over the budget


@pytest.mark.parametrize("case", sorted(FORMERR_CASES))
async def test_malformed_query_gets_formerr_with_its_id(case: str) -> None:
    async with DnsEnv() as env:
        raw = await env.udp(FORMERR_CASES[case])
        assert raw is not None, case
        assert struct.unpack("!H", raw[:2])[0] == 0x1111
        assert raw[2] & 0x80 and raw[3] & 0x0F == FORMERR
        assert env.counters["formerr"] == 1
        assert (await env.ask("www.example.test")).rr


@pytest.mark.parametrize(
    "data", [b"", b"\x12", b"\x00" * 11, _header(0x2222, 0x8100) + QUESTION], ids=str
)
async def test_short_or_response_packets_are_dropped(data: bytes) -> None:
    async with DnsEnv() as env:
        assert await env.udp(data, timeout=0.2) is None
        assert env.counters["dropped"] == 1
        assert (await env.ask("www.example.test")).rr


async def test_other_opcodes_get_notimp() -> None:
    async with DnsEnv() as env:
        notify = _header(0x3333, 4 << 11) + QUESTION
        raw = await env.udp(notify)
        assert raw is not None and raw[:2] == b"\x33\x33"
        assert raw[3] & 0x0F == NOTIMP and (raw[2] >> 3) & 0x0F == 4
        assert env.counters["notimp"] == 1


@pytest.mark.parametrize("qtype", ["AXFR", "IXFR"])
@pytest.mark.parametrize("tcp", [False, True])
async def test_zone_transfers_refused(qtype: str, tcp: bool) -> None:
    async with DnsEnv() as env:
        reply = await env.ask("example.test", qtype, tcp=tcp)
        assert rcode(reply) == REFUSED
        assert env.fake.received == []


async def test_pending_table_full_answers_servfail_and_counts() -> None:
    async with DnsEnv(forward={"max_pending": 2}) as env:
        env.fake.delay = 0.15
        results = await asyncio.gather(
            *(env.udp(query_bytes(f"n{i}.example.test"), timeout=0.6) for i in range(5))
        )
        assert all(r is not None for r in results)  # nothing silently dropped
        codes = sorted(r[3] & 0x0F for r in results if r is not None)
        assert codes == [NOERROR, NOERROR, 2, 2, 2]
        assert env.counters["pending_full"] == 3
        assert len(env.fake.received) == 2
        assert env.srv.status()["queries"]["pending_full"] == 3
        env.fake.delay = 0.0
        assert (await env.ask("n4.example.test")).rr  # room again


async def test_compression_loop_from_upstream_is_rejected() -> None:
    async with DnsEnv() as env:
        env.fake.mode = "loop"
        assert rcode(await env.ask("www.example.test")) == 2
        assert env.srv.upstream_stats()[0]["malformed"] == 1
        env.fake.mode = "normal"
        assert (await env.ask("www.example.test")).rr


async def test_no_traceback_is_logged_for_client_input(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    async with DnsEnv() as env:
        env.srv.handler.refresh_log_level()
        for data in FORMERR_CASES.values():
            await env.udp(data)
        for data in (b"\x00", _header(1, 0x8000) + QUESTION, _header(1, 5 << 11) + QUESTION):
            await env.udp(data, timeout=0.1)
        q = DNSRecord.question("www.example.test")
        q.add_ar(EDNS0(version=3))
        await env.udp(bytes(q.pack()))
        assert (await env.ask("www.example.test")).rr
    assert not [r for r in caplog.records if r.exc_info or r.levelno >= logging.ERROR]
    assert any("query www.example.test A" in r.getMessage() for r in caplog.records)


def _name(total: int) -> bytes:
    """An uncompressed wire name of exactly `total` octets, the root label's zero included."""
    out = b""
    left = total - 1
    while left:
        size = min(63, left - 1)
        out += bytes((size,)) + b"a" * size
        left -= size + 1
    return out + b"\0"


async def test_name_of_256_octets_is_formerr_and_255_is_forwarded() -> None:
    """RFC 1035 3.1: at most 255 octets, the root label's zero byte included."""
    async with DnsEnv() as env:
        for total, want in ((256, FORMERR), (255, 3)):  # NXDOMAIN from the fake
            name = _name(total)
            assert len(name) == total
            raw = await env.udp(_header(0x1234, 0x0100) + name + b"\0\x01\0\x01")
            assert raw is not None and raw[3] & 0x0F == want, total
        assert len(env.fake.received) == 1


async def test_our_own_errors_offer_recursion_but_not_to_refused_clients() -> None:
    async with DnsEnv() as env:
        formerr = await env.udp(FORMERR_CASES["trailing garbage"])
        notimp = await env.udp(_header(0x3333, 4 << 11) + QUESTION)
        assert formerr is not None and notimp is not None
        assert formerr[3] & 0x80 and notimp[3] & 0x80  # RA
        env.fake.mode = "timeout"
        servfail = await env.ask("www.example.test")
        assert rcode(servfail) == 2 and servfail.header.ra
    async with DnsEnv(allow=("10.0.0.0/8",)) as env:
        refused = await env.ask("www.example.test")
        assert rcode(refused) == REFUSED and not refused.header.ra


async def test_tcp_query_beyond_the_pending_table_gets_servfail() -> None:
    """Over TCP a query is answered or the connection closed (RFC 7766): a query the pending
    table has no room for gets SERVFAIL at once, the one in flight its answer later."""
    async with DnsEnv(forward={"max_pending": 1}) as env:
        env.fake.delay = 0.15
        first = query_bytes("n1.example.test")
        second = query_bytes("n2.example.test", edns=1232)
        replies = [DNSRecord.parse(r) for r in await env.tcp([first, second], timeout=1.0)]
        ids = [DNSRecord.parse(m).header.id for m in (second, first)]
        assert [r.header.id for r in replies] == ids  # the refusal overtakes the answer
        full, answered = replies
        assert rcode(full) == 2 and full.header.ra and opt_of(full) is not None
        assert rcode(answered) == NOERROR and answered.rr
        assert env.counters["pending_full"] == 1


async def test_tcp_query_over_the_budget_gets_servfail() -> None:
    async with DnsEnv(ratelimit={"qps": 1.0, "burst": 1}) as env:
        messages = [query_bytes("www.example.test"), query_bytes("n1.example.test")]
        replies = [DNSRecord.parse(r) for r in await env.tcp(messages, timeout=1.0)]
        by_name = {str(r.q.qname): r for r in replies}
        assert by_name["www.example.test."].rr
        assert rcode(by_name["n1.example.test."]) == 2
        assert env.counters["ratelimited"] == 1
