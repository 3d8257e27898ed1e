"""The router's links, addresses and device routes, read at start and kept current from netlink.

This is the link-watching module: `Monitor` listens, `NetView` is what it learnt; which link
carries the routes is linkchoice.py's business.

Two uses: whether the breakout interface can carry routes (up, running, with an address of the
family), and which networks the router is connected to (never routed, see neverroute): the
prefixes of its addresses, and the main table's device routes that stand for an attached
network rather than for a way out (see `attached_network`).
`Monitor` listens to the link, address and route multicast groups and hands decoded events to a
callback; route events are decoded with struct because resolverd's own route changes echo back
through the same groups, thousands per second when a batch goes in (the kernel drops the echoes
of its new routes before they are queued, see echofilter.py; those of its deletions come).
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import socket
import struct
from collections.abc import Callable
from dataclasses import dataclass
from typing import Final

from resolver import fdwatch
from resolver.net import echofilter, netlink, routes
from resolver.net.netlink import NLM_F_DUMP, NLM_F_REQUEST, Buffer
from resolver.net.routes import RT_SCOPE_LINK, RT_TABLE_MAIN, RTN_UNICAST, RTPROT_KERNEL, Route

log = logging.getLogger(__name__)

RTM_NEWLINK: Final = 16
RTM_DELLINK: Final = 17
RTM_GETLINK: Final = 18
RTM_NEWADDR: Final = 20
RTM_DELADDR: Final = 21
RTM_GETADDR: Final = 22
IFLA_IFNAME: Final = 3
IFA_ADDRESS: Final = 1
IFA_LOCAL: Final = 2
IFF_UP: Final = 0x1
IFF_RUNNING: Final = 0x40
RTMGRP_LINK: Final = 0x1
RTMGRP_IPV4_IFADDR: Final = 0x10
RTMGRP_IPV4_ROUTE: Final = 0x40
RTMGRP_IPV6_IFADDR: Final = 0x100
RTMGRP_IPV6_ROUTE: Final = 0x400
RTMGRP_IPV4_RULE: Final = 0x80
RTMGRP_IPV6_RULE: Final = 1 << (19 - 1)  # RTNLGRP_IPV6_RULE
GROUPS: Final = (
    RTMGRP_LINK
    | RTMGRP_IPV4_IFADDR
    | RTMGRP_IPV4_ROUTE
    | RTMGRP_IPV6_IFADDR
    | RTMGRP_IPV6_ROUTE
    | RTMGRP_IPV4_RULE
    | RTMGRP_IPV6_RULE
)

# Device routes shorter than this are ways out, not attached networks (see attached_network).
MIN_ATTACHED_LEN: Final = {4: 8, 6: 16}

IFINFOMSG: Final = struct.Struct("=BxHiII")  # family, type, index, flags, change
IFADDRMSG: Final = struct.Struct("=BBBBI")  # family, prefixlen, flags, scope, index


@dataclass(frozen=True, slots=True)
class Link:
    index: int
    name: str
    up: bool  # administratively up and running (carrier)
    admin_up: bool = True  # IFF_UP alone: down, the kernel flushes its IPv4 routes silently


@dataclass(frozen=True, slots=True)
class Addr:
    index: int
    family: int
    local: str
    network: str  # the connected prefix, e.g. 192.0.2.0/25
    link_local: bool


def parse_link(body: Buffer, start: int, end: int) -> Link:
    _fam, _type, index, flags, _change = IFINFOMSG.unpack_from(body, start)
    attrs = netlink.parse_attrs(body, start + IFINFOMSG.size, end)
    name = attrs.get(IFLA_IFNAME, b"").split(b"\0", 1)[0].decode(errors="replace")
    admin_up = bool(flags & IFF_UP)
    return Link(index, name, admin_up and bool(flags & IFF_RUNNING), admin_up)


def parse_addr(body: Buffer, start: int, end: int) -> list[Addr]:
    """An address message as the prefixes it connects: the peer's network and the local address."""
    fam, plen, _flags, _scope, index = IFADDRMSG.unpack_from(body, start)
    family = routes.FAMILY.get(fam)
    if family is None:
        return []
    attrs = netlink.parse_attrs(body, start + IFADDRMSG.size, end)
    af = routes.AF[family]
    local_b = attrs.get(IFA_LOCAL) or attrs.get(IFA_ADDRESS)
    if local_b is None:
        return []
    local = socket.inet_ntop(af, local_b)
    peer_b = attrs.get(IFA_ADDRESS, local_b)
    net = ipaddress.ip_network(f"{socket.inet_ntop(af, peer_b)}/{plen}", strict=False)
    out = [Addr(index, family, local, str(net), net.is_link_local)]
    if peer_b != local_b:  # point-to-point: the peer's network, and our own address
        host = ipaddress.ip_network(local)
        out.append(Addr(index, family, local, str(host), host.is_link_local))
    return out


