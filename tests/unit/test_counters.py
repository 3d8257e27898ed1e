"""The breakout traffic counters' nf_tables messages (resolver.net.traffic, resolver.net.nftables):
bytes against hand-made layouts, every message decoded with pyroute2's nf_tables classes where
it has one (tables, chains, rules, sets, elements; not objects), and the readers fed replies laid
out as the kernel sends them."""

from __future__ import annotations

import asyncio
import errno
import socket
import struct
from typing import Any, cast

import pytest
from pyroute2.netlink.nfnetlink.nftsocket import (
    nft_chain_msg,
    nft_rule_msg,
    nft_set_elem_list_msg,
    nft_set_msg,
    nft_table_msg,
)

from resolver.net import netlink, nftables, traffic
from resolver.net.netlink import (
    NLA_F_NESTED,
    NLM_F_ACK,
    NLM_F_CREATE,
    NLM_F_REQUEST,
    Message,
    asciiz,
    attr,
    nested,
)
from resolver.net.nftables import be32, be64
from resolver.net.traffic import Layout, TrafficClass

pytestmark = pytest.mark.unit

SEED5, OPT46 = TrafficClass(5), TrafficClass(46, "Optimize")
LAYOUT = Layout(("wan0", "wan1"), (SEED5, OPT46))
A4 = socket.inet_aton("203.0.113.10")
A6 = socket.inet_pton(socket.AF_INET6, "2001:db8:365::10")
INET = b"\x01\x00\x00\x00"  # nfgenmsg: NFPROTO_INET, version 0, res_id 0


def decode(cls: Any, message: Message) -> Any:
    kind, flags, body = message
    msg = cls(netlink.HEADER.pack(16 + len(body), kind, flags, 1, 0) + body)
    msg.decode()
    return msg


def exprs(rule: Any) -> list[tuple[str, dict[str, Any]]]:
    out = []
    for e in rule.get_attr("NFTA_RULE_EXPRESSIONS"):
        data = e.get_attr("NFTA_EXPR_DATA")
        out.append((e.get_attr("NFTA_EXPR_NAME"), {k: v for k, v in data["attrs"]}))
    return out


def value(data: Any) -> Any:
    """NFTA_DATA_VALUE or the verdict (code, chain) of a decoded nfta_data."""
    if data.get_attr("NFTA_DATA_VALUE") is not None:
        return data.get_attr("NFTA_DATA_VALUE")
    v = data.get_attr("NFTA_DATA_VERDICT")
    return v.get_attr("NFTA_VERDICT_CODE"), v.get_attr("NFTA_VERDICT_CHAIN")


# -- names -------------------------------------------------------------------------------------


def test_layout_names_and_owners() -> None:
    assert SEED5.name == "r5-seed" and OPT46.name == "r46-Optimize"
    assert Layout.chain(OPT46) == "c-r46-Optimize"
    assert Layout.counter(OPT46, "wan1") == "r46-Optimize.wan1"
    assert LAYOUT.owner("r46-Optimize.wan1") == (OPT46, "wan1")
    assert LAYOUT.owner("r7-seed.wan0") is None


@pytest.mark.parametrize("bad", ["", "a" * 16, "x" * 40])
def test_layout_refuses_names_no_interface_has(bad: str) -> None:
    with pytest.raises(ValueError, match="interface name"):
        Layout((bad,), (SEED5,))


# -- objects, by hand --------------------------------------------------------------------------


def test_new_table_layout_by_hand() -> None:
    kind, flags, body = nftables.new_table("resolverd", "hi")
    assert (kind, flags) == (0x0A00, NLM_F_REQUEST | NLM_F_CREATE)
    assert body == (
        INET
        + struct.pack("=HH", 14, 1) + b"resolverd\0" + b"\0\0"  # NFTA_TABLE_NAME, padded
        + struct.pack("=HH", 8, 2) + b"\0\0\0\0"  # NFTA_TABLE_FLAGS
        + struct.pack("=HH", 9, 6) + b"\x00\x03hi\0" + b"\0\0\0"  # USERDATA: comment TLV
    )  # fmt: skip
    assert traffic.parse_since(body) is None  # no "since" in that comment
    assert decode(nft_table_msg, nftables.new_table("t")).get_attr("NFTA_TABLE_NAME") == "t"


