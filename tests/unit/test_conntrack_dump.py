"""A conntrack dump filtered by the netlink writer thread: `Channel.request(..., keep=...)` and
`conntrack.flush` over the real `netlink.Channel` and its writer, on a fake ctnetlink socket
that holds a table of many entries and answers dumps in kernel-sized datagrams.

What must hold: only the bodies `keep` accepts are copied into a request's replies (a flush
of a few addresses in a big table holds the matches, not the table); `keep` sees a view into
the receive buffer; a `keep` that raises fails its request with EIO and the channel goes on;
the flush deletes exactly the entries whose original destination moved, as before.
"""

from __future__ import annotations

import asyncio
import errno
import itertools
import socket
import struct
from collections.abc import Sequence
from typing import cast

import pytest

from resolver.net import conntrack, netlink
from resolver.net.netlink import HEADER, NLM_F_ACK, NLMSG_DONE, NLMSG_ERROR, Message, Settled
from tests.fakenetlink import QueuedSocket

pytestmark = pytest.mark.unit

NLM_F_MULTI = 0x2
IPCTNL_MSG_CT_NEW = conntrack.NFNL_SUBSYS_CTNETLINK << 8
CTA_TUPLE_REPLY, CTA_STATUS, CTA_TUPLE_PROTO = 2, 3, 2
CTA_PROTO_NUM, CTA_PROTO_SRC_PORT, CTA_PROTO_DST_PORT = 1, 2, 3
DATAGRAM = 16 << 10  # what the kernel puts in one datagram of a dump, about
MOVED4 = ["203.0.113.10", "203.0.113.11", "203.0.113.12"]
MOVED6 = ["2001:db8:365::10"]


def packed(address: str) -> bytes:
    return socket.inet_pton(socket.AF_INET6 if ":" in address else socket.AF_INET, address)


def tuple_attrs(family: int, src: bytes, dst: bytes, sport: int, dport: int) -> bytes:
    kinds = (conntrack.CTA_IP_V4_SRC, conntrack.CTA_IP_V4_DST) if family == 4 else (
        conntrack.CTA_IP_V6_SRC, conntrack.CTA_IP_V6_DST)  # fmt: skip
    ip = netlink.nested(
        conntrack.CTA_TUPLE_IP, netlink.attr(kinds[0], src), netlink.attr(kinds[1], dst)
    )
    proto = netlink.nested(
        CTA_TUPLE_PROTO,
        netlink.attr(CTA_PROTO_NUM, b"\x11"),
        netlink.attr(CTA_PROTO_SRC_PORT, struct.pack("!H", sport)),
        netlink.attr(CTA_PROTO_DST_PORT, struct.pack("!H", dport)),
    )
    return ip + proto


def entry_body(ident: int, dst: str, sport: int) -> bytes:
    """A UDP entry as the kernel dumps it: original tuple first, reply tuple, status, id."""
    family = 6 if ":" in dst else 4
    src = packed("192.0.2.130" if family == 4 else "2001:db8:c::2")
    nat = packed("192.0.2.2" if family == 4 else "2001:db8:b::2")
    return (
        conntrack.NFGENMSG.pack(conntrack.AF[family], 0, 0)
        + netlink.nested(conntrack.CTA_TUPLE_ORIG, tuple_attrs(family, src, packed(dst), sport, 53))
        + netlink.nested(CTA_TUPLE_REPLY, tuple_attrs(family, packed(dst), nat, 53, sport))
        + netlink.attr(CTA_STATUS, struct.pack("!I", 0x188))
        + netlink.attr(conntrack.CTA_ID, struct.pack("!I", ident))
    )


class CtKernel(QueuedSocket):
    """A ctnetlink socket over `table` (id -> body): CT_GET dumps of a family in datagrams of
    about DATAGRAM bytes, CT_DELETE by CTA_ID (ENOENT when gone). Replies are read by the
    channel's writer thread."""

    def __init__(self, table: dict[int, bytes]) -> None:
        super().__init__()
        self.table = table
        self.deleted: list[int] = []

    def send(self, data: bytes) -> int:
        out: list[bytes] = []
        for kind, flags, seq, start, end in netlink.iter_messages(data, len(data)):
            body = bytes(data[start:end])
            if kind == conntrack.MSG_GET:
                out += self._dump(body[0], seq)
                continue
            code = 0
            if kind == conntrack.MSG_DELETE:
                ident = struct.unpack("!I", netlink.parse_attrs(body, 4)[conntrack.CTA_ID])[0]
                code = 0 if self.table.pop(ident, None) is not None else errno.ENOENT
                if not code:
                    self.deleted.append(ident)
            if code or flags & NLM_F_ACK:
                out.append(HEADER.pack(20, NLMSG_ERROR, 0, seq, 0) + struct.pack("=i", -code))
        self.queue(out)
        return len(data)

    def _dump(self, af: int, seq: int) -> list[bytes]:
        datagrams, part = [], bytearray()
        for body in self.table.values():
            if body[0] != af:
                continue
            part += HEADER.pack(16 + len(body), IPCTNL_MSG_CT_NEW, NLM_F_MULTI, seq, 0) + body
            if len(part) >= DATAGRAM:
                datagrams.append(bytes(part))
                part.clear()
        part += HEADER.pack(20, NLMSG_DONE, NLM_F_MULTI, seq, 0) + bytes(4)
        return [*datagrams, bytes(part)]


