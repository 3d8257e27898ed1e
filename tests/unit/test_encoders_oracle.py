"""pyroute2 as the oracle of the hand-written netlink encoders and parsers, without root.

Every message resolverd packs by hand (routes.py, ipsets.py, nftsets.py) is decoded here with
pyroute2's own message classes (rtmsg, fibmsg, ipset_msg, nft_set_elem_list_msg), and the
fields the kernel acts on are asserted against pyroute2's constants: message type and flags,
family, table, protocol, scope, route type, destination, gateway, output interface, rule
action and attributes, set name, type, revision, family, address, timeout and its byte-order
flag. The other way round, messages pyroute2 encodes as the kernel would send them (route,
rule, link and address dumps, ipset list and type replies) go through our parsers.
`ipsets.create` runs over a fake nfnetlink socket whose "kernel" reads the requests with
pyroute2 too. The namespace tier (tests/netns/test_kernel_oracle.py) checks the same encoders
against the kernel itself.
"""

from __future__ import annotations

import errno
import socket
import struct
from typing import Any, cast

import pytest
from pyroute2.netlink import (
    NLA_F_NESTED,
    NLA_F_NET_BYTEORDER,
    NLM_F_ACK,
    NLM_F_CREATE,
    NLM_F_DUMP,
    NLM_F_EXCL,
    NLM_F_REPLACE,
    NLM_F_REQUEST,
)
from pyroute2.netlink.nfnetlink import NFNL_SUBSYS_IPSET, NFNL_SUBSYS_NFTABLES, nfgen_msg
from pyroute2.netlink.nfnetlink.ipset import (
    IPSET_CMD_ADD,
    IPSET_CMD_CREATE,
    IPSET_CMD_DEL,
    IPSET_CMD_LIST,
    IPSET_CMD_TYPE,
    IPSET_ERR_FIND_TYPE,
    IPSET_FLAG_LIST_HEADER,
    ipset_msg,
)
from pyroute2.netlink.nfnetlink.nftsocket import (
    NFPROTO_INET,
    NFPROTO_IPV6,
    NFT_MSG_NEWSETELEM,
    nft_set_elem_list_msg,
)
from pyroute2.netlink.rtnl import (
    RTM_DELROUTE,
    RTM_DELRULE,
    RTM_GETROUTE,
    RTM_GETRULE,
    RTM_NEWROUTE,
    RTM_NEWRULE,
    rt_scope,
    rt_type,
)
from pyroute2.netlink.rtnl.fibmsg import FR_ACT_NAMES, fibmsg
from pyroute2.netlink.rtnl.ifaddrmsg import ifaddrmsg
from pyroute2.netlink.rtnl.ifinfmsg import IFF_RUNNING, IFF_UP, ifinfmsg
from pyroute2.netlink.rtnl.rtmsg import rtmsg

from resolver.config import BreakoutConfig, NftSet, parse_config
from resolver.net import ipsets, links, netlink, nftsets, routes
from resolver.net.errors import BreakoutError
from resolver.net.kernel import Kernel
from resolver.net.netlink import HEADER, NLMSG_ERROR, Message
from resolver.net.routes import NextHop, RouteEncoder, RuleSpec
from tests.fakenetlink import QueuedSocket

pytestmark = pytest.mark.unit

NFT_MSG_DESTROYSETELEM = 30  # linux/netfilter/nf_tables.h (6.3+); pyroute2 0.9.7 lacks it
TABLE, PROTOCOL, OIF = 365, 245, 7
GW = {4: "192.0.2.1", 6: "2001:db8:b::1"}
ADDR = {4: "203.0.113.10", 6: "2001:db8:365::10"}
AF = {4: socket.AF_INET, 6: socket.AF_INET6}


def packed(address: str) -> bytes:
    return socket.inet_pton(AF[6 if ":" in address else 4], address)


def wire(message: Message, seq: int = 1) -> bytes:
    kind, flags, body = message
    return HEADER.pack(16 + len(body), kind, flags, seq, 0) + body


def decode(cls: Any, message: Message) -> Any:
    """Our message, decoded by pyroute2 (header included)."""
    msg = cls(wire(message))
    msg.decode()
    assert msg["header"]["length"] == len(wire(message))
    return msg


def attr_flags(msg: Any, name: str) -> int:
    """The flag bits (NESTED, NET_BYTEORDER) of attribute `name` as sent."""
    for slot in msg["attrs"]:
        if slot.name == name:
            return int(slot.get_flags() or 0)
    raise AssertionError(f"no {name} in {msg}")


def names(msg: Any) -> list[str]:
    return [slot.name for slot in msg["attrs"]]


def encoded(msg: Any) -> bytes:
    """A message pyroute2 encoded, as the kernel would send it."""
    msg.encode()
    return bytes(msg.data)


# -- routes ---------------------------------------------------------------------------------


