"""The cache-busting flood: unique names under a wildcard, each answered with a fresh address.

The real DnsServer and a real `Breakout` in dry-run mode (no kernel: every decision recorded)
meet as in the daemon; the upstream answers any name with an address never seen before. What
must hold: the route table stops at `breakout.max_entries` (new holds refused and counted
`capped`, the ones already there kept), the cache stays within `cache.max_entries` (LRU), and
with the per-client budgets on, the flooding client gets TC over UDP once over its budget of
upstream queries (and no route once over its budget of new routes) while another client is
answered and routed as usual.
"""

from __future__ import annotations

import asyncio
import socket
import struct
import time
from pathlib import Path
from typing import Any

import pytest
from dnslib import DNSRecord

from resolver.net.breakout import Breakout
from tests.integration.conftest import query_bytes
from tests.integration.rawupstream import RawEnv, header, qid, question, rr
from tests.unit.breakout_fakes import (
    MATCHER,
    by_address,
    make_breakout,
    make_cfg,
)

pytestmark = pytest.mark.integration

LEGIT = ("52.96.0.1", "52.96.0.2", "52.96.0.3")  # outlook.office.com's, asked before the flood
PTR_Q = b"\xc0\x0c"


class FreshAddresses:
    """An upstream that answers every A question with one address never handed out before
    (outlook.office.com: always LEGIT), TTL 60."""

    def __init__(self) -> None:
        self.served = 0

    def __call__(self, query: bytes, transport: str) -> list[bytes]:
        asked = question(query)
        if asked.startswith(b"\x07outlook\x06office\x03com\x00"):
            answers = [socket.inet_aton(a) for a in LEGIT]
        else:
            self.served += 1
            n = self.served
            answers = [bytes((40, 97 + (n >> 16), (n >> 8) & 0xFF, n & 0xFF))]
        head = header(qid(query), 0x8180, 1, len(answers), 0, 0)
        return [head + asked + b"".join(rr(PTR_Q, 1, 60, a) for a in answers)]


async def breakout(tmp_path: Path, max_entries: int, client_share: float = 1.0) -> Breakout:
    cfg = make_cfg(
        mode="dry-run",
        max_entries=max_entries,
        client_share=client_share,
        min_hold=300,
        grace=0,
    )
    hook = make_breakout(tmp_path, cfg)
    await hook.start()
    return hook


async def udp_from(env: RawEnv, source: str, data: bytes, timeout: float = 2.0) -> DNSRecord:
    """One query over UDP from `source` (a loopback address); the parsed reply."""
    loop = asyncio.get_running_loop()
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.setblocking(False)
    sock.bind((source, 0))
    try:
        await loop.sock_connect(sock, env.address())
        await loop.sock_sendall(sock, data)
        raw = await asyncio.wait_for(loop.sock_recv(sock, 65535), timeout)
    finally:
        sock.close()
    reply = DNSRecord.parse(raw)
    assert reply.header.id == DNSRecord.parse(data).header.id
    return reply


async def flood(env: RawEnv, source: str, names: list[str], batch: int = 50) -> list[DNSRecord]:
    out: list[DNSRecord] = []
    for at in range(0, len(names), batch):
        out += await asyncio.gather(
            *(udp_from(env, source, query_bytes(n)) for n in names[at : at + batch])
        )
    return out


async def test_a_flood_of_unique_names_stops_at_the_caps_and_keeps_the_holds(
    tmp_path: Path,
) -> None:
    hook = await breakout(tmp_path, max_entries=50)
    upstream = FreshAddresses()
    try:
        async with RawEnv(
            [upstream], hook=hook, matcher=MATCHER, cache={"max_entries": 100}
        ) as env:
            legit = await udp_from(env, "127.0.0.1", query_bytes("outlook.office.com"))
            assert sorted(str(r.rdata) for r in legit.rr) == sorted(LEGIT)
            before = {a: by_address(hook)[a].expires for a in LEGIT}
            replies = await flood(env, "127.0.0.2", [f"r{i}.office.com" for i in range(400)])
            assert all(r.header.rcode == 0 and len(r.rr) == 1 for r in replies)  # answered
            held = by_address(hook)
            assert len(hook.holds) == 50  # the cap, not one more
            assert hook.counters["capped"] == 400 - (50 - len(LEGIT))
            assert all(a in held and held[a].expires == before[a] for a in LEGIT)  # kept
            status = env.srv.status()
            # The flood cycles its client's share of the cache (100 x 0.125): the legit answer
            # stays cached.
            assert status["cache"]["entries"] == 1 + 12 and status["cache"]["evicted"] == 0
            assert status["cache"]["client_evicted"] == 400 - 12
            assert env.counters["tagged"] == 401
            again = await udp_from(env, "127.0.0.1", query_bytes("outlook.office.com"))
            assert sorted(str(r.rdata) for r in again.rr) == sorted(LEGIT)  # still answered
            skipped = [d for d in hook.status()["dry_run_decisions"] if d["action"] == "skip"]
            assert skipped and all(d["reason"] == "max_entries reached" for d in skipped)
    finally:
        await hook.stop()


