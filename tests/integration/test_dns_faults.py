"""DNS-side faults while queries flow: upstreams that die and come back, upstreams that answer
garbage or the wrong id before the right reply.

A steady stream of queries (a new name each: every one goes upstream) runs through each fault;
every query must get a reply, SERVFAIL only while every upstream is dead.
"""

from __future__ import annotations

import asyncio
import struct
import time
from dataclasses import dataclass

import pytest
from dnslib import DNSRecord

from tests.fakeupstream import FakeUpstream
from tests.integration.conftest import ZONE, DnsEnv, query_bytes
from tests.integration.rawupstream import A_1, PTR_Q, RawEnv, header, qid, question, rr

pytestmark = pytest.mark.integration

SERVFAIL = 2


@dataclass
class Sample:
    sent: float
    done: float = 0.0
    rcode: int | None = None  # None: no reply


class Stream:
    """A query every `interval` seconds, each on its own task, each a name never asked."""

    def __init__(self, env: DnsEnv, interval: float, prefix: str) -> None:
        self.env, self.interval, self.prefix = env, interval, prefix
        self.samples: list[Sample] = []
        self.tasks: list[asyncio.Task[None]] = []
        self.t0 = time.monotonic()
        self._runner: asyncio.Task[None] | None = None

    def now(self) -> float:
        return time.monotonic() - self.t0

    def start(self) -> Stream:
        self._runner = asyncio.get_running_loop().create_task(self._run())
        return self

    async def _run(self) -> None:
        i = 0
        while True:
            sample = Sample(self.now())
            self.samples.append(sample)
            data = query_bytes(f"{self.prefix}{i}.example.test")
            self.tasks.append(asyncio.get_running_loop().create_task(self._one(sample, data)))
            i += 1
            await asyncio.sleep(self.interval)

    async def _one(self, sample: Sample, data: bytes) -> None:
        raw = await self.env.udp(data, timeout=5.0)
        sample.done = self.now()
        if raw is not None:
            assert raw[:2] == data[:2]
            sample.rcode = raw[3] & 0xF

    async def stop(self) -> list[Sample]:
        assert self._runner is not None
        self._runner.cancel()
        await asyncio.gather(self._runner, return_exceptions=True)
        await asyncio.gather(*self.tasks)
        return self.samples


async def test_upstreams_die_and_come_back_while_queries_flow() -> None:
    """A dies (B answers), B dies too (SERVFAIL: nobody left), B comes back (answers again),
    A comes back while B is healthy: no query goes to a dead A, only the probe finds it."""
    async with DnsEnv(upstreams=2, probe_interval=0.2) as env:
        a, b = env.fakes
        stream = Stream(env, 0.01, "q").start()
        await asyncio.sleep(0.4)
        await a.stop()
        await asyncio.sleep(0.5)
        b_stopped = stream.now()
        await b.stop()
        await asyncio.sleep(0.6)
        b_back = stream.now()
        env.fakes[1] = await FakeUpstream(ZONE, port=b.port).start()
        await asyncio.sleep(0.5)
        a_back = stream.now()
        new_a = env.fakes[0] = await FakeUpstream(ZONE, port=a.port).start()
        healthy_at = None
        while stream.now() < a_back + 2.0 and healthy_at is None:
            await asyncio.sleep(0.02)
            if env.srv.status()["upstreams"][0]["healthy"]:
                healthy_at = stream.now()
        await asyncio.sleep(0.3)
        samples = await stream.stop()

    unanswered = [s for s in samples if s.rcode is None]
    failed = [s for s in samples if s.rcode == SERVFAIL]
    earliest, latest = (
        (min(s.sent for s in failed), max(s.sent for s in failed)) if failed else (0, 0)
    )
    print(f"\n{len(samples)} queries, {len(failed)} SERVFAIL, sent from {earliest:.2f} to "
          f"{latest:.2f} s; B stopped at {b_stopped:.2f} s, back at {b_back:.2f} s; A back at "
          f"{a_back:.2f} s, healthy at {healthy_at} s")  # fmt: skip
    assert not unanswered
    assert all(s.rcode in (0, 3, SERVFAIL) for s in samples)  # NOERROR, NXDOMAIN, SERVFAIL
    # SERVFAIL only for what was asked while both were dead (or in flight then: two timeouts)
    assert failed and all(b_stopped - 0.6 < s.sent < b_back + 0.1 for s in failed)
    assert all(s.rcode != SERVFAIL for s in samples if s.sent > b_back + 0.6)
    assert healthy_at is not None and healthy_at - a_back < 1.0  # the probe (every 0.2 s)
    first = new_a.received[0]  # the probe found it: no query was sent to a dead upstream
    assert (first.qname, first.qtype) == ("", "NS")
    assert env.counters["servfail"] == len(failed)


def bad_then_good(query: bytes, transport: str) -> list[bytes]:
    """Five replies that are not the answer, then the answer: another id, QR clear, another
    question (all dropped), a compression loop and a record cut short (both malformed)."""
    ident = qid(query)
    asked = question(query)
    good = header(ident, 0x8180, 1, 1, 0, 0) + asked + rr(PTR_Q, 1, 60, A_1)
    at = 12 + len(asked)
    loop = (
        header(ident, 0x8180, 1, 1, 0, 0) + asked + rr(struct.pack("!H", 0xC000 | at), 1, 60, A_1)
    )
    other = b"\x05other\x07invalid\x00\x00\x01\x00\x01"
    return [
        struct.pack("!H", (ident + 1) & 0xFFFF) + good[2:],
        good[:2] + bytes((good[2] & 0x7F,)) + good[3:],
        header(ident, 0x8180, 1, 1, 0, 0) + other + rr(PTR_Q, 1, 60, A_1),
        loop,
        good[:-3],
        good,
    ]


async def test_garbage_and_wrong_ids_under_load_are_dropped_and_the_right_reply_wins() -> None:
    async with RawEnv([bad_then_good]) as env:
        names = [f"g{i}.example.test" for i in range(300)]
        started = time.perf_counter()
        replies = []
        for at in range(0, len(names), 50):
            replies += await asyncio.gather(
                *(env.udp(query_bytes(n), timeout=3.0) for n in names[at : at + 50])
            )
        took = time.perf_counter() - started
        assert all(r is not None for r in replies)
        parsed = [DNSRecord.parse(r) for r in replies if r is not None]
        assert all([str(x.rdata) for x in p.rr] == ["192.0.2.1"] for p in parsed)
        stats = env.srv.upstream_stats()[0]
        print(f"\n300 queries through 5 bad replies each: {took:.2f} s", stats)
        assert stats["answers"] == 300 and stats["timeouts"] == 0
        assert stats["dropped"] == 3 * 300 and stats["malformed"] == 2 * 300
        assert env.counters["servfail"] == 0