def big_table(others: int) -> tuple[dict[int, bytes], set[int]]:
    """`others` entries to addresses that stay, 40 to each of MOVED4 and 10 to MOVED6; and the
    ids of the moved ones."""
    ids = itertools.count(1)
    table: dict[int, bytes] = {}
    moved: set[int] = set()
    for i in range(others):
        ident = next(ids)
        dst = f"198.51.100.{i % 200 + 1}" if i % 10 else f"2001:db8:d::{i % 200 + 1:x}"
        table[ident] = entry_body(ident, dst, 1024 + i % 60000)
    for dst, count in [*((a, 40) for a in MOVED4), *((a, 10) for a in MOVED6)]:
        for i in range(count):
            ident = next(ids)
            table[ident] = entry_body(ident, dst, 2000 + i)
            moved.add(ident)
    return table, moved


class Spy:
    """A ChannelLike around the real channel that notes how many bodies each request got."""

    def __init__(self, channel: netlink.Channel) -> None:
        self.channel = channel
        self.got: list[int] = []

    def submit(self, messages: Sequence[Message], settled: Settled, atomic: bool = False) -> None:
        self.channel.submit(messages, settled, atomic)

    def request(
        self, kind: int, flags: int, body: bytes, keep: netlink.Keep | None = None
    ) -> asyncio.Future[list[bytes]]:
        if keep is None:  # as a flush that does not filter asks
            fut = self.channel.request(kind, flags, body)
        else:
            fut = self.channel.request(kind, flags, body, keep=keep)
        fut.add_done_callback(lambda f: self.got.append(len(f.result())))
        return fut

    def close(self) -> None:
        self.channel.close()


def channel_on(kernel: CtKernel) -> netlink.Channel:
    return netlink.Channel(netlink.NETLINK_NETFILTER, sock=cast(socket.socket, kernel))


def dump(family: int) -> tuple[int, int, bytes]:
    return conntrack.MSG_GET, netlink.NLM_F_REQUEST | netlink.NLM_F_DUMP, bytes([family, 0, 0, 0])


async def test_flush_of_a_big_table_copies_only_the_matches() -> None:
    table, moved = big_table(20_000)
    kernel = CtKernel(dict(table))
    spy = Spy(channel_on(kernel))
    try:
        loop = asyncio.get_running_loop()
        done = await conntrack.flush(
            spy, [packed(a) for a in MOVED4 + MOVED6], loop.time() + 30, clock=loop.time
        )
    finally:
        spy.close()
    assert done == conntrack.Flushed(deleted=130, failed=0, complete=True)
    assert spy.got == [120, 10]  # the v4 dump's matches, the v6 dump's: nothing else copied
    assert sorted(kernel.deleted) == sorted(moved)  # exactly the moved ones
    assert set(kernel.table) == set(table) - moved


async def test_a_request_keeps_what_keep_accepts_seen_in_the_receive_buffer() -> None:
    table, _moved = big_table(3_000)
    kernel = CtKernel(table)
    channel = channel_on(kernel)
    seen: list[type] = []
    wanted = packed(MOVED4[1])

    def keep(body: netlink.Buffer) -> bool:
        seen.append(type(body))
        return conntrack.orig_dst(body) == wanted

    try:
        kept = await channel.request(*dump(socket.AF_INET), keep=keep)
        every = await channel.request(*dump(socket.AF_INET))
    finally:
        channel.close()
    assert len(every) == 2_700 + 120
    assert kept == [b for b in every if conntrack.orig_dst(b) == wanted]
    assert len(kept) == 40 and all(type(b) is bytes for b in kept)
    assert set(seen) == {memoryview} and len(seen) == len(every)


async def test_a_keep_that_raises_fails_its_request_and_the_channel_goes_on() -> None:
    table, _moved = big_table(1_000)
    channel = channel_on(CtKernel(table))

    def broken(body: netlink.Buffer) -> bool:
        raise ValueError("a bug in the filter")

    try:
        with pytest.raises(netlink.NetlinkSocketError) as failed:
            await channel.request(*dump(socket.AF_INET), keep=broken)
        assert failed.value.code == errno.EIO
        again = await channel.request(*dump(socket.AF_INET), keep=lambda body: True)
    finally:
        channel.close()
    assert len(again) == 900 + 120  # the broken dump's rest was read and dropped


def test_keeping_then_matching_finds_what_matching_alone_finds() -> None:
    table, moved = big_table(500)
    walked = conntrack.NFGENMSG.pack(socket.AF_INET, 0, 0) + netlink.nested(
        conntrack.CTA_TUPLE_ORIG,
        netlink.nested(conntrack.CTA_TUPLE_IP,
                       netlink.attr(conntrack.CTA_IP_V4_DST, packed(MOVED4[0])),
                       netlink.attr(conntrack.CTA_IP_V4_SRC, packed("192.0.2.130"))),
    )  # fmt: skip
    bodies = [*table.values(), walked, b"", b"\x02\x00\x00\x00", walked[:-3]]
    wanted = {packed(a) for a in MOVED4 + MOVED6}
    keep = conntrack.keeping(wanted)
    kept = [b for b in bodies if keep(memoryview(b))]
    assert conntrack.matching(kept, wanted) == conntrack.matching(bodies, wanted)
    assert len(kept) == len(moved) + 1