@pytest.mark.parametrize("family", [4, 6])
@pytest.mark.parametrize("gateway", [True, False], ids=["via", "onlink"])
@pytest.mark.parametrize("table", [TABLE, 200])
def test_route_add_is_a_create_replace_of_a_unicast_host_route(
    family: int, gateway: bool, table: int
) -> None:
    enc = RouteEncoder(table, PROTOCOL, {family: NextHop(OIF, GW[family] if gateway else None)})
    m = decode(rtmsg, enc.add(family, packed(ADDR[family]), 32 if family == 4 else 128))
    assert m["header"]["type"] == RTM_NEWROUTE
    assert m["header"]["flags"] == NLM_F_REQUEST | NLM_F_CREATE | NLM_F_REPLACE  # no EXCL
    assert m["family"] == AF[family]
    assert m["dst_len"] == (32 if family == 4 else 128) and m["src_len"] == 0
    assert m["table"] == (table if table < 256 else 0)  # the u8 field; RTA_TABLE is the truth
    assert m.get_attr("RTA_TABLE") == table
    assert m["proto"] == PROTOCOL
    assert m["type"] == rt_type["unicast"]
    onlink = not gateway and family == 4
    assert m["scope"] == rt_scope["link" if onlink else "universe"]
    assert m.get_attr("RTA_DST") == ADDR[family]
    assert m.get_attr("RTA_OIF") == OIF
    assert m.get_attr("RTA_GATEWAY") == (GW[family] if gateway else None)
    assert sorted(names(m)) == sorted(
        ["RTA_DST", "RTA_TABLE", "RTA_OIF"] + ["RTA_GATEWAY"] * gateway
    )


def test_route_add_of_a_prefix_and_of_the_default() -> None:
    enc = RouteEncoder(TABLE, PROTOCOL, {4: NextHop(OIF, GW[4])})
    m = decode(rtmsg, enc.add(4, packed("13.67.59.88"), 30))
    assert (m["dst_len"], m.get_attr("RTA_DST")) == (30, "13.67.59.88")
    m = decode(rtmsg, enc.add(4, bytes(4), 0))  # a probe table's default route
    assert (m["dst_len"], m.get_attr("RTA_DST")) == (0, "0.0.0.0")


@pytest.mark.parametrize("family", [4, 6])
def test_route_delete_names_table_protocol_and_destination_only(family: int) -> None:
    enc = RouteEncoder(TABLE, PROTOCOL, {})
    m = decode(rtmsg, enc.delete(family, packed(ADDR[family]), 32 if family == 4 else 128))
    assert m["header"]["type"] == RTM_DELROUTE
    assert m["header"]["flags"] == NLM_F_REQUEST
    assert (m["family"], m["proto"], m.get_attr("RTA_TABLE")) == (AF[family], PROTOCOL, TABLE)
    # Scope NOWHERE and type UNSPEC are the kernel's wildcards: any of our routes there.
    assert m["scope"] == rt_scope["nowhere"] and m["type"] == rt_type["unspec"]
    assert m.get_attr("RTA_DST") == ADDR[family]
    assert sorted(names(m)) == ["RTA_DST", "RTA_TABLE"]


@pytest.mark.parametrize("family", [4, 6])
def test_unreachable_default_is_the_tables_last_word(family: int) -> None:
    m = decode(rtmsg, RouteEncoder(TABLE, PROTOCOL, {}).unreachable(family))
    assert m["header"]["type"] == RTM_NEWROUTE
    assert m["header"]["flags"] == NLM_F_REQUEST | NLM_F_CREATE | NLM_F_REPLACE
    assert (m["family"], m["dst_len"], m["proto"]) == (AF[family], 0, PROTOCOL)
    assert m["type"] == rt_type["unreachable"] and m["scope"] == rt_scope["universe"]
    assert m.get_attr("RTA_TABLE") == TABLE
    assert m.get_attr("RTA_PRIORITY") == 0xFFFFFFFF
    assert m.get_attr("RTA_DST") is None and m.get_attr("RTA_OIF") is None


@pytest.mark.parametrize("family", [4, 6])
def test_route_dump_request(family: int) -> None:
    m = decode(rtmsg, routes.dump_request(family, TABLE))
    assert m["header"]["type"] == RTM_GETROUTE
    assert m["header"]["flags"] == NLM_F_REQUEST | NLM_F_DUMP
    assert (m["family"], m.get_attr("RTA_TABLE")) == (AF[family], TABLE)


# -- rules ----------------------------------------------------------------------------------


@pytest.mark.parametrize("family", [4, 6])
@pytest.mark.parametrize("fwmark", [None, 0x365])
@pytest.mark.parametrize("add", [True, False], ids=["add", "delete"])
def test_rule_messages(family: int, fwmark: int | None, add: bool) -> None:
    m = decode(fibmsg, RuleSpec(1000, TABLE, PROTOCOL, fwmark).message(family, add=add))
    if add:
        assert m["header"]["type"] == RTM_NEWRULE
        assert m["header"]["flags"] == NLM_F_REQUEST | NLM_F_CREATE | NLM_F_EXCL
    else:
        assert m["header"]["type"] == RTM_DELRULE
        assert m["header"]["flags"] == NLM_F_REQUEST
    assert m["family"] == AF[family]
    assert m["action"] == FR_ACT_NAMES["FR_ACT_TO_TBL"]
    assert (m["dst_len"], m["src_len"], m["tos"], m["table"]) == (0, 0, 0, 0)  # from all
    assert m.get_attr("FRA_PRIORITY") == 1000
    assert m.get_attr("FRA_TABLE") == TABLE
    assert m.get_attr("FRA_PROTOCOL") == PROTOCOL
    assert m.get_attr("FRA_FWMARK") == fwmark
    assert m.get_attr("FRA_FWMASK") == (None if fwmark is None else 0xFFFFFFFF)
    expected = ["FRA_PRIORITY", "FRA_TABLE", "FRA_PROTOCOL"]
    assert names(m) == expected + (["FRA_FWMARK", "FRA_FWMASK"] if fwmark else [])


