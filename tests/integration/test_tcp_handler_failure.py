"""A query the handler fails on (a bug) over TCP: that query gets no reply, is counted and
logged (capped, resolver/logsetup.py), and its connection and the others go on. On loopback,
with a handler that fails on b"boom"; no root."""

from __future__ import annotations

import asyncio
import io
from collections.abc import AsyncIterator
from typing import Any

import pytest

from resolver import logsetup
from resolver.dns.tcp import TcpServer
from tests.integration.conftest import tcp_exchange

pytestmark = pytest.mark.integration


class Echo:
    """A handler that answers each message with its own bytes, and fails on b"boom"."""

    def handle(self, data: bytes, addr: Any, conn: Any) -> bytes | None:
        if data == b"boom":
            raise RuntimeError("a bug in the handler")
        return b"re:" + data


@pytest.fixture
async def served() -> AsyncIterator[tuple[TcpServer, int]]:
    tcp = TcpServer(Echo(), 10.0, 64)  # type: ignore[arg-type]
    server = await asyncio.get_running_loop().create_server(tcp.protocol, "127.0.0.1", 0)
    try:
        yield tcp, server.sockets[0].getsockname()[1]
    finally:
        tcp.close_all()
        server.close()
        await server.wait_closed()


async def ask(port: int, *messages: bytes) -> list[bytes]:
    """The replies to `messages`, sent on one connection: none for b"boom"."""
    replies = sum(m != b"boom" for m in messages)
    return await tcp_exchange("127.0.0.1", port, list(messages), replies)


async def test_the_failing_query_costs_only_itself(
    served: tuple[TcpServer, int], daemon_log: io.StringIO
) -> None:
    tcp, port = served
    assert await ask(port, b"one", b"boom", b"two") == [b"re:one", b"re:two"]
    assert tcp.stats()["errors"] == 1
    assert "ERROR resolver.dns.tcp: TCP query from 127.0.0.1: the handler failed" in (
        daemon_log.getvalue()
    )


async def test_a_client_repeating_it_costs_the_log_a_few_lines(
    served: tuple[TcpServer, int], daemon_log: io.StringIO
) -> None:
    tcp, port = served
    for _ in range(20):  # a new connection each time, as a client retrying would
        assert await ask(port, b"boom", b"ok") == [b"re:ok"]
    assert tcp.stats()["errors"] == 20
    assert daemon_log.getvalue().count("the handler failed") == logsetup.BURST
