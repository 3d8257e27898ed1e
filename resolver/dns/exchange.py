"""One question to one upstream: what the forwarding side asks of the UDP/TCP layer.

`Transport` is that contract, injected (Handler -> Forwarder -> UpstreamSet) so that tests and
the fuzz harness replace the sockets without patching module attributes (which code compiled
with mypyc would ignore). `sockets.Sockets` is the real one: UDP from a small pool of
connected sockets (see sockets.py), TCP through `query_tcp` here.

Every upstream query gets an id from the system's CSPRNG (`new_id`). A reply is accepted only
when `replies.accept_reply` says it is the reply to our query (id, QR, opcode, question;
FORMERR and NOTIMP also without a question) and well-formed (no compression loops; bytes after
the last record are cut off and counted by `cut`); anything else is counted and dropped while
the wait goes on. A TCP reply with TC set is no complete answer either and counts as malformed.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import os
import socket
import struct
from collections.abc import Callable, Coroutine
from typing import Any, Final, Protocol

from resolver.dns import messages, replies, wire

log = logging.getLogger(__name__)

Reply = tuple[bytes, replies.Layout]
# Shortages that are ours, not the upstream's.
SHORTAGE: Final = (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM)


class Peer(Protocol):
    """The upstream as the transports see it (upstream.Upstream)."""

    host: str
    port: int
    family: socket.AddressFamily
    text: str
    stats: dict[str, int]


class Attempt(Protocol):
    """One UDP attempt in flight."""

    def cancel(self) -> None:
        """Forget it: its callback is never called, its timer and its slot are freed."""
        ...


class Transport(Protocol):
    """What the upstream sets ask of the sockets."""

    def udp(
        self, up: Peer, question: bytes, do: bool, cd: bool, edns: bool, timeout: float,
        done: Callable[[Reply | None], None],
    ) -> Attempt:  # fmt: skip
        """Send one query over UDP; `done` is called once, later from the loop (never from
        inside this call), with the reply, or None on a timeout or a send that failed.
        OSError at once when no socket is to be had."""
        ...

    def tcp(
        self, up: Peer, question: bytes, do: bool, cd: bool, edns: bool, timeout: float
    ) -> Coroutine[Any, Any, Reply | None]:
        """One attempt over TCP (after TC), as `query_tcp`: the reply, None for an
        unacceptable one, TcpFailed for a timeout or a failed connection."""
        ...

    def close(self) -> None:
        """Close every socket; attempts still in flight are forgotten (never called)."""
        ...


class _Ids:
    """Query ids from the system's CSPRNG, read 2 KiB at a time (one getrandom(2) per 1,024
    queries instead of one per query)."""

    __slots__ = ("_at", "_pool")

    def __init__(self) -> None:
        self._pool = b""
        self._at = 0

    def next(self) -> int:
        at = self._at
        if at >= len(self._pool):
            self._pool, at = os.urandom(2048), 0
        self._at = at + 2
        return (self._pool[at] << 8) | self._pool[at + 1]


new_id = _Ids().next


class TcpFailed(Exception):
    """The TCP attempt failed at the transport: a timeout (`timed_out`) or an error."""

    def __init__(self, timed_out: bool) -> None:
        super().__init__("timeout" if timed_out else "error")
        self.timed_out = timed_out


async def query_tcp(
    up: Peer, question: bytes, do: bool, cd: bool, edns: bool, timeout: float
) -> Reply | None:
    """One attempt over TCP (after TC): the reply, None for an unacceptable one, TcpFailed
    for a timeout or a connection that failed."""
    qid = new_id()
    query = messages.build_query(qid, question, do, cd, edns)
    writer: asyncio.StreamWriter | None = None
    try:
        async with asyncio.timeout(timeout):
            reader, writer = await asyncio.open_connection(up.host, up.port)
            writer.write(struct.pack("!H", len(query)) + query)
            size = struct.unpack("!H", await reader.readexactly(2))[0]
            data = await reader.readexactly(size)
    except (OSError, asyncio.IncompleteReadError, TimeoutError) as err:
        timed_out = isinstance(err, TimeoutError)
        up.stats["timeouts" if timed_out else "errors"] += 1
        log.debug("upstream %s over TCP: %r", up.text, err)
        raise TcpFailed(timed_out) from None
    finally:
        if writer is not None:
            writer.close()
    try:
        layout = replies.accept_reply(data, qid, question)
    except wire.WireError as err:
        up.stats["malformed"] += 1
        log.debug("upstream %s over TCP: malformed reply: %s", up.text, err)
        return None
    if layout is None:
        up.stats["dropped"] += 1
        return None
    if layout.truncated:
        # TC over TCP: a partial answer we must neither cache nor hand out as whole.
        up.stats["malformed"] += 1
        log.debug("upstream %s over TCP: reply with TC set, not used", up.text)
        return None
    return cut(up, data, layout)


def cut(up: Peer, data: bytes, layout: replies.Layout) -> Reply:
    """The reply without the bytes after its last record (counted), as `layout` found it."""
    if layout.end < len(data):
        up.stats["trailing"] += 1
        log.debug("upstream %s: %d bytes after the reply cut off", up.text, len(data) - layout.end)
        return data[: layout.end], layout
    return data, layout