SCOPED = [
    (4, RuleSpec(1000, TABLE, PROTOCOL, src="198.51.100.0/24", family=4), "198.51.100.0", 24),
    (6, RuleSpec(1000, TABLE, PROTOCOL, src="2001:db8:a::/64", family=6), "2001:db8:a::", 64),
    (4, RuleSpec(1000, TABLE, PROTOCOL, src="192.0.2.7/32", family=4), "192.0.2.7", 32),
    (4, RuleSpec(1000, TABLE, PROTOCOL, iif="vlan20"), None, 0),
    (6, RuleSpec(1000, TABLE, PROTOCOL, iif="lo"), None, 0),
]


@pytest.mark.parametrize(("family", "spec", "src", "src_len"), SCOPED)
@pytest.mark.parametrize("add", [True, False], ids=["add", "delete"])
def test_scoped_rule_messages(
    family: int, spec: RuleSpec, src: str | None, src_len: int, add: bool
) -> None:
    """`from PREFIX lookup 365` and `iif NAME lookup 365` (breakout.clients and
    client_interfaces), as pyroute2 reads them."""
    m = decode(fibmsg, spec.message(family, add=add))
    assert m["header"]["type"] == (RTM_NEWRULE if add else RTM_DELRULE)
    assert m["family"] == AF[family]
    assert m["action"] == FR_ACT_NAMES["FR_ACT_TO_TBL"]
    assert (m["dst_len"], m["src_len"], m["tos"]) == (0, src_len, 0)
    assert m.get_attr("FRA_PRIORITY") == 1000
    assert m.get_attr("FRA_TABLE") == TABLE
    assert m.get_attr("FRA_PROTOCOL") == PROTOCOL
    assert m.get_attr("FRA_SRC") == src
    assert m.get_attr("FRA_IIFNAME") == spec.iif
    assert m.get_attr("FRA_FWMARK") is None
    extra = ["FRA_SRC"] if src else ["FRA_IIFNAME"]
    assert names(m) == ["FRA_PRIORITY", "FRA_TABLE", "FRA_PROTOCOL", *extra]
    # Our parser reads back what we packed, and the spec recognises it.
    data = spec.message(family, add=True)[2]
    rule = routes.parse_rule(data)
    assert rule is not None and (rule.src, rule.iif, rule.selectors) == (spec.src, spec.iif, False)
    assert spec.matches(rule) and spec.families == ((family,) if src else (4, 6))


def test_a_small_table_number_also_goes_in_the_rule_header() -> None:
    m = decode(fibmsg, RuleSpec(1000, 100, PROTOCOL).message(4, add=True))
    assert (m["table"], m.get_attr("FRA_TABLE")) == (100, 100)


@pytest.mark.parametrize("family", [4, 6])
def test_rule_dump_request(family: int) -> None:
    m = decode(fibmsg, routes.rule_dump_request(family))
    assert m["header"]["type"] == RTM_GETRULE
    assert m["header"]["flags"] == NLM_F_REQUEST | NLM_F_DUMP
    assert m["family"] == AF[family] and names(m) == []


# -- ipsets ---------------------------------------------------------------------------------


def ipset_type(cmd: int) -> int:
    return int(NFNL_SUBSYS_IPSET << 8) | cmd


def ipset_ip(data: Any, family: int) -> tuple[str, int]:
    """The address in an ADT data attribute, and the flags of its IPADDR attribute."""
    ip = data.get_attr("IPSET_ATTR_IP_FROM")  # type 1: IPSET_ATTR_IP (pyroute2's last name)
    key = "IPSET_ATTR_IPADDR_IPV4" if family == 4 else "IPSET_ATTR_IPADDR_IPV6"
    return ip.get_attr(key), attr_flags(ip, key)


@pytest.mark.parametrize("family", [4, 6])
@pytest.mark.parametrize(("timeout", "sent"), [(330, 330), (0, 1), (10**9, 2_147_483)])
def test_ipset_add_refreshes_an_entry_with_its_timeout(
    family: int, timeout: int, sent: int
) -> None:
    enc = ipsets.IpsetEncoder(f"m365-v{family}", family)
    m = decode(ipset_msg, enc.add(packed(ADDR[family]), timeout))
    assert m["header"]["type"] == ipset_type(IPSET_CMD_ADD)
    assert m["header"]["flags"] == NLM_F_REQUEST  # no EXCL: an existing entry is refreshed
    assert m["nfgen_family"] == AF[family]
    assert m.get_attr("IPSET_ATTR_PROTOCOL") == ipsets.IPSET_PROTOCOL
    assert m.get_attr("IPSET_ATTR_SETNAME") == f"m365-v{family}"
    assert attr_flags(m, "IPSET_ATTR_DATA") == NLA_F_NESTED
    data = m.get_attr("IPSET_ATTR_DATA")
    assert ipset_ip(data, family) == (ADDR[family], NLA_F_NET_BYTEORDER)
    assert attr_flags(data, "IPSET_ATTR_IP_FROM") == NLA_F_NESTED
    assert data.get_attr("IPSET_ATTR_TIMEOUT") == sent  # 0 would make it permanent
    assert attr_flags(data, "IPSET_ATTR_TIMEOUT") == NLA_F_NET_BYTEORDER  # else IPSET_ERR_PROTOCOL


