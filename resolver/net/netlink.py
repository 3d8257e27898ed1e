"""A small netlink transport: struct-packed messages, many per sendmsg, sent by a thread.

Why not pyroute2 here: on these machines `AsyncIPRoute.route("replace")` programs about
2.5-2.9k routes/s and encoding a prepared pyroute2 `rtmsg` about 6.4k/s, while a DNS answer
with eight new addresses must be in the kernel within a millisecond or two. So the hot path
packs its few fixed-layout messages with `struct` (a route is one header, one RTA_DST and a
suffix prepared once per configuration) and sends a whole batch in one `sendmsg`. The rare
control messages (ip rules, ipset create, dumps) are packed the same way; nothing at run time
imports pyroute2. The tests use it as the oracle that decodes what we pack.

Acknowledgements: every message but the last of a `sendmsg` goes without NLM_F_ACK; the kernel
answers those only when they fail. The last one asks for an ack. The kernel handles a netlink
datagram's messages in order, so once that ack is read every message before it is settled:
failures came in as NLMSG_ERROR before it, the rest succeeded.

The thread: rtnetlink and nfnetlink process a request synchronously inside `sendmsg`, under
the kernel's routing lock (rtnl_lock) or the subsystem's mutex. When another process holds
that lock (a big `ip route flush`, a link being torn down), `sendmsg` blocks, and a blocking
call on the event loop would stop every DNS answer, cached ones included. So each `Channel`
owns a writer thread that does the sending and reads the acks; the loop only queues work and
gets each batch's errnos back through `call_soon_threadsafe`. A reply waits for its routes at
most `ack_timeout` (the breakout's timer), whatever the kernel is doing.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import os
import socket
import struct
import threading
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

from mypy_extensions import mypyc_attr

log = logging.getLogger(__name__)

NETLINK_ROUTE = 0
NETLINK_NETFILTER = 12

NLMSG_ERROR = 2
NLMSG_DONE = 3

NLM_F_REQUEST = 0x1
NLM_F_ACK = 0x4
NLM_F_DUMP = 0x300
NLM_F_REPLACE = 0x100
NLM_F_EXCL = 0x200
NLM_F_CREATE = 0x400

NLA_F_NESTED = 0x8000
NLA_F_NET_BYTEORDER = 0x4000
NLA_TYPE_MASK = 0x3FFF

SOL_NETLINK = 270
NETLINK_CAP_ACK = 10
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


# A Python class even when this module is compiled: mypyc cannot subclass OSError natively.
@mypyc_attr(native_class=False)
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


RECV_TIMEOUT = 5.0  # seconds the writer waits for an ack the kernel owes before giving up


@dataclass(slots=True)
class _Job:
    """Work for the writer thread: datagrams to send, and what to collect of the answers."""

    datagrams: list[tuple[bytes, int, int]]  # (bytes, first seq, seq whose ack closes it)
    count: int  # messages in all
    done: Callable[[list[int], list[bytes]], None]  # errnos per message, reply bodies
    dump: bool = False  # a request: collect reply bodies until DONE (or its ack)


class Channel:
    """One netlink socket for requests: batches with settle callbacks, and dumps/gets.

    Called on the event loop thread; the socket belongs to the writer thread (module doc).
    `submit` never blocks and never raises for kernel errors: each message's errno comes back
    through the callback, on the loop. `sock` is for tests (a fake socket).
    """

    def __init__(self, proto: int, strict: bool = False, sock: socket.socket | None = None):
        self.proto = proto
        self.sock = sock if sock is not None else open_socket(proto, strict=strict)
        self.sock.setblocking(True)
        self.sock.settimeout(RECV_TIMEOUT)
        self._seq = 1
        self._jobs: deque[_Job | None] = deque()
        self._wake = threading.Condition()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._writer: threading.Thread | None = None
        self._buf = bytearray(_RECV_SIZE)
        self.pending = 0  # jobs queued or in progress

    def attach(self, loop: asyncio.AbstractEventLoop) -> None:
        if self._writer is None:
            self._loop = loop
            self._writer = threading.Thread(
                target=self._run, name=f"netlink-{self.proto}", daemon=True
            )
            self._writer.start()

    def close(self) -> None:
        thread, self._writer = self._writer, None
        if thread is not None:
            with self._wake:
                self._jobs.append(None)
                self._wake.notify()
            thread.join(RECV_TIMEOUT + 1.0)
        for job in self._take_all():
            job.done([errno.ESHUTDOWN] * job.count, [])
        self.pending = 0
        self.sock.close()

    def _next_seq(self) -> int:
        seq = self._seq
        self._seq = seq + 1 if seq < 0x7FFFFFFF else 1
        return seq

    # -- the loop's side ---------------------------------------------------------------------

    def submit(self, messages: Sequence[Message], settled: Settled, atomic: bool = False) -> None:
        """Send `messages`, CHUNK per sendmsg (all in one when `atomic`); call `settled` once,
        on the loop, with an errno per message."""
        if not messages:
            settled([])
            return
        step = len(messages) if atomic else CHUNK
        datagrams = [self._pack(messages[i : i + step]) for i in range(0, len(messages), step)]
        self._queue(_Job(datagrams, len(messages), lambda errors, _replies: settled(errors)))

    def _pack(self, part: Sequence[Message]) -> tuple[bytes, int, int]:
        # The datagram is settled by the ack of its last message asking for one (an nf_tables
        # transaction acks its element message, not BATCH_END); when none does, the last does.
        ack_index = len(part) - 1
        for i in range(len(part) - 1, -1, -1):
            if part[i][1] & NLM_F_ACK:
                ack_index = i
                break
        first = self._seq
        data = bytearray()
        acked = -1
        for i, (kind, flags, body) in enumerate(part):
            seq = self._next_seq()
            if i == ack_index:
                flags |= NLM_F_ACK
                acked = seq
            data += HEADER.pack(16 + len(body), kind, flags, seq, 0)
            data += body
        return bytes(data), first, acked

    def request(self, kind: int, flags: int, body: bytes) -> asyncio.Future[list[bytes]]:
        """Send one request; the future gets every reply body (dump parts or the single reply).

        Fails with NetlinkSocketError(errno) when the kernel refuses it.
        """
        loop = self._loop or asyncio.get_running_loop()
        self.attach(loop)
        fut: asyncio.Future[list[bytes]] = loop.create_future()

        def done(errors: list[int], replies: list[bytes]) -> None:
            if fut.done():
                return
            if errors and errors[0]:
                fut.set_exception(NetlinkSocketError(errors[0]))
            else:
                fut.set_result(replies)

        seq = self._next_seq()
        data = HEADER.pack(16 + len(body), kind, flags | NLM_F_ACK, seq, 0) + body
        self._queue(_Job([(data, seq, seq)], 1, done, dump=True))
        return fut

    def _queue(self, job: _Job) -> None:
        if self._writer is None:
            self.attach(asyncio.get_running_loop())
        self.pending += 1
        with self._wake:
            self._jobs.append(job)
            self._wake.notify()

    def _settle(self, job: _Job, errors: list[int], replies: list[bytes]) -> None:
        self.pending -= 1
        try:
            job.done(errors, replies)
        except Exception:
            log.exception("netlink settle callback failed")

    def _take_all(self) -> list[_Job]:
        with self._wake:
            jobs = [job for job in self._jobs if job is not None]
            self._jobs.clear()
        return jobs

    # -- the writer thread -------------------------------------------------------------------

    def _run(self) -> None:
        while True:
            with self._wake:
                while not self._jobs:
                    self._wake.wait()
                job = self._jobs.popleft()
            if job is None:
                return
            try:
                errors, replies = self._do(job)
            except Exception:  # never let the writer die: every later request would hang
                log.exception("netlink writer: request failed unexpectedly")
                errors, replies = [errno.EIO] * job.count, []
            loop = self._loop
            if loop is None or loop.is_closed():
                return
            try:
                loop.call_soon_threadsafe(self._settle, job, errors, replies)
            except RuntimeError:  # the loop closed meanwhile
                return

    def _do(self, job: _Job) -> tuple[list[int], list[bytes]]:
        errors = [0] * job.count
        replies: list[bytes] = []
        base = 0
        for data, first, acked in job.datagrams:
            try:
                self.sock.send(data)
            except OSError as err:
                code = err.errno or errno.EIO
                self._fail_range(errors, base, first, acked, code)
                log.warning("netlink send failed: %s", os.strerror(code))
            else:
                self._collect(first, acked, errors, base, replies if job.dump else None)
            base += acked - first + 1
        return errors, replies

    def _collect(
        self, first: int, acked: int, errors: list[int], base: int, replies: list[bytes] | None
    ) -> None:
        """Read until the ack (or DONE) for `acked` arrives; record errors and reply bodies."""
        buf = self._buf
        while True:
            try:
                size = self.sock.recv_into(buf)
            except TimeoutError:
                self._fail_range(errors, base, first, acked, errno.ETIMEDOUT)
                log.warning("netlink: no ack within %.0f s", RECV_TIMEOUT)
                return
            except OSError as err:  # ENOBUFS: replies were lost, nothing here is certain
                code = err.errno or errno.EIO
                self._fail_range(errors, base, first, acked, code)
                log.warning("netlink receive failed (%s): %d requests failed",
                            os.strerror(code), acked - first + 1)  # fmt: skip
                return
            for kind, _flags, seq, start, end in iter_messages(buf, size):
                if not first <= seq <= acked:
                    continue  # an answer to an earlier request that timed out
                if kind == NLMSG_ERROR:
                    code = -_ERROR.unpack_from(buf, start)[0] if end - start >= 4 else errno.EIO
                    if code:
                        errors[base + seq - first] = code
                    if seq == acked:
                        return
                elif kind == NLMSG_DONE:
                    if seq == acked:
                        return
                elif replies is not None:
                    replies.append(bytes(buf[start:end]))

    @staticmethod
    def _fail_range(errors: list[int], base: int, first: int, acked: int, code: int) -> None:
        for i in range(base, base + max(acked - first + 1, 1)):
            if i < len(errors) and not errors[i]:
                errors[i] = code
