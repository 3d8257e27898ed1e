"""DNS over TCP (RFC 7766): two-byte length prefix, pipelined queries, and connections that
cannot be held hostage.

Each connection hands every complete message to the handler as soon as it has arrived, so
several queries on one connection are worked on at once and answered in whatever order their
answers are ready (each reply carries its query's id). A connection the client has half-closed
is closed once every reply it is owed has been sent. A length prefix above `MAX_QUERY` closes
the connection: no query is that big, and it keeps a connection's buffer bounded. A query the
handler will not work on (budget spent, full pending table) is answered (SERVFAIL) rather
than left without an answer; only a message that is no query gets nothing.

What a slow or silent client can hold, and for how long (as Knot's tcp-io-timeout and
Unbound's per-address limits do it):
- a message must arrive whole within `message_timeout` of its first byte, and the first one
  within `message_timeout` of the connection's start: a client that sends nothing, or one
  byte a second, is closed (`slow_closed`) however busy it looks;
- between messages, a connection that is owed nothing is closed after `idle_timeout`
  (`idle_closed`);
- a client that does not read its replies stops being read (`pause_writing`), and after
  `idle_timeout` of that it is closed (`stalled_closed`);
- a connection owed `MAX_OWED` replies is not read until one of them is sent (RFC 7766 6.2.1.1
  lets a server bound pipelining): its further queries wait in the kernel's buffers;
- the replies the kernel has not taken yet (the client does not read them) take at most
  `MAX_BACKLOG` bytes of our memory (the transport's buffer: eight of the largest replies):
  the replies a client was owed when it stopped reading can still arrive, and one that takes
  the buffer past that closes the connection (`backlog_closed`). A connection closed for not
  reading is aborted: what it did not read is dropped at once;
- one client (an IPv4 address, an IPv6 /64) holds at most `max_per_client` connections: a new
  one closes that client's own least recently active connection (`client_evicted`);
- when `max_connections` are open, a new connection closes the least recently active one
  that is owed nothing (`evicted`). "Active" is a whole query received or a reply sent, so a
  connection dribbling bytes is never fresher than a client that asks. Only when every
  candidate is owed replies is the new connection closed at once (`rejected`).
A connection owed replies is never evicted: what it asked is answered or the client gives up.
The search for a connection to evict looks at `EVICT_SCAN` candidates at most.
"""

from __future__ import annotations

import asyncio
import logging
from collections import OrderedDict
from typing import Any, cast

from resolver import clients
from resolver.dns.handler import Handler
from resolver.logsetup import REPEATS

log = logging.getLogger(__name__)

MAX_QUERY = 4096
MESSAGE_TIMEOUT = 2.0  # seconds for a message to arrive whole, from its first byte
MAX_OWED = 64  # deferred replies one connection may be owed; then it is not read
MAX_BACKLOG = 512 * 1024  # bytes of replies the kernel has not taken yet, per connection
PER_CLIENT_SHARE = 8  # a client may hold max_connections / PER_CLIENT_SHARE connections
EVICT_SCAN = 64  # connections looked at for one to evict
COUNTERS = (
    "rejected", "evicted", "client_evicted", "slow_closed", "idle_closed", "stalled_closed",
    "oversized", "backlog_closed", "errors",
)  # fmt: skip


def client_key(peer: Any) -> str:
    """Whose connection this is (`clients.client_key`), as text."""
    host = str(peer[0]) if peer else ""
    key = clients.client_key(host)
    return host if key is None else clients.client_text(key)


