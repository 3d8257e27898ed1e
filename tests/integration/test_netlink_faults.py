"""Netlink faults, kernel side: errnos, lost replies (ENOBUFS), refused sends, a writer that
cannot get the kernel's lock. A fake socket given to `netlink.Channel(proto, sock=...)`
answers like the kernel from the writer thread, keeping the routes it was given, so the real
`Kernel` and `Breakout` run on top of it.

What must hold: every error is counted (`netlink_errors`) and logged rate-limited, the DNS
answer still goes out (the hook never raises, and waits at most `ack_timeout`), the hold is
retried by the sweeper, and a batch whose replies were lost makes the breakout read its table
again and settle it with its books.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import socket
import struct
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, cast

import pytest

from resolver.hooks import wait as settled
from resolver.net import netlink
from resolver.net.kernel import Kernel
from resolver.net.netlink import HEADER, NLM_F_ACK, NLM_F_DUMP, NLMSG_DONE, NLMSG_ERROR
from resolver.net.routes import AF, RTM_DELROUTE, RTM_GETROUTE, RTM_NEWROUTE, parse_route
from tests.fakenetlink import QueuedSocket
from tests.unit.breakout_fakes import (
    Clock,
    make_breakout,
    make_cfg,
    tagged,
)

pytestmark = pytest.mark.integration

Answer = Callable[[int, bytes], int]  # (message type, body) -> errno to answer with


class FakeSock(QueuedSocket):
    """A netlink socket whose 'kernel' keeps the routes it is sent and answers each request.

    `fail(kind, body)` picks an errno per message; `lose` recv calls raise ENOBUFS, dropping
    what was queued (the acks the kernel could not deliver; the requests were carried out);
    `refuse` send calls raise their errno (nothing carried out); `gate`, when cleared, blocks
    every send as a held rtnl_lock would; `crash` makes the next recv raise it as is.
    """

    timeout = 0.5

    def __init__(self) -> None:
        super().__init__()
        self.routes: dict[tuple[int, str, int, int], bytes] = {}
        self.fail: Answer | None = None
        self.lose = 0
        self.refuse: deque[int] = deque()
        self.crash: BaseException | None = None
        self.gate = threading.Event()
        self.gate.set()
        self.sent: list[int] = []  # message types, in order
        self.senders: set[int] = set()  # the threads that called send

    # what netlink.Channel calls
    def send(self, data: bytes) -> int:
        self.senders.add(threading.get_ident())
        self.gate.wait()
        if self.refuse:
            code = self.refuse.popleft()
            raise OSError(code, "refused")
        out: list[bytes] = []
        for kind, flags, seq, start, end in netlink.iter_messages(data, len(data)):
            body = bytes(data[start:end])
            self.sent.append(kind)
            code = self.fail(kind, body) if self.fail is not None else 0
            replies: list[bytes] = []
            if not code:
                code, replies = self._carry_out(kind, body)
            if flags & NLM_F_DUMP == NLM_F_DUMP and not code:
                msgs = [HEADER.pack(16 + len(r), kind - 2, 2, seq, 0) + r for r in replies]
                out.append(b"".join(msgs) + HEADER.pack(20, NLMSG_DONE, 2, seq, 0) + bytes(4))
            elif code or flags & NLM_F_ACK:
                out.append(HEADER.pack(36, NLMSG_ERROR, 0, seq, 0) + struct.pack("=i", -code)
                           + bytes(16))  # fmt: skip
        self.queue(out)
        return len(data)

    def recv_into(self, buf: bytearray) -> int:
        if self.crash is not None:
            crash, self.crash = self.crash, None
            raise crash
        with self._cond:
            if self.lose:
                self.lose -= 1
                self._queue.clear()
                raise OSError(errno.ENOBUFS, "No buffer space available")
        return super().recv_into(buf)

    # the 'kernel'
    def _carry_out(self, kind: int, body: bytes) -> tuple[int, list[bytes]]:
        if kind in (RTM_NEWROUTE, RTM_DELROUTE):
            r = parse_route(body)
            assert r is not None
            key = (r.family, r.dst, r.dst_len, r.table)
            if kind == RTM_NEWROUTE:
                self.routes[key] = body
                return 0, []
            return (0, []) if self.routes.pop(key, None) is not None else (errno.ESRCH, [])
        if kind == RTM_GETROUTE:
            family = 4 if body[0] == socket.AF_INET else 6
            table = struct.unpack_from("=I", body, len(body) - 4)[0]  # RTA_TABLE comes last
            return 0, [b for (f, _d, _l, t), b in self.routes.items() if (f, t) == (family, table)]
        return 0, []  # rules, rule dumps (none), set entries: fine

    def has(self, address: str) -> bool:
        family = 6 if ":" in address else 4
        return (family, address, 32 if family == 4 else 128, 365) in self.routes


def channel(proto: int, sock: FakeSock, share: netlink.Channel | None = None) -> netlink.Channel:
    return netlink.Channel(proto, sock=cast(socket.socket, sock), share=share)


def route_add(address: str) -> netlink.Message:
    from resolver.net.routes import NextHop, RouteEncoder

    enc = RouteEncoder(365, 245, {4: NextHop(2, "192.0.2.1")})
    return enc.add(4, socket.inet_pton(AF[4], address), 32)


async def submit(ch: netlink.Channel, messages: list[netlink.Message]) -> list[int]:
    done: asyncio.Future[list[int]] = asyncio.get_running_loop().create_future()
    ch.submit(messages, done.set_result)
    return await asyncio.wait_for(done, 3)


# -- the channel alone -----------------------------------------------------------------------


async def test_each_message_gets_its_own_errno() -> None:
    sock = FakeSock()
    sock.fail = lambda kind, body: errno.EPERM if b"\xcb\x00\x71\x02" in body else 0
    ch = channel(netlink.NETLINK_ROUTE, sock)
    addresses = ["203.0.113.1", "203.0.113.2", "203.0.113.3"]
    assert await submit(ch, [route_add(a) for a in addresses]) == [0, errno.EPERM, 0]
    assert sock.has("203.0.113.1") and not sock.has("203.0.113.2") and sock.has("203.0.113.3")
    ch.close()


async def test_lost_acks_fail_that_batch_only_and_a_dump_raises() -> None:
    sock = FakeSock()
    ch = channel(netlink.NETLINK_ROUTE, sock)
    sock.lose = 1
    assert await submit(ch, [route_add("203.0.113.1")]) == [errno.ENOBUFS]
    assert sock.has("203.0.113.1")  # carried out: only its answer was lost
    assert await submit(ch, [route_add("203.0.113.2")]) == [0]
    sock.lose = 1
    from resolver.net.routes import dump_request

    with pytest.raises(netlink.NetlinkSocketError) as caught:
        await asyncio.wait_for(ch.request(*dump_request(4, 365)), 3)
    assert caught.value.code == errno.ENOBUFS
    assert len(await asyncio.wait_for(ch.request(*dump_request(4, 365)), 3)) == 2
    ch.close()


async def test_a_refused_send_fails_the_batch_and_the_next_goes_through() -> None:
    sock = FakeSock()
    ch = channel(netlink.NETLINK_ROUTE, sock)
    sock.refuse.append(errno.ENOBUFS)
    assert await submit(ch, [route_add("203.0.113.1"), route_add("203.0.113.2")]) == [
        errno.ENOBUFS,
        errno.ENOBUFS,
    ]
    assert not sock.has("203.0.113.1")  # never carried out
    assert await submit(ch, [route_add("203.0.113.1")]) == [0]
    ch.close()


async def test_an_unexpected_receive_failure_does_not_kill_the_writer() -> None:
    sock = FakeSock()
    ch = channel(netlink.NETLINK_ROUTE, sock)
    sock.crash = OSError(errno.EIO, "Input/output error")
    assert await submit(ch, [route_add("203.0.113.1")]) == [errno.EIO]
    sock.crash = ValueError("a bug while reading")
    assert await submit(ch, [route_add("203.0.113.2")]) == [errno.EIO]
    assert await submit(ch, [route_add("203.0.113.3")]) == [0]  # the writer is still there
    ch.close()


async def test_one_round_per_iteration_and_one_more_for_what_waited_on_a_held_lock() -> None:
    """The real writer thread and eventfd: three batches queued in one iteration cross in one
    round; while the kernel's lock is held, later batches wait on the loop and then cross
    together, each still getting its own errnos."""
    sock = FakeSock()
    sock.fail = lambda kind, body: errno.EEXIST if b"\xcb\x00\x71\x05" in body else 0
    ch = channel(netlink.NETLINK_ROUTE, sock)
    loop = asyncio.get_running_loop()
    futs = [loop.create_future() for _ in range(3)]
    for i, fut in enumerate(futs):
        ch.submit([route_add(f"203.0.113.{i + 1}")], fut.set_result)
    assert await asyncio.wait_for(asyncio.gather(*futs), 3) == [[0], [0], [0]]
    assert ch.handoff.rounds == 1 and len(sock.sent) == 3
    sock.gate.clear()  # another process holds rtnl_lock: the writer blocks in sendmsg
    blocked = loop.create_future()
    ch.submit([route_add("203.0.113.4")], blocked.set_result)
    later = [loop.create_future() for _ in range(4)]
    for i, fut in enumerate(later):
        ch.submit([route_add(f"203.0.113.{5 + i}")], fut.set_result)
        await asyncio.sleep(0)  # each in its own loop iteration
    assert not blocked.done() and ch.pending == 5
    sock.gate.set()
    assert await asyncio.wait_for(blocked, 3) == [0]
    got = await asyncio.wait_for(asyncio.gather(*later), 3)
    assert got == [[errno.EEXIST], [0], [0], [0]]
    assert ch.handoff.rounds == 3 and ch.pending == 0
    ch.close()


async def test_close_sends_what_was_queued_before_it() -> None:
    sock = FakeSock()
    ch = channel(netlink.NETLINK_ROUTE, sock)
    assert await submit(ch, [route_add("203.0.113.1")]) == [0]
    got: list[list[int]] = []
    ch.submit([route_add("203.0.113.2")], got.append)  # not handed over yet
    ch.close()
    assert got == [[0]] and ch.pending == 0 and sock.has("203.0.113.2")


async def test_close_gives_up_on_a_held_lock_after_the_receive_timeout() -> None:
    sock = FakeSock()
    ch = channel(netlink.NETLINK_ROUTE, sock)
    got: list[list[int]] = []
    sock.gate.clear()  # every send blocks, as under a held rtnl_lock
    try:
        ch.submit([route_add("203.0.113.1")], got.append)
        t0 = time.monotonic()
        ch.close()
        assert netlink.RECV_TIMEOUT <= time.monotonic() - t0 < netlink.RECV_TIMEOUT + 2
        assert got == [[errno.ESHUTDOWN]] and ch.pending == 0
    finally:
        sock.gate.set()


def shared_pair() -> tuple[FakeSock, FakeSock, netlink.Channel, netlink.Channel]:
    """A route channel, and a netfilter one that rides its writer, as the Kernel has them."""
    rt, nf = FakeSock(), FakeSock()
    host = channel(netlink.NETLINK_ROUTE, rt)
    return rt, nf, host, channel(netlink.NETLINK_NETFILTER, nf, share=host)


async def test_a_guest_rides_its_hosts_writer_and_the_loop_hears_once() -> None:
    rt, nf, host, guest = shared_pair()
    try:
        got = await asyncio.gather(
            submit(host, [route_add("203.0.113.1")]), submit(guest, [route_add("203.0.113.2")])
        )
        assert list(got) == [[0], [0]]
        assert len(rt.senders) == 1 and rt.senders == nf.senders  # one writer for both
        assert threading.get_ident() not in rt.senders  # not the loop
        assert rt.has("203.0.113.1") and not rt.has("203.0.113.2")
        assert nf.has("203.0.113.2") and not nf.has("203.0.113.1")
    finally:
        guest.close()
        host.close()


async def test_a_held_lock_on_the_hosts_socket_delays_the_guest_not_the_loop() -> None:
    rt, _nf, host, guest = shared_pair()
    loop = asyncio.get_running_loop()
    routed, entered = loop.create_future(), loop.create_future()
    rt.gate.clear()
    try:
        host.submit([route_add("203.0.113.1")], routed.set_result)
        guest.submit([route_add("203.0.113.2")], entered.set_result)
        t0 = time.perf_counter()
        await asyncio.sleep(0.05)
        assert time.perf_counter() - t0 < 0.5  # the loop ran on
        assert not routed.done() and not entered.done()
    finally:
        rt.gate.set()
    assert list(await asyncio.wait_for(asyncio.gather(routed, entered), 3)) == [[0], [0]]
    guest.close()
    host.close()


async def test_closing_the_host_sends_its_guests_jobs_and_the_guest_then_goes_on_alone() -> None:
    _rt, nf, host, guest = shared_pair()
    assert await submit(guest, [route_add("203.0.113.1")]) == [0]
    got: list[list[int]] = []
    guest.submit([route_add("203.0.113.2")], got.append)  # not handed over yet
    host.close()  # sends it first
    assert got == [[0]] and guest.pending == 0 and nf.has("203.0.113.2")
    assert await submit(guest, [route_add("203.0.113.3")]) == [0]  # a writer of its own now
    assert nf.has("203.0.113.3")
    guest.close()


async def test_closing_a_guest_leaves_its_host_working() -> None:
    rt, nf, host, guest = shared_pair()
    assert await submit(guest, [route_add("203.0.113.1")]) == [0]
    got: list[list[int]] = []
    guest.submit([route_add("203.0.113.2")], got.append)
    guest.close()  # sends it first
    assert got == [[0]] and nf.has("203.0.113.2")
    assert await submit(host, [route_add("203.0.113.3")]) == [0]
    assert rt.has("203.0.113.3") and not rt.has("203.0.113.2")
    host.close()


# -- the breakout on top of it ----------------------------------------------------------------


@contextmanager
def warnings_of(name: str) -> Iterator[list[str]]:
    lines: list[str] = []

    class Handler(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            if record.levelno >= logging.WARNING:
                lines.append(record.getMessage())

    handler = Handler()
    logger = logging.getLogger(name)
    logger.addHandler(handler)
    try:
        yield lines
    finally:
        logger.removeHandler(handler)


class Rig:
    """A started Breakout over a real `Kernel` whose two channels are fake sockets, sharing one
    writer thread as the Kernel's own do."""

    def __init__(self, tmp: str, **cfg: Any) -> None:
        async def has_set(_channel: Any, _name: str, _family: int) -> bool:
            return True

        self.rt, self.nf = FakeSock(), FakeSock()
        self.cfg = make_cfg(**cfg)
        self.kernel = Kernel(self.cfg, net_admin=lambda: True, inspect_ipset=has_set)
        self.kernel.rtnl = channel(netlink.NETLINK_ROUTE, self.rt)
        self.kernel.nfnl = channel(netlink.NETLINK_NETFILTER, self.nf, share=self.kernel.rtnl)
        self.clock = Clock(time.monotonic())
        self.b = make_breakout(tmp, self.cfg, kernel=self.kernel, clock=self.clock, watch=False)

    async def __aenter__(self) -> Rig:
        await self.b.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.b.stop()

    async def answer(self, *addresses: str, ttl: int = 60) -> float:
        """One tagged answer; how long its reply waited (it must never raise)."""
        t0 = time.perf_counter()
        wait = self.b.on_answer(tagged("x.office.com", *addresses), ttl)
        if wait is not None:
            await settled(wait)
        return time.perf_counter() - t0

    async def sweep(self) -> None:
        self.b.sweep()
        await settled(self.b.parts.installs.flush_now())

    @property
    def errors(self) -> int:
        return int(self.b.status()["errors"])


