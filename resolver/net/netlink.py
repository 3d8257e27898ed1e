"""A small netlink transport: struct-packed messages, many per sendmsg, sent by a thread.

Why not pyroute2: its `AsyncIPRoute.route("replace")` programs 2.5-2.9k routes/s here, while
an answer's new addresses must be in the kernel within a millisecond or two. So every message
is packed with `struct` (a route: one header, one RTA_DST and a suffix prepared once per
configuration) and a batch goes in one `sendmsg`. The tests use pyroute2 as the oracle that
decodes what we pack.

Acknowledgements: every message but the last of a `sendmsg` goes without NLM_F_ACK; the kernel
answers those only when they fail. The last one asks for an ack. The kernel handles a netlink
datagram's messages in order, so once that ack is read every message before it is settled:
failures came in as NLMSG_ERROR before it, the rest succeeded.

The thread: rtnetlink and nfnetlink process a request synchronously inside `sendmsg`, under
the kernel's routing lock (rtnl_lock) or the subsystem's mutex. When another process holds
that lock (a big `ip route flush`, a link being torn down), `sendmsg` blocks, and a blocking
call on the event loop would stop every DNS answer, cached ones included. So each `Channel`
has a writer thread that does the sending and reads the acks: its own, or one it shares with
another channel (`share`: the kernel side's routes and set entries go through one). The loop
queues work; what is queued in one loop iteration crosses in one round (`handoff.Handoff`): one
wake of the writer (a lock released), its datagrams merged, one list of errnos for all of its
messages, and one wake of the loop (an eventfd the loop watches), which settles every job of
the round. A reply waits for its routes at most `ack_timeout` (the breakout's timer), whatever
the kernel is doing.

How a netlink socket is opened (buffers, short acks) and read without blocking: nlsocket.py.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import os
import select
import socket
import struct
import threading
import time
from collections.abc import Callable, Sequence
from typing import Final, Protocol

from mypy_extensions import mypyc_attr

from resolver.fdwatch import stop_reading
from resolver.net.handoff import CHUNK as CHUNK
from resolver.net.handoff import HEADER as HEADER
from resolver.net.handoff import NLM_F_ACK as NLM_F_ACK
from resolver.net.handoff import NLMSG_DONE as NLMSG_DONE
from resolver.net.handoff import NLMSG_ERROR as NLMSG_ERROR
from resolver.net.handoff import RECV_TIMEOUT as RECV_TIMEOUT
from resolver.net.handoff import Buffer as Buffer
from resolver.net.handoff import Handoff, Job, run_round
from resolver.net.handoff import Keep as Keep
from resolver.net.handoff import Message as Message
from resolver.net.handoff import Settled as Settled
from resolver.net.handoff import iter_messages as iter_messages
from resolver.net.nlsocket import open_socket as open_socket
from resolver.net.nlsocket import recv as recv
from resolver.net.quickcalls import QuickCalls

log = logging.getLogger(__name__)

NETLINK_ROUTE: Final = 0
NETLINK_NETFILTER: Final = 12

NLM_F_REQUEST: Final = 0x1
NLM_F_DUMP: Final = 0x300
NLM_F_REPLACE: Final = 0x100
NLM_F_EXCL: Final = 0x200
NLM_F_CREATE: Final = 0x400

NLA_F_NESTED: Final = 0x8000
NLA_F_NET_BYTEORDER: Final = 0x4000
NLA_TYPE_MASK: Final = 0x3FFF

_ATTR: Final = struct.Struct("=HH")

_RECV_SIZE: Final = 1 << 18


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
    key = size << 16 | kind  # one per pair: struct.pack refuses a kind past 16 bits
    head = _HEADS.get(key) if kind >> 16 == 0 else None
    if head is None:
        head = _ATTR.pack(size, kind)
        if len(_HEADS) < _HEADS_MAX:
            _HEADS[key] = head
    pad = -size & 3
    return head + payload + _PADS[pad] if pad else head + payload


# Attribute headers by size and kind: the encoders' attributes come in few shapes, and a
# lookup costs a fifth of a struct.pack, compiled.
_HEADS: Final[dict[int, bytes]] = {}
_HEADS_MAX: Final = 1024
_PADS: Final = (b"", b"\0", b"\0\0", b"\0\0\0")


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


class ChannelLike(Protocol):
    """What the counters and their readers ask of a Channel (tests hand in a fake one)."""

    def submit(
        self, messages: Sequence[Message], settled: Settled, atomic: bool = False
    ) -> None: ...
    def request(
        self, kind: int, flags: int, body: bytes, keep: Keep | None = None
    ) -> asyncio.Future[list[bytes]]: ...
    def close(self) -> None: ...


class Channel:
    """One netlink socket for requests: batches with settle callbacks, and dumps/gets.

    Called on the event loop thread; the socket belongs to the writer thread (module doc).
    `submit` never blocks and never raises for kernel errors: each message's errno comes back
    through the callback, on the loop. `sock` is for tests (a fake socket).

    `share`: use that channel's writer: one wake of one thread, and of the loop, for both
    channels' rounds. A lock held on one socket delays the other's round, never the loop.
    `close` first sends what was queued (for at most RECV_TIMEOUT); a guest used after its
    host closed starts a writer of its own.
    """

    def __init__(
        self,
        proto: int,
        strict: bool = False,
        sock: socket.socket | None = None,
        share: Channel | None = None,
    ):
        self.proto = proto
        self._host = share  # whose writer runs this channel's rounds (None: its own)
        self._hosted = False  # attached to the host's writer
        self._guests: list[Channel] = []  # replaced, not changed: the writer reads it
        self._busy = threading.Lock()  # held by the host's writer in this guest's round
        self.sock = sock if sock is not None else open_socket(proto, strict=strict)
        self.sock.setblocking(True)
        self.sock.settimeout(RECV_TIMEOUT)
        self.handoff = Handoff(self._schedule, self._ring)
        # Released by the loop to wake the writer; held while there is nothing to do (only the
        # loop releases it, only the writer takes it).
        self._bell = threading.Lock()
        self._bell.acquire()
        self._stopping = False
        self._done_fd = -1  # eventfd: the writer has finished a round
        self._loop: asyncio.AbstractEventLoop | None = None
        self._writer: threading.Thread | None = None
        self._buf = bytearray(_RECV_SIZE)
        self._quick: QuickCalls | None = None  # real sockets only (quickcalls.py)
        self._fake = sock is not None

    @property
    def pending(self) -> int:
        """Jobs queued or in progress."""
        return self.handoff.pending

    def attach(self, loop: asyncio.AbstractEventLoop) -> None:
        host = self._host
        if host is not None:
            if not self._hosted:
                host.attach(loop)
                self._loop = loop
                self._done_fd = host._done_fd
                if not self._fake:
                    self._quick = QuickCalls.open(self.sock, self._buf, self._done_fd)
                host._guests = [*host._guests, self]
                self._hosted = True
            return
        if self._writer is None:
            self._loop = loop
            self._done_fd = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
            loop.add_reader(self._done_fd, self._completed)
            if not self._fake:
                self._quick = QuickCalls.open(self.sock, self._buf, self._done_fd)
            self._writer = threading.Thread(
                target=self._run, name=f"netlink-{self.proto}", daemon=True
            )
            self._writer.start()

    def close(self) -> None:
        if self._hosted:
            self._leave()
            return
        writer, self._writer = self._writer, None
        if writer is not None:
            deadline = time.monotonic() + RECV_TIMEOUT
            self._drain(self, [self, *self._guests], deadline)
            self._stopping = True
            self._ring()
            writer.join(max(0.1, deadline + 1.0 - time.monotonic()))
            loop = self._loop
            if loop is not None and not loop.is_closed():
                stop_reading(loop, self._done_fd)
            if writer.is_alive():  # stuck in the kernel: it may still signal; keep its eventfd
                log.warning("netlink writer %s did not stop; its socket is closed", writer.name)
            else:
                os.close(self._done_fd)
            self._done_fd = -1
        guests, self._guests = self._guests, []
        for guest in guests:
            guest._orphan()
        self.handoff.shut(errno.ESHUTDOWN)
        self.sock.close()

    def _leave(self) -> None:
        """Close a guest: drained, off the host's list, then closed once the writer is out."""
        host = self._host
        assert host is not None
        deadline = time.monotonic() + RECV_TIMEOUT
        self._drain(host, [self], deadline)
        host._guests = [g for g in host._guests if g is not self]
        free = self._busy.acquire(timeout=max(0.1, deadline + 1.0 - time.monotonic()))
        try:
            if not free:
                log.warning("netlink writer netlink-%d is stuck; socket closed", host.proto)
            self._detach()
            self.handoff.shut(errno.ESHUTDOWN)
            self.sock.close()
        finally:
            if free:
                self._busy.release()

    @staticmethod
    def _drain(host: Channel, channels: list[Channel], deadline: float) -> None:
        """On the loop: hand over and collect `channels`' rounds through `host`'s writer until
        none is left or `deadline` passes (a stuck writer: the rest gets ESHUTDOWN)."""
        loop = host._loop
        if loop is None or loop.is_closed() or host._done_fd < 0:
            return
        while True:
            for ch in channels:
                ch.handoff.hand_over()  # nothing when a round is out or none is queued
            if all(ch.handoff.handed is None for ch in channels):
                return
            wait = deadline - time.monotonic()
            if wait <= 0 or not select.select([host._done_fd], [], [], wait)[0]:
                return
            host._completed()

    def _orphan(self) -> None:
        """The host closed: the rest gets ESHUTDOWN; used again, it runs its own writer."""
        self._detach()
        self._host = None
        self.handoff.shut(errno.ESHUTDOWN)

    def _detach(self) -> None:
        self._hosted = False
        self._loop = None
        self._done_fd = -1
        self._quick = None

    # -- the loop's side ---------------------------------------------------------------------

    def submit(self, messages: Sequence[Message], settled: Settled, atomic: bool = False) -> None:
        """Send `messages` (all in one sendmsg when `atomic`; else perhaps with other batches,
        CHUNK per sendmsg); call `settled` once, on the loop, with an errno per message."""
        if not messages:
            settled([])
            return
        self._queue(Job(messages, settled, atomic))

    def request(
        self, kind: int, flags: int, body: bytes, keep: Keep | None = None
    ) -> asyncio.Future[list[bytes]]:
        """Send one request; the future gets every reply body (dump parts or the single reply),
        or, with `keep`, those it accepts: the writer thread calls it on each body, a view into
        its receive buffer valid only during the call, and copies only the kept ones (a dump
        of a big table filtered without holding it). `keep` must be quick and not raise (if it
        does, the request fails with EIO).

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

        self._queue(Job([(kind, flags | NLM_F_ACK, body)], replied=done, keep=keep))
        return fut

    def _queue(self, job: Job) -> None:
        if self._writer is None and not self._hosted:
            self.attach(asyncio.get_running_loop())
        self.handoff.queue(job)

    def _schedule(self, fn: Callable[[], None]) -> None:
        loop = self._loop
        assert loop is not None
        loop.call_soon(fn)

    def _ring(self) -> None:
        host = self._host
        if host is not None and self._hosted:
            host._ring()
            return
        # Only the loop releases the bell, so it cannot be released between the check and
        # the release; unlocked means a wake is pending already.
        if self._bell.locked():
            self._bell.release()

    def _completed(self) -> None:
        """The eventfd is readable: the writer has finished a round."""
        try:
            os.eventfd_read(self._done_fd)
        except BlockingIOError:
            log.debug("netlink: a spurious wake of the loop")  # a round collected already
            return
        self.handoff.collect()
        for guest in self._guests:
            guest.handoff.collect()

    # -- the writer thread -------------------------------------------------------------------

    def _run_guest(self) -> bool:
        """On the host's writer: this guest's round, if one is handed over."""
        with self._busy:
            rnd = self.handoff.take()
            if rnd is None:
                return False
            run_round(self.sock, rnd, self._buf, self._quick)
            self.handoff.finish(rnd)
            return True

    def _run(self) -> None:
        handoff, bell, sock, buf = self.handoff, self._bell, self.sock, self._buf
        quick = self._quick
        while True:
            bell.acquire()
            if self._stopping:
                return
            rnd = handoff.take()
            ran = rnd is not None
            if rnd is not None:
                run_round(sock, rnd, buf, quick)
                handoff.finish(rnd)
            for guest in self._guests:
                ran = guest._run_guest() or ran
            if not ran:
                continue
            if self._stopping:  # close() collects it
                return
            try:
                if quick is not None:
                    quick.wake()
                else:
                    os.eventfd_write(self._done_fd, 1)
            except OSError as err:
                log.error("netlink writer: cannot wake the loop: %s", os.strerror(err.errno or 0))
                return
