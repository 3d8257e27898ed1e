"""UDP in batches (resolver/dns/mmsg.py): recvmmsg and sendmmsg, and the one-at-a-time path
that serves where they cannot be called. Over loopback, real sockets; no root.

- a batch's datagrams and senders are what recvfrom gives (IPv4, IPv6, IPv4-mapped), cut at
  MAX_QUERY as recvfrom(MAX_QUERY) cuts;
- each reply goes to its own sender, and the server answers bursts larger than a batch from
  many clients on both paths, every reply matching its query;
- replies the kernel will not take are counted as dropped, other send errors one by one.
"""

from __future__ import annotations

import asyncio
import errno
import select
import socket
import time
from collections.abc import Iterator
from typing import Any

import pytest
from dnslib import DNSRecord

from resolver.dns import mmsg
from resolver.dns.mmsg import MAX_QUERY, Batches
from resolver.dns.udp import UdpListener
from tests.integration.conftest import DnsEnv, query_bytes
from tests.integration.libc_fakes import FakeLibc

pytestmark = pytest.mark.integration


def batches() -> Batches:
    b = Batches.open()
    assert b is not None, "recvmmsg and sendmmsg are in every Linux C library"
    return b


@pytest.fixture(params=["v4", "v6", "mapped"])
def pair(request: pytest.FixtureRequest) -> Iterator[tuple[socket.socket, socket.socket]]:
    """A listening socket and a client socket that sends to it."""
    kind = request.param
    listen = socket.socket(socket.AF_INET if kind == "v4" else socket.AF_INET6, socket.SOCK_DGRAM)
    if kind != "v4":
        listen.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
    listen.bind(({"v4": "127.0.0.1", "v6": "::1", "mapped": "::"}[kind], 0))
    listen.setblocking(False)
    client = socket.socket(socket.AF_INET6 if kind == "v6" else socket.AF_INET, socket.SOCK_DGRAM)
    client.connect(("::1" if kind == "v6" else "127.0.0.1", listen.getsockname()[1]))
    client.settimeout(2)
    try:
        yield listen, client
    finally:
        listen.close()
        client.close()


def wait_readable(sock: socket.socket) -> None:
    assert select.select([sock], [], [], 2)[0], "nothing arrived"


def test_a_batch_reads_what_recvfrom_reads_and_replies_to_each_sender(
    pair: tuple[socket.socket, socket.socket],
) -> None:
    listen, client = pair
    b = batches()
    sent = [b"q%d" % i * (i + 1) for i in range(5)] + [b"x" * (MAX_QUERY + 100)]
    for data in sent:
        client.send(data)
    client.send(b"last")  # read by recvfrom below: the oracle for the sender
    time.sleep(0.05)
    wait_readable(listen)
    batch = b.receive(listen.fileno())
    assert len(batch) == len(sent) + 1
    got = [data for data, _ in batch]
    assert got[:-1] == [*sent[:-1], sent[-1][:MAX_QUERY]]  # cut where recvfrom cuts
    sources = {addr for _, addr in batch}
    # The oracle: recvfrom's address for a datagram of the same client.
    client.send(b"oracle")
    wait_readable(listen)
    assert sources == {listen.recvfrom(MAX_QUERY)[1]}
    replies = [(i, b"r" + got[i][:10]) for i in range(len(batch)) if i != 2]  # 2 gets none
    assert b.send(listen.fileno(), replies) == (0, [])
    assert [client.recv(100) for _ in replies] == [r for _, r in replies]
    assert b.receive(listen.fileno()) == []  # nothing queued: no error, nothing read


def send(libc: FakeLibc, count: int) -> tuple[int, list[int]]:
    b = Batches(libc, size=8)  # type: ignore[arg-type]
    return b.send(3, [(i, b"reply") for i in range(count)])


def test_send_counts_what_the_kernel_would_not_take_and_what_failed() -> None:
    libc = FakeLibc([2, "EPERM", 3, "EAGAIN"])
    assert send(libc, 8) == (2, [errno.EPERM])  # 2 sent, 1 refused, 3 sent, the last 2 dropped
    assert libc.asked == [8, 6, 5, 2]
    libc = FakeLibc(["EINTR", 4])
    assert send(libc, 4) == (0, [])  # interrupted: tried again
    assert libc.asked == [4, 4]
    libc = FakeLibc([])
    assert send(libc, 0) == (0, [])  # nothing to send: no call
    assert libc.asked == []


def test_receive_reads_nothing_on_eagain_and_raises_other_errors() -> None:
    assert Batches(FakeLibc([], errno.EAGAIN)).receive(3) == []  # type: ignore[arg-type]
    with pytest.raises(OSError) as caught:
        Batches(FakeLibc([], errno.ECONNREFUSED)).receive(3)  # type: ignore[arg-type]
    assert caught.value.errno == errno.ECONNREFUSED


def test_host_strings_are_kept_up_to_a_bound() -> None:
    b = batches()
    for i in range(mmsg.HOSTS + 10):
        packed = i.to_bytes(4, "big")
        assert b._host(i, socket.AF_INET, packed) == socket.inet_ntop(socket.AF_INET, packed)
    assert len(b._hosts) == 10  # emptied when it reached HOSTS, then 10 more
    assert b._hosts[mmsg.HOSTS + 9] == socket.inet_ntop(socket.AF_INET, bytes([0, 0, 16, 9]))


