"""Integration tier: the real DnsServer on loopback against the in-process fake upstream.

`async def test_...` functions run under pytest-asyncio, each on a fresh loop (tests/conftest.py).
Each test builds its world with `async with DnsEnv(...) as env:` and queries it with dnslib on the
client side.
"""

from __future__ import annotations

import asyncio
import dataclasses
import shutil
import socket
import struct
import tempfile
import time
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest
from dnslib import EDNS0, QTYPE, DNSRecord

from policy.model import Match, Rule
from resolver.config import (
    CacheConfig,
    Config,
    ForwardConfig,
    RateLimitConfig,
    TcpConfig,
)
from resolver.dns.server import DnsServer
from resolver.hooks import Epoch, Pending, Tagged
from tests.fakeupstream import FakeUpstream
from tests.later import Later


@pytest.fixture
def tmp() -> Iterator[Path]:
    """A temporary directory with a short path (under /tmp): a Unix socket's path holds at most
    107 bytes, and pytest's tmp_path can be longer."""
    path = Path(tempfile.mkdtemp(prefix="rd-", dir="/tmp"))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def _big_txt(count: int) -> list[dict[str, Any]]:
    return [{"type": "TXT", "value": f"{i:02d}-" + "x" * 56, "ttl": 300} for i in range(count)]


ZONE: dict[str, list[dict[str, Any]]] = {
    "www.example.test": [
        {"type": "A", "value": "192.0.2.10", "ttl": 60},
        {"type": "AAAA", "value": "2001:db8::10", "ttl": 60},
    ],
    "two.example.test": [
        {"type": "A", "value": "192.0.2.21", "ttl": 100},
        {"type": "A", "value": "192.0.2.22", "ttl": 40},
    ],
    "alias.example.test": [{"type": "CNAME", "value": "edge.cdn.test", "ttl": 300}],
    "edge.cdn.test": [{"type": "CNAME", "value": "node.cdn.test", "ttl": 120}],
    "node.cdn.test": [{"type": "A", "value": "198.51.100.7", "ttl": 30}],
    "loop1.example.test": [{"type": "CNAME", "value": "loop2.example.test", "ttl": 60}],
    "loop2.example.test": [{"type": "CNAME", "value": "loop1.example.test", "ttl": 60}],
    "zero.example.test": [{"type": "A", "value": "192.0.2.30", "ttl": 0}],
    "long.example.test": [{"type": "A", "value": "192.0.2.31", "ttl": 999_999}],
    "medium.example.test": _big_txt(12),  # about 800 bytes: fits 1232, not 512
    "big.example.test": _big_txt(30),  # about 2000 bytes: TCP only
    "mail.example.test": [{"type": "MX", "value": "10 www.example.test", "ttl": 60}],
}
for _i in range(40):
    ZONE[f"n{_i}.example.test"] = [{"type": "A", "value": f"203.0.113.{_i + 1}", "ttl": 60}]


class FakeClock:
    """An injectable monotonic clock."""

    def __init__(self, start: float = 10_000.0) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


class StubMatcher:
    """policy.matcher.Matcher's match_any over a fixed {name: row} table (exact names)."""

    def __init__(self, rows: Mapping[str, int]) -> None:
        self.rows = dict(rows)

    def match(self, name: str) -> Match | None:
        row = self.rows.get(name)
        if row is None:
            return None
        return Match(Rule(row=row, purpose="test", required=True, patterns=(name,)), name)

    def match_any(self, names: Iterable[str]) -> tuple[str, Match] | None:
        for name in names:
            found = self.match(name)
            if found is not None:
                return name, found
        return None


class RecordingHook:
    """A breakout hook that records its calls; with `delay` its answers wait that long."""

    epoch = Epoch()
    ready = False

    def __init__(self, delay: float = 0.0) -> None:
        self.delay = delay
        self.calls: list[tuple[Tagged, int]] = []
        self.clients: list[str] = []
        self.finished: list[float] = []  # time.monotonic() when each awaited call completed

    def on_answer(
        self, tagged: Tagged, ttl: int, client: str = "", installed: list[bytes] | None = None
    ) -> Pending | None:
        self.calls.append((tagged, ttl))
        self.clients.append(client)
        if not self.delay:
            return None
        return Later(self.delay, lambda: self.finished.append(time.monotonic()))


def make_config(upstreams: list[tuple[str, int]], **over: Any) -> Config:
    """A Config for tests: loopback listen on a free port, short timeouts, no rate limit."""
    listen = over.pop("listen", (("127.0.0.1", 0), ("::1", 0)))
    sections: dict[str, Any] = {
        "cache": CacheConfig(**over.pop("cache", {})),
        "forward": ForwardConfig(**{"timeout": 0.25, **over.pop("forward", {})}),
        "tcp": TcpConfig(**over.pop("tcp", {})),
        "ratelimit": RateLimitConfig(**{"qps": 0.0, **over.pop("ratelimit", {})}),
    }
    return dataclasses.replace(
        Config(upstreams=tuple(upstreams), listen=tuple(listen)), **sections, **over
    )


