"""resolver.net.conntrack: ctnetlink encoders and parser, checked against hand-made layouts and
decoded with pyroute2's nfct_msg as an oracle; `flush` against a fake channel (batches,
errnos, the deadline)."""

from __future__ import annotations

import asyncio
import errno
import socket
import struct
from collections.abc import Callable, Sequence
from typing import Any, cast

import pytest
from pyroute2.netlink.nfnetlink.nfctsocket import nfct_msg

from resolver.net import conntrack, netlink
from resolver.net.conntrack import Entry
from resolver.net.netlink import NLA_F_NESTED, NLM_F_DUMP, NLM_F_REQUEST, Message, Settled

pytestmark = pytest.mark.unit

V4_SRC, V4_DST = socket.inet_aton("192.0.2.130"), socket.inet_aton("203.0.113.10")
V6_DST = socket.inet_pton(socket.AF_INET6, "2001:db8:365::10")


def oracle_body(family: int, src: str, dst: str, zone: int | None = 7) -> bytes:
    """A dumped entry's body (after the netlink header), encoded by pyroute2."""
    ip = "CTA_IP_V4" if family == 4 else "CTA_IP_V6"
    msg = nfct_msg()
    msg["nfgen_family"] = conntrack.AF[family]
    attrs: list[list[Any]] = [
        ["CTA_TUPLE_ORIG", {"attrs": [
            ["CTA_TUPLE_IP", {"attrs": [[ip + "_SRC", src], [ip + "_DST", dst]]}],
            ["CTA_TUPLE_PROTO", {"attrs": [
                ["CTA_PROTO_NUM", 6], ["CTA_PROTO_SRC_PORT", 40000], ["CTA_PROTO_DST_PORT", 443],
            ]}],
        ]}],
        ["CTA_TUPLE_REPLY", {"attrs": [
            ["CTA_TUPLE_IP", {"attrs": [[ip + "_SRC", dst], [ip + "_DST", src]]}],
        ]}],
        ["CTA_STATUS", 0x1BE],
        ["CTA_ID", 0x12345678],
    ]  # fmt: skip
    if zone is not None:
        attrs.append(["CTA_ZONE", zone])
    msg["attrs"] = attrs
    msg.encode()
    return bytes(msg.data[16 : msg["header"]["length"]])


def decode(message: Message) -> Any:
    kind, flags, body = message
    data = netlink.HEADER.pack(16 + len(body), kind, flags, 1, 0) + body
    msg = nfct_msg(data)
    msg.decode()
    return msg


def kernel_body(ip_attrs: bytes, family: int = socket.AF_INET) -> bytes:
    """An entry laid out as the kernel does (NLA_F_NESTED set), with the given CTA_TUPLE_IP."""
    tup = netlink.nested(conntrack.CTA_TUPLE_ORIG, netlink.nested(conntrack.CTA_TUPLE_IP, ip_attrs))
    return conntrack.NFGENMSG.pack(family, 0, 0) + tup


# -- encoders ----------------------------------------------------------------------------------


def test_dump_request_is_an_nfgenmsg_naming_the_family() -> None:
    assert conntrack.dump_request(4) == b"\x02\x00\x00\x00"
    assert conntrack.dump_request(6) == b"\x0a\x00\x00\x00"
    assert conntrack.dump_request(0) == b"\x00\x00\x00\x00"
    assert conntrack.MSG_GET == 0x0101 and conntrack.MSG_DELETE == 0x0102


def test_delete_message_layout_by_hand() -> None:
    tup = bytes(range(20))
    entry = Entry(4, V4_DST, tup, zone=b"\x00\x07", id=b"\x12\x34\x56\x78")
    kind, flags, body = conntrack.delete_message(entry)
    assert (kind, flags) == (0x0102, NLM_F_REQUEST)
    assert body == (
        b"\x02\x00\x00\x00"  # AF_INET, NFNETLINK_V0, res_id 0
        + struct.pack("=HH", 24, 1 | NLA_F_NESTED) + tup  # CTA_TUPLE_ORIG, echoed
        + struct.pack("=HH", 6, 18) + b"\x00\x07\x00\x00"  # CTA_ZONE be16, padded
        + struct.pack("=HH", 8, 12) + b"\x12\x34\x56\x78"  # CTA_ID be32
    )  # fmt: skip
    _, _, bare = conntrack.delete_message(Entry(6, V6_DST, tup, None, None))
    assert bare == b"\x0a\x00\x00\x00" + struct.pack("=HH", 24, 1 | NLA_F_NESTED) + tup


