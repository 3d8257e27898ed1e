"""Never-routed prefixes, connected networks, and the netlink message codecs (no sockets)."""

from __future__ import annotations

import ipaddress
import random
import socket
import struct

import pytest

from resolver.config import DEFAULT_NEVER_ROUTE
from resolver.net import netlink
from resolver.net.ipsets import IpsetEncoder
from resolver.net.links import Link, NetView, parse_addr, parse_link
from resolver.net.neverroute import NeverRoute, PrefixIndex
from resolver.net.routes import (
    RTM_DELROUTE,
    RTM_DELRULE,
    RTM_NEWROUTE,
    RTM_NEWRULE,
    RTN_UNREACHABLE,
    NextHop,
    Route,
    RouteEncoder,
    RuleSpec,
    parse_route,
    parse_rule,
)
from tests.unit.breakout_fakes import LAN, TUN, WAN, device_route, make_view

pytestmark = pytest.mark.unit


def packed(a: str) -> tuple[int, bytes]:
    fam = 6 if ":" in a else 4
    return fam, socket.inet_pton(socket.AF_INET6 if fam == 6 else socket.AF_INET, a)


@pytest.mark.parametrize(
    ("address", "reason"),
    [
        ("10.1.2.3", "never_route 10.0.0.0/8"),
        ("127.0.0.1", "never_route 127.0.0.0/8"),
        ("169.254.1.1", "never_route 169.254.0.0/16"),
        ("224.0.0.251", "never_route 224.0.0.0/4"),
        ("::1", "never_route ::1/128"),
        ("fe80::1", "never_route fe80::/10"),
        ("fd00::1", "never_route fc00::/7"),
        ("::ffff:10.0.0.1", "never_route ::ffff:0:0/96"),
        ("::a00:1", "never_route ::/96"),
        ("fec0::1", "never_route fec0::/10"),
        ("5f00::1", "never_route 5f00::/16"),
        ("64:ff9b::a00:1", "NAT64 of an IPv4 address: never_route 10.0.0.0/8"),
        ("64:ff9b::7f00:1", "NAT64 of an IPv4 address: never_route 127.0.0.0/8"),
        ("64:ff9b::d6b:698", None),  # 13.107.6.152 through the ISP's NAT64
        ("203.0.113.10", None),
        ("2001:db8:365::10", None),
        ("13.107.6.152", None),
    ],
)
def test_default_never_route(address: str, reason: str | None) -> None:
    assert NeverRoute(DEFAULT_NEVER_ROUTE).reason(*packed(address)) == reason


def test_a_nat64_address_is_judged_as_ipv6_first() -> None:
    """A router's own NAT64 (its route to 64:ff9b::/96 is a connected network), or an operator
    listing the prefix: refused as IPv6, whatever the IPv4 inside."""
    public = packed("64:ff9b::d6b:698")  # 13.107.6.152
    listed = NeverRoute(("64:ff9b::/96",))
    assert listed.reason(*public) == "never_route 64:ff9b::/96"
    local = NeverRoute(DEFAULT_NEVER_ROUTE)
    local.set_connected([("64:ff9b::/96", "nat64")])
    assert local.reason(*public) == "connected network 64:ff9b::/96 on nat64"


def test_connected_networks_win_and_name_the_interface() -> None:
    n = NeverRoute(DEFAULT_NEVER_ROUTE)
    n.set_connected(make_view().connected())
    assert n.reason(*packed("192.0.2.130")) == "connected network 192.0.2.128/25 on lan0"
    assert n.reason(*packed("2001:db8:c::99")) == "connected network 2001:db8:c::/64 on lan0"
    assert n.reason(*packed("192.0.2.1")) == "connected network 192.0.2.0/25 on wan0"
    assert n.reason(*packed("203.0.113.10")) is None
    assert n.reason_cidr("192.0.2.0/24") is not None  # overlaps both link networks
    assert n.reason_cidr("13.67.59.89/32") is None


def test_prefix_index_longest_match() -> None:
    idx = PrefixIndex([("203.0.113.0/24", "wide"), ("203.0.113.8/29", "narrow")])
    assert idx.find(*packed("203.0.113.9")) == ("203.0.113.8/29", "narrow")
    assert idx.find(*packed("203.0.113.200")) == ("203.0.113.0/24", "wide")
    assert idx.find(*packed("198.51.100.1")) is None


