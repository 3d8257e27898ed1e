"""DNS over TCP (RFC 7766): two-byte length prefix, pipelined queries, idle timeout, a cap.

Each connection hands every complete message to the handler as soon as it has arrived, so
several queries on one connection are worked on at once and answered in whatever order their
answers are ready (each reply carries its query's id). A connection is closed after
`idle_timeout` seconds without a query or a reply. Beyond `max_connections` a new connection
is closed at once. A connection the client has half-closed is closed once every reply it is
owed has been sent, and idleness counts only while nothing is owed. A length prefix above
`MAX_QUERY` closes the connection: no query is that big, and it keeps a connection's buffer
bounded. When the client does not read its replies (`pause_writing`) we stop reading its
queries. A query the handler will not work on (budget spent, full pending table) is answered
(SERVFAIL) rather than left without an answer; only a message that is no query gets nothing.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any, cast

from resolver.dns.handler import Handler

log = logging.getLogger(__name__)

MAX_QUERY = 4096


class TcpServer:
    """The connections of every TCP listener, their cap and their idle timeout."""

    def __init__(self, handler: Handler, idle_timeout: float, max_connections: int) -> None:
        self.handler = handler
        self.idle_timeout = idle_timeout
        self.max_connections = max_connections
        self.connections: set[TcpConnection] = set()
        self.rejected = 0  # connections closed because of the cap
        self.oversized = 0  # connections closed for a length prefix above MAX_QUERY
        self.idle_closed = 0

    def configure(self, idle_timeout: float, max_connections: int) -> None:
        self.idle_timeout = idle_timeout
        self.max_connections = max_connections

    def protocol(self) -> TcpConnection:
        return TcpConnection(self)

    def close_all(self) -> None:
        for conn in list(self.connections):
            conn.close()


class TcpConnection(asyncio.Protocol):
    """One client connection; the handler's `Conn` for the queries it carries."""

    tcp = True

    def __init__(self, server: TcpServer) -> None:
        self.server = server
        self._handle = server.handler.handle
        self.transport: asyncio.Transport | None = None
        self.peer: Any = None
        self._buffer = bytearray()
        self._last = 0.0
        self._timer: asyncio.TimerHandle | None = None
        self.owed = 0  # deferred replies not sent yet
        self._eof = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        transport = cast(asyncio.Transport, transport)
        server = self.server
        if len(server.connections) >= server.max_connections:
            server.rejected += 1
            transport.abort()
            return
        self.transport = transport
        self.peer = transport.get_extra_info("peername")
        server.connections.add(self)
        loop = asyncio.get_running_loop()
        self._last = loop.time()
        self._timer = loop.call_later(server.idle_timeout, self._check_idle)

    def data_received(self, data: bytes) -> None:
        if self.transport is None:
            return
        self._last = asyncio.get_running_loop().time()
        buf = self._buffer
        buf += data
        handle, peer = self._handle, self.peer
        while len(buf) >= 2:
            size = (buf[0] << 8) | buf[1]
            if size > MAX_QUERY:
                self.server.oversized += 1
                log.debug("TCP client %s: %d-byte message refused, closing", peer, size)
                self.close()
                return
            if len(buf) < size + 2:
                break
            message = bytes(buf[2 : size + 2])
            del buf[: size + 2]
            reply = handle(message, peer, self)
            if reply:
                self._write(reply)
            elif reply is not None:
                self.owed += 1
            if self.transport is None:
                return

    def eof_received(self) -> bool:
        self._eof = True
        if self.owed:
            return True  # keep the write side open for the replies still on their way
        self._forget()
        return False  # the transport closes itself

    def send(self, data: bytes, addr: Any) -> None:
        """A deferred reply."""
        if self.owed:
            self.owed -= 1
        self._write(data)
        if self._eof and not self.owed:
            self.close()

    def _write(self, data: bytes) -> None:
        transport = self.transport
        if transport is None or transport.is_closing():
            return
        transport.write(len(data).to_bytes(2, "big") + data)
        self._last = asyncio.get_running_loop().time()

    def pause_writing(self) -> None:
        if self.transport is not None:
            self.transport.pause_reading()

    def resume_writing(self) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.resume_reading()

    def _check_idle(self) -> None:
        if self.transport is None:
            return
        loop = asyncio.get_running_loop()
        left = self._last + self.server.idle_timeout - loop.time()
        if left > 0 or self.owed:
            left = left if left > 0 else self.server.idle_timeout
            self._timer = loop.call_later(left, self._check_idle)
            return
        self.server.idle_closed += 1
        self.close()

    def close(self) -> None:
        transport = self.transport
        if transport is not None:
            transport.close()
        self._forget()

    def connection_lost(self, exc: Exception | None) -> None:
        self._forget()

    def _forget(self) -> None:
        self.transport = None
        self.server.connections.discard(self)
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