@pytest.mark.parametrize("batched", [True, False], ids=["batches", "one-by-one"])
async def test_the_server_answers_bursts_from_many_clients(batched: bool) -> None:
    async with DnsEnv(batched=batched) as env:
        assert (env.srv.batches is not None) == batched
        await env.ask("www.example.test")  # cached from now on
        host, port = env.address()
        loop = asyncio.get_running_loop()
        clients = []
        for _ in range(4):
            sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            sock.setblocking(False)
            await loop.sock_connect(sock, (host, port))
            clients.append(sock)
        try:
            queries: dict[bytes, socket.socket] = {}
            for c in clients:
                for _ in range(50):  # 200 queries at once: more than a batch
                    data = bytearray(query_bytes("www.example.test"))
                    data[0:2] = (len(queries)).to_bytes(2, "big")
                    queries[bytes(data[0:2])] = c
                    c.send(bytes(data))
            answered: dict[bytes, socket.socket] = {}
            async with asyncio.timeout(5):
                for c in clients:
                    for _ in range(50):
                        reply = await loop.sock_recv(c, 2048)
                        parsed = DNSRecord.parse(reply)
                        assert [str(r.rdata) for r in parsed.rr] == ["192.0.2.10"]
                        answered[reply[0:2]] = c
            assert answered == queries  # every query answered once, to its own client
        finally:
            for c in clients:
                c.close()
        for v6 in (False, True):
            reply = await env.ask("www.example.test", v6=v6)
            assert [str(r.rdata) for r in reply.rr] == ["192.0.2.10"]


class Echo:
    """A handler that answers each query with its own bytes, and fails on b"boom"."""

    def handle(self, data: bytes, addr: Any, conn: Any) -> bytes | None:
        if data == b"boom":
            raise RuntimeError("a bug in the handler")
        return b"re:" + data


@pytest.mark.parametrize("batched", [True, False], ids=["batches", "one-by-one"])
def test_a_query_the_handler_fails_on_costs_only_itself(
    pair: tuple[socket.socket, socket.socket], caplog: pytest.LogCaptureFixture, batched: bool
) -> None:
    listen, client = pair
    listener = UdpListener(Echo(), listen, batches() if batched else None)
    for data in (b"one", b"boom", b"two"):
        client.send(data)
    time.sleep(0.05)
    wait_readable(listen)
    listener._readable()
    assert [client.recv(100) for _ in range(2)] == [b"re:one", b"re:two"]
    assert listener.errors == 1
    assert "the handler failed" in caplog.text


def test_a_listener_whose_recvmmsg_cannot_be_called_reads_one_datagram_per_call(
    pair: tuple[socket.socket, socket.socket], caplog: pytest.LogCaptureFixture
) -> None:
    """A seccomp filter or an emulator refusing the call leaves the socket readable: reading
    it again would spin. The listener drops its batches and answers one by one."""
    listen, client = pair
    listener = UdpListener(Echo(), listen, Batches(FakeLibc([], errno.EPERM)))  # type: ignore[arg-type]
    client.send(b"one")
    wait_readable(listen)
    listener._readable()
    assert listener.batches is None and listener.errors == 1
    assert "recvmmsg cannot be used here" in caplog.text
    listener._readable()  # the same datagram, read the plain way
    assert client.recv(100) == b"re:one"


def test_send_refuses_what_does_not_fit_a_slot_and_its_buffers_cannot_move() -> None:
    libc = FakeLibc([1])
    b = Batches(libc, size=1)  # type: ignore[arg-type]
    too_big = b"x" * (mmsg.REPLY_SLOT + 1)
    assert b.send(3, [(0, too_big), (0, b"ok"), (0, b"third")]) == (0, [errno.EMSGSIZE] * 2)
    assert libc.asked == [1]  # only the one that fits, in the one slot
    for vector in (b._in, b._out):  # the iovecs point into them: they must never move
        for buf in (vector.hdrs, vector.iovs, vector.data, vector.names):
            with pytest.raises(BufferError):
                buf.append(0)


# -- an upstream socket's replies (mmsg.Datagrams) ------------------------------------------


def test_datagrams_come_whole_in_batches_of_at_most_size() -> None:
    """What recv would give, one call for up to `size`: a 60,000-byte datagram whole, 20
    queued in two calls, none queued an empty list."""
    datagrams = mmsg.Datagrams.open()
    assert datagrams is not None and datagrams.size == mmsg.REPLIES == 16
    upstream = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    upstream.bind(("127.0.0.1", 0))
    ours = socket.socket(socket.AF_INET, socket.SOCK_DGRAM | socket.SOCK_NONBLOCK)
    ours.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 21)
    ours.connect(upstream.getsockname())
    try:
        assert datagrams.receive(ours.fileno()) == []
        sent = [bytes([i]) * (60_000 if i == 3 else 12 + i) for i in range(20)]
        for data in sent:
            upstream.sendto(data, ours.getsockname())
        wait_readable(ours)
        first = datagrams.receive(ours.fileno())
        assert first == sent[:16] and all(type(d) is bytes for d in first)
        assert datagrams.receive(ours.fileno()) == sent[16:]
        assert datagrams.receive(ours.fileno()) == []
    finally:
        upstream.close()
        ours.close()


def test_datagrams_raise_what_recv_raises() -> None:
    """An ICMP port unreachable, reported on the connected socket: ECONNREFUSED, as recv."""
    datagrams = mmsg.Datagrams.open()
    assert datagrams is not None
    closed = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    closed.bind(("127.0.0.1", 0))
    port = closed.getsockname()[1]
    closed.close()
    ours = socket.socket(socket.AF_INET, socket.SOCK_DGRAM | socket.SOCK_NONBLOCK)
    ours.connect(("127.0.0.1", port))
    try:
        ours.send(b"anyone?")
        wait_readable(ours)
        with pytest.raises(ConnectionRefusedError):
            datagrams.receive(ours.fileno())
        assert datagrams.receive(ours.fileno()) == []  # reported once
    finally:
        ours.close()
