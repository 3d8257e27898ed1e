"""A small netlink transport for the per-answer path: struct-packed messages, many per sendmsg.

Why not pyroute2 here: on these machines `AsyncIPRoute.route("replace")` programs about
2.5-2.9k routes/s and encoding a prepared pyroute2 `rtmsg` about 6.4k/s, while a DNS answer
with eight new addresses must be in the kernel within a millisecond or two. So the hot path
packs its few fixed-layout messages with `struct` (a route is one header, one RTA_DST and a
suffix prepared once per configuration) and sends a whole batch in one `sendmsg`. pyroute2
stays for the slow, rare control operations (ip rules, ipset create) where its encoders and
error mapping are worth their cost.

Acknowledgements: every message but the last of a `sendmsg` goes without NLM_F_ACK; the kernel
answers those only when they fail. The last one asks for an ack. The kernel handles a netlink
datagram's messages in order, so once that ack is read every message before it is settled:
failures came in as NLMSG_ERROR before it, the rest succeeded. One `recv` settles a batch.
rtnetlink and nfnetlink process requests synchronously inside `sendmsg`, so the acks are
normally waiting by the time `send` returns and are read at once; the socket is also
watched with `loop.add_reader` for anything that comes later.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import os
import socket
import struct
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field

log = logging.getLogger(__name__)

NETLINK_ROUTE = 0
NETLINK_NETFILTER = 12

NLMSG_NOOP = 1
NLMSG_ERROR = 2
NLMSG_DONE = 3

NLM_F_REQUEST = 0x1
NLM_F_MULTI = 0x2
NLM_F_ACK = 0x4
NLM_F_DUMP = 0x300
NLM_F_REPLACE = 0x100
NLM_F_EXCL = 0x200
NLM_F_CREATE = 0x400

NLA_F_NESTED = 0x8000
NLA_F_NET_BYTEORDER = 0x4000
NLA_TYPE_MASK = 0x3FFF

SOL_NETLINK = 270
NETLINK_ADD_MEMBERSHIP = 1
NETLINK_CAP_ACK = 10
NETLINK_EXT_ACK = 11
NETLINK_GET_STRICT_CHK = 12
SO_RCVBUFFORCE = 33  # not exported by the socket module

HEADER = struct.Struct("=IHHII")  # len, type, flags, seq, pid
_ERROR = struct.Struct("=i")
_ATTR = struct.Struct("=HH")

# Messages per sendmsg. Bounds what failures can queue on the socket before it is drained:
# an error ack costs about 1 KiB of receive buffer (skb overhead included).
CHUNK = 256
RCVBUF = 4 << 20
_RECV_SIZE = 1 << 18

Buffer = bytes | bytearray | memoryview
Message = tuple[int, int, bytes]  # (nlmsg_type, nlmsg_flags, body after the header)
Settled = Callable[[list[int]], None]  # errno per message (0: done), in submission order


class NetlinkSocketError(OSError):
    """A netlink request failed; `code` is the errno (positive), as in pyroute2."""

    def __init__(self, code: int, what: str = "") -> None:
        super().__init__(code, f"{what}: {os.strerror(code)}" if what else os.strerror(code))
        self.code = code


def attr(kind: int, payload: bytes) -> bytes:
    """One netlink attribute, padded to 4 bytes."""
    size = 4 + len(payload)
    return _ATTR.pack(size, kind) + payload + b"\0" * (-size & 3)


def nested(kind: int, *parts: bytes) -> bytes:
    return attr(kind | NLA_F_NESTED, b"".join(parts))


def asciiz(text: str) -> bytes:
    return text.encode() + b"\0"


def parse_attrs(buf: Buffer, offset: int = 0, end: int | None = None) -> dict[int, bytes]:
    """Attributes from `offset` to `end` by type (flags masked off); the last of a type wins."""
    out: dict[int, bytes] = {}
    end = len(buf) if end is None else end
    while offset + 4 <= end:
        size, kind = _ATTR.unpack_from(buf, offset)
        if size < 4:
            break
        out[kind & NLA_TYPE_MASK] = bytes(buf[offset + 4 : offset + size])
        offset += (size + 3) & ~3
    return out


def iter_messages(buf: Buffer, size: int) -> Iterator[tuple[int, int, int, int, int]]:
    """(type, flags, seq, body offset, end) of every message in the first `size` bytes."""
    offset = 0
    while offset + 16 <= size:
        length, kind, flags, seq, _pid = HEADER.unpack_from(buf, offset)
        if length < 16:
            return
        yield kind, flags, seq, offset + 16, min(offset + length, size)
        offset += (length + 3) & ~3


def recv(sock: socket.socket, buf: bytearray, overrun: Callable[[], None]) -> int | None:
    """Read the next datagram queued on the non-blocking `sock` into `buf`: its size, or None
    when none is left. ENOBUFS (the kernel dropped messages for want of room) calls `overrun`,
    then reading goes on."""
    while True:
        try:
            return sock.recv_into(buf)
        except (BlockingIOError, InterruptedError):
            return None
        except OSError as err:
            if err.errno != errno.ENOBUFS:
                raise
            overrun()


def open_socket(proto: int, groups: int = 0, strict: bool = False) -> socket.socket:
    """A non-blocking netlink socket with a large receive buffer and short error acks."""
    sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW | socket.SOCK_CLOEXEC, proto)
    try:
        sock.setblocking(False)
        try:
            sock.setsockopt(socket.SOL_SOCKET, SO_RCVBUFFORCE, RCVBUF)
        except PermissionError:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, RCVBUF)
        sock.setsockopt(SOL_NETLINK, NETLINK_CAP_ACK, 1)  # errors do not echo the request
        if strict:
            sock.setsockopt(SOL_NETLINK, NETLINK_GET_STRICT_CHK, 1)  # dumps honour filters
        sock.bind((0, groups))
    except OSError:
        sock.close()
        raise
    return sock


@dataclass(slots=True)
class _Chunk:
    """Messages sent in one sendmsg: sequence numbers first..last, the last one acked."""

    first: int
    last: int
    batch: _Batch
    base: int  # index of the chunk's first message within the batch


@dataclass(slots=True)
class _Batch:
    errors: list[int]
    open_chunks: int
    settled: Settled


@dataclass(slots=True)
class _Request:
    """A request that expects replies (a dump, or a get): collected until DONE or ERROR."""

    future: asyncio.Future[list[bytes]]
    replies: list[bytes] = field(default_factory=list)


class Channel:
    """One netlink socket for requests: batches with settle callbacks, and dumps/gets.

    Everything runs on the event loop thread. `submit` never blocks and never raises for
    kernel errors: each message's errno comes back through the callback.
    """

    def __init__(self, proto: int, strict: bool = False) -> None:
        self.proto = proto
        self.sock = open_socket(proto, strict=strict)
        self._seq = 1
        self._chunks: dict[int, _Chunk] = {}  # by the sequence number of the chunk's last message
        self._requests: dict[int, _Request] = {}
        self._buf = bytearray(_RECV_SIZE)
        self._loop: asyncio.AbstractEventLoop | None = None

    def attach(self, loop: asyncio.AbstractEventLoop) -> None:
        if self._loop is None:
            self._loop = loop
            loop.add_reader(self.sock.fileno(), self.drain)

    def close(self) -> None:
        if self._loop is not None:
            self._loop.remove_reader(self.sock.fileno())
            self._loop = None
        self._fail_all(errno.ESHUTDOWN)
        self.sock.close()

    @property
    def pending(self) -> int:
        return len(self._chunks) + len(self._requests)

    def _next_seq(self) -> int:
        seq = self._seq
        self._seq = seq + 1 if seq < 0x7FFFFFFF else 1
        return seq

    def submit(self, messages: Sequence[Message], settled: Settled, atomic: bool = False) -> None:
        """Send `messages`, CHUNK per sendmsg (all in one when `atomic`); call `settled` once."""
        if not messages:
            settled([])
            return
        batch = _Batch([0] * len(messages), 1, settled)  # 1: held open until all are sent
        step = len(messages) if atomic else CHUNK
        for base in range(0, len(messages), step):
            self._send_chunk(batch, base, messages[base : base + step])
            self.drain()  # the kernel has already answered: settle now, keep the buffer empty
        batch.open_chunks -= 1
        if batch.open_chunks == 0:
            self._finish(batch)

    def _send_chunk(self, batch: _Batch, base: int, part: Sequence[Message]) -> None:
        # The chunk is closed by the ack of its last message asking for one (an nf_tables
        # transaction acks its element message, not BATCH_END); when none does, the last does.
        ack_index = len(part) - 1
        for i in range(len(part) - 1, -1, -1):
            if part[i][1] & NLM_F_ACK:
                ack_index = i
                break
        first = self._seq
        data = bytearray()
        acked_seq = -1
        for i, (kind, flags, body) in enumerate(part):
            seq = self._next_seq()
            if i == ack_index:
                flags |= NLM_F_ACK
                acked_seq = seq
            data += HEADER.pack(16 + len(body), kind, flags, seq, 0)
            data += body
        chunk = _Chunk(first, acked_seq, batch, base)
        try:
            self.sock.send(data)
        except OSError as err:
            code = err.errno or errno.EIO
            for i in range(len(part)):
                batch.errors[base + i] = code
            log.warning("netlink send of %d messages failed: %s", len(part), os.strerror(code))
            return
        batch.open_chunks += 1
        self._chunks[acked_seq] = chunk

    def request(self, kind: int, flags: int, body: bytes) -> asyncio.Future[list[bytes]]:
        """Send one request; the future gets every reply body (dump parts or the single reply).

        Fails with NetlinkSocketError(errno) when the kernel refuses it.
        """
        loop = self._loop or asyncio.get_running_loop()
        self.attach(loop)
        seq = self._next_seq()
        fut: asyncio.Future[list[bytes]] = loop.create_future()
        self._requests[seq] = _Request(fut)
        try:
            self.sock.send(HEADER.pack(16 + len(body), kind, flags | NLM_F_ACK, seq, 0) + body)
        except OSError as err:
            del self._requests[seq]
            fut.set_exception(NetlinkSocketError(err.errno or errno.EIO, "netlink send"))
            return fut
        self.drain()
        return fut

    def drain(self) -> None:
        """Read everything queued on the socket and settle what it answers."""
        buf = self._buf
        while (size := recv(self.sock, buf, self._overrun)) is not None:
            for kind, _flags, seq, start, end in iter_messages(buf, size):
                if kind == NLMSG_ERROR:
                    code = -_ERROR.unpack_from(buf, start)[0] if end - start >= 4 else errno.EIO
                    self._on_error(seq, code)
                elif kind == NLMSG_DONE:
                    self._finish_request(seq, 0)
                else:
                    req = self._requests.get(seq)
                    if req is not None:
                        req.replies.append(bytes(buf[start:end]))

    def _overrun(self) -> None:
        # Replies were lost: nothing pending can be trusted to settle by itself.
        log.warning("netlink receive buffer overrun: failing %d requests", self.pending)
        self._fail_all(errno.ENOBUFS)

    def _on_error(self, seq: int, code: int) -> None:
        if seq in self._requests:
            self._finish_request(seq, code)
            return
        chunk = self._chunks.get(seq)
        if chunk is not None:  # the chunk's own ack: everything before it is settled
            del self._chunks[seq]
            if code:
                chunk.batch.errors[chunk.base + seq - chunk.first] = code
            chunk.batch.open_chunks -= 1
            if chunk.batch.open_chunks == 0:
                self._finish(chunk.batch)
            return
        if not code:
            return
        for c in self._chunks.values():
            if c.first <= seq < c.last:  # a failure reported before the chunk's closing ack
                c.batch.errors[c.base + seq - c.first] = code
                return

    def _finish_request(self, seq: int, code: int) -> None:
        req = self._requests.pop(seq, None)
        if req is None or req.future.done():
            return
        if code:
            req.future.set_exception(NetlinkSocketError(code))
        else:
            req.future.set_result(req.replies)

    def _finish(self, batch: _Batch) -> None:
        settled, batch.settled = batch.settled, _done
        try:
            settled(batch.errors)
        except Exception:
            log.exception("netlink settle callback failed")

    def _fail_all(self, code: int) -> None:
        chunks, self._chunks = self._chunks, {}
        for chunk in chunks.values():
            for i in range(chunk.last - chunk.first + 1):
                if not chunk.batch.errors[chunk.base + i]:
                    chunk.batch.errors[chunk.base + i] = code
            chunk.batch.open_chunks -= 1
            if chunk.batch.open_chunks == 0:
                self._finish(chunk.batch)
        requests, self._requests = self._requests, {}
        for req in requests.values():
            if not req.future.done():
                req.future.set_exception(NetlinkSocketError(code))


def _done(errors: list[int]) -> None:
    """Placeholder callback for a batch that has been settled already."""
