"""The crossing to the netlink writer thread, without the thread: `handoff.Handoff` driven by
hand (its `schedule` and `ring` are recorders) and `run_round` over an in-memory socket.

What must hold: every job queued in one loop iteration crosses in one round (one hand-over
scheduled, one ring); plain batches share datagrams, one ack asked at the end of each; an
nf_tables transaction and a request go alone; each job gets its own errnos back, in order;
while a round is out nothing else crosses, and what waited goes in one round when it is back.
"""

from __future__ import annotations

import errno
import logging
import socket
import struct
from collections.abc import Callable
from typing import cast

import pytest

from resolver.net import handoff
from resolver.net.handoff import (
    CHUNK,
    HEADER,
    NLM_F_ACK,
    NLMSG_DONE,
    NLMSG_ERROR,
    SEQ_MAX,
    Handoff,
    Job,
    Message,
    Round,
    iter_messages,
    run_round,
)

pytestmark = pytest.mark.unit

ROUTE = (24, 0x1 | 0x400 | 0x100, b"r" * 8)  # an RTM_NEWROUTE-like message


class Loop:
    """What the handoff needs of the loop and the writer: recorded, run by hand."""

    def __init__(self) -> None:
        self.soon: list[Callable[[], None]] = []
        self.rings = 0
        self.h = Handoff(self.soon.append, self.ring)

    def ring(self) -> None:
        self.rings += 1

    def iterate(self) -> None:
        """One loop iteration: run what was scheduled before it."""
        due = list(self.soon)
        self.soon.clear()
        for fn in due:
            fn()


class Sock:
    """The kernel as the writer sees it: `fail` maps a sequence number to an errno; every
    acked message and every failure gets an NLMSG_ERROR, a dump request two replies and DONE."""

    def __init__(self, fail: dict[int, int] | None = None) -> None:
        self.fail = fail or {}
        self.sent: list[bytes] = []
        self.queue: list[bytes] = []
        self.recvs = 0

    def send(self, data: bytes) -> int:
        self.sent.append(bytes(data))
        for _kind, flags, seq, _start, _end in iter_messages(data, len(data)):
            code = self.fail.get(seq, 0)
            if flags & 0x300 == 0x300 and not code:  # a dump
                for part in (b"one!", b"two!"):
                    self.queue.append(HEADER.pack(16 + len(part), 16, 2, seq, 0) + part)
                self.queue.append(HEADER.pack(20, NLMSG_DONE, 2, seq, 0) + bytes(4))
            elif code or flags & NLM_F_ACK:
                self.queue.append(
                    HEADER.pack(20, NLMSG_ERROR, 0, seq, 0) + struct.pack("=i", -code)
                )
        return len(data)

    def recv_into(self, buf: bytearray) -> int:
        self.recvs += 1
        data = self.queue.pop(0)
        buf[: len(data)] = data
        return len(data)


def flags_and_seqs(data: bytes) -> list[tuple[int, int]]:
    return [(flags, seq) for _k, flags, seq, _s, _e in iter_messages(data, len(data))]


def write_back(loop: Loop, sock: Sock) -> Round:
    """The writer's turn: take the round, run it, finish it; then the loop collects it."""
    rnd = loop.h.take()
    assert rnd is not None
    run_round(cast(socket.socket, sock), rnd, bytearray(1 << 16))
    loop.h.finish(rnd)
    loop.h.collect()
    return rnd


def recorder() -> tuple[list[list[int]], Callable[[list[int]], None]]:
    got: list[list[int]] = []
    return got, got.append


def test_one_iteration_crosses_in_one_round_with_one_ack() -> None:
    loop = Loop()
    results = [recorder() for _ in range(3)]
    for n, (_, settled) in zip((2, 3, 1), results, strict=True):
        loop.h.queue(Job([ROUTE] * n, settled))
    assert len(loop.soon) == 1 and loop.rings == 0  # one hand-over scheduled for all three
    loop.iterate()
    assert loop.rings == 1 and loop.h.rounds == 1
    sock = Sock(fail={3: errno.EPERM})  # the first message of the second job
    write_back(loop, sock)
    assert len(sock.sent) == 1 and sock.recvs == 2  # one datagram: one error, one ack
    marks = flags_and_seqs(sock.sent[0])
    assert [seq for _f, seq in marks] == [1, 2, 3, 4, 5, 6]
    assert [bool(f & NLM_F_ACK) for f, _s in marks] == [False] * 5 + [True]
    assert [got for got, _ in results] == [[[0, 0]], [[errno.EPERM, 0, 0]], [[0]]]
    assert loop.h.pending == 0 and not loop.soon


def test_a_transaction_and_a_request_go_alone_in_order() -> None:
    loop = Loop()
    plain, settled = recorder()
    tx, tx_settled = recorder()
    replies: list[tuple[list[int], list[bytes]]] = []
    begin, end = (16, 1, b"beg!"), (17, 1, b"end!")
    element = (0xA0C, 1 | NLM_F_ACK, b"elem")
    loop.h.queue(Job([ROUTE], settled))
    loop.h.queue(Job([begin, element, end], tx_settled, atomic=True))
    loop.h.queue(Job([(26, 1 | 0x300, b"dump")], replied=lambda e, r: replies.append((e, r))))
    loop.h.queue(Job([ROUTE, ROUTE], settled))
    loop.iterate()
    sock = Sock()
    rnd = write_back(loop, sock)
    assert [len(flags_and_seqs(d)) for d in sock.sent] == [1, 3, 1, 2]
    assert [(s.first, s.acked) for s in rnd.segments] == [(1, 1), (2, 3), (5, 5), (6, 7)]
    tx_flags = [f & NLM_F_ACK for f, _ in flags_and_seqs(sock.sent[1])]
    assert tx_flags == [0, NLM_F_ACK, 0]  # settled by the element's ack, not BATCH_END's
    assert plain == [[0], [0, 0]] and tx == [[0, 0, 0]]
    assert replies == [([0], [b"one!", b"two!"])]


