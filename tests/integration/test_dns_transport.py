"""UDP and TCP on every listen address, IPv4 and IPv6; RFC 7766 connection handling."""

from __future__ import annotations

import asyncio
import socket
import struct

import pytest
from dnslib import DNSRecord

from resolver.dns.server import DnsServer
from tests.integration.conftest import DnsEnv, RecordingHook, StubMatcher, make_config, query_bytes

pytestmark = pytest.mark.integration


async def test_udp_and_tcp_on_ipv4_and_ipv6() -> None:
    async with DnsEnv() as env:
        for v6 in (False, True):
            for tcp in (False, True):
                reply = await env.ask("www.example.test", tcp=tcp, v6=v6)
                assert [str(r.rdata) for r in reply.rr] == ["192.0.2.10"]
        assert len(env.srv.bound) == 2
        assert all(s.count(":") >= 1 for s in env.srv.status()["listen"])
        assert env.fake.received and len(env.fake.received) == 1  # one miss, then hits


async def test_tcp_pipelined_answers_out_of_order() -> None:
    async with DnsEnv() as env:
        await env.ask("www.example.test")  # cached now
        env.fake.delay = 0.15  # below the forward timeout (0.25)
        slow = query_bytes("n1.example.test")
        fast = query_bytes("www.example.test")
        other = query_bytes("n2.example.test")
        replies = await env.tcp([slow, fast, other])
        ids = [DNSRecord.parse(r).header.id for r in replies]
        assert ids[0] == DNSRecord.parse(fast).header.id  # the cached one overtook
        assert sorted(ids) == sorted(DNSRecord.parse(m).header.id for m in (slow, fast, other))
        assert all(DNSRecord.parse(r).rr for r in replies)


async def test_tcp_many_queries_on_one_connection() -> None:
    async with DnsEnv() as env:
        messages = [query_bytes(f"n{i}.example.test") for i in range(20)]
        replies = await env.tcp(messages)
        want = {DNSRecord.parse(m).header.id: f"n{i}.example.test." for i, m in enumerate(messages)}
        for raw in replies:
            reply = DNSRecord.parse(raw)
            assert str(reply.q.qname) == want[reply.header.id]


async def test_tcp_idle_timeout_closes_connection() -> None:
    async with DnsEnv(tcp={"idle_timeout": 0.3}) as env:
        reader, writer = await asyncio.open_connection(*env.address())
        data = query_bytes("www.example.test")
        writer.write(struct.pack("!H", len(data)) + data)
        size = struct.unpack("!H", await reader.readexactly(2))[0]
        await reader.readexactly(size)
        started = asyncio.get_running_loop().time()
        assert await asyncio.wait_for(reader.read(), 2.0) == b""  # closed by the server
        waited = asyncio.get_running_loop().time() - started
        assert 0.2 < waited < 1.5
        writer.close()
        assert env.srv.tcp_stats()["idle_closed"] == 1


async def test_tcp_connection_cap_evicts_the_least_active_connection() -> None:
    """At the cap a new connection closes the one silent longest, if it is owed nothing."""
    async with DnsEnv(tcp={"max_connections": 2}) as env:
        env.srv.tcp.max_per_client = 3  # all from 127.0.0.1: the per-client cap is not tested here
        held = [await asyncio.open_connection(*env.address()) for _ in range(2)]
        await asyncio.sleep(0.05)
        assert (await env.ask("www.example.test", tcp=True)).rr  # a third one gets room
        assert await asyncio.wait_for(held[0][0].read(), 2.0) == b""  # the oldest, closed
        stats = env.srv.tcp_stats()
        assert stats["evicted"] >= 1 and stats["rejected"] == 0
        for _r, w in held:
            w.close()


async def test_tcp_connection_cap_rejects_when_every_connection_is_owed_replies() -> None:
    async with DnsEnv(tcp={"max_connections": 2}) as env:
        env.srv.tcp.max_per_client = 3
        env.fake.delay = 0.2  # below the forward timeout (0.25): answered, but later
        busy = [await asyncio.open_connection(*env.address()) for _ in range(2)]
        for i, (_reader, writer) in enumerate(busy):
            data = query_bytes(f"n{i}.example.test")
            writer.write(struct.pack("!H", len(data)) + data)
            await writer.drain()
        await asyncio.sleep(0.05)
        reader, writer = await asyncio.open_connection(*env.address())
        assert await asyncio.wait_for(reader.read(), 2.0) == b""  # no room: closed at once
        writer.close()
        assert env.srv.tcp_stats()["rejected"] == 1
        for reader, writer in busy:  # the busy ones are answered all the same
            size = struct.unpack("!H", await asyncio.wait_for(reader.readexactly(2), 2.0))[0]
            assert DNSRecord.parse(await reader.readexactly(size)).rr
            writer.close()


async def test_tcp_oversized_length_closes_connection() -> None:
    async with DnsEnv() as env:
        reader, writer = await asyncio.open_connection(*env.address())
        writer.write(struct.pack("!H", 60000) + b"\0" * 100)
        assert await asyncio.wait_for(reader.read(), 2.0) == b""
        writer.close()
        assert env.srv.tcp_stats()["oversized"] == 1
        assert (await env.ask("www.example.test", tcp=True)).rr


async def test_tcp_split_writes_are_reassembled() -> None:
    async with DnsEnv() as env:
        reader, writer = await asyncio.open_connection(*env.address())
        data = query_bytes("www.example.test")
        framed = struct.pack("!H", len(data)) + data
        for i in range(len(framed)):
            writer.write(framed[i : i + 1])
            await writer.drain()
        size = struct.unpack("!H", await reader.readexactly(2))[0]
        reply = DNSRecord.parse(await reader.readexactly(size))
        assert reply.header.id == DNSRecord.parse(data).header.id
        writer.close()


async def test_bind_failure_names_the_address() -> None:
    blocker = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    blocker.bind(("127.0.0.1", 0))
    port = blocker.getsockname()[1]
    try:
        config = make_config([("127.0.0.1", 9)], listen=(("127.0.0.1", port),))
        server = DnsServer(config, StubMatcher({}), RecordingHook())
        with pytest.raises(OSError, match=f"127.0.0.1:{port}"):
            await server.start()
        await server.stop(0.1)
    finally:
        blocker.close()


async def test_tcp_length_prefix_then_stall_is_closed_by_the_message_deadline() -> None:
    """A message must arrive whole within min(message deadline, idle timeout) of its start."""
    async with DnsEnv(tcp={"idle_timeout": 0.3}) as env:
        reader, writer = await asyncio.open_connection(*env.address())
        writer.write(b"\0\x20")  # a 32-byte message announced, never sent
        await writer.drain()
        assert await asyncio.wait_for(reader.read(10), 2.0) == b""
        writer.close()
        assert env.srv.tcp_stats()["slow_closed"] == 1
