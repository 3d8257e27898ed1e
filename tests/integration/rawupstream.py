"""A scriptable raw upstream for replies the zone fake cannot make: UDP and TCP on one port.

A responder gets each query's bytes and its transport ("udp" or "tcp") and returns the reply
datagrams to send, as bytes (none: a timeout). The helpers below build replies field by field,
so a test can send exactly the malformed, truncated or odd reply it is about:

    def respond(query: bytes, transport: str) -> list[bytes]:
        return [header(qid(query), 0x8180, 1, 1, 0, 0) + question(query) + rr(PTR_Q, 1, 60, A_1)]

    async with RawEnv([respond, "fake"]) as env:   # a raw upstream, then the zone fake
        reply = await env.ask("www.example.test")
"""

from __future__ import annotations

import asyncio
import socket
import struct
from collections.abc import Callable
from typing import Any, cast

from tests.fakeupstream import FakeUpstream, bind_pair
from tests.integration.conftest import ZONE, DnsEnv

Responder = Callable[[bytes, str], list[bytes]]

PTR_Q = b"\xc0\x0c"  # a compression pointer to the question name
A_1 = socket.inet_aton("192.0.2.1")


def qid(query: bytes) -> int:
    return int(struct.unpack_from("!H", query)[0])


def question_end(query: bytes) -> int:
    """The offset just past the (uncompressed) question of `query`."""
    pos = 12
    while query[pos]:
        pos += query[pos] + 1
    return pos + 5


def question(query: bytes) -> bytes:
    """The question section of `query`, to echo."""
    return query[12 : question_end(query)]


def has_opt(query: bytes) -> bool:
    return query[10:12] != b"\0\0"


def header(ident: int, flags: int, qd: int, an: int, ns: int, ar: int) -> bytes:
    return struct.pack("!HHHHHH", ident, flags, qd, an, ns, ar)


def rr(owner: bytes, rtype: int, ttl: int, rdata: bytes, rclass: int = 1) -> bytes:
    return owner + struct.pack("!HHIH", rtype, rclass, ttl, len(rdata)) + rdata


def opt(ext_rcode: int = 0, do: bool = False, size: int = 1232, rdata: bytes = b"") -> bytes:
    flags = 0x8000 if do else 0
    return b"\0" + struct.pack("!HHBBHH", 41, size, ext_rcode, 0, flags, len(rdata)) + rdata


def soa(minimum: int) -> bytes:
    """SOA RDATA: root mname and rname, serial 1, the given MINIMUM."""
    return b"\0\0" + struct.pack("!IIIII", 1, 3600, 600, 86400, minimum)


class _Udp(asyncio.DatagramProtocol):
    def __init__(self, owner: RawUpstream) -> None:
        self.owner = owner
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.DatagramTransport, transport)

    def datagram_received(self, data: bytes, addr: Any) -> None:
        self.owner.queries.append(("udp", data))
        for reply in self.owner.respond(data, "udp"):
            assert self.transport is not None
            self.transport.sendto(reply, addr)


class _Tcp(asyncio.Protocol):
    def __init__(self, owner: RawUpstream) -> None:
        self.owner = owner
        self.transport: asyncio.Transport | None = None
        self.buffer = b""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        while len(self.buffer) >= 2:
            size = struct.unpack_from("!H", self.buffer)[0]
            if len(self.buffer) < size + 2:
                return
            query, self.buffer = self.buffer[2 : size + 2], self.buffer[size + 2 :]
            self.owner.queries.append(("tcp", query))
            for reply in self.owner.respond(query, "tcp"):
                assert self.transport is not None
                self.transport.write(struct.pack("!H", len(reply)) + reply)


class RawUpstream:
    """UDP and TCP on one 127.0.0.1 port; every query is recorded as (transport, bytes)."""

    def __init__(self, respond: Responder) -> None:
        self.respond = respond
        self.queries: list[tuple[str, bytes]] = []
        self.port = 0
        self._udp: asyncio.DatagramTransport | None = None
        self._tcp: asyncio.AbstractServer | None = None

    @property
    def address(self) -> tuple[str, int]:
        return "127.0.0.1", self.port

    async def start(self) -> RawUpstream:
        loop = asyncio.get_running_loop()
        udp, tcp, port = bind_pair("127.0.0.1")
        self.port = port
        self._udp, _ = await loop.create_datagram_endpoint(lambda: _Udp(self), sock=udp)
        self._tcp = await loop.create_server(lambda: _Tcp(self), sock=tcp)
        return self

    async def stop(self) -> None:
        if self._udp is not None:
            self._udp.close()
        if self._tcp is not None:
            self._tcp.close()
            await self._tcp.wait_closed()

    def transports(self) -> list[str]:
        return [transport for transport, _query in self.queries]


class RawEnv(DnsEnv):
    """A DnsEnv whose upstreams, in order, are raw upstreams (a responder each) or the zone
    fake (the string "fake")."""

    def __init__(self, upstreams: list[Responder | str], **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.specs = upstreams
        self.raws: list[RawUpstream] = []

    async def __aenter__(self) -> RawEnv:
        addresses = []
        for spec in self.specs:
            if isinstance(spec, str):
                fake = await FakeUpstream(ZONE).start()
                self.fakes.append(fake)
                addresses.append(fake.address)
            else:
                raw = await RawUpstream(spec).start()
                self.raws.append(raw)
                addresses.append(raw.address)
        await self.start_server(addresses)
        return self

    async def __aexit__(self, *exc: object) -> None:
        await super().__aexit__(*exc)
        for raw in self.raws:
            await raw.stop()
