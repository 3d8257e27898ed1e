"""The crossing between the event loop and a netlink Channel's writer thread, apart from threads.

The loop queues jobs (a batch of messages with its `Settled` callback, or one request whose
replies are collected: all, or those its `Keep` filter accepts, read by the writer before any
copy). The first job of a loop iteration schedules one `hand_over` (`call_soon`): every job
queued until then crosses as one `Round`, packed on the loop into as few datagrams as it can
be (the messages of all plain batches merged, CHUNK per datagram, one ack asked at the end of
each; an nf_tables transaction or a request alone in its datagram), with one list of errnos
for all of its messages. The writer thread is woken once per round, sends the datagrams,
reads the acks into that list (no Python object per message), and wakes the loop once; the
loop gives each job its slice of the errnos. While a round is out, what the loop queues waits
and crosses in the next one, all together, handed over as soon as the last one is collected:
the busier the loop, the larger the rounds, and the fewer times the writer needs the
interpreter lock per message.

Why it matters: the writer takes the interpreter lock back after every blocking call (the wake,
each sendmsg, each recv, the wake of the loop); while the loop is busy, each of those waits up
to the interpreter's switch interval (5 ms). One round per ack round trip instead of one per
batch keeps a busy loop's replies within `ack_timeout` (tests/bench/test_handoff_bench.py).

`Handoff` is the loop's side and the slots the two threads pass rounds through (a lock and an
eventfd in `netlink.Channel` order them); `run_round` is the writer's side. Nothing here starts
a thread or opens a descriptor.
"""

from __future__ import annotations

import errno
import logging
import os
import socket
import struct
from collections.abc import Callable, Iterator, Sequence
from typing import Final

from resolver.net.quickcalls import QuickCalls

log = logging.getLogger(__name__)

NLMSG_ERROR: Final = 2
NLMSG_DONE: Final = 3
NLM_F_ACK: Final = 0x4

HEADER: Final = struct.Struct("=IHHII")  # len, type, flags, seq, pid
_ERROR: Final = struct.Struct("=i")

# Messages per sendmsg. Bounds what failures can queue on the socket before it is drained:
# an error ack costs about 1 KiB of receive buffer (skb overhead included).
CHUNK: Final = 256
SEQ_MAX: Final = 0x7FFFFFFF
RECV_TIMEOUT: Final = 5.0  # seconds the writer waits for an ack the kernel owes before giving up

Buffer = bytes | bytearray | memoryview
Message = tuple[int, int, bytes]  # (nlmsg_type, nlmsg_flags, body after the header)
Settled = Callable[[list[int]], None]  # errno per message (0: done), in submission order
Replied = Callable[[list[int], list[bytes]], None]  # a request's errno and its reply bodies
# Which reply bodies of a request to keep, asked by the writer thread of each one as a view
# into its receive buffer (valid only during the call): the others are never copied.
Keep = Callable[[Buffer], bool]


def iter_messages(buf: Buffer, size: int) -> Iterator[tuple[int, int, int, int, int]]:
    """(type, flags, seq, body offset, end) of every message in the first `size` bytes."""
    offset = 0
    while offset + 16 <= size:
        length, kind, flags, seq, _pid = HEADER.unpack_from(buf, offset)
        if length < 16:
            return
        yield kind, flags, seq, offset + 16, min(offset + length, size)
        offset += (length + 3) & ~3


class Job:
    """What the loop queued: messages and who hears of them. A plain batch (`settled`) may share
    datagrams with others; `atomic` (an nf_tables transaction) and requests (`replied`, one
    message, its reply bodies collected: those `keep` accepts, when given) go alone."""

    __slots__ = ("atomic", "count", "keep", "messages", "replied", "replies", "settled", "start")

    def __init__(
        self,
        messages: Sequence[Message],
        settled: Settled | None = None,
        atomic: bool = False,
        replied: Replied | None = None,
        keep: Keep | None = None,
    ) -> None:
        self.messages = messages
        self.count = len(messages)
        self.settled = settled
        self.atomic = atomic
        self.replied = replied
        self.keep = keep
        self.replies: list[bytes] | None = [] if replied is not None else None
        self.start = 0  # its first errno in its round's list


