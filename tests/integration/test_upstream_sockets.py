"""sockets.Sockets against an in-process fake upstream on loopback: the spread of source ports
and ids, the bounds on each socket, and no file descriptor left behind."""

from __future__ import annotations

import asyncio
import errno
import itertools
import os
import socket
import struct
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest

from resolver.dns import sockets, wire
from resolver.dns.exchange import Reply
from resolver.dns.mmsg import Datagrams
from resolver.dns.upstream import Upstream
from tests.integration.libc_fakes import FakeLibc

pytestmark = pytest.mark.integration

QUESTIONS = 3000
AT_ONCE = 100  # queries in flight at a time
PORTS = tuple(int(p) for p in Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split())


@dataclass(frozen=True)
class Seen:
    port: int
    qid: int
    question: bytes
    at: float


def _qend(data: bytes) -> int:
    at = 12
    while data[at]:
        at += 1 + data[at]
    return at + 5


class Fake:
    """A UDP upstream on 127.0.0.1: records each query; answers it (NOERROR, no records)
    unless `silent`."""

    def __init__(self, silent: bool = False, hold: bool = False) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM | socket.SOCK_NONBLOCK)
        self.sock.bind(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.silent = silent
        self.hold = hold  # keep the replies until `release`
        self.held: list[tuple[bytes, tuple[str, int]]] = []
        self.seen: list[Seen] = []
        self.loop = asyncio.get_running_loop()
        self.loop.add_reader(self.sock.fileno(), self._readable)

    def _readable(self) -> None:
        while True:
            try:
                data, source = self.sock.recvfrom(65535)
            except BlockingIOError:
                return
            qend = _qend(data)
            qid = struct.unpack("!H", data[:2])[0]
            self.seen.append(Seen(source[1], qid, data[12:qend].lower(), self.loop.time()))
            if not self.silent:
                reply = data[:2] + b"\x81\x80\x00\x01\x00\x00\x00\x00\x00\x00" + data[12:qend]
                if self.hold:
                    self.held.append((reply, source))
                else:
                    self.sock.sendto(reply, source)

    def release(self) -> None:
        """Send every reply held, back to back: they queue on the socket together."""
        for reply, source in self.held:
            self.sock.sendto(reply, source)
        self.held.clear()

    def close(self) -> None:
        self.loop.remove_reader(self.sock.fileno())
        self.sock.close()


def _question(i: int) -> bytes:
    return wire.encode_name(f"n{i}.example.test") + b"\x00\x01\x00\x01"


@dataclass(frozen=True)
class Sent:
    sock: sockets.Sock  # the socket object (a port may come back later on another one)
    port: int
    qid: int
    question: bytes


async def _ask_all(
    pool: sockets.Sockets,
    up: Upstream,
    questions: list[bytes],
    timeout: float = 1.0,
    sent: list[Sent] | None = None,
) -> list[Reply | None]:
    """Every question, AT_ONCE in flight at a time; the replies in order. What went out on
    which socket is appended to `sent`."""
    loop = asyncio.get_running_loop()
    out: list[Reply | None] = []
    for start in range(0, len(questions), AT_ONCE):
        batch = questions[start : start + AT_ONCE]
        futs = [loop.create_future() for _ in batch]
        for question, fut in zip(batch, futs, strict=True):
            query = pool.udp(up, question, False, False, True, timeout, fut.set_result)
            if sent is not None and isinstance(query, sockets.Query) and query.sock is not None:
                port = query.sock.sock.getsockname()[1]
                sent.append(Sent(query.sock, port, query.qid, question))
        out.extend(await asyncio.gather(*futs))
    return out


def _fds() -> int:
    return len(os.listdir("/proc/self/fd"))


async def test_ports_and_ids_spread_over_3000_queries() -> None:
    fake = Fake()
    pool = sockets.Sockets()
    up = Upstream("127.0.0.1", fake.port, 0)
    sent: list[Sent] = []
    try:
        replies = await _ask_all(pool, up, [_question(i) for i in range(QUESTIONS)], sent=sent)
    finally:
        pool.close()
        fake.close()
    assert all(r is not None and r[1].rcode == wire.NOERROR for r in replies)
    seen = fake.seen
    assert len(seen) == len(sent) == QUESTIONS
    assert Counter((s.port, s.qid) for s in seen) == Counter((s.port, s.qid) for s in sent)
    when = {(s.port, s.qid): s.at for s in seen}
    by_sock: dict[sockets.Sock, list[Sent]] = {}
    for s in sent:
        by_sock.setdefault(s.sock, []).append(s)
    # Each socket: one port, at most MAX_QUERIES queries, unique ids, unique questions, and no
    # new query after MAX_AGE (plus slack for the loop's own delays).
    assert all(len({s.port for s in v}) == 1 for v in by_sock.values())
    assert max(len(v) for v in by_sock.values()) <= sockets.MAX_QUERIES
    assert all(len({s.qid for s in v}) == len(v) for v in by_sock.values())
    assert all(len({s.question for s in v}) == len(v) for v in by_sock.values())
    for v in by_sock.values():
        times = [when[s.port, s.qid] for s in v]
        assert max(times) - min(times) <= sockets.MAX_AGE + 0.1
    # Ports: kernel-chosen from the whole ephemeral range, not in sequence.
    opened = [v[0].port for v in by_sock.values()]  # in the order the sockets were opened
    ports = sorted(set(opened))
    assert len(opened) >= QUESTIONS // sockets.MAX_QUERIES
    assert len(ports) >= len(opened) * 0.95  # a port may come back, rarely
    assert all(PORTS[0] <= p <= PORTS[1] for p in ports)
    quarter = (PORTS[1] - PORTS[0] + 1) / 4
    spread = Counter(int((p - PORTS[0]) // quarter) for p in ports)
    expected = len(ports) / 4
    assert all(expected * 0.5 <= spread[k] <= expected * 1.5 for k in range(4)), spread
    steps = sorted(abs(a - b) for a, b in itertools.pairwise(opened))
    assert steps[len(steps) // 2] > 1000  # the median step between one port and the next
    # Ids: 16 random bits, uniform over the high nibble, few repeats (birthday: ~69 expected).
    ids = [s.qid for s in seen]
    assert len(set(ids)) >= QUESTIONS - 150
    nibbles = Counter(i >> 12 for i in ids)
    assert all(QUESTIONS / 16 * 0.6 <= nibbles[k] <= QUESTIONS / 16 * 1.4 for k in range(16))


async def test_one_outstanding_query_per_question_per_socket() -> None:
    fake = Fake()
    pool = sockets.Sockets()
    up = Upstream("127.0.0.1", fake.port, 0)
    try:
        replies = await _ask_all(pool, up, [_question(7)] * 20)
    finally:
        pool.close()
        fake.close()
    assert all(r is not None for r in replies)
    assert len({s.port for s in fake.seen}) == 20  # the same question: a socket each


BATCHED = pytest.mark.parametrize("batched", [True, False], ids=["recvmmsg", "recv"])


@BATCHED
@pytest.mark.parametrize("kind", ["asyncio", "uvloop"])
def test_replies_queued_together_on_a_socket_are_all_taken(kind: str, batched: bool) -> None:
    """Replies that queue on one socket together are all taken, on asyncio's loop and on
    uvloop (the daemon's when it is installed)."""
    factory = asyncio.new_event_loop
    if kind == "uvloop":
        import uvloop  # both test venvs install it (the fast extra)

        factory = uvloop.new_event_loop
    with asyncio.Runner(loop_factory=factory) as runner:
        runner.run(_queued_together(batched))


async def _queued_together(batched: bool) -> None:
    fake = Fake(hold=True)
    pool = sockets.Sockets(batched=batched)
    up = Upstream("127.0.0.1", fake.port, 0)
    loop = asyncio.get_running_loop()
    try:
        futs = [loop.create_future() for _ in range(sockets.MAX_QUERIES)]
        queries = [
            pool.udp(up, _question(i), False, False, True, 2.0, fut.set_result)
            for i, fut in enumerate(futs)
        ]
        assert len({q.sock for q in queries if isinstance(q, sockets.Query)}) == 1
        while len(fake.seen) < len(futs):
            await asyncio.sleep(0.01)
        fake.release()
        replies = await asyncio.wait_for(asyncio.gather(*futs), 1.0)
    finally:
        pool.close()
        fake.close()
    assert all(r is not None and r[1].rcode == wire.NOERROR for r in replies)


@BATCHED
async def test_no_fd_left_after_answers_timeouts_and_close(batched: bool) -> None:
    before = _fds()
    answering, silent = Fake(), Fake(silent=True)
    pool = sockets.Sockets(batched=batched)
    up, dead = Upstream("127.0.0.1", answering.port, 0), Upstream("127.0.0.1", silent.port, 1)
    try:
        for round_ in range(3):
            got = await _ask_all(pool, up, [_question(i) for i in range(500)])
            assert all(r is not None for r in got)
            lost = await _ask_all(pool, dead, [_question(i) for i in range(200)], timeout=0.05)
            assert lost == [None] * 200, round_
        assert pool.open  # the newest sockets may take queries for a while yet
        await asyncio.sleep(sockets.MAX_AGE + 0.1)
        assert not pool.open and not pool.current  # idle sockets retire on their own
        assert _fds() == before + 2  # the two fakes
        # Queries cut short by close(): their sockets go too, and their callbacks never run.
        called: list[Reply | None] = []
        for i in range(40):
            pool.udp(dead, _question(i), False, False, True, 1.0, called.append)
        assert _fds() > before + 2
        pool.close()
        assert not pool.open and _fds() == before + 2
        await asyncio.sleep(0.05)
        assert called == []
    finally:
        pool.close()
        answering.close()
        silent.close()
    assert _fds() == before


async def test_connect_refused_is_a_failed_send_not_an_error() -> None:
    """connect() failing for the upstream's address (here EACCES: broadcast) is what a send
    that failed was: `done(None)` on a later turn of the loop, no socket kept."""
    before = _fds()
    pool = sockets.Sockets()
    got: list[Reply | None] = []
    attempt = pool.udp(
        Upstream("255.255.255.255", 53, 0), _question(1), False, False, True, 1.0, got.append
    )
    assert got == [] and not isinstance(attempt, sockets.Query)
    await asyncio.sleep(0)
    assert got == [None]
    assert not pool.open and _fds() == before


@BATCHED
async def test_a_refusing_port_is_an_error_counted_and_its_query_times_out(batched: bool) -> None:
    """Nothing listens on the upstream's port: the ICMP error comes back as the connected
    socket's error on the next read, counted once per refusal, and the query ends at its
    timeout with no reply, as a silent upstream's would."""
    probe = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    probe.bind(("127.0.0.1", 0))
    port = probe.getsockname()[1]
    probe.close()  # a port nothing listens on
    pool = sockets.Sockets(batched=batched)
    up = Upstream("127.0.0.1", port, 0)
    try:
        got = await _ask_all(pool, up, [_question(i) for i in range(3)], timeout=0.2)
    finally:
        pool.close()
    assert got == [None, None, None]
    assert up.stats["errors"] >= 1 and up.stats["dropped"] == 0


async def test_a_pool_whose_recvmmsg_cannot_be_called_reads_one_reply_per_call(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The socket stays readable: reading it the same way again would spin. The pool drops
    its batches, logs why, and reads the same reply the plain way."""
    fake = Fake()
    pool = sockets.Sockets()
    pool.datagrams = Datagrams(FakeLibc([], errno.EPERM))  # type: ignore[arg-type]
    up = Upstream("127.0.0.1", fake.port, 0)
    try:
        got = await _ask_all(pool, up, [_question(i) for i in range(3)])
    finally:
        pool.close()
        fake.close()
    assert all(r is not None and r[1].rcode == wire.NOERROR for r in got)
    assert pool.datagrams is None and up.stats["errors"] == 0
    assert caplog.text.count("recvmmsg cannot be used here") == 1


async def test_each_query_keeps_its_own_deadline() -> None:
    """A short timeout after a long one still fires on time, none fires early, and an
    answered query's timer fires nothing."""
    loop = asyncio.get_running_loop()
    silent, answering = Fake(silent=True), Fake()
    pool = sockets.Sockets()
    dead, up = Upstream("127.0.0.1", silent.port, 0), Upstream("127.0.0.1", answering.port, 1)
    when: dict[str, float] = {}
    got: dict[str, Reply | None] = {}

    def done(name: str) -> Callable[[Reply | None], None]:
        def record(reply: Reply | None) -> None:
            assert name not in got, f"{name} called twice"
            got[name], when[name] = reply, loop.time()

        return record

    try:
        start = loop.time()
        pool.udp(dead, _question(1), False, False, True, 0.6, done("long"))
        pool.udp(up, _question(2), False, False, True, 0.2, done("answered"))
        pool.udp(dead, _question(3), False, False, True, 0.1, done("short"))
        await asyncio.sleep(0.8)
        assert got["answered"] is not None and when["answered"] - start < 0.1
        assert got["short"] is None and got["long"] is None
        assert 0.1 <= when["short"] - start < 0.1 + 0.1
        assert 0.6 <= when["long"] - start < 0.6 + 0.1
    finally:
        pool.close()
        silent.close()
        answering.close()