class DnsEnv:
    """Fake upstream(s) + a started DnsServer; query helpers with dnslib."""

    def __init__(
        self,
        zone: Mapping[str, Any] | None = None,
        *,
        upstreams: int = 1,
        hook: Any = None,
        matcher: Any = None,
        clock: Any = None,
        probe_interval: float = 5.0,
        upstream_host: str = "127.0.0.1",
        batched: bool = True,
        **config: Any,
    ) -> None:
        self.batched = batched
        self.zone = ZONE if zone is None else zone
        self.n_upstreams = upstreams
        self.hook = hook if hook is not None else RecordingHook()
        self.matcher = matcher if matcher is not None else StubMatcher({})
        self.clock = clock
        self.probe_interval = probe_interval
        self.upstream_host = upstream_host
        self.config_over = config
        self.fakes: list[FakeUpstream] = []
        self.server: DnsServer | None = None

    async def __aenter__(self) -> DnsEnv:
        for _ in range(self.n_upstreams):
            self.fakes.append(await FakeUpstream(self.zone, host=self.upstream_host).start())
        await self.start_server([f.address for f in self.fakes])
        return self

    async def start_server(self, upstreams: list[tuple[str, int]]) -> None:
        """The DnsServer under test, forwarding to `upstreams`."""
        self.config = make_config(upstreams, **self.config_over)
        kwargs: dict[str, Any] = {"probe_interval": self.probe_interval, "batched": self.batched}
        if self.clock is not None:
            kwargs["clock"] = self.clock
        self.server = DnsServer(self.config, self.matcher, self.hook, **kwargs)
        await self.server.start()

    async def __aexit__(self, *exc: object) -> None:
        if self.server is not None:
            await self.server.stop(0.5)
        for fake in self.fakes:
            await fake.stop()

    @property
    def fake(self) -> FakeUpstream:
        return self.fakes[0]

    @property
    def srv(self) -> DnsServer:
        assert self.server is not None
        return self.server

    def address(self, v6: bool = False) -> tuple[str, int]:
        for host, port in self.srv.bound:
            if (":" in host) == v6:
                return host, port
        raise LookupError("no such listen address")

    @property
    def counters(self) -> dict[str, int]:
        return self.srv.counters

    # -- clients ---------------------------------------------------------------------------
    async def udp(
        self, data: bytes, *, v6: bool = False, timeout: float = 2.0, source: str = ""
    ) -> bytes | None:
        """Send raw bytes over UDP (from `source`: another loopback address is another
        client); the reply, or None if none came within `timeout`."""
        loop = asyncio.get_running_loop()
        host, port = self.address(v6)
        sock = socket.socket(socket.AF_INET6 if v6 else socket.AF_INET, socket.SOCK_DGRAM)
        sock.setblocking(False)
        try:
            if source:
                sock.bind((source, 0))
            await loop.sock_connect(sock, (host, port))
            await loop.sock_sendall(sock, data)
            try:
                return await asyncio.wait_for(loop.sock_recv(sock, 65535), timeout)
            except TimeoutError:
                return None
        finally:
            sock.close()

    async def tcp(
        self, messages: list[bytes], *, v6: bool = False, timeout: float = 2.0
    ) -> list[bytes]:
        """Send several messages on one TCP connection (in one write); the replies in the
        order they arrive."""
        host, port = self.address(v6)
        return await tcp_exchange(host, port, messages, len(messages), timeout)

    async def ask(
        self,
        name: str,
        qtype: str = "A",
        *,
        tcp: bool = False,
        v6: bool = False,
        edns: int | None = None,
        do: bool = False,
        cd: bool = False,
        rd: bool = True,
        timeout: float = 2.0,
    ) -> DNSRecord:
        """One query; the parsed reply (AssertionError if none came)."""
        data = query_bytes(name, qtype, edns=edns, do=do, cd=cd, rd=rd)
        if tcp:
            reply: bytes | None = (await self.tcp([data], v6=v6, timeout=timeout))[0]
        else:
            reply = await self.udp(data, v6=v6, timeout=timeout)
        assert reply is not None, f"no answer for {name} {qtype}"
        parsed = DNSRecord.parse(reply)
        assert parsed.header.id == DNSRecord.parse(data).header.id
        return parsed


def framed(data: bytes) -> bytes:
    """A DNS message as TCP carries it: its length first."""
    return struct.pack("!H", len(data)) + data


async def tcp_exchange(
    host: str, port: int, messages: list[bytes], replies: int, timeout: float = 2.0
) -> list[bytes]:
    """Send `messages` on one TCP connection (in one write); the first `replies` replies in
    the order they arrive."""
    reader, writer = await asyncio.open_connection(host, port)
    try:
        writer.write(b"".join(framed(m) for m in messages))
        out = []
        async with asyncio.timeout(timeout):
            for _ in range(replies):
                size = struct.unpack("!H", await reader.readexactly(2))[0]
                out.append(await reader.readexactly(size))
        return out
    finally:
        writer.close()


def query_bytes(
    name: str,
    qtype: str = "A",
    *,
    edns: int | None = None,
    do: bool = False,
    cd: bool = False,
    rd: bool = True,
) -> bytes:
    q = DNSRecord.question(name, qtype)
    q.header.rd = 1 if rd else 0
    q.header.cd = 1 if cd else 0
    if edns is not None or do:
        q.add_ar(EDNS0(udp_len=edns or 1232, flags="do" if do else ""))
    return bytes(q.pack())


def opt_of(reply: DNSRecord) -> Any:
    return next((r for r in reply.ar if r.rtype == QTYPE.OPT), None)


def rcode(reply: DNSRecord) -> int:
    return int(reply.header.rcode)