def test_what_is_queued_while_a_round_is_out_crosses_together_after_it() -> None:
    loop = Loop()
    first, settled = recorder()
    loop.h.queue(Job([ROUTE], settled))
    loop.iterate()
    later = [recorder() for _ in range(4)]
    for _, s in later:  # four more iterations' worth while the writer is busy
        loop.h.queue(Job([ROUTE, ROUTE], s))
        loop.iterate()
    assert loop.rings == 1 and not loop.soon and loop.h.pending == 5
    write_back(loop, Sock())
    assert first == [[0]] and loop.rings == 2  # collected, and what waited handed over at once
    assert not loop.soon
    sock = Sock()
    write_back(loop, sock)
    assert len(sock.sent) == 1 and len(flags_and_seqs(sock.sent[0])) == 8
    assert [got for got, _ in later] == [[[0, 0]]] * 4


def test_big_batches_are_cut_at_chunk_messages_per_datagram() -> None:
    loop = Loop()
    got, settled = recorder()
    loop.h.queue(Job([ROUTE] * (2 * CHUNK + 10), settled))
    loop.iterate()
    sock = Sock(fail={CHUNK + 1: errno.EEXIST})
    write_back(loop, sock)
    assert [len(flags_and_seqs(d)) for d in sock.sent] == [CHUNK, CHUNK, 10]
    assert len(got) == 1 and got[0][CHUNK] == errno.EEXIST and sum(map(bool, got[0])) == 1


def test_sequence_numbers_never_wrap_inside_a_datagram() -> None:
    loop = Loop()
    loop.h.seq = SEQ_MAX - 2
    got, settled = recorder()
    loop.h.queue(Job([ROUTE] * 5, settled))
    loop.iterate()
    sock = Sock()
    write_back(loop, sock)
    assert [seq for _f, seq in flags_and_seqs(sock.sent[0])] == [1, 2, 3, 4, 5]
    assert got == [[0] * 5]


class Refusing(Sock):
    def __init__(self, error: BaseException) -> None:
        super().__init__()
        self.error = error

    def send(self, data: bytes) -> int:
        raise self.error


def test_a_refused_or_crashing_send_fails_its_datagram_only(
    caplog: pytest.LogCaptureFixture,
) -> None:
    for error, code in ((OSError(errno.ENOBUFS, "no room"), errno.ENOBUFS),
                        (ValueError("a bug"), errno.EIO)):  # fmt: skip
        loop = Loop()
        got, settled = recorder()
        loop.h.queue(Job([ROUTE, ROUTE], settled))
        loop.iterate()
        with caplog.at_level(logging.WARNING, logger=handoff.__name__):
            write_back(loop, Refusing(error))
        assert got == [[code, code]]


def test_shut_settles_a_finished_round_as_it_came_and_the_rest_with_the_code() -> None:
    loop = Loop()
    done, s1 = recorder()
    loop.h.queue(Job([ROUTE], s1))
    loop.iterate()
    rnd = loop.h.take()
    assert rnd is not None
    run_round(cast(socket.socket, Sock(fail={1: errno.EPERM})), rnd, bytearray(1 << 16))
    loop.h.finish(rnd)  # the loop has not collected it yet
    waiting, s2 = recorder()
    loop.h.queue(Job([ROUTE, ROUTE], s2))
    loop.h.shut(errno.ESHUTDOWN)
    assert done == [[errno.EPERM]] and waiting == [[errno.ESHUTDOWN] * 2]
    assert loop.h.pending == 0


def test_a_failing_callback_is_logged_and_the_others_still_hear(
    caplog: pytest.LogCaptureFixture,
) -> None:
    loop = Loop()

    def broken(_errors: list[int]) -> None:
        raise RuntimeError("a bug in a caller")

    got, settled = recorder()
    loop.h.queue(Job([ROUTE], broken))
    loop.h.queue(Job([ROUTE], settled))
    loop.iterate()
    with caplog.at_level(logging.ERROR, logger=handoff.__name__):
        write_back(loop, Sock())
    assert got == [[0]] and "settle callback failed" in caplog.text


def test_the_writer_adds_no_object_per_message() -> None:
    """The errnos of a round are one list made on the loop; the writer only writes into it."""
    loop = Loop()
    _got, settled = recorder()
    messages: list[Message] = [ROUTE] * 100
    loop.h.queue(Job(messages, settled))
    loop.iterate()
    rnd = loop.h.take()
    assert rnd is not None
    errors = rnd.errors
    run_round(cast(socket.socket, Sock(fail={7: errno.EPERM})), rnd, bytearray(1 << 16))
    assert rnd.errors is errors and len(errors) == 100 and errors[6] == errno.EPERM