class Segment:
    """One datagram of a round: its bytes, the sequence numbers it spans up to the one whose
    ack settles it, where its errnos start in the round's list, and (a request) its replies
    and which of them to keep."""

    __slots__ = ("acked", "base", "data", "first", "keep", "replies")

    def __init__(
        self,
        data: bytearray,
        first: int,
        acked: int,
        base: int,
        replies: list[bytes] | None,
        keep: Keep | None = None,
    ) -> None:
        self.data = data
        self.first = first
        self.acked = acked
        self.base = base
        self.replies = replies
        self.keep = keep


class Round:
    """Everything one hand-over carries: jobs, their datagrams, one errno per message (written
    by the writer thread, read by the loop once the round is back)."""

    __slots__ = ("errors", "jobs", "segments")

    def __init__(self, jobs: list[Job], segments: list[Segment], size: int) -> None:
        self.jobs = jobs
        self.segments = segments
        self.errors = [0] * size


class Handoff:
    """The loop's side of the crossing: `queue` on the loop; `hand_over` (scheduled once per
    loop iteration) packs a round and rings the writer; `take` and `finish` are the writer's;
    `collect` (when the writer has signalled) settles the round's jobs and hands over the next.

    `schedule(fn)` runs `fn` on the loop soon (loop.call_soon); `ring()` wakes the writer.
    """

    __slots__ = ("_ring", "_schedule", "finished", "handed", "outbox", "rounds", "scheduled",
                 "seq", "slot")  # fmt: skip

    def __init__(
        self, schedule: Callable[[Callable[[], None]], object], ring: Callable[[], None]
    ) -> None:
        self._schedule = schedule
        self._ring = ring
        self.outbox: list[Job] = []  # queued on the loop, not handed over yet
        self.scheduled = False  # a hand_over is scheduled
        self.handed: Round | None = None  # out with the writer, not collected yet
        self.slot: Round | None = None  # handed, not taken by the writer yet
        self.finished: Round | None = None  # done by the writer, not collected yet
        self.seq = 1
        self.rounds = 0  # rounds handed over (one wake of the writer each)

    @property
    def pending(self) -> int:
        """Jobs queued or in progress."""
        handed = self.handed
        return len(self.outbox) + (len(handed.jobs) if handed is not None else 0)

    # -- the loop ----------------------------------------------------------------------------

    def queue(self, job: Job) -> None:
        self.outbox.append(job)
        if not self.scheduled and self.handed is None:
            self.scheduled = True
            self._schedule(self.hand_over)

    def hand_over(self) -> None:
        """Pack what is queued into one round and wake the writer (unless a round is out:
        then what is queued goes when that one is collected)."""
        self.scheduled = False
        if self.handed is not None or not self.outbox:
            return
        jobs, self.outbox = self.outbox, []
        rnd = self.pack(jobs)
        self.handed = self.slot = rnd
        self.rounds += 1
        self._ring()

    def collect(self) -> None:
        """The writer is done with the round: settle its jobs, then hand over at once what
        waited for it (and what the callbacks queued), not an iteration later."""
        rnd = self.finished
        if rnd is None:
            return
        self.finished = None
        self.handed = None
        errors = rnd.errors
        for job in rnd.jobs:
            settle(job, errors[job.start : job.start + job.count])
        if self.outbox:
            self.hand_over()

    def shut(self, code: int) -> None:
        """Closing (the writer has stopped or is stuck): a finished round is settled as it
        came back; every other job gets `code`."""
        self.collect()
        rnd, self.handed, self.slot = self.handed, None, None
        jobs, self.outbox = self.outbox, []
        if rnd is not None:
            jobs = rnd.jobs + jobs
        for job in jobs:
            settle(job, [code] * job.count)

    def pack(self, jobs: list[Job]) -> Round:
        segments: list[Segment] = []
        merged: list[Message] = []  # plain batches' messages not packed yet
        merged_base = 0
        base = 0
        for job in jobs:
            job.start = base
            if job.atomic or job.replied is not None:
                if merged:
                    self._chunks(merged, merged_base, segments)
                    merged = []
                segments.append(self._segment(job.messages, base, job.replies, True, job.keep))
            elif job.count:
                if not merged:
                    merged_base = base
                merged.extend(job.messages)
            base += job.count
        if merged:
            self._chunks(merged, merged_base, segments)
        return Round(jobs, segments, base)

    def _chunks(self, messages: list[Message], base: int, out: list[Segment]) -> None:
        for i in range(0, len(messages), CHUNK):
            out.append(self._segment(messages[i : i + CHUNK], base + i, None, False))

    def _segment(
        self,
        part: Sequence[Message],
        base: int,
        replies: list[bytes] | None,
        own_ack: bool,
        keep: Keep | None = None,
    ) -> Segment:
        """One datagram. It is settled by the ack of its last message; a job alone in its
        datagram (`own_ack`) by its last message asking for one, if any does (an nf_tables
        transaction acks its element message, not BATCH_END)."""
        n = len(part)
        ack_index = n - 1
        if own_ack:
            for i in range(n - 1, -1, -1):
                if part[i][1] & NLM_F_ACK:
                    ack_index = i
                    break
        if self.seq + n > SEQ_MAX:
            self.seq = 1  # one datagram's sequence numbers never wrap
        first = self.seq
        self.seq = first + n
        data = bytearray()
        pack = HEADER.pack
        for i in range(n):
            kind, flags, body = part[i]
            if i == ack_index:
                flags |= NLM_F_ACK
            data += pack(16 + len(body), kind, flags, first + i, 0)
            data += body
        return Segment(data, first, first + ack_index, base, replies, keep)

    # -- the writer thread -------------------------------------------------------------------

    def take(self) -> Round | None:
        rnd, self.slot = self.slot, None
        return rnd

    def finish(self, rnd: Round) -> None:
        self.finished = rnd


