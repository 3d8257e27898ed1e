"""The UDP listener: the read loop. It reads datagrams, hands each to the handler, sends what
it returns.

It drives a non-blocking socket with `loop.add_reader` and reads up to `BATCH` datagrams per
wake-up, which measured cheaper per query than a DatagramProtocol under uvloop (one Python
callback per wake-up instead of one per datagram, no transport in between): with `mmsg.Batches`
in one recvmmsg, their replies in one sendmmsg; without, one recvfrom and one sendto each.
The protocol logic
is the handler's (`Handler.handle`); this module only moves bytes. A miss is resolved in a
task that replies through `send` later. A reply the kernel cannot take right now (send buffer
full) is dropped and counted in `send_dropped`, never queued, so nothing grows without bound.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
from typing import Any, Protocol

from resolver import fdwatch
from resolver.dns.mmsg import BATCH, MAX_QUERY, REPLY_SLOT, UNUSABLE, Batches
from resolver.dns.query import Conn
from resolver.logsetup import REPEATS

log = logging.getLogger(__name__)


class QueryHandler(Protocol):
    """What the listener hands each datagram to (`handler.Handler`)."""

    def handle(self, data: bytes, addr: Any, conn: Conn) -> bytes | None: ...


class UdpListener:
    """One bound UDP socket; the handler's `Conn` for the queries it reads."""

    tcp = False

    def __init__(
        self, handler: QueryHandler, sock: socket.socket, batches: Batches | None = None
    ) -> None:
        self.handler = handler
        self.sock = sock
        self.batches = batches  # None: one datagram per system call
        self.send_dropped = 0  # replies the kernel would not take (send buffer full)
        self.errors = 0
        self._loop: asyncio.AbstractEventLoop | None = None

    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        self.sock.setblocking(False)
        self._loop = loop
        loop.add_reader(self.sock.fileno(), self._readable)

    def _readable(self) -> None:
        batches = self.batches
        if batches is None:
            self._read_each()
            return
        fd = self.sock.fileno()
        try:
            batch = batches.receive(fd)
        except OSError as err:  # e.g. an ICMP error queued on the socket: read again next time
            self.errors += 1
            if err.errno in UNUSABLE:  # and never will be: read one datagram per call from now
                log.warning("UDP: recvmmsg cannot be used here (%s); one datagram per call", err)
                self.batches = None
            else:
                log.debug("UDP receive error: %s", err)
            return
        replies: list[tuple[int, bytes]] = []
        for i in range(len(batch)):
            data, addr = batch[i]
            reply = self._handle(data, addr)
            if reply:  # neither dropped (None) nor deferred (b"")
                if len(reply) <= REPLY_SLOT:
                    replies.append((i, reply))
                else:
                    self.send(reply, addr)
        if replies:
            dropped, errors = batches.send(fd, replies)
            self.send_dropped += dropped
            self.errors += len(errors)
            for code in errors:
                log.debug("UDP send failed: %s", os.strerror(code))

    def _read_each(self) -> None:
        recvfrom = self.sock.recvfrom
        for _ in range(BATCH):
            try:
                data, addr = recvfrom(MAX_QUERY)
            except (BlockingIOError, InterruptedError):
                return
            except OSError as err:  # e.g. an ICMP error queued on the socket
                self.errors += 1
                log.debug("UDP receive error: %s", err)
                continue
            reply = self._handle(data, addr)
            if reply:  # neither dropped (None) nor deferred (b"")
                self.send(reply, addr)

    def _handle(self, data: bytes, addr: Any) -> bytes | None:
        """The handler's reply; a failure of its own costs this query only (logged)."""
        try:
            return self.handler.handle(data, addr, self)
        except Exception:
            self.errors += 1
            log.exception("UDP query from %s: the handler failed", addr[0], extra=REPEATS)
            return None

    def send(self, data: bytes, addr: Any) -> None:
        """A deferred reply (after an upstream query or an awaited hook)."""
        if self.sock.fileno() < 0:
            self.send_dropped += 1
            return
        try:
            self.sock.sendto(data, addr)
        except (BlockingIOError, InterruptedError):
            self.send_dropped += 1
        except OSError as err:
            self.errors += 1
            log.debug("UDP send to %s failed: %s", addr, err)

    def stop_reading(self) -> None:
        """Stop taking queries (shutdown); replies in flight can still be sent."""
        if self._loop is not None and self.sock.fileno() >= 0:
            fdwatch.stop_reading(self._loop, self.sock.fileno())

    def close(self) -> None:
        self.stop_reading()
        self._loop = None
        self.sock.close()