def attached_network(route: Route) -> bool:
    """Whether a route stands for a network the router is attached to (so never routed).

    Counted: main-table unicast routes without a gateway (IPv4: scope link) that the kernel
    made for an address (proto kernel), and other such device routes of at least /8 (IPv4) or
    /16 (IPv6): a LAN or link network behind a device route.

    Not counted: shorter device routes. They are ways out, not networks: a full tunnel puts
    `0.0.0.0/1` and `128.0.0.0/1` (`::/1`, `8000::/1`) on its link to override the default
    route, VPN clients route "everything but the private ranges" as /2../7 pieces and IPv6 as
    `2000::/3`. Counted, they would cover every address and turn the breakout off. No network
    a router is attached to is bigger than a /8 (10.0.0.0/8, private and never routed anyway),
    and IPv6 links are /64 (a whole site /48../56), so the limits leave a wide margin. Longer
    device routes on a tunnel (the head office's own networks) do count: Microsoft 365 does not
    live there, so leaving them alone costs nothing. The breakout link's own device routes
    (the ISP's network) count like any other.
    """
    if route.table != RT_TABLE_MAIN or route.type != RTN_UNICAST or route.gateway is not None:
        return False
    if route.family == 4 and route.scope != RT_SCOPE_LINK:
        return False
    if route.dst_len == 0 or route.oif is None:
        return False
    return route.protocol == RTPROT_KERNEL or route.dst_len >= MIN_ATTACHED_LEN[route.family]


class NetView:
    """Links, addresses and main-table device routes: what the router is connected to."""

    def __init__(self) -> None:
        self.links: dict[int, Link] = {}
        self.addrs: set[Addr] = set()
        self.device_routes: set[tuple[int, str, int]] = set()  # (family, cidr, oif)

    def apply_link(self, new: bool, link: Link) -> None:
        if new:
            self.links[link.index] = link
            if not link.admin_up:
                # Taking a link down makes the kernel delete its IPv4 routes without a single
                # RTM_DELROUTE (IPv6 reports its deletions): forget them here, or a tunnel that
                # was shut down would still count as connected networks.
                self.device_routes = {
                    r for r in self.device_routes if not (r[2] == link.index and r[0] == 4)
                }
        else:
            self.links.pop(link.index, None)
            self.addrs = {a for a in self.addrs if a.index != link.index}
            self.device_routes = {r for r in self.device_routes if r[2] != link.index}

    def apply_addr(self, new: bool, addrs: list[Addr]) -> None:
        for a in addrs:
            if new:
                self.addrs.add(a)
            else:
                self.addrs.discard(a)

    def apply_route(self, new: bool, route: Route) -> bool:
        """Track main-table device routes that are attached networks; True if it was one."""
        if not attached_network(route):
            return False
        assert route.oif is not None
        key = (route.family, f"{route.dst}/{route.dst_len}", route.oif)
        if new:
            self.device_routes.add(key)
        else:
            self.device_routes.discard(key)
        return True

    def connected(self) -> list[tuple[str, str]]:
        """(cidr, interface name) of every connected network, link-local ones left out."""
        out: dict[str, str] = {}
        for a in self.addrs:
            if not a.link_local:
                out.setdefault(a.network, self._name(a.index))
        for family, cidr, oif in self.device_routes:
            net = ipaddress.ip_network(cidr)
            if not net.is_link_local and not (family == 6 and net.is_multicast):
                out.setdefault(cidr, self._name(oif))
        return sorted(out.items())

    def _name(self, index: int) -> str:
        link = self.links.get(index)
        return link.name if link is not None else f"if{index}"

    def find(self, name: str | None) -> Link | None:
        if name is None:
            return None
        for link in self.links.values():
            if link.name == name:
                return link
        return None

    def has_address(self, index: int, family: int, global_only: bool = False) -> bool:
        return any(
            a.index == index and a.family == family and not (global_only and a.link_local)
            for a in self.addrs
        )

    def carries(self, link: Link | None, family: int, gateway: str | None) -> bool:
        """Whether `link` can carry the family's routes: up and running, with an address of the
        family (a global one when the gateway is a global IPv6 address)."""
        global_only = (
            family == 6 and gateway is not None and not ipaddress.ip_address(gateway).is_link_local
        )
        return link is not None and link.up and self.has_address(link.index, family, global_only)

    async def load(self, channel: netlink.Channel) -> None:
        """Replace the view with a fresh dump of links, addresses and main-table routes."""
        links: dict[int, Link] = {}
        body = IFINFOMSG.pack(socket.AF_UNSPEC, 0, 0, 0, 0)
        for reply in await channel.request(RTM_GETLINK, NLM_F_REQUEST | NLM_F_DUMP, body):
            link = parse_link(reply, 0, len(reply))
            links[link.index] = link
        addrs: set[Addr] = set()
        body = IFADDRMSG.pack(socket.AF_UNSPEC, 0, 0, 0, 0)
        for reply in await channel.request(RTM_GETADDR, NLM_F_REQUEST | NLM_F_DUMP, body):
            addrs.update(parse_addr(reply, 0, len(reply)))
        self.links, self.addrs, self.device_routes = links, addrs, set()
        for route in await routes.dump_routes(channel, RT_TABLE_MAIN):
            self.apply_route(True, route)