@pytest.mark.parametrize("family", [4, 6])
def test_ipset_delete_reports_an_entry_that_is_gone(family: int) -> None:
    enc = ipsets.IpsetEncoder("m365", family)
    m = decode(ipset_msg, enc.delete(packed(ADDR[family])))
    assert m["header"]["type"] == ipset_type(IPSET_CMD_DEL)
    assert m["header"]["flags"] == NLM_F_REQUEST | NLM_F_EXCL
    assert (m["nfgen_family"], m.get_attr("IPSET_ATTR_SETNAME")) == (AF[family], "m365")
    data = m.get_attr("IPSET_ATTR_DATA")
    assert ipset_ip(data, family) == (ADDR[family], NLA_F_NET_BYTEORDER)
    assert data.get_attr("IPSET_ATTR_TIMEOUT") is None


@pytest.mark.parametrize("family", [4, 6])
def test_ipset_inspect_asks_for_the_header_only(family: int) -> None:
    m = decode(ipset_msg, ipsets.list_header_request("m365", family))
    assert m["header"]["type"] == ipset_type(IPSET_CMD_LIST)
    assert m["header"]["flags"] == NLM_F_REQUEST | NLM_F_DUMP
    assert m.get_attr("IPSET_ATTR_SETNAME") == "m365"
    assert m.get_attr("IPSET_ATTR_PROTOCOL") == ipsets.IPSET_PROTOCOL
    assert m.get_attr("IPSET_ATTR_FLAGS") == IPSET_FLAG_LIST_HEADER
    assert attr_flags(m, "IPSET_ATTR_FLAGS") == NLA_F_NET_BYTEORDER


@pytest.mark.parametrize("family", [4, 6])
def test_ipset_type_request(family: int) -> None:
    m = decode(ipset_msg, ipsets.type_request(family))
    assert m["header"]["type"] == ipset_type(IPSET_CMD_TYPE)
    assert m["header"]["flags"] == NLM_F_REQUEST
    assert m.get_attr("IPSET_ATTR_PROTOCOL") == ipsets.IPSET_PROTOCOL
    assert m.get_attr("IPSET_ATTR_TYPENAME") == "hash:ip"
    assert m.get_attr("IPSET_ATTR_FAMILY") == AF[family]  # NFPROTO_IPV4/IPV6


@pytest.mark.parametrize("family", [4, 6])
def test_ipset_create_request(family: int) -> None:
    m = decode(ipset_msg, ipsets.create_request(f"m365-v{family}", family, 6, 330, 65536))
    assert m["header"]["type"] == ipset_type(IPSET_CMD_CREATE)
    assert m["header"]["flags"] == NLM_F_REQUEST | NLM_F_EXCL  # inspect judges a clash
    assert m.get_attr("IPSET_ATTR_PROTOCOL") == ipsets.IPSET_PROTOCOL
    assert m.get_attr("IPSET_ATTR_SETNAME") == f"m365-v{family}"
    assert m.get_attr("IPSET_ATTR_TYPENAME") == "hash:ip"
    assert m.get_attr("IPSET_ATTR_REVISION") == 6
    assert m.get_attr("IPSET_ATTR_FAMILY") == AF[family]
    assert attr_flags(m, "IPSET_ATTR_DATA") == NLA_F_NESTED
    data = m.get_attr("IPSET_ATTR_DATA")
    assert data.get_attr("IPSET_ATTR_TIMEOUT") == 330
    assert data.get_attr("IPSET_ATTR_MAXELEM") == 65536
    for name in ("IPSET_ATTR_TIMEOUT", "IPSET_ATTR_MAXELEM"):
        assert attr_flags(data, name) == NLA_F_NET_BYTEORDER, name
    big = decode(ipset_msg, ipsets.create_request("s", family, 6, 10**9, 65536))
    assert big.get_attr("IPSET_ATTR_DATA").get_attr("IPSET_ATTR_TIMEOUT") == 2_147_483


ROUND_TRIP: list[tuple[str, Any, Message]] = [
    ("route add", rtmsg, RouteEncoder(TABLE, PROTOCOL, {6: NextHop(OIF, GW[6])}).add(
        6, packed(ADDR[6]), 128)),
    ("route delete", rtmsg, RouteEncoder(TABLE, PROTOCOL, {}).delete(4, packed(ADDR[4]), 32)),
    ("unreachable", rtmsg, RouteEncoder(TABLE, PROTOCOL, {}).unreachable(4)),
    ("rule", fibmsg, RuleSpec(1000, TABLE, PROTOCOL, 0x365).message(4, add=True)),
    ("rule from", fibmsg, RuleSpec(1000, TABLE, PROTOCOL, src="2001:db8:a::/64",
                                   family=6).message(6, add=True)),
    ("rule iif", fibmsg, RuleSpec(1000, TABLE, PROTOCOL, iif="vlan20").message(4, add=False)),
    ("ipset add", ipset_msg, ipsets.IpsetEncoder("s", 6).add(packed(ADDR[6]), 60)),
    ("ipset delete", ipset_msg, ipsets.IpsetEncoder("s", 4).delete(packed(ADDR[4]))),
    ("ipset create", ipset_msg, ipsets.create_request("s", 4, 6, 330, 65536)),
    ("ipset type", ipset_msg, ipsets.type_request(6)),
]  # fmt: skip