def settle(job: Job, errors: list[int]) -> None:
    """Tell a job's owner its errnos (on the loop); a callback that fails is logged."""
    try:
        if job.replied is not None:
            job.replied(errors, job.replies if job.replies is not None else [])
        elif job.settled is not None:
            job.settled(errors)
    except Exception:
        log.exception("netlink settle callback failed")


def run_round(
    sock: socket.socket, rnd: Round, buf: bytearray, quick: QuickCalls | None = None
) -> None:
    """The writer's side: send each datagram, read its acks into `rnd.errors` (through `quick`
    while they are queued already). Never raises: a datagram that fails unexpectedly gets EIO
    (an exception escaping would kill the writer, and every later request would hang)."""
    errors = rnd.errors
    for seg in rnd.segments:
        try:
            _send(sock, seg, errors, buf, quick)
        except Exception:
            log.exception("netlink writer: request failed unexpectedly")
            _fail(errors, seg, errno.EIO)


def _send(
    sock: socket.socket, seg: Segment, errors: list[int], buf: bytearray, quick: QuickCalls | None
) -> None:
    try:
        sock.send(seg.data)
    except OSError as err:
        code = err.errno or errno.EIO
        _fail(errors, seg, code)
        log.warning("netlink send failed: %s", os.strerror(code))
        return
    _collect(sock, seg, errors, buf, quick)


def _collect(
    sock: socket.socket, seg: Segment, errors: list[int], buf: bytearray, quick: QuickCalls | None
) -> None:
    """Read until the ack (or DONE) of `seg.acked` arrives; record errors and reply bodies (with
    `seg.keep`, only those it accepts are copied out of `buf`: a dump of a big table costs the
    memory of what is kept, not of the table)."""
    first, acked, base, replies, keep = seg.first, seg.acked, seg.base, seg.replies, seg.keep
    view = memoryview(buf)
    # A request's replies (a dump: perhaps thousands of datagrams) are read with the lock let
    # go at each one: compiled, this loop never lets it go otherwise, and the event loop would
    # wait for the whole dump (a 205,000-entry conntrack table: 277 ms).
    quick = quick if replies is None else None
    while True:
        try:
            size = quick.recv() if quick is not None else -1
            if size < 0:
                size = sock.recv_into(buf)
        except TimeoutError:
            _fail(errors, seg, errno.ETIMEDOUT)
            log.warning("netlink: no ack within %.0f s", RECV_TIMEOUT)
            return
        except OSError as err:  # ENOBUFS: replies were lost, nothing here is certain
            code = err.errno or errno.EIO
            _fail(errors, seg, code)
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
            elif replies is not None and (keep is None or keep(view[start:end])):
                replies.append(bytes(view[start:end]))


def _fail(errors: list[int], seg: Segment, code: int) -> None:
    """`code` for every message of `seg` up to its acked one that has no errno yet."""
    for i in range(seg.base, seg.base + seg.acked - seg.first + 1):
        if i < len(errors) and not errors[i]:
            errors[i] = code