@pytest.mark.parametrize(
    ("family", "src", "dst"),
    [(4, "192.0.2.130", "203.0.113.10"), (6, "2001:db8:c::2", "2001:db8:365::10")],
)
def test_parse_then_delete_round_trips_through_the_oracle(family: int, src: str, dst: str) -> None:
    body = oracle_body(family, src, dst)
    entry = conntrack.parse_entry(body)
    assert entry is not None
    assert entry.family == family
    assert entry.dst == socket.inet_pton(conntrack.AF[family], dst)
    assert entry.zone == b"\x00\x07" and entry.id == b"\x12\x34\x56\x78"

    msg = decode(conntrack.delete_message(entry))
    assert msg["nfgen_family"] == conntrack.AF[family]
    orig = msg.get_attr("CTA_TUPLE_ORIG")
    ip = "CTA_IP_V4" if family == 4 else "CTA_IP_V6"
    assert orig.get_attr("CTA_TUPLE_IP").get_attr(ip + "_DST") == dst
    assert orig.get_attr("CTA_TUPLE_IP").get_attr(ip + "_SRC") == src
    proto = orig.get_attr("CTA_TUPLE_PROTO")
    assert (proto.get_attr("CTA_PROTO_NUM"), proto.get_attr("CTA_PROTO_DST_PORT")) == (6, 443)
    assert msg.get_attr("CTA_ZONE") == 7 and msg.get_attr("CTA_ID") == 0x12345678
    assert msg.get_attr("CTA_TUPLE_REPLY") is None  # the original tuple alone names it


def test_entry_without_zone_sends_none() -> None:
    entry = conntrack.parse_entry(oracle_body(4, "192.0.2.130", "203.0.113.10", zone=None))
    assert entry is not None and entry.zone is None
    assert decode(conntrack.delete_message(entry)).get_attr("CTA_ZONE") is None


# -- parsing -----------------------------------------------------------------------------------


def test_orig_dst_reads_the_kernel_layout_and_walks_any_other() -> None:
    v4 = netlink.attr(conntrack.CTA_IP_V4_SRC, V4_SRC) + netlink.attr(
        conntrack.CTA_IP_V4_DST, V4_DST
    )
    assert conntrack.orig_dst(kernel_body(v4)) == V4_DST  # fixed offsets
    swapped = netlink.attr(conntrack.CTA_IP_V4_DST, V4_DST) + netlink.attr(
        conntrack.CTA_IP_V4_SRC, V4_SRC
    )
    assert conntrack.orig_dst(kernel_body(swapped)) == V4_DST  # walked
    v6 = netlink.attr(conntrack.CTA_IP_V6_SRC, bytes(16)) + netlink.attr(
        conntrack.CTA_IP_V6_DST, V6_DST
    )
    assert conntrack.orig_dst(kernel_body(v6, socket.AF_INET6)) == V6_DST
    # The reply tuple first (no kernel does this): still the original destination.
    reply = netlink.nested(conntrack.CTA_TUPLE_ORIG + 1, netlink.nested(
        conntrack.CTA_TUPLE_IP, netlink.attr(conntrack.CTA_IP_V4_DST, V4_SRC)))  # fmt: skip
    assert conntrack.orig_dst(kernel_body(v4)[:4] + reply + kernel_body(v4)[4:]) == V4_DST


@pytest.mark.parametrize(
    "body",
    [
        b"",
        b"\x02\x00\x00\x00",
        b"\x02\x00\x00\x00" + netlink.attr(conntrack.CTA_ID, b"\x00\x00\x00\x01"),
        kernel_body(netlink.attr(conntrack.CTA_IP_V4_SRC, V4_SRC)),  # no destination
        kernel_body(netlink.attr(conntrack.CTA_IP_V4_SRC, V4_SRC) + netlink.attr(2, V4_DST))[:-6],
        b"\x02\x00\x00\x00\xff\xff\x01\x80" + bytes(12),  # an attribute longer than the body
    ],
)
def test_malformed_bodies_give_none(body: bytes) -> None:
    assert conntrack.orig_dst(body) is None
    assert conntrack.parse_entry(body) is None


def test_matching_keeps_only_wanted_destinations() -> None:
    bodies = [
        oracle_body(4, "192.0.2.130", "203.0.113.10"),
        oracle_body(4, "192.0.2.130", "203.0.113.11"),
        oracle_body(6, "2001:db8:c::2", "2001:db8:365::10"),
        b"\x02\x00",
    ]
    found = conntrack.matching(bodies, {V4_DST, V6_DST})
    assert [e.dst for e in found] == [V4_DST, V6_DST]


# -- flush, on a fake channel ------------------------------------------------------------------


