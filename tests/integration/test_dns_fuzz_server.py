"""Random bytes thrown at the running server (UDP and TCP): it must keep answering.

The server runs on its own event loop in a thread for the whole module, so hypothesis can
drive it with plain blocking sockets.
"""

from __future__ import annotations

import asyncio
import socket
import struct
import threading
from collections.abc import Iterator
from concurrent.futures import Future
from typing import Any

import pytest
from dnslib import DNSRecord
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.integration.conftest import DnsEnv, query_bytes

pytestmark = pytest.mark.integration


class ThreadedEnv:
    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.env = DnsEnv()

    def __enter__(self) -> DnsEnv:
        self.thread.start()
        self._run(self.env.__aenter__())
        return self.env

    def __exit__(self, *exc: object) -> None:
        self._run(self.env.__aexit__(None, None, None))
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)
        self.loop.close()

    def _run(self, coro: Any) -> Any:
        future: Future[Any] = asyncio.run_coroutine_threadsafe(coro, self.loop)
        return future.result(10)


@pytest.fixture(scope="module")
def env() -> Iterator[DnsEnv]:
    with ThreadedEnv() as running:
        yield running


def _ask(address: tuple[str, int]) -> DNSRecord:
    data = query_bytes("www.example.test")
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.settimeout(2.0)
        sock.sendto(data, address)
        return DNSRecord.parse(sock.recv(4096))


HEADERISH = st.binary(min_size=12, max_size=12).map(
    lambda h: h[:2] + bytes((h[2] & 0x7F,)) + h[3:4] + b"\x00\x01" + h[6:]
)  # QR clear, one question: gets past the first checks


PROBE = query_bytes("www.example.test")  # cached after the first example
PROBE_ID = PROBE[:2]


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    junk=st.one_of(
        st.binary(max_size=600),
        st.tuples(HEADERISH, st.binary(max_size=300)).map(lambda t: t[0] + t[1]),
    )
)
def test_random_udp_bytes_never_break_the_server(env: DnsEnv, junk: bytes) -> None:
    """Junk, then a valid query: the valid one is answered; anything else is a response."""
    address = env.address()
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.settimeout(2.0)
        sock.sendto(junk, address)
        sock.sendto(PROBE, address)
        while True:
            reply = sock.recv(65535)
            assert len(reply) >= 12 and reply[2] & 0x80
            if reply[:2] == PROBE_ID and reply[12:] != junk[12:]:
                break
            assert reply[:2] == junk[:2]


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(junk=st.binary(max_size=400))
def test_random_tcp_bytes_never_break_the_server(env: DnsEnv, junk: bytes) -> None:
    with socket.create_connection(env.address(), timeout=2.0) as sock:
        sock.sendall(struct.pack("!H", len(junk)) + junk + struct.pack("!H", len(PROBE)) + PROBE)
        stream = sock.makefile("rb")
        while True:
            size = struct.unpack("!H", stream.read(2))[0]
            reply = stream.read(size)
            assert len(reply) >= 12 and reply[2] & 0x80
            if reply[:2] == PROBE_ID and DNSRecord.parse(reply).rr:
                break


def test_server_still_answers_after_the_fuzzing(env: DnsEnv) -> None:
    reply = _ask(env.address())
    assert [str(r.rdata) for r in reply.rr] == ["192.0.2.10"]
    assert env.counters["total"] > 300