def test_new_counter_layout_by_hand() -> None:
    kind, flags, body = nftables.new_counter("t", "c", packets=3, octets=300)
    assert (kind, flags) == (0x0A12, NLM_F_REQUEST | NLM_F_CREATE)
    assert body == (
        INET
        + struct.pack("=HH", 6, 1) + b"t\0\0\0"  # NFTA_OBJ_TABLE
        + struct.pack("=HH", 6, 2) + b"c\0\0\0"  # NFTA_OBJ_NAME
        + struct.pack("=HH", 8, 3) + b"\0\0\0\x01"  # NFTA_OBJ_TYPE: NFT_OBJECT_COUNTER
        + struct.pack("=HH", 28, 4 | NLA_F_NESTED)  # NFTA_OBJ_DATA
        + struct.pack("=HH", 12, 1) + (300).to_bytes(8, "big")  # NFTA_COUNTER_BYTES
        + struct.pack("=HH", 12, 2) + (3).to_bytes(8, "big")  # NFTA_COUNTER_PACKETS
    )  # fmt: skip


def test_transaction_frames_and_acks_every_message() -> None:
    inner = [nftables.del_table("t"), nftables.new_table("t")]
    msgs = nftables.transaction(inner)
    batch = struct.pack("=BBH", 0, 0, socket.htons(10))  # AF_UNSPEC, res_id NFNL_SUBSYS_NFTABLES
    assert msgs[0] == (16, NLM_F_REQUEST, batch) and msgs[-1] == (17, NLM_F_REQUEST, batch)
    assert [m[1] & NLM_F_ACK for m in msgs[1:-1]] == [NLM_F_ACK, NLM_F_ACK]
    assert [m[2] for m in msgs[1:-1]] == [m[2] for m in inner]
    assert nftables.failed([0, 0, 0]) == 0 and nftables.failed([0, 22, 2]) == 22


def test_helpers() -> None:
    assert be32(-4) == b"\xff\xff\xff\xfc"  # NFT_GOTO
    assert nftables.ifname("wan0") == b"wan0" + bytes(12)
    assert nftables.string(b"abc\0\0") == "abc"


# -- the table's setup -------------------------------------------------------------------------


def test_setup_message_sequence() -> None:
    msgs = traffic.setup(LAYOUT, 1700000000)
    kinds = [m[0] & 0xFF if m[0] >> 8 == 10 else m[0] for m in msgs]
    chains = 3 + 2 - 1  # out, held, one per class
    assert kinds == (
        [16, 0] + [18] * 4 + [9, 9] + [3] * 4 + [8] * 4  # table, counters, maps, chains, flushes
        + [6] * 2 + [6] * 2 + [6] * 4 + [17]  # rules: out per link, held per family, class x link
    ), kinds  # fmt: skip
    assert chains == 4
    assert msgs == traffic.setup(LAYOUT, 1700000000)  # deterministic
    assert traffic.parse_since(msgs[1][2]) == 1700000000
    names = [nftables.string(netlink.parse_attrs(m[2], 4)[2]) for m in msgs[2:6]]
    assert names == ["r5-seed.wan0", "r5-seed.wan1", "r46-Optimize.wan0", "r46-Optimize.wan1"]


def test_setup_base_chain_by_oracle() -> None:
    msgs = traffic.setup(LAYOUT, 1)
    chain = decode(nft_chain_msg, msgs[8])
    assert chain.get_attr("NFTA_CHAIN_NAME") == "out"
    hook = chain.get_attr("NFTA_CHAIN_HOOK")
    assert (hook.get_attr("NFTA_HOOK_HOOKNUM"), hook.get_attr("NFTA_HOOK_PRIORITY")) == (2, 300)
    assert chain.get_attr("NFTA_CHAIN_POLICY") == 1  # accept
    assert chain.get_attr("NFTA_CHAIN_TYPE") == "filter"
    regular = decode(nft_chain_msg, msgs[9])
    assert regular.get_attr("NFTA_CHAIN_NAME") == "held"
    assert regular.get_attr("NFTA_CHAIN_HOOK") is None