def test_prefix_index_agrees_with_ipaddress_at_every_prefix_length() -> None:
    """Random prefixes of every length (0 to 32 and 128) and addresses in, beside and out of
    them: the longest one holding the address, as ipaddress says."""
    rng = random.Random(20261207)
    for family, bits in ((4, 32), (6, 128)):
        nets = []
        for plen in range(bits + 1):
            base = rng.getrandbits(bits)
            nets.append(ipaddress.ip_network((base, plen), strict=False))
        idx = PrefixIndex((str(n), f"len {n.prefixlen}") for n in nets)
        probes = [rng.getrandbits(bits) for _ in range(200)]
        for n in nets:  # the network's first and last addresses, and one past it
            last = int(n.broadcast_address)
            probes += [int(n.network_address), last, (last + 1) % 2**bits]
        for value in probes:
            address = ipaddress.IPv6Address(value) if family == 6 else ipaddress.IPv4Address(value)
            holding = [n for n in nets if address in n]
            want = max(holding, key=lambda n: n.prefixlen) if holding else None
            got = idx.find(family, address.packed)
            assert got == (None if want is None else (str(want), f"len {want.prefixlen}")), address


def test_attribute_headers_are_one_per_size_and_kind() -> None:
    """attr() keeps the headers it made; a kind past 16 bits is still refused, not taken for
    the header of another kind of the same size."""
    assert netlink.attr(1, b"xxxxx") == struct.pack("=HH", 9, 1) + b"xxxxx\0\0\0"
    assert netlink.attr(1, b"xxxxx") == struct.pack("=HH", 9, 1) + b"xxxxx\0\0\0"
    nested = netlink.NLA_F_NESTED | 1
    assert netlink.attr(nested, b"xxxx") == struct.pack("=HH", 8, nested) + b"xxxx"
    with pytest.raises(struct.error):
        netlink.attr(0x10001, b"xxxxx")


def test_device_routes_count_as_connected() -> None:
    view = make_view()
    route = Route(4, "198.51.100.0", 24, 254, 3, 253, 1, 3, None)
    assert view.apply_route(True, route)
    assert ("198.51.100.0/24", "lan0") in view.connected()
    via = Route(4, "198.18.0.0", 15, 254, 3, 0, 1, 3, "192.0.2.1")
    assert not view.apply_route(True, via)  # a route via a gateway is not a connected network


def test_parse_addr_gives_network_and_host() -> None:
    body = struct.pack("=BBBBI", socket.AF_INET, 25, 0, 0, 3)
    body += netlink.attr(1, socket.inet_pton(socket.AF_INET, "192.0.2.129"))
    body += netlink.attr(2, socket.inet_pton(socket.AF_INET, "192.0.2.129"))
    nets = {a.network for a in parse_addr(body, 0, len(body))}
    assert nets == {"192.0.2.128/25"}
    p2p = struct.pack("=BBBBI", socket.AF_INET, 32, 0, 0, 4)
    p2p += netlink.attr(1, socket.inet_pton(socket.AF_INET, "198.51.100.9"))  # the peer
    p2p += netlink.attr(2, socket.inet_pton(socket.AF_INET, "198.51.100.10"))
    assert {a.network for a in parse_addr(p2p, 0, len(p2p))} == {
        "198.51.100.9/32",
        "198.51.100.10/32",
    }
    view = NetView()
    view.apply_link(True, Link(3, "lan0", True))
    view.apply_addr(True, parse_addr(body, 0, len(body)))
    assert view.has_address(3, 4)


def test_route_messages_round_trip() -> None:
    enc = RouteEncoder(365, 245, {4: NextHop(7, "192.0.2.1"), 6: NextHop(7, None)})
    kind, flags, body = enc.add(4, socket.inet_pton(socket.AF_INET, "203.0.113.10"), 32)
    assert kind == RTM_NEWROUTE and flags & netlink.NLM_F_REPLACE
    r = parse_route(body)
    assert r == Route(4, "203.0.113.10", 32, 365, 245, 0, 1, 7, "192.0.2.1")
    kind, _, body = enc.add(6, socket.inet_pton(socket.AF_INET6, "2001:db8::1"), 128)
    r6 = parse_route(body)
    assert r6 is not None and r6.gateway is None and r6.oif == 7  # device-only route
    kind, _, body = enc.delete(4, socket.inet_pton(socket.AF_INET, "203.0.113.10"), 32)
    deleted = parse_route(body)
    assert kind == RTM_DELROUTE and deleted is not None
    assert (deleted.protocol, deleted.table, deleted.gateway) == (245, 365, None)
    assert not RouteEncoder(365, 245, {4: None}).can_add(4)  # no usable link: nothing to add