def per_client(max_connections: int) -> int:
    return max(1, max_connections // PER_CLIENT_SHARE)


class TcpServer:
    """The connections of every TCP listener, their limits and their timeouts."""

    def __init__(
        self,
        handler: Handler,
        idle_timeout: float,
        max_connections: int,
        *,
        message_timeout: float = MESSAGE_TIMEOUT,
        max_per_client: int | None = None,
    ) -> None:
        self.handler = handler
        self.idle_timeout = idle_timeout
        self.max_connections = max_connections
        self.message_timeout = message_timeout
        self._per_client_given = max_per_client is not None
        self.max_per_client = max_per_client or per_client(max_connections)
        # Least recently active first; a whole query received or a reply sent moves it last.
        self.connections: OrderedDict[TcpConnection, None] = OrderedDict()
        self.clients: dict[str, OrderedDict[TcpConnection, None]] = {}
        self.counters = dict.fromkeys(COUNTERS, 0)

    def configure(self, idle_timeout: float, max_connections: int) -> None:
        """A reload: new limits apply to new connections and to the next checks."""
        self.idle_timeout = idle_timeout
        self.max_connections = max_connections
        if not self._per_client_given:
            self.max_per_client = per_client(max_connections)

    def stats(self) -> dict[str, int]:
        return {"connections": len(self.connections), **self.counters}

    def protocol(self) -> TcpConnection:
        return TcpConnection(self)

    def close_all(self) -> None:
        for conn in list(self.connections):
            conn.close()

    # -- admission --------------------------------------------------------------------------
    def admit(self, conn: TcpConnection) -> bool:
        """Make room for `conn` (evicting if need be) and register it; False: no room."""
        mine = self.clients.get(conn.client)
        if mine is not None and len(mine) >= self.max_per_client:
            victim = _evictable(mine)
            if victim is None:
                self.counters["rejected"] += 1
                return False
            self.counters["client_evicted"] += 1
            log.debug("TCP client %s at its %d connections: closing its least active one",
                      conn.client, self.max_per_client)  # fmt: skip
            victim.close()
        if len(self.connections) >= self.max_connections:
            victim = _evictable(self.connections)
            if victim is None:
                self.counters["rejected"] += 1
                return False
            self.counters["evicted"] += 1
            victim.close()
        self.connections[conn] = None
        self.clients.setdefault(conn.client, OrderedDict())[conn] = None
        return True

    def touch(self, conn: TcpConnection) -> None:
        """`conn` was active: it moves to the back of the eviction order."""
        if conn in self.connections:
            self.connections.move_to_end(conn)
            self.clients[conn.client].move_to_end(conn)

    def forget(self, conn: TcpConnection) -> None:
        if self.connections.pop(conn, 0) is None:
            mine = self.clients[conn.client]
            del mine[conn]
            if not mine:
                del self.clients[conn.client]


def _evictable(conns: OrderedDict[TcpConnection, None]) -> TcpConnection | None:
    """The least recently active connection that is owed no reply, among the first few."""
    for index, conn in enumerate(conns):
        if index >= EVICT_SCAN:
            break
        if not conn.owed:
            return conn
    return None


class TcpConnection(asyncio.Protocol):
    """One client connection; the handler's `Conn` for the queries it carries."""

    tcp = True

    def __init__(self, server: TcpServer) -> None:
        self.server = server
        self._handle = server.handler.handle
        self.transport: asyncio.Transport | None = None
        self.peer: Any = None
        self.client = ""
        self._buffer = bytearray()
        self._last = 0.0  # the last whole query received or reply sent
        self._started: float | None = None  # when the message now arriving began
        self._paused: float | None = None  # since when the client has not read its replies
        self._full = False  # owed MAX_OWED replies: not read until one is sent
        self._timer: asyncio.TimerHandle | None = None
        self.owed = 0  # deferred replies not sent yet
        self._eof = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        transport = cast(asyncio.Transport, transport)
        self.peer = transport.get_extra_info("peername")
        self.client = client_key(self.peer)
        if not self.server.admit(self):
            transport.abort()
            return
        self.transport = transport
        self._last = asyncio.get_running_loop().time()
        self._begin(self._last)  # the first message is due from now

    def data_received(self, data: bytes) -> None:
        if self.transport is None:
            return
        if self._started is None:
            self._begin(asyncio.get_running_loop().time())
        self._buffer += data
        self._work()

    def _work(self) -> None:
        """Hand every whole message in the buffer to the handler, unless the client stopped
        reading its replies (then the rest waits for `resume_writing`)."""
        buf = self._buffer
        handle, peer = self._handle, self.peer
        done = False
        while len(buf) >= 2 and self._paused is None and not self._full:
            size = (buf[0] << 8) | buf[1]
            if size > MAX_QUERY:
                self.server.counters["oversized"] += 1
                log.debug("TCP client %s: %d-byte message refused, closing", peer, size)
                self.close()
                return
            if len(buf) < size + 2:
                break
            message = bytes(buf[2 : size + 2])
            del buf[: size + 2]
            done = True
            try:
                reply = handle(message, peer, self)
            except Exception:  # a bug: this query gets no reply, the connection goes on
                self.server.counters["errors"] += 1
                log.exception("TCP query from %s: the handler failed", self.client, extra=REPEATS)
                reply = None
            if reply:
                self._write(reply)
            elif reply is not None:
                self.owed += 1
                if self.owed >= MAX_OWED and self.transport is not None:
                    self._full = True
                    if self._paused is None:
                        self.transport.pause_reading()
            if self.transport is None:
                return
        if done:
            now = asyncio.get_running_loop().time()
            self._last = now
            self._started = None
            if buf:
                self._begin(now)  # the next message began in this read
            self.server.touch(self)

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
        elif self._full and self.owed < MAX_OWED and self.transport is not None:
            self._full = False
            # Not from inside this call: it comes from the miss path answering its waiters.
            asyncio.get_running_loop().call_soon(self._read_again)

    def _write(self, data: bytes) -> None:
        transport = self.transport
        if transport is None or transport.is_closing():
            return
        transport.write(len(data).to_bytes(2, "big") + data)
        if transport.get_write_buffer_size() > MAX_BACKLOG:
            self._close_for("backlog_closed", "replies not read", abort=True)
            return
        self._last = asyncio.get_running_loop().time()
        self.server.touch(self)

    def pause_writing(self) -> None:
        if self.transport is not None:
            self._paused = asyncio.get_running_loop().time()
            self.transport.pause_reading()

    def resume_writing(self) -> None:
        self._paused = None
        self._read_again()

    def _read_again(self) -> None:
        """After a pause (the client did not read, or was owed MAX_OWED replies), unless
        another one holds now."""
        transport = self.transport
        if (
            self._paused is None
            and not self._full
            and transport is not None
            and not transport.is_closing()
        ):
            transport.resume_reading()
            self._started = None  # what is left of a message is due from now on
            self._work()  # what arrived before the pause
            if self._buffer and self._started is None and self.transport is not None:
                self._begin(asyncio.get_running_loop().time())

    # -- deadlines ----------------------------------------------------------------------------
    def _begin(self, now: float) -> None:
        """A message begins to arrive: it is due whole by its deadline; the timer rings then
        at the latest."""
        self._started = now
        server = self.server
        deadline = now + min(server.message_timeout, server.idle_timeout)
        timer = self._timer
        if timer is None or timer.when() > deadline:
            if timer is not None:
                timer.cancel()
            self._arm(asyncio.get_running_loop(), deadline)

    def _arm(self, loop: asyncio.AbstractEventLoop, when: float) -> None:
        self._timer = loop.call_at(when, self._check)

    def _check(self) -> None:
        """The one timer: the message deadline, the write stall, the idle timeout."""
        if self.transport is None:
            return
        server = self.server
        loop = asyncio.get_running_loop()
        now = loop.time()
        due = now + server.idle_timeout
        if self._started is not None and self._paused is None and not self._full:  # else unread
            deadline = self._started + min(server.message_timeout, server.idle_timeout)
            if now >= deadline:
                return self._close_for("slow_closed", "a message not whole in time")
            due = min(due, deadline)
        if self._paused is not None:
            deadline = self._paused + server.idle_timeout
            if now >= deadline:
                return self._close_for("stalled_closed", "replies not read", abort=True)
            due = min(due, deadline)
        elif not self.owed and self._started is None:
            deadline = self._last + server.idle_timeout
            if now >= deadline:
                return self._close_for("idle_closed", "idle")
            due = min(due, deadline)
        self._arm(loop, due)

    def _close_for(self, counter: str, why: str, abort: bool = False) -> None:
        self.server.counters[counter] += 1
        log.debug("TCP client %s: closing (%s)", self.peer, why)
        transport = self.transport
        if abort and transport is not None:
            transport.abort()  # close() would keep the unread replies until they are read
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
        self.server.forget(self)
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