EventHandler = Callable[[int, bool, object], None]  # (kind, new?, Link|list[Addr]|Route|Rule)
KIND_LINK: Final = RTM_NEWLINK
KIND_ADDR: Final = RTM_NEWADDR
KIND_ROUTE: Final = routes.RTM_NEWROUTE
KIND_RULE: Final = routes.RTM_NEWRULE


class Monitor:
    """Netlink multicast listener for links, addresses and routes, on the event loop."""

    def __init__(
        self,
        handler: EventHandler,
        overrun: Callable[[], None],
        own_routes: Callable[[], tuple[int, int]] | None = None,
    ) -> None:
        self.sock = netlink.open_socket(netlink.NETLINK_ROUTE, groups=GROUPS)
        self._handler = handler
        self._overrun = overrun
        # (table, protocol) of the routes we install: their RTM_NEWROUTE echoes, one per new
        # route, are dropped unparsed (parsing them cost about 6% of the miss path), and
        # before that by the kernel (echofilter), for the (table, protocol) in `_filtered`.
        self._own_routes = own_routes
        self._filtered: tuple[int, int] | None = None
        self._buf = bytearray(1 << 18)
        self._loop: asyncio.AbstractEventLoop | None = None

    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._refilter()
        loop.add_reader(self.sock.fileno(), self.read)

    def _refilter(self) -> None:
        """Have the kernel drop the echoes of our routes, for the table and protocol now."""
        own = self._own_routes() if self._own_routes is not None else None
        if own is None or own == self._filtered:
            return
        self._filtered = own
        try:
            echofilter.attach(self.sock, *own)
        except OSError as err:  # they are then dropped here, in `_dispatch`
            log.warning("netlink monitor: cannot filter our routes' echoes in the kernel: %s", err)

    def close(self) -> None:
        if self._loop is not None:
            fdwatch.stop_reading(self._loop, self.sock.fileno())
            self._loop = None
        self.sock.close()

    def read(self) -> None:
        self._refilter()  # a reload may have moved our routes to another table or protocol
        buf = self._buf
        while (size := netlink.recv(self.sock, buf, self._lost)) is not None:
            for kind, _flags, _seq, start, end in netlink.iter_messages(buf, size):
                try:
                    self._dispatch(kind, buf, start, end)
                except Exception:
                    log.exception("cannot handle netlink event type %d", kind)

    def _lost(self) -> None:
        log.warning("netlink monitor overrun: events were lost, re-reading the kernel")
        self._overrun()

    def _dispatch(self, kind: int, buf: bytearray, start: int, end: int) -> None:
        if kind == routes.RTM_NEWROUTE and self._own_routes is not None:
            table, protocol = self._own_routes()
            if routes.added_to(buf, start, end, table, protocol):
                return
        if kind in (routes.RTM_NEWROUTE, routes.RTM_DELROUTE):
            route = routes.parse_route(buf, start, end)
            if route is not None:
                self._handler(KIND_ROUTE, kind == routes.RTM_NEWROUTE, route)
        elif kind in (RTM_NEWLINK, RTM_DELLINK):
            self._handler(KIND_LINK, kind == RTM_NEWLINK, parse_link(buf, start, end))
        elif kind in (RTM_NEWADDR, RTM_DELADDR):
            self._handler(KIND_ADDR, kind == RTM_NEWADDR, parse_addr(buf, start, end))
        elif kind in (routes.RTM_NEWRULE, routes.RTM_DELRULE):
            rule = routes.parse_rule(buf, start, end)
            if rule is not None:
                self._handler(KIND_RULE, kind == routes.RTM_NEWRULE, rule)
