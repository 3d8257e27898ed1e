"""Slow and silent TCP clients cannot starve the others (tcp.py): the message deadline, the
per-client cap, eviction of the least active connection, the write stall; RFC 7766 kept.

The attackers connect from other loopback addresses (127.0.0.2 and up: all of 127/8 is local)
than the well-behaved client (127.0.0.1), and reconnect whenever they are closed, as a real
one would. The good client's latency is printed (pytest -s) and bounded generously: the
machine is shared, so the bound says "promptly", not "fast".
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import statistics
import struct
import time

import pytest
from dnslib import DNSRecord

from resolver.dns.tcp import MAX_OWED
from tests.integration.conftest import ZONE, DnsEnv, framed, query_bytes

pytestmark = pytest.mark.integration

PROMPT = 1.0  # seconds: the most a good client may wait for an answer while under attack
QUERY = query_bytes("www.example.test")


class Attack:
    """`count` connections from `source`, each sending nothing (`dribble` 0) or one byte of
    a query every `dribble` seconds; each reconnects `BACKOFF` after the server closed it
    (a slowloris is cheap for the attacker: it does not flood connects, which would cost it
    as much as the server)."""

    BACKOFF = 0.1

    def __init__(self, env: DnsEnv, source: str, count: int, dribble: float = 0.0) -> None:
        self.env, self.source, self.count, self.dribble = env, source, count, dribble
        self.connects = 0
        self.closed_by_server = 0
        self.open = 0
        self.running = True
        self.tasks: list[asyncio.Task[None]] = []

    def start(self) -> Attack:
        loop = asyncio.get_running_loop()
        self.tasks = [loop.create_task(self._one()) for _ in range(self.count)]
        return self

    async def _one(self) -> None:
        while self.running:
            try:
                reader, writer = await asyncio.open_connection(
                    *self.env.address(), local_addr=(self.source, 0)
                )
            except OSError:
                await asyncio.sleep(0.05)
                continue
            self.connects += 1
            self.open += 1
            try:
                await self._hold(reader, writer)
            except OSError:
                pass  # reset by the server: closed like an EOF
            finally:
                self.open -= 1
                self.closed_by_server += 1
                writer.close()
            await asyncio.sleep(self.BACKOFF)

    async def _hold(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """Until the server closes the connection."""
        if not self.dribble:
            await reader.read()
            return
        for byte in framed(QUERY) * 1000:
            if not self.running:
                return
            writer.write(bytes((byte,)))
            await writer.drain()
            # asyncio.timeout, not wait_for: on Python 3.11, wait_for can swallow the
            # cancellation that stop() sends when its read completes at the same moment.
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self.dribble):
                    if await reader.read(1) == b"":
                        return

    async def stop(self) -> None:
        """Every attacker gone, within 10 s (a test fails rather than hangs)."""
        self.running = False
        for task in self.tasks:
            task.cancel()
        async with asyncio.timeout(10.0):
            await asyncio.gather(*self.tasks, return_exceptions=True)


async def good_tcp(env: DnsEnv) -> float:
    """One query on a new connection, as a stub resolver asks: the seconds it took."""
    started = time.perf_counter()
    reader, writer = await asyncio.open_connection(*env.address(), local_addr=("127.0.0.1", 0))
    try:
        writer.write(framed(QUERY))
        async with asyncio.timeout(5.0):
            size = struct.unpack("!H", await reader.readexactly(2))[0]
            reply = DNSRecord.parse(await reader.readexactly(size))
    finally:
        writer.close()
    assert [str(r.rdata) for r in reply.rr] == ["192.0.2.10"]
    return time.perf_counter() - started


async def good_udp(env: DnsEnv) -> float:
    started = time.perf_counter()
    reply = await env.ask("www.example.test", timeout=5.0)
    assert reply.rr
    return time.perf_counter() - started


async def measure(env: DnsEnv, rounds: int, pause: float) -> tuple[list[float], list[float]]:
    tcp, udp = [], []
    for _ in range(rounds):
        tcp.append(await good_tcp(env))
        udp.append(await good_udp(env))
        await asyncio.sleep(pause)
    return tcp, udp


def summary(what: str, samples: list[float]) -> str:
    ms = sorted(s * 1000.0 for s in samples)
    return f"{what}: p50 {statistics.median(ms):.1f} ms, max {ms[-1]:.1f} ms over {len(ms)}"


async def test_silent_connections_from_one_address_hold_only_their_share() -> None:
    async with DnsEnv() as env:
        await env.ask("www.example.test")  # cached: what is measured is the TCP side
        cap = env.srv.tcp.max_per_client
        assert cap == 32  # 256 connections / 8
        baseline, _ = await measure(env, 5, 0.0)
        attack = Attack(env, "127.0.0.2", 200).start()
        try:
            await asyncio.sleep(1.0)
            tcp, udp = await measure(env, 10, 0.05)
            stats = env.srv.tcp_stats()
        finally:
            await attack.stop()
        print(f"\n{summary('TCP before', baseline)}\n{summary('TCP under attack', tcp)}")
        print(summary("UDP under attack", udp), stats)
        assert max(tcp) < PROMPT and max(udp) < PROMPT
        assert stats["connections"] <= cap + 1  # the attacker's share (+ the good client's)
        assert stats["client_evicted"] >= 200 - cap  # each attacker connect beyond its share
        assert stats["rejected"] == 0


@pytest.mark.parametrize("per_address", [20, 30])
async def test_dribbling_connections_from_many_addresses_do_not_starve_a_good_client(
    per_address: int,
) -> None:
    """Ten addresses, each within its share of 32 connections, each connection sending one
    byte a second. 200 of them: the message deadline (2 s) closes them, over and over. 300,
    more than the table's 256: the full table also evicts the least active. Either way a
    client that asks gets in and is answered promptly, over TCP and over UDP."""
    async with DnsEnv() as env:
        await env.ask("www.example.test")
        attacks = [
            Attack(env, f"127.0.0.{i}", per_address, dribble=1.0).start() for i in range(2, 12)
        ]
        try:
            await asyncio.sleep(1.0)
            tcp, udp = await measure(env, 15, 0.15)  # about 3 s: past the deadline
            stats = env.srv.tcp_stats()
        finally:
            for attack in attacks:
                await attack.stop()
        print(f"\n{per_address * 10} dribblers", stats)
        print(f"{summary('TCP under attack', tcp)}\n{summary('UDP under attack', udp)}")
        assert max(tcp) < PROMPT and max(udp) < PROMPT
        assert stats["connections"] <= env.srv.tcp.max_connections
        assert stats["idle_closed"] == 0 and stats["client_evicted"] == 0
        if per_address * 10 < env.srv.tcp.max_connections:
            assert stats["slow_closed"] >= 150  # the dribblers, at their deadline
            assert stats["evicted"] == 0
        else:
            assert stats["evicted"] > 0  # the least active made room for the good client


async def test_a_dribbler_is_closed_at_its_message_deadline_though_never_idle() -> None:
    async with DnsEnv() as env:
        env.srv.tcp.message_timeout = 0.6
        reader, writer = await asyncio.open_connection(*env.address())
        started = time.perf_counter()
        for byte in framed(QUERY):
            writer.write(bytes((byte,)))
            await writer.drain()
            with contextlib.suppress(TimeoutError):
                if await asyncio.wait_for(reader.read(1), 0.15) == b"":
                    break
        waited = time.perf_counter() - started
        writer.close()
        assert 0.5 < waited < 1.6, waited
        stats = env.srv.tcp_stats()
        assert stats["slow_closed"] == 1 and stats["idle_closed"] == 0


async def test_a_connection_that_never_sends_is_closed_at_the_message_deadline() -> None:
    async with DnsEnv() as env:
        env.srv.tcp.message_timeout = 0.4
        reader, writer = await asyncio.open_connection(*env.address())
        started = time.perf_counter()
        assert await asyncio.wait_for(reader.read(), 3.0) == b""
        waited = time.perf_counter() - started
        writer.close()
        assert 0.3 < waited < 1.5, waited
        assert env.srv.tcp_stats()["slow_closed"] == 1


async def test_between_queries_the_idle_timeout_applies_not_the_deadline() -> None:
    """After a whole query a connection may wait for the next for `idle_timeout` (keepalive,
    RFC 7766 6.2.3): the message deadline counts only once a message begins."""
    async with DnsEnv(tcp={"idle_timeout": 1.2}) as env:
        env.srv.tcp.message_timeout = 0.3
        reader, writer = await asyncio.open_connection(*env.address())
        for _ in range(2):
            writer.write(framed(QUERY))
            size = struct.unpack("!H", await reader.readexactly(2))[0]
            assert DNSRecord.parse(await reader.readexactly(size)).rr
            await asyncio.sleep(0.6)  # longer than the deadline, shorter than idle
        started = time.perf_counter()
        assert await asyncio.wait_for(reader.read(), 3.0) == b""
        writer.close()
        assert 0.4 < time.perf_counter() - started < 1.5
        stats = env.srv.tcp_stats()
        assert stats["idle_closed"] == 1 and stats["slow_closed"] == 0


async def test_one_client_at_its_cap_closes_its_own_least_active_connection() -> None:
    async with DnsEnv() as env:
        env.srv.tcp.max_per_client = 3
        conns = []
        for _ in range(5):
            conns.append(await asyncio.open_connection(*env.address(), local_addr=("127.0.0.3", 0)))
            await asyncio.sleep(0.02)
        for reader, _writer in conns[:2]:  # the two oldest went
            assert await asyncio.wait_for(reader.read(), 2.0) == b""
        reader, writer = conns[-1]
        writer.write(framed(QUERY))
        size = struct.unpack("!H", await asyncio.wait_for(reader.readexactly(2), 2.0))[0]
        assert DNSRecord.parse(await reader.readexactly(size)).rr
        stats = env.srv.tcp_stats()
        assert stats["client_evicted"] == 2 and stats["connections"] == 3
        assert (await env.ask("www.example.test", tcp=True)).rr  # other clients: unaffected
        for _r, w in conns:
            w.close()


def test_ipv6_clients_are_counted_by_their_64() -> None:
    from resolver.dns.tcp import client_key

    assert client_key(("2001:db8:1:2:aaaa::1", 53, 0, 0)) == "2001:db8:1:2::/64"
    assert client_key(("2001:db8:1:2:bbbb::7", 53, 0, 0)) == "2001:db8:1:2::/64"
    assert client_key(("fe80::1%eth0", 53, 0, 2)) == "fe80::/64"
    assert client_key(("192.0.2.7", 53)) == "192.0.2.7"
    assert client_key(("::ffff:192.0.2.7", 53, 0, 0)) == "192.0.2.7"


async def test_half_close_after_pipelined_queries_gets_every_answer_then_eof() -> None:
    """RFC 7766: queries pipelined, then the client shuts its side: every reply still comes,
    the slow one last, then the server closes."""
    async with DnsEnv() as env:
        await env.ask("www.example.test")
        env.fake.delay = 0.15
        reader, writer = await asyncio.open_connection(*env.address())
        messages = [query_bytes("n1.example.test"), QUERY, query_bytes("n2.example.test")]
        writer.write(b"".join(framed(m) for m in messages))
        await writer.drain()
        writer.write_eof()
        ids = []
        async with asyncio.timeout(3.0):
            for _ in messages:
                size = struct.unpack("!H", await reader.readexactly(2))[0]
                ids.append(DNSRecord.parse(await reader.readexactly(size)).header.id)
            assert await reader.read() == b""
        writer.close()
        assert ids[0] == DNSRecord.parse(QUERY).header.id  # the cached one first
        assert sorted(ids) == sorted(DNSRecord.parse(m).header.id for m in messages)


async def test_a_client_that_never_reads_is_paused_then_closed() -> None:
    """Queries for an 800-byte answer, thousands of them, replies never read: the server
    stops reading that client once its buffers are full, and closes it after idle_timeout."""
    async with DnsEnv(tcp={"idle_timeout": 0.5}) as env:
        await env.ask("medium.example.test", "TXT", edns=1232)
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sock.setblocking(False)
        loop = asyncio.get_running_loop()
        await loop.sock_connect(sock, env.address())
        query = framed(query_bytes("medium.example.test", "TXT", edns=1232))
        sent = 0
        started = time.perf_counter()
        try:
            async with asyncio.timeout(10.0):
                while True:
                    try:
                        await asyncio.wait_for(loop.sock_sendall(sock, query * 200), 1.0)
                    except TimeoutError:
                        break  # the server stopped reading us
                    except OSError:
                        break  # ... or closed us already
                    sent += 200
                while env.srv.tcp_stats()["stalled_closed"] == 0:
                    await asyncio.sleep(0.05)
        finally:
            sock.close()
        took = time.perf_counter() - started
        assert env.srv.tcp_stats()["stalled_closed"] == 1, (sent, took)
        assert (await env.ask("www.example.test", tcp=True)).rr


async def test_pipelined_misses_beyond_the_owed_cap_wait_and_are_all_answered() -> None:
    """RFC 7766 6.2.1.1: a connection owed MAX_OWED replies is not read until one is sent; the
    queries beyond that wait in the kernel and are answered later, none lost."""
    names = [f"p{i}.example.test" for i in range(2 * MAX_OWED)]
    zone = {**ZONE, **{n: [{"type": "A", "value": "192.0.2.99", "ttl": 60}] for n in names}}
    async with DnsEnv(zone, forward={"timeout": 2.0}) as env:
        env.fake.delay = 0.3
        reader, writer = await asyncio.open_connection(*env.address())
        messages = [query_bytes(n) for n in names]
        writer.write(b"".join(framed(m) for m in messages))
        await writer.drain()
        await asyncio.sleep(0.15)
        assert env.srv.handler.misses.resolving == MAX_OWED
        ids = []
        async with asyncio.timeout(5.0):
            for _ in messages:
                size = struct.unpack("!H", await reader.readexactly(2))[0]
                reply = DNSRecord.parse(await reader.readexactly(size))
                assert [str(r.rdata) for r in reply.rr] == ["192.0.2.99"], reply
                ids.append(reply.header.id)
        writer.close()
        assert sorted(ids) == sorted(DNSRecord.parse(m).header.id for m in messages)
        assert env.srv.tcp_stats()["backlog_closed"] == 0


async def test_owed_replies_a_client_does_not_read_close_it_at_the_backlog_cap() -> None:
    """64 queries for one 60 KB answer, pipelined, replies never read: once the answer comes,
    the unread replies would take 3.8 MB of the server's memory; past MAX_BACKLOG the
    connection is aborted instead, and everybody else is served."""
    huge = [{"type": "TXT", "value": f"{i:03d}-" + "x" * 240, "ttl": 300} for i in range(230)]
    async with DnsEnv({**ZONE, "huge.example.test": huge}, forward={"timeout": 2.0}) as env:
        env.fake.delay = 0.2
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sock.setblocking(False)
        loop = asyncio.get_running_loop()
        try:
            await loop.sock_connect(sock, env.address())
            query = framed(query_bytes("huge.example.test", "TXT", edns=1232))
            await loop.sock_sendall(sock, query * MAX_OWED)
            async with asyncio.timeout(5.0):
                while env.srv.tcp_stats()["backlog_closed"] == 0:
                    await asyncio.sleep(0.05)
        finally:
            sock.close()
        stats = env.srv.tcp_stats()
        assert stats["connections"] == 0 and stats["stalled_closed"] == 0, stats
        reply = await env.ask("huge.example.test", "TXT", tcp=True)
        assert len(reply.rr) == len(huge)