@pytest.mark.parametrize(("what", "cls", "message"), ROUND_TRIP, ids=[r[0] for r in ROUND_TRIP])
def test_pyroute2_encodes_what_it_decoded_to_the_same_bytes(
    what: str, cls: Any, message: Message
) -> None:
    """Lengths, padding, attribute order and flags: nothing pyroute2 would not send itself."""
    m = decode(cls, message)
    again = cls()
    for key, value in m.items():
        if key not in ("header", "attrs"):
            again[key] = value
    again["header"] = dict(m["header"])
    again["attrs"] = [[slot.name, slot.value] for slot in m["attrs"]]
    assert encoded(again) == wire(message), what


# -- nftables sets --------------------------------------------------------------------------


def nft_transaction(tx: list[Message]) -> Any:
    """Check BATCH_BEGIN / element message / BATCH_END; the element message, decoded."""
    assert len(tx) == 3
    for batch, kind in ((tx[0], nftsets.NFNL_MSG_BATCH_BEGIN), (tx[2], nftsets.NFNL_MSG_BATCH_END)):
        b = decode(nfgen_msg, batch)
        assert b["header"]["type"] == kind and b["header"]["flags"] == NLM_F_REQUEST
        assert b["res_id"] == NFNL_SUBSYS_NFTABLES  # the subsystem, big-endian
        assert b["nfgen_family"] == socket.AF_UNSPEC
    return decode(nft_set_elem_list_msg, tx[1])


def elements(m: Any) -> list[tuple[bytes, int | None]]:
    out = []
    for elem in m.get_attr("NFTA_SET_ELEM_LIST_ELEMENTS"):
        assert attr_flags(elem, "NFTA_SET_ELEM_KEY") == NLA_F_NESTED
        key = elem.get_attr("NFTA_SET_ELEM_KEY").get_attr("NFTA_DATA_VALUE")
        out.append((key, elem.get_attr("NFTA_SET_ELEM_TIMEOUT")))
    return out


def test_nftables_add_is_one_transaction_per_512_elements() -> None:
    enc = nftsets.NftSetEncoder(NftSet("inet", "filter", "m365v4"), 4)
    items = [(packed(f"203.0.{i // 256}.{i % 256}"), 600 + i) for i in range(513)]
    txs = enc.add(items)
    assert len(txs) == 2
    m = nft_transaction(txs[0])
    assert m["header"]["type"] == (NFNL_SUBSYS_NFTABLES << 8) | NFT_MSG_NEWSETELEM
    assert m["header"]["flags"] == NLM_F_REQUEST | NLM_F_ACK | NLM_F_CREATE
    assert m["nfgen_family"] == NFPROTO_INET
    assert m.get_attr("NFTA_SET_ELEM_LIST_TABLE") == "filter"
    assert m.get_attr("NFTA_SET_ELEM_LIST_SET") == "m365v4"
    assert attr_flags(m, "NFTA_SET_ELEM_LIST_ELEMENTS") == NLA_F_NESTED
    # Timeouts in milliseconds (NFTA_SET_ELEM_TIMEOUT is a be64).
    assert elements(m) == [(p, t * 1000) for p, t in items[:512]]
    assert elements(nft_transaction(txs[1])) == [(items[512][0], items[512][1] * 1000)]


def test_nftables_add_never_sends_a_zero_timeout() -> None:
    enc = nftsets.NftSetEncoder(NftSet("ip6", "fw", "m365v6"), 6)
    m = nft_transaction(enc.add([(packed(ADDR[6]), 0)])[0])
    assert m["nfgen_family"] == NFPROTO_IPV6
    assert elements(m) == [(packed(ADDR[6]), 1000)]


def test_nftables_delete_destroys_elements_without_timeouts() -> None:
    enc = nftsets.NftSetEncoder(NftSet("inet", "filter", "m365v6"), 6)
    (tx,) = enc.delete([packed(ADDR[6]), packed("2001:db8:365::11")])
    m = nft_transaction(tx)
    assert m["header"]["type"] == (NFNL_SUBSYS_NFTABLES << 8) | NFT_MSG_DESTROYSETELEM
    assert m["header"]["flags"] == NLM_F_REQUEST | NLM_F_ACK
    assert (m["nfgen_family"], m.get_attr("NFTA_SET_ELEM_LIST_SET")) == (NFPROTO_INET, "m365v6")
    assert elements(m) == [(packed(ADDR[6]), None), (packed("2001:db8:365::11"), None)]


# -- our parsers, fed what pyroute2 encodes -------------------------------------------------


def route_dump(family: int, **fields: Any) -> bytes:
    m = rtmsg()
    m["header"]["type"] = RTM_NEWROUTE
    m["family"] = AF[family]
    attrs = fields.pop("attrs")
    for key, value in fields.items():
        m[key] = value
    m["attrs"] = attrs
    return encoded(m)


@pytest.mark.parametrize("family", [4, 6])
def test_parse_route_reads_a_dumped_route(family: int) -> None:
    data = route_dump(
        family, dst_len=32 if family == 4 else 128, table=252, proto=PROTOCOL,
        scope=rt_scope["universe"], type=rt_type["unicast"],
        attrs=[["RTA_TABLE", TABLE], ["RTA_DST", ADDR[family]], ["RTA_GATEWAY", GW[family]],
               ["RTA_OIF", OIF]],
    )  # fmt: skip
    assert routes.parse_route(data, 16, len(data)) == routes.Route(
        family, ADDR[family], 32 if family == 4 else 128, TABLE, PROTOCOL, 0, 1, OIF, GW[family]
    )
    assert routes.added_to(data, 16, len(data), TABLE, PROTOCOL)
    assert not routes.added_to(data, 16, len(data), TABLE, PROTOCOL + 1)
    assert not routes.added_to(data, 16, len(data), TABLE + 1, PROTOCOL)