class FakeChannel:
    """Answers dumps from `table` (bodies per family; those `keep` accepts, as the writer
    thread does, noted in `kept`) and deletes with `answer(entry body)`."""

    def __init__(self, table: dict[int, list[bytes]]) -> None:
        self.table = table
        self.requests: list[tuple[int, int, bytes]] = []
        self.batches: list[Sequence[Message]] = []
        self.answer: Callable[[bytes], int] = lambda body: 0
        self.hang = False
        self.refuse: int | None = None
        self.kept: list[int] = []  # per dump answered, the bodies kept

    def request(
        self, kind: int, flags: int, body: bytes, keep: netlink.Keep | None = None
    ) -> asyncio.Future[list[bytes]]:
        self.requests.append((kind, flags, body))
        fut: asyncio.Future[list[bytes]] = asyncio.get_running_loop().create_future()
        if self.refuse is not None:
            fut.set_exception(netlink.NetlinkSocketError(self.refuse))
        elif not self.hang:
            dumped = self.table.get({2: 4, 10: 6}[body[0]], [])
            kept = [b for b in dumped if keep is None or keep(memoryview(b))]
            self.kept.append(len(kept))
            fut.set_result(kept)
        return fut

    def submit(self, messages: Sequence[Message], settled: Settled, atomic: bool = False) -> None:
        self.batches.append(messages)
        errors = [self.answer(body) for _, _, body in messages]
        asyncio.get_running_loop().call_soon(settled, errors)


def bodies(family: int, dst: str, count: int) -> list[bytes]:
    src = "192.0.2.130" if family == 4 else "2001:db8:c::2"
    return [oracle_body(family, src, dst) for _ in range(count)]


def run_flush(channel: FakeChannel, addresses: list[bytes], deadline: float, **kw: Any) -> Any:
    async def go() -> conntrack.Flushed:
        loop = asyncio.get_running_loop()
        return await conntrack.flush(
            cast(netlink.ChannelLike, channel),
            addresses,
            loop.time() + deadline,
            clock=loop.time,
            **kw,
        )

    return asyncio.run(go())


def test_flush_dumps_each_family_once_and_deletes_matches_in_batches() -> None:
    table = {
        4: bodies(4, "203.0.113.10", 300) + bodies(4, "203.0.113.11", 50),
        6: bodies(6, "2001:db8:365::10", 3) + bodies(6, "2001:db8:365::11", 2),
    }
    channel = FakeChannel(table)
    done = run_flush(channel, [V4_DST, V6_DST], 5.0)
    assert done == conntrack.Flushed(deleted=303, failed=0, complete=True)
    assert channel.requests == [
        (conntrack.MSG_GET, NLM_F_REQUEST | NLM_F_DUMP, b"\x02\x00\x00\x00"),
        (conntrack.MSG_GET, NLM_F_REQUEST | NLM_F_DUMP, b"\x0a\x00\x00\x00"),
    ]
    assert [len(b) for b in channel.batches] == [conntrack.DELETE_BATCH, 300 - 256, 3]
    assert channel.kept == [300, 3]  # the dumps' other entries were never kept


def test_flush_of_one_family_dumps_only_that_family() -> None:
    channel = FakeChannel({4: bodies(4, "203.0.113.10", 2), 6: bodies(6, "2001:db8:365::10", 2)})
    assert run_flush(channel, [V6_DST], 5.0).deleted == 2
    assert [r[2] for r in channel.requests] == [b"\x0a\x00\x00\x00"]
    assert run_flush(FakeChannel({}), [], 5.0) == conntrack.Flushed(0, 0, True)


def test_enoent_is_not_counted_and_other_errors_are_failures() -> None:
    channel = FakeChannel({4: bodies(4, "203.0.113.10", 6)})
    codes = iter([0, errno.ENOENT, errno.EPERM, 0, errno.ENOENT, 0])
    channel.answer = lambda body: next(codes)
    assert run_flush(channel, [V4_DST], 5.0) == conntrack.Flushed(3, 1, True)


def test_a_passed_deadline_starts_nothing() -> None:
    channel = FakeChannel({4: bodies(4, "203.0.113.10", 6)})
    assert run_flush(channel, [V4_DST], 0.0) == conntrack.Flushed(0, 0, False)
    assert channel.requests == [] and channel.batches == []


def test_a_dump_that_outlasts_the_deadline_is_abandoned() -> None:
    channel = FakeChannel({4: bodies(4, "203.0.113.10", 6)})
    channel.hang = True
    assert run_flush(channel, [V4_DST], 0.05) == conntrack.Flushed(0, 0, False)


def test_a_refused_dump_ends_the_flush() -> None:
    channel = FakeChannel({4: bodies(4, "203.0.113.10", 6)})
    channel.refuse = errno.EPERM
    assert run_flush(channel, [V4_DST, V6_DST], 5.0) == conntrack.Flushed(0, 0, False)
    assert len(channel.requests) == 1


def test_the_deadline_is_checked_between_batches() -> None:
    channel = FakeChannel({4: bodies(4, "203.0.113.10", 600)})
    ticks = iter([0.0, 0.0, 0.0, 10.0])  # the dump, two batches, then time is up

    async def go() -> conntrack.Flushed:
        return await conntrack.flush(
            cast(netlink.ChannelLike, channel), [V4_DST], 5.0, clock=lambda: next(ticks)
        )

    assert asyncio.run(go()) == conntrack.Flushed(512, 0, False)
    assert len(channel.batches) == 2