async def test_one_client_holds_at_most_its_share_and_another_is_still_routed(
    tmp_path: Path,
) -> None:
    """breakout.client_share: a client that floods with answers of new addresses holds at most
    its share of max_entries (here 80 x 0.125 = 10); beyond it its addresses are answered but
    not routed (client_capped), and another client's Microsoft 365 name is still routed."""
    hook = await breakout(tmp_path, max_entries=80, client_share=0.125)
    upstream = FreshAddresses()
    try:
        async with RawEnv([upstream], hook=hook, matcher=MATCHER) as env:
            replies = await flood(env, "127.0.0.2", [f"r{i}.office.com" for i in range(200)])
            assert all(r.header.rcode == 0 and len(r.rr) == 1 for r in replies)  # answered
            assert len(hook.holds) == 10  # the flooder's share, not max_entries
            assert hook.counters["client_capped"] == 190 and hook.counters["capped"] == 0
            legit = await udp_from(env, "127.0.0.1", query_bytes("outlook.office.com"))
            assert sorted(str(r.rdata) for r in legit.rr) == sorted(LEGIT)
            held = by_address(hook)
            assert all(a in held for a in LEGIT)  # routed although the flooder is at its cap
            other = await udp_from(env, "127.0.0.3", query_bytes("s1.office.com"))
            assert str(other.rr[0].rdata) in by_address(hook)
            skipped = [d for d in hook.status()["dry_run_decisions"] if d["action"] == "skip"]
            assert skipped and all("127.0.0.2" in d["reason"] for d in skipped)
    finally:
        await hook.stop()


async def test_the_flooding_client_gets_tc_and_no_routes_while_another_is_served(
    tmp_path: Path,
) -> None:
    """Budgets: one upstream query every two seconds (40 saved up) and 10 new routes a second
    (20 saved up) per client. The flooder's first 40 misses are answered (20 of them routed),
    the rest get TC (a stub would retry over TCP, where it gets SERVFAIL): no upstream query,
    no route. The other client's own budget is untouched: it is answered and routed."""
    hook = await breakout(tmp_path, max_entries=10_000)
    upstream = FreshAddresses()
    budgets: dict[str, Any] = {"qps": 0.5, "burst": 40, "share": 0.5, "routes": 10.0}
    try:
        async with RawEnv([upstream], hook=hook, matcher=MATCHER, ratelimit=budgets) as env:
            started = time.monotonic()
            replies = await flood(env, "127.0.0.2", [f"f{i}.office.com" for i in range(200)])
            took = time.monotonic() - started  # what refilled meanwhile: 0.5 and 10 a second
            answered = [r for r in replies if r.rr]
            truncated = [r for r in replies if r.header.tc]
            print(f"\nflooder: {len(answered)} answered, {len(truncated)} TC of {len(replies)}")
            assert 40 <= len(answered) <= 40 + 0.5 * took + 1  # the burst, and the refill
            assert len(truncated) == len(replies) - len(answered)
            assert all(not r.rr and r.header.rcode == 0 for r in truncated)
            assert upstream.served == len(answered)  # no upstream query over the budget
            counters = env.counters
            assert counters["ratelimited"] == len(truncated)
            assert 20 <= len(hook.holds) <= 20 + 10 * took + 1  # route tokens, as above
            assert counters["routes_deferred"] == len(answered) - len(hook.holds)
            tcp_over = await tcp_from(env, "127.0.0.2", query_bytes("g0.office.com"))
            assert tcp_over.header.rcode == 2  # the flooder over TCP: SERVFAIL, at once
            over_tcp = DNSRecord.parse(
                (await env.tcp([query_bytes("f999.office.com")]))[0]
            )  # TCP from 127.0.0.1: the other client's budget, answered
            assert over_tcp.rr
            others = [await udp_from(env, "127.0.0.1", query_bytes(f"o{i}.office.com"))
                      for i in range(10)]  # fmt: skip
            assert all(r.rr and not r.header.tc for r in others)
            held = by_address(hook)
            assert all(str(r.rr[0].rdata) in held for r in others)  # routed
    finally:
        await hook.stop()


async def tcp_from(env: RawEnv, source: str, data: bytes) -> DNSRecord:
    reader, writer = await asyncio.open_connection(*env.address(), local_addr=(source, 0))
    try:
        writer.write(struct.pack("!H", len(data)) + data)
        size = struct.unpack("!H", await asyncio.wait_for(reader.readexactly(2), 2.0))[0]
        return DNSRecord.parse(await reader.readexactly(size))
    finally:
        writer.close()