def test_parse_route_reads_a_default_route_and_the_header_table() -> None:
    data = route_dump(
        6, dst_len=0, table=254, proto=4, scope=rt_scope["universe"],
        type=rt_type["unreachable"], attrs=[["RTA_PRIORITY", 1024]],
    )  # fmt: skip
    r = routes.parse_route(data, 16, len(data))
    assert r == routes.Route(6, "::", 0, 254, 4, 0, rt_type["unreachable"], None, None)
    link = route_dump(
        4, dst_len=25, table=254, proto=2, scope=rt_scope["link"], type=rt_type["unicast"],
        attrs=[["RTA_TABLE", 254], ["RTA_DST", "192.0.2.0"], ["RTA_OIF", 3]],
    )  # fmt: skip
    assert routes.parse_route(link, 16, len(link)) == routes.Route(
        4, "192.0.2.0", 25, 254, 2, rt_scope["link"], 1, 3, None
    )


def rule_dump(family: int, attrs: list[list[Any]], **fields: Any) -> bytes:
    m = fibmsg()
    m["header"]["type"] = RTM_NEWRULE
    m["family"] = AF[family]
    m["action"] = FR_ACT_NAMES["FR_ACT_TO_TBL"]
    for key, value in fields.items():
        m[key] = value
    m["attrs"] = attrs
    return encoded(m)


@pytest.mark.parametrize("family", [4, 6])
def test_parse_rule_reads_dumped_rules(family: int) -> None:
    ours = [["FRA_TABLE", TABLE], ["FRA_PRIORITY", 1000], ["FRA_PROTOCOL", PROTOCOL]]
    data = rule_dump(family, ours)
    rule = routes.parse_rule(data, 16, len(data))
    assert rule == routes.Rule(family, 1000, TABLE, 1, PROTOCOL, None, False)
    assert RuleSpec(1000, TABLE, PROTOCOL).matches(rule)
    marked = rule_dump(family, [*ours, ["FRA_FWMARK", 0x365], ["FRA_FWMASK", 0xFFFFFFFF]])
    rule = routes.parse_rule(marked, 16, len(marked))
    assert rule is not None and rule.fwmark == 0x365 and not rule.selectors
    assert RuleSpec(1000, TABLE, PROTOCOL, 0x365).matches(rule)
    # Selectors resolverd never sets make a rule someone else's, whatever its table and
    # priority.
    for extra, fields in (
        ([["FRA_OIFNAME", "lan0"]], {}),
        ([["FRA_FWMARK", 0x365], ["FRA_FWMASK", 0xFF]], {}),
        ([["FRA_DST", ADDR[family]]], {"dst_len": 32 if family == 4 else 128}),
        ([], {"tos": 0x10}),
    ):
        data = rule_dump(family, ours + extra, **fields)
        rule = routes.parse_rule(data, 16, len(data))
        assert rule is not None and rule.selectors, extra
        assert not RuleSpec(1000, TABLE, PROTOCOL, rule.fwmark).matches(rule)
    # A source prefix or an ingress interface (the breakout's scope) is read, and tells the
    # rule apart from `from all`.
    net = {4: "203.0.113.0", 6: "2001:db8:365::"}[family]
    plen = 24 if family == 4 else 48
    scoped: list[tuple[list[list[Any]], dict[str, Any], str | None, str | None]] = [
        ([["FRA_IIFNAME", "lan0"]], {}, None, "lan0"),
        ([["FRA_SRC", net]], {"src_len": plen}, f"{net}/{plen}", None),
    ]
    for extra, fields, src, iif in scoped:
        data = rule_dump(family, ours + extra, **fields)
        rule = routes.parse_rule(data, 16, len(data))
        assert rule is not None and not rule.selectors, extra
        assert (rule.src, rule.iif) == (src, iif)
        assert not RuleSpec(1000, TABLE, PROTOCOL).matches(rule)
        spec = RuleSpec(1000, TABLE, PROTOCOL, src=src, iif=iif, family=family if src else None)
        assert spec.matches(rule)
        if src is not None:
            other = RuleSpec(1000, TABLE, PROTOCOL, src=src, family=10 - family)
            assert not other.matches(rule)  # a prefix rule is of its own family only
    # The main table's rule: the table in the header only.
    main = rule_dump(family, [["FRA_PRIORITY", 32766]], table=254)
    assert routes.parse_rule(main, 16, len(main)) == routes.Rule(
        family, 32766, 254, 1, 0, None, False
    )


@pytest.mark.parametrize(
    ("flags", "up", "admin_up"),
    [(IFF_UP | IFF_RUNNING, True, True), (IFF_UP, False, True), (0, False, False)],
)
def test_parse_link_reads_a_dumped_link(flags: int, up: bool, admin_up: bool) -> None:
    m = ifinfmsg()
    m["header"]["type"] = links.RTM_NEWLINK
    m["index"], m["flags"] = OIF, flags
    m["attrs"] = [["IFLA_IFNAME", "wan0"], ["IFLA_MTU", 1500]]
    data = encoded(m)
    assert links.parse_link(data, 16, len(data)) == links.Link(OIF, "wan0", up, admin_up)