def test_rule_messages_round_trip() -> None:
    spec = RuleSpec(1000, 365, 245)
    kind, flags, body = spec.message(4, add=True)
    assert kind == RTM_NEWRULE and flags & netlink.NLM_F_EXCL
    rule = parse_rule(body)
    assert rule is not None and spec.matches(rule) and rule.protocol == 245
    marked = RuleSpec(999, 366, 245, fwmark=0x73650000)
    kind, _, body = marked.message(6, add=False)
    probe = parse_rule(body)
    assert kind == RTM_DELRULE and probe is not None and probe.family == 6
    assert marked.matches(probe) and not spec.matches(probe) and probe.fwmark == 0x73650000
    unreachable = parse_route(RouteEncoder(366, 245, {4: None}).unreachable(4)[2])
    assert unreachable is not None and unreachable.type == RTN_UNREACHABLE


def test_ipset_add_carries_net_order_address_and_timeout() -> None:
    kind, _, body = IpsetEncoder("m365-v4", 4).add(
        socket.inet_pton(socket.AF_INET, "203.0.113.1"), 0
    )
    assert kind == (6 << 8) | 9
    top = netlink.parse_attrs(body, 4)
    assert top[2] == b"m365-v4\0"
    data = netlink.parse_attrs(top[7])
    assert struct.unpack(">I", data[6])[0] == 1  # a zero hold would mean "forever": at least 1 s
    assert netlink.parse_attrs(data[1])[1] == bytes([203, 0, 113, 1])


SPLIT_DEFAULT = ("0.0.0.0/1", "128.0.0.0/1", "::/1", "8000::/1")


def test_a_full_tunnels_split_default_is_not_a_connected_network() -> None:
    view = make_view()
    before = view.connected()
    # wg-quick/OpenVPN "def1" style full tunnel, and "everything but the private ranges".
    for cidr in (*SPLIT_DEFAULT, "64.0.0.0/2", "12.0.0.0/6", "2000::/3"):
        assert not view.apply_route(True, device_route(cidr, TUN)), cidr
    assert view.connected() == before
    n = NeverRoute(DEFAULT_NEVER_ROUTE)
    n.set_connected(view.connected())
    for address in ("203.0.113.10", "13.107.6.152", "2001:db8:365::10", "2603:1036::1"):
        assert n.reason(*packed(address)) is None, address
    assert n.reason_cidr("13.67.59.89/32") is None
    assert n.reason(*packed("192.0.2.130")) is not None  # the LAN still is connected


def test_attached_networks_behind_device_routes_still_count() -> None:
    view = make_view()
    assert view.apply_route(True, device_route("198.51.100.0/24", TUN))
    assert view.apply_route(True, device_route("11.0.0.0/8", TUN))  # /8: the limit
    assert view.apply_route(True, device_route("2001:db8:a::/48", TUN))
    assert view.apply_route(True, device_route("2001::/16", TUN))  # /16: the limit
    # What the kernel adds for an address always counts, whatever its length.
    assert view.apply_route(True, device_route("64.0.0.0/2", WAN, proto=2))
    # The breakout link's own device routes too: the ISP's network is not routed via it.
    assert view.apply_route(True, device_route("198.51.100.128/25", WAN))
    nets = dict(view.connected())
    assert nets["198.51.100.0/24"] == "tun0" and nets["11.0.0.0/8"] == "tun0"
    assert nets["2001:db8:a::/48"] == "tun0" and nets["2001::/16"] == "tun0"
    assert nets["64.0.0.0/2"] == "wan0" and nets["198.51.100.128/25"] == "wan0"
    assert view.apply_route(False, device_route("198.51.100.0/24", TUN))
    assert "198.51.100.0/24" not in dict(view.connected())


def test_taking_a_link_down_forgets_its_ipv4_device_routes() -> None:
    # The kernel deletes them without an RTM_DELROUTE; IPv6 deletions are reported.
    view = make_view()
    view.apply_route(True, device_route("198.51.100.0/24", TUN))
    view.apply_route(True, device_route("2001:db8:a::/48", TUN))
    view.apply_route(True, device_route("203.0.113.0/24", LAN))
    view.apply_link(True, Link(TUN, "tun0", False, admin_up=True))  # carrier loss: they stay
    assert "198.51.100.0/24" in dict(view.connected())
    view.apply_link(True, Link(TUN, "tun0", False, admin_up=False))
    nets = dict(view.connected())
    assert "198.51.100.0/24" not in nets
    assert "2001:db8:a::/48" in nets and "203.0.113.0/24" in nets


def test_parse_link_tells_admin_state_from_carrier() -> None:
    def link(flags: int) -> Link:
        msg = struct.pack("=BxHiII", socket.AF_UNSPEC, 1, 4, flags, 0)
        msg += netlink.attr(3, b"tun0\0")
        return parse_link(msg, 0, len(msg))

    up, no_carrier, down = (link(f) for f in (0x41, 0x1, 0x0))
    assert (up.up, up.admin_up) == (True, True)
    assert (no_carrier.up, no_carrier.admin_up) == (False, True)
    assert (down.up, down.admin_up) == (False, False)