def test_setup_rules_by_oracle() -> None:
    msgs = [m for m in traffic.setup(LAYOUT, 1) if m[0] == 0x0A06]
    rules = [decode(nft_rule_msg, m) for m in msgs]
    out = exprs(rules[0])
    assert rules[0].get_attr("NFTA_RULE_CHAIN") == "out"
    assert [name for name, _ in out] == ["meta", "cmp", "immediate"]
    assert out[0][1] == {"NFTA_META_DREG": "NFT_REG_1", "NFTA_META_KEY": "NFT_META_OIFNAME"}
    assert value(out[1][1]["NFTA_CMP_DATA"]) == b"wan0" + bytes(12)
    assert value(out[2][1]["NFTA_IMMEDIATE_DATA"]) == ("NFT_GOTO", "held")

    for rule, nfproto, offset, size, set_name in (
        (rules[2], b"\x02", 16, 4, "held4"),
        (rules[3], b"\x0a", 24, 16, "held6"),
    ):
        e = exprs(rule)
        assert [name for name, _ in e] == ["meta", "cmp", "payload", "lookup"]
        assert e[0][1]["NFTA_META_KEY"] == "NFT_META_NFPROTO"
        assert value(e[1][1]["NFTA_CMP_DATA"]) == nfproto
        assert e[2][1]["NFTA_PAYLOAD_BASE"] == "NFT_PAYLOAD_NETWORK_HEADER"
        assert e[2][1]["NFTA_PAYLOAD_OFFSET"] == offset
        assert e[2][1]["NFTA_PAYLOAD_LEN"] == size
        assert e[3][1]["NFTA_LOOKUP_SET"] == set_name
        assert e[3][1]["NFTA_LOOKUP_DREG"] == "NFT_REG_VERDICT"

    last = rules[-1]
    assert last.get_attr("NFTA_RULE_CHAIN") == "c-r46-Optimize"
    e = exprs(last)
    assert [name for name, _ in e] == ["meta", "cmp", "objref", "immediate"]
    assert value(e[1][1]["NFTA_CMP_DATA"]) == b"wan1" + bytes(12)
    assert e[2][1]["NFTA_OBJREF_IMM_NAME"] == "r46-Optimize.wan1"
    assert value(e[3][1]["NFTA_IMMEDIATE_DATA"]) == ("NFT_RETURN", None)


def test_verdict_maps_by_oracle() -> None:
    for family, key_type, key_len in ((4, 7, 4), (6, 8, 16)):
        s = decode(nft_set_msg, nftables.new_verdict_map("t", "m", family, 9))
        assert s.get_attr("NFTA_SET_FLAGS") == frozenset({"NFT_SET_MAP", "NFT_SET_TIMEOUT"})
        assert s.get_attr("NFTA_SET_KEY_TYPE") == key_type
        assert s.get_attr("NFTA_SET_KEY_LEN") == key_len
        assert s.get_attr("NFTA_SET_DATA_TYPE") == 0xFFFFFF00
        assert s.get_attr("NFTA_SET_ID") == 9
        assert s.get_attr("NFTA_SET_EXPR").get_attr("NFTA_EXPR_NAME") == "counter"


# -- elements ----------------------------------------------------------------------------------


def test_hold_batches_and_elements_by_oracle() -> None:
    items = [(A4, SEED5, 300)] * 1100 + [(A4, OPT46, 0)]
    transactions = traffic.hold(LAYOUT, 4, items)
    assert [len(t) for t in transactions] == [3, 3, 3]
    msg = transactions[0][1]
    assert msg[0] == 0x0A0C and msg[1] == NLM_F_REQUEST | NLM_F_CREATE | NLM_F_ACK
    lists = [decode(nft_set_elem_list_msg, t[1]) for t in transactions]
    sizes = [len(x.get_attr("NFTA_SET_ELEM_LIST_ELEMENTS")) for x in lists]
    assert sizes == [512, 512, 77]
    last = decode(nft_set_elem_list_msg, transactions[-1][1])
    assert last.get_attr("NFTA_SET_ELEM_LIST_SET") == "held4"
    element = last.get_attr("NFTA_SET_ELEM_LIST_ELEMENTS")[-1]
    assert element.get_attr("NFTA_SET_ELEM_KEY").get_attr("NFTA_DATA_VALUE") == A4
    assert element.get_attr("NFTA_SET_ELEM_TIMEOUT") == 1000  # at least a second
    verdict = element.get_attr("NFTA_SET_ELEM_DATA").get_attr("NFTA_DATA_VERDICT")
    assert verdict.get_attr("NFTA_VERDICT_CODE") == "NFT_GOTO"
    assert verdict.get_attr("NFTA_VERDICT_CHAIN") == "c-r46-Optimize"


def test_release_and_reclassify() -> None:
    (t,) = traffic.release(LAYOUT, 6, [A6])
    gone = decode(nft_set_elem_list_msg, t[1])
    assert t[1][0] == 0x0A1E  # DESTROYSETELEM
    assert gone.get_attr("NFTA_SET_ELEM_LIST_SET") == "held6"
    (element,) = gone.get_attr("NFTA_SET_ELEM_LIST_ELEMENTS")
    assert element.get_attr("NFTA_SET_ELEM_KEY").get_attr("NFTA_DATA_VALUE") == A6
    assert element.get_attr("NFTA_SET_ELEM_DATA") is None

    msgs = traffic.reclassify(LAYOUT, 4, A4, OPT46, 60)
    assert [m[0] for m in msgs] == [16, 0x0A1E, 0x0A0C, 17]  # one transaction: out, then in
    assert traffic.release(LAYOUT, 4, []) == []


# -- reading back ------------------------------------------------------------------------------