async def until(check: Callable[[], bool], timeout: float = 3.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return True
        await asyncio.sleep(0.01)
    return check()


async def test_eperm_is_counted_logged_once_and_retried_by_the_sweeper(tmp_path: Any) -> None:
    async with Rig(str(tmp_path)) as rig:
        rig.rt.fail = lambda kind, _body: errno.EPERM if kind == RTM_NEWROUTE else 0
        with warnings_of("resolver.net.errors") as logged:
            for i in range(1, 6):
                await rig.answer(f"203.0.113.{i}")  # the answers go out, errors and all
            assert rig.errors == 5
            s = rig.b.status()
            assert (s["routes_v4"], s["holds"]) == (0, 5)
            await rig.sweep()  # retried: still refused
            assert rig.errors == 10
            assert len([ln for ln in logged if "Operation not permitted" in ln]) == 1
        rig.rt.fail = None
        await rig.sweep()
        assert rig.b.status()["routes_v4"] == 5 and rig.errors == 10
        assert all(rig.rt.has(f"203.0.113.{i}") for i in range(1, 6))


async def test_eperm_on_set_entries_keeps_the_route_and_the_answer(tmp_path: Any) -> None:
    async with Rig(str(tmp_path)) as rig:
        rig.nf.fail = lambda _kind, _body: errno.EPERM
        await rig.answer("203.0.113.1")
        s = rig.b.status()
        assert s["routes_v4"] == 1 and s["ipset_v4"] == 0 and rig.errors == 1


async def test_lost_acks_make_the_breakout_resync_and_the_sweeper_retry(tmp_path: Any) -> None:
    async with Rig(str(tmp_path)) as rig:
        dumps = rig.rt.sent.count(RTM_GETROUTE)
        rig.rt.lose = 1
        await rig.answer("203.0.113.1", "203.0.113.2")
        assert rig.errors == 2 and rig.b.status()["routes_v4"] == 0
        assert rig.rt.has("203.0.113.1")  # the kernel did it; only the acks were lost
        assert await until(lambda: rig.rt.sent.count(RTM_GETROUTE) >= dumps + 4)  # read again
        await rig.sweep()
        assert rig.b.status()["routes_v4"] == 2 and rig.errors == 2


async def test_a_removal_that_never_reached_the_kernel_is_settled(tmp_path: Any) -> None:
    """A lapsed hold's removal is refused with ENOBUFS (not sent): the hold is gone from the
    books, its route would be left behind; the resync finds it and removes it."""
    async with Rig(str(tmp_path), min_hold=10, grace=0) as rig:
        await rig.answer("203.0.113.1", ttl=5)
        await rig.answer("203.0.113.2", ttl=600)
        assert rig.rt.has("203.0.113.1") and rig.b.status()["routes_v4"] == 2
        rig.clock.now += 11
        rig.rt.refuse.append(errno.ENOBUFS)
        rig.b.sweep()
        assert await until(lambda: not rig.rt.has("203.0.113.1"))
        assert rig.rt.has("203.0.113.2")  # held: never touched
        assert rig.b.status()["routes_v4"] == 1 and rig.errors >= 1


async def test_a_held_kernel_lock_delays_no_answer_beyond_ack_timeout(tmp_path: Any) -> None:
    """The writer thread blocks in sendmsg (another process holds rtnl_lock): a miss's reply
    waits ack_timeout and goes; hits do not wait at all; the route goes in once it is free."""
    async with Rig(str(tmp_path), ack_timeout=0.05) as rig:
        await rig.answer("203.0.113.1")  # routed before the lock is taken
        rig.rt.gate.clear()
        try:
            waited = await rig.answer("203.0.113.2")
            assert 0.04 <= waited < 0.5
            assert rig.b.status()["ack_timeouts"] == 1
            assert await rig.answer("203.0.113.1") < 0.01  # a hit: no kernel at all
            await rig.sweep()  # the sweeper does not block either
            assert not rig.rt.has("203.0.113.2")
        finally:
            rig.rt.gate.set()
        assert await until(lambda: rig.b.status()["routes_v4"] == 2)
        assert rig.rt.has("203.0.113.2") and rig.errors == 0