def addr_dump(family: int, plen: int, attrs: list[list[str]]) -> bytes:
    m = ifaddrmsg()
    m["header"]["type"] = links.RTM_NEWADDR
    m["family"], m["prefixlen"], m["index"] = AF[family], plen, OIF
    m["attrs"] = attrs
    return encoded(m)


def test_parse_addr_reads_dumped_addresses() -> None:
    data = addr_dump(4, 25, [["IFA_ADDRESS", "192.0.2.2"], ["IFA_LOCAL", "192.0.2.2"]])
    assert links.parse_addr(data, 16, len(data)) == [
        links.Addr(OIF, 4, "192.0.2.2", "192.0.2.0/25", False)
    ]
    data = addr_dump(6, 64, [["IFA_ADDRESS", "fe80::1"]])  # IPv6: no IFA_LOCAL
    assert links.parse_addr(data, 16, len(data)) == [
        links.Addr(OIF, 6, "fe80::1", "fe80::/64", True)
    ]
    # Point to point: the peer's network, and our own address.
    data = addr_dump(4, 32, [["IFA_ADDRESS", "198.51.100.1"], ["IFA_LOCAL", "198.51.100.2"]])
    assert links.parse_addr(data, 16, len(data)) == [
        links.Addr(OIF, 4, "198.51.100.2", "198.51.100.1/32", False),
        links.Addr(OIF, 4, "198.51.100.2", "198.51.100.2/32", False),
    ]


def ipset_reply(cmd: int, attrs: list[list[Any]], family: int = socket.AF_INET) -> bytes:
    """An ipset reply as the kernel sends it, encoded by pyroute2 (header included)."""
    m = ipset_msg()
    m["header"]["type"] = ipset_type(cmd)
    m["nfgen_family"] = family
    m["attrs"] = attrs
    return encoded(m)


def header_reply(kind: str, family: int, timeout: bool, name: str = "m365") -> bytes:
    data: list[list[Any]] = [["IPSET_ATTR_HASHSIZE", 1024], ["IPSET_ATTR_MAXELEM", 65536]]
    if timeout:
        data.append(["IPSET_ATTR_TIMEOUT", 330])
    return ipset_reply(
        IPSET_CMD_LIST,
        [["IPSET_ATTR_PROTOCOL", 7], ["IPSET_ATTR_SETNAME", name],
         ["IPSET_ATTR_TYPENAME", kind], ["IPSET_ATTR_REVISION", 6],
         ["IPSET_ATTR_FAMILY", family], ["IPSET_ATTR_DATA", {"attrs": data}]],
    )  # fmt: skip


def test_parse_header_and_parse_revision_read_the_kernels_replies() -> None:
    body = header_reply("hash:ip", socket.AF_INET6, True)[16:]
    assert ipsets.parse_header(body) == ipsets.Header("hash:ip", socket.AF_INET6, True)
    body = header_reply("hash:net", socket.AF_INET, False)[16:]
    assert ipsets.parse_header(body) == ipsets.Header("hash:net", socket.AF_INET, False)
    reply = ipset_reply(
        IPSET_CMD_TYPE,
        [["IPSET_ATTR_PROTOCOL", 7], ["IPSET_ATTR_TYPENAME", "hash:ip"],
         ["IPSET_ATTR_FAMILY", 2], ["IPSET_ATTR_REVISION", 6], ["IPSET_ATTR_PROTOCOL_MIN", 0]],
    )  # fmt: skip
    assert ipsets.parse_revision(reply[16:]) == 6
    empty = ipset_reply(IPSET_CMD_TYPE, [["IPSET_ATTR_PROTOCOL", 7]])
    assert ipsets.parse_revision(empty[16:]) is None


# -- ipsets.create against a fake kernel that reads requests with pyroute2 ------------------


class IpsetKernel(QueuedSocket):
    """An nfnetlink socket for `netlink.Channel`: decodes each request with pyroute2's
    ipset_msg and answers as the kernel does. `sets` holds what exists (name -> header
    reply); `refuse` maps a command to the errno it fails with."""

    def __init__(self) -> None:
        super().__init__()
        self.sets: dict[str, bytes] = {}
        self.refuse: dict[int, int] = {}
        self.created: list[Any] = []  # the decoded create requests
        self.revision: int | None = 6  # what IPSET_CMD_TYPE reports (None: nothing)

    def send(self, data: bytes) -> int:
        m = ipset_msg(data)
        m.decode()
        seq, cmd = m["header"]["sequence_number"], m["header"]["type"] & 0xFF
        replies, code = self._answer(cmd, m)
        out = b"".join(r[:8] + struct.pack("=II", seq, 0) + r[16:] for r in replies)
        out += HEADER.pack(36, NLMSG_ERROR, 0, seq, 0) + struct.pack("=i", -code) + bytes(16)
        self.queue([out])
        return len(data)

    def _answer(self, cmd: int, m: Any) -> tuple[list[bytes], int]:
        if cmd in self.refuse:
            return [], self.refuse[cmd]
        if cmd == IPSET_CMD_TYPE:
            assert m.get_attr("IPSET_ATTR_TYPENAME") == "hash:ip"
            attrs: list[list[Any]] = [
                ["IPSET_ATTR_PROTOCOL", 7],
                ["IPSET_ATTR_TYPENAME", "hash:ip"],
                ["IPSET_ATTR_FAMILY", m.get_attr("IPSET_ATTR_FAMILY")],
                ["IPSET_ATTR_PROTOCOL_MIN", 0],
            ]
            if self.revision is not None:
                attrs.append(["IPSET_ATTR_REVISION", self.revision])
            return [ipset_reply(IPSET_CMD_TYPE, attrs)], 0
        name = m.get_attr("IPSET_ATTR_SETNAME")
        if cmd == IPSET_CMD_CREATE:
            self.created.append(m)
            if name in self.sets:
                return [], errno.EEXIST
            family = m.get_attr("IPSET_ATTR_FAMILY")
            self.sets[name] = header_reply("hash:ip", family, True, name)
            return [], 0
        if cmd == IPSET_CMD_LIST:
            return ([self.sets[name]], 0) if name in self.sets else ([], errno.ENOENT)
        raise AssertionError(f"unexpected ipset command {cmd}")