def obj_reply(name: str, packets: int, octets: int) -> bytes:
    """A GETOBJ reply body as the kernel lays it out."""
    return (
        INET
        + attr(1, asciiz("resolverd")) + attr(2, asciiz(name)) + attr(3, be32(1))
        + nested(4, attr(1, be64(octets)), attr(2, be64(packets)), attr(3, b"\0" * 4))
        + attr(5, be32(1)) + attr(6, be64(7))
    )  # fmt: skip


def elem_reply() -> bytes:
    counter = nested(2, attr(1, be64(1280)), attr(2, be64(10)))  # NFTA_EXPR_DATA
    small = nested(2, attr(1, be64(5)), attr(2, be64(1)))
    one = nested(
        1,
        nested(1, attr(1, A4)),  # KEY
        nested(2, nftables.verdict(-4, "c-r5-seed")),  # DATA
        attr(4, be64(300000)),  # TIMEOUT
        attr(5, be64(299000)),  # EXPIRATION
        nested(7, attr(1, asciiz("counter")), counter),  # ELEM_EXPR
    )
    two = nested(
        1,
        nested(1, attr(1, A4[:3] + b"\x0b")),
        nested(2, nftables.verdict(-4, "c-r46-Optimize")),
        nested(11, nested(1, attr(1, asciiz("counter")), small)),  # ELEM_EXPRESSIONS
    )
    keyless = nested(1, attr(4, be64(1)))
    head = INET + attr(1, asciiz("resolverd")) + attr(2, asciiz("held4"))
    return head + nested(3, one, two, keyless)


def test_parse_counter_and_traffic() -> None:
    assert traffic.parse_counter(obj_reply("r5-seed.wan0", 10, 1280)) == ("r5-seed.wan0", 10, 1280)
    assert traffic.parse_counter(INET + attr(2, asciiz("x"))) is None
    named = [("r46-Optimize.wan1", 2, 200), ("r5-seed.wan0", 1, 100), ("old.wan9", 9, 9)]
    rows = traffic.traffic(LAYOUT, named)
    assert rows == [
        traffic.Traffic(5, None, "wan0", 100, 1),
        traffic.Traffic(46, "Optimize", "wan1", 200, 2),
    ]


def test_parse_elements() -> None:
    held = traffic.parse_elements(elem_reply())
    assert held == [
        traffic.Held(A4, "c-r5-seed", 1280, 10, 299000),
        traffic.Held(A4[:3] + b"\x0b", "c-r46-Optimize", 5, 1, None),
    ]
    assert traffic.parse_elements(INET) == []


def test_parse_since() -> None:
    body = nftables.new_table("resolverd", traffic.comment(1712345678))[2]
    assert traffic.parse_since(body) == 1712345678
    assert traffic.parse_since(nftables.new_table("resolverd")[2]) is None


class FakeChannel:
    def __init__(self, replies: list[bytes] | None, code: int = 0) -> None:
        self.replies, self.code = replies, code
        self.asked: list[tuple[int, int, bytes]] = []

    def request(self, kind: int, flags: int, body: bytes) -> asyncio.Future[list[bytes]]:
        self.asked.append((kind, flags, body))
        fut: asyncio.Future[list[bytes]] = asyncio.get_running_loop().create_future()
        if self.code:
            fut.set_exception(netlink.NetlinkSocketError(self.code))
        else:
            fut.set_result(self.replies or [])
        return fut


def test_readers_on_a_fake_channel() -> None:
    async def go() -> None:
        table = nftables.new_table("resolverd", traffic.comment(42))[2]
        ch = FakeChannel([table])
        assert await traffic.read_since(cast(netlink.ChannelLike, ch), LAYOUT) == 42
        assert ch.asked[0][:2] == (0x0A01, NLM_F_REQUEST)
        gone = FakeChannel(None, errno.ENOENT)
        assert await traffic.read_since(cast(netlink.ChannelLike, gone), LAYOUT) is None
        with pytest.raises(netlink.NetlinkSocketError):
            await traffic.read_since(
                cast(netlink.ChannelLike, FakeChannel(None, errno.EPERM)), LAYOUT
            )
        ch = FakeChannel([obj_reply("r5-seed.wan1", 3, 30)])
        assert await traffic.read_counters(cast(netlink.ChannelLike, ch), LAYOUT) == [
            traffic.Traffic(5, None, "wan1", 30, 3)
        ]
        kind, flags, body = ch.asked[0]
        assert (kind, flags & netlink.NLM_F_DUMP) == (0x0A13, netlink.NLM_F_DUMP)
        assert netlink.parse_attrs(body, 4)[3] == be32(1)  # counters only
        ch = FakeChannel([elem_reply()])
        assert len(await traffic.read_held(cast(netlink.ChannelLike, ch), LAYOUT, 4)) == 2
        assert b"held4\0" in ch.asked[0][2]

    asyncio.run(go())