def breakout_config(**keys: Any) -> BreakoutConfig:
    breakout = {"mode": "kernel", "interface": "wan0", "gateway4": GW[4], "min_hold": 300,
                "grace": 30, **keys}  # fmt: skip
    return parse_config({"upstreams": ["192.0.2.53"], "breakout": breakout}).breakout


async def create_with(kernel: IpsetKernel, name: str, family: int) -> None:
    ch = netlink.Channel(netlink.NETLINK_NETFILTER, sock=cast(socket.socket, kernel))
    try:
        await ipsets.create(ch, name, family, 330, 65536)
    finally:
        ch.close()


async def test_create_asks_for_the_revision_then_creates_the_set() -> None:
    kernel = IpsetKernel()
    await create_with(kernel, "m365-v6", 6)
    (m,) = kernel.created
    assert m.get_attr("IPSET_ATTR_REVISION") == 6  # the one the kernel reported
    assert m.get_attr("IPSET_ATTR_FAMILY") == socket.AF_INET6
    assert m["header"]["flags"] & NLM_F_EXCL
    assert m.get_attr("IPSET_ATTR_DATA").get_attr("IPSET_ATTR_TIMEOUT") == 330


async def test_create_accepts_a_usable_set_that_exists_with_other_settings() -> None:
    kernel = IpsetKernel()
    kernel.sets["m365-v4"] = header_reply("hash:ip", socket.AF_INET, True, "m365-v4")
    await create_with(kernel, "m365-v4", 4)  # EEXIST, then the header says it will do
    assert len(kernel.created) == 1


@pytest.mark.parametrize(
    ("existing", "match"),
    [
        (("hash:net", socket.AF_INET, True), "exists as hash:net family 2 with timeout"),
        (("hash:ip", socket.AF_INET6, True), "exists as hash:ip family 10"),
        (("hash:ip", socket.AF_INET, False), "without timeout support"),
    ],
)
async def test_create_says_what_the_set_of_that_name_is_when_it_cannot_be_used(
    existing: tuple[str, int, bool], match: str
) -> None:
    kernel = IpsetKernel()
    kernel.sets["m365-v4"] = header_reply(*existing, name="m365-v4")
    with pytest.raises(BreakoutError, match=match) as info:
        await create_with(kernel, "m365-v4", 4)
    assert "destroy it or name another set in breakout.ipset4" in str(info.value)


@pytest.mark.parametrize(
    ("cmd", "code", "match"),
    [
        (IPSET_CMD_TYPE, errno.EPERM, "needs CAP_NET_ADMIN to create ipsets"),
        (IPSET_CMD_CREATE, errno.EPERM, "needs CAP_NET_ADMIN to create ipsets"),
        (IPSET_CMD_TYPE, IPSET_ERR_FIND_TYPE, "no ipset type hash:ip .*ip_set_hash_ip"),
        (IPSET_CMD_CREATE, errno.ENOMEM, r"cannot create ipset s \(hash:ip family inet\): "),
        (IPSET_CMD_CREATE, 4099, r"ipset error 4099"),  # IPSET_ERR_MAX_SETS
    ],
)
async def test_create_failures_say_what_and_where(cmd: int, code: int, match: str) -> None:
    kernel = IpsetKernel()
    kernel.refuse[cmd] = code
    with pytest.raises(BreakoutError, match=match):
        await create_with(kernel, "s", 4)


async def test_create_without_a_revision_from_the_kernel_sends_nothing_more() -> None:
    kernel = IpsetKernel()
    kernel.revision = None
    with pytest.raises(BreakoutError, match="the kernel did not report a revision"):
        await create_with(kernel, "s", 4)
    assert kernel.created == []


async def test_create_sets_tries_every_missing_set_and_reports_each_failure() -> None:
    kernel = IpsetKernel()
    kernel.sets["bad-v4"] = header_reply("hash:net", socket.AF_INET, True, "bad-v4")
    k = Kernel(breakout_config(ipset4="bad-v4", ipset6="good-v6"))
    k.nfnl = netlink.Channel(netlink.NETLINK_NETFILTER, sock=cast(socket.socket, kernel))
    k._missing = [(4, "bad-v4"), (6, "good-v6")]
    try:
        with pytest.raises(BreakoutError, match="ipset bad-v4 exists as hash:net"):
            await k.create_sets()
        assert "good-v6" in kernel.sets and set(k.ipset) == {6}
        assert k.ipset[6].name == "good-v6"
    finally:
        k.close()
    with pytest.raises(BreakoutError, match="kernel side is closed"):
        k._missing = [(4, "again")]
        await k.create_sets()
