"""Routes in resolverd's tables and the ip rules that send traffic to them: pure encoders.

A route message is an rtmsg header, RTA_DST, and a suffix (table, output interface, gateway)
packed once per path. Installing uses NLM_F_CREATE|NLM_F_REPLACE, so installing twice is
harmless and moving a route to another link is one message with no gap; deleting names the
table and the protocol, so the kernel never deletes a route resolverd does not own, even one
for the same prefix. A rule is a fib_rule_hdr and a few attributes (with `breakout.clients`
and `client_interfaces`, a source prefix, FRA_SRC and the header's src_len, or an ingress
interface, FRA_IIFNAME); resolverd's carry its route protocol number, so they too are told apart
from rules someone else added. Nothing here does I/O but `dump_routes` and `dump_rules`, which
read through a `netlink.Channel`.
"""

from __future__ import annotations

import errno
import logging
import socket
import struct
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Final

from resolver.net import netlink
from resolver.net.netlink import (
    NLM_F_CREATE,
    NLM_F_DUMP,
    NLM_F_EXCL,
    NLM_F_REPLACE,
    NLM_F_REQUEST,
    Buffer,
    Message,
)

log = logging.getLogger(__name__)

RTM_NEWROUTE: Final = 24
RTM_DELROUTE: Final = 25
RTM_GETROUTE: Final = 26

RTA_DST: Final = 1
RTA_OIF: Final = 4
RTA_GATEWAY: Final = 5
RTA_PRIORITY: Final = 6
RTA_TABLE: Final = 15

RT_SCOPE_UNIVERSE: Final = 0
RT_SCOPE_LINK: Final = 253
RT_SCOPE_NOWHERE: Final = 255
RTN_UNICAST: Final = 1
RTN_UNREACHABLE: Final = 7
RTPROT_KERNEL: Final = 2  # routes the kernel adds for an address's prefix
RT_TABLE_MAIN: Final = 254

AF: Final = {4: socket.AF_INET, 6: socket.AF_INET6}
FAMILY: Final = {socket.AF_INET: 4, socket.AF_INET6: 6}
HOST_LEN: Final = {4: 32, 6: 128}

RTMSG: Final = struct.Struct(
    "=BBBBBBBBI"
)  # family dst_len src_len tos table protocol scope type flags
_U32: Final = struct.Struct("=I")


@dataclass(frozen=True, slots=True)
class Route:
    """A route as the kernel reports it (only the fields resolverd looks at)."""

    family: int  # 4 or 6
    dst: str
    dst_len: int
    table: int
    protocol: int
    scope: int
    type: int
    oif: int | None
    gateway: str | None


_TABLE_ATTR: Final = struct.Struct("=HHI")  # a u32 attribute: length, type, value


def added_to(body: Buffer, start: int, end: int, table: int, protocol: int) -> bool:
    """Whether an RTM_NEWROUTE body is a route of `protocol` in `table`, read from its header and
    first attribute alone (the kernel puts RTA_TABLE first, IPv4 and IPv6 alike); False when the
    layout is any other, so that the caller parses the message as usual."""
    at = start + RTMSG.size
    if at + _TABLE_ATTR.size > end or body[start + 5] != protocol:
        return False
    length, kind, value = _TABLE_ATTR.unpack_from(body, at)
    return bool(length == _TABLE_ATTR.size and kind == RTA_TABLE and value == table)


def parse_route(body: Buffer, start: int = 0, end: int | None = None) -> Route | None:
    """Decode an RTM_NEWROUTE/RTM_DELROUTE body; None for families other than IPv4/IPv6."""
    end = len(body) if end is None else end
    fam, dst_len, _src_len, _tos, table, proto, scope, rtype, _flags = RTMSG.unpack_from(
        body, start
    )
    family = FAMILY.get(fam)
    if family is None:
        return None
    attrs = netlink.parse_attrs(body, start + RTMSG.size, end)
    if RTA_TABLE in attrs:
        table = _U32.unpack(attrs[RTA_TABLE][:4])[0]
    af = AF[family]
    dst = (
        socket.inet_ntop(af, attrs[RTA_DST])
        if RTA_DST in attrs
        else ("0.0.0.0" if family == 4 else "::")
    )
    gw = socket.inet_ntop(af, attrs[RTA_GATEWAY]) if RTA_GATEWAY in attrs else None
    oif = _U32.unpack(attrs[RTA_OIF][:4])[0] if RTA_OIF in attrs else None
    return Route(family, dst, dst_len, table, proto, scope, rtype, oif, gw)


@dataclass(frozen=True, slots=True)
class NextHop:
    """Where a family's routes go: out of interface `oif`, via `gateway` (None: on-link)."""

    oif: int
    gateway: str | None


class RouteEncoder:
    """Packs resolverd's route messages for one table and the current next hop of each family."""

    def __init__(self, table: int, protocol: int, next_hops: dict[int, NextHop | None]) -> None:
        self.table = table
        self.protocol = protocol
        self.next_hops = next_hops
        self._table_u8 = table if table < 256 else 0
        table_attr = netlink.attr(RTA_TABLE, _U32.pack(table))
        self._del_tail = table_attr
        self._add_tail: dict[int, bytes] = {}
        self._scope: dict[int, int] = {}
        for family, hop in next_hops.items():
            if hop is None:
                continue
            tail = table_attr + netlink.attr(RTA_OIF, _U32.pack(hop.oif))
            if hop.gateway is not None:
                tail += netlink.attr(RTA_GATEWAY, socket.inet_pton(AF[family], hop.gateway))
            self._add_tail[family] = tail
            # A device-only IPv4 route is on-link (scope link); IPv6 routes are always universe.
            on_link = hop.gateway is None and family == 4
            self._scope[family] = RT_SCOPE_LINK if on_link else RT_SCOPE_UNIVERSE

    def can_add(self, family: int) -> bool:
        return family in self._add_tail

    def add(self, family: int, packed: bytes, prefix_len: int) -> Message:
        head = RTMSG.pack(
            AF[family], prefix_len, 0, 0, self._table_u8, self.protocol,
            self._scope[family], RTN_UNICAST, 0,
        )  # fmt: skip
        body = head + netlink.attr(RTA_DST, packed) + self._add_tail[family]
        return RTM_NEWROUTE, NLM_F_REQUEST | NLM_F_CREATE | NLM_F_REPLACE, body

    def delete(self, family: int, packed: bytes, prefix_len: int) -> Message:
        # Scope NOWHERE and type 0 match any; the protocol restricts the match to our routes.
        head = RTMSG.pack(
            AF[family], prefix_len, 0, 0, self._table_u8, self.protocol, RT_SCOPE_NOWHERE, 0, 0
        )
        return RTM_DELROUTE, NLM_F_REQUEST, head + netlink.attr(RTA_DST, packed) + self._del_tail

    def unreachable(self, family: int) -> Message:
        """`unreachable default metric 4294967295`: the table's last word, so that a lookup
        that finds no other route there fails instead of falling through to the next rule."""
        head = RTMSG.pack(
            AF[family], 0, 0, 0, self._table_u8, self.protocol, RT_SCOPE_UNIVERSE,
            RTN_UNREACHABLE, 0,
        )  # fmt: skip
        body = head + self._del_tail + netlink.attr(RTA_PRIORITY, _U32.pack(0xFFFFFFFF))
        return RTM_NEWROUTE, NLM_F_REQUEST | NLM_F_CREATE | NLM_F_REPLACE, body


def dump_request(family: int, table: int) -> tuple[int, int, bytes]:
    """An RTM_GETROUTE dump of one table (the kernel filters when strict checking is on)."""
    body = RTMSG.pack(AF[family], 0, 0, 0, table if table < 256 else 0, 0, 0, 0, 0)
    body += netlink.attr(RTA_TABLE, _U32.pack(table))
    return RTM_GETROUTE, NLM_F_REQUEST | NLM_F_DUMP, body


async def dump_routes(channel: netlink.Channel, table: int) -> list[Route]:
    """Every IPv4 and IPv6 route in `table`."""
    out: list[Route] = []
    for family in (4, 6):
        try:
            replies = await channel.request(*dump_request(family, table))
        except netlink.NetlinkSocketError as err:
            if err.code == errno.ENOENT:  # strict dump of a table that does not exist yet
                continue
            raise
        for body in replies:
            route = parse_route(body)
            if route is not None and route.table == table:
                out.append(route)
    return out


# -- ip rules ---------------------------------------------------------------------------------

RTM_NEWRULE: Final = 32
RTM_DELRULE: Final = 33
RTM_GETRULE: Final = 34
FIB_RULE_HDR: Final = struct.Struct(
    "=BBBBBBBBI"
)  # family dst_len src_len tos table res1 res2 action flags
FR_ACT_TO_TBL: Final = 1
FRA_SRC: Final = 2
FRA_IIFNAME: Final = 3
FRA_PRIORITY: Final = 6
FRA_FWMARK: Final = 10
FRA_TABLE: Final = 15
FRA_FWMASK: Final = 16
FRA_OIFNAME: Final = 17
FRA_L3MDEV: Final = 19
FRA_UID_RANGE: Final = 20
FRA_PROTOCOL: Final = 21
FRA_IP_PROTO: Final = 22
FRA_SPORT_RANGE: Final = 23
FRA_DPORT_RANGE: Final = 24
# Selectors resolverd never sets: a rule with one is someone else's.
_SELECTORS: Final = (FRA_OIFNAME, FRA_L3MDEV, FRA_UID_RANGE, FRA_IP_PROTO, FRA_SPORT_RANGE,
                     FRA_DPORT_RANGE)  # fmt: skip


@dataclass(frozen=True, slots=True)
class Rule:
    """An ip rule as the kernel reports it: `from PREFIX|all [iif NAME] [fwmark M] lookup TABLE`
    and the rest."""

    family: int
    priority: int
    table: int
    action: int
    protocol: int
    fwmark: int | None
    selectors: bool  # any selector resolverd never sets (to, oif, tos, uid, ports, a fwmask...)
    src: str | None = None  # the source prefix, "192.0.2.0/24"; None: from all
    iif: str | None = None  # the ingress interface's name


@dataclass(frozen=True, slots=True)
class RuleSpec:
    """A rule resolverd owns: `priority: from all|PREFIX [iif NAME] [fwmark M] lookup table
    proto P`. A source prefix makes it a rule of the prefix's family only (`family`); the
    others go in for IPv4 and IPv6 alike (`family` None)."""

    priority: int
    table: int
    protocol: int
    fwmark: int | None = None
    src: str | None = None  # "PREFIX/LEN", normalised (no host bits), LEN > 0
    iif: str | None = None
    family: int | None = None  # 4 or 6 with `src`; None: both

    @property
    def families(self) -> tuple[int, ...]:
        return (4, 6) if self.family is None else (self.family,)

    def matches(self, rule: Rule) -> bool:
        """Whether `rule` does what this one would (whoever added it)."""
        return (
            rule.priority == self.priority and rule.table == self.table
            and rule.action == FR_ACT_TO_TBL and not rule.selectors
            and rule.fwmark == self.fwmark and rule.src == self.src and rule.iif == self.iif
            and rule.family in self.families
        )  # fmt: skip

    def message(self, family: int, add: bool) -> Message:
        src_len, src = 0, b""
        if self.src is not None:
            net, _, plen = self.src.partition("/")
            src_len, src = int(plen), socket.inet_pton(AF[family], net)
        head = FIB_RULE_HDR.pack(
            AF[family], 0, src_len, 0, self.table if self.table < 256 else 0, 0, 0,
            FR_ACT_TO_TBL, 0,
        )  # fmt: skip
        body = head + netlink.attr(FRA_PRIORITY, _U32.pack(self.priority))
        body += netlink.attr(FRA_TABLE, _U32.pack(self.table))
        body += netlink.attr(FRA_PROTOCOL, bytes((self.protocol,)))
        if src:
            body += netlink.attr(FRA_SRC, src)
        if self.iif is not None:
            body += netlink.attr(FRA_IIFNAME, self.iif.encode() + b"\0")
        if self.fwmark is not None:
            body += netlink.attr(FRA_FWMARK, _U32.pack(self.fwmark))
            body += netlink.attr(FRA_FWMASK, _U32.pack(0xFFFFFFFF))
        if add:
            return RTM_NEWRULE, NLM_F_REQUEST | NLM_F_CREATE | NLM_F_EXCL, body
        return RTM_DELRULE, NLM_F_REQUEST, body


def parse_rule(body: Buffer, start: int = 0, end: int | None = None) -> Rule | None:
    """Decode an RTM_NEWRULE/RTM_DELRULE body; None for families other than IPv4/IPv6."""
    end = len(body) if end is None else end
    fam, dst_len, src_len, tos, table, _r1, _r2, action, _flags = FIB_RULE_HDR.unpack_from(
        body, start
    )
    family = FAMILY.get(fam)
    if family is None:
        return None
    attrs = netlink.parse_attrs(body, start + FIB_RULE_HDR.size, end)

    def u32(kind: int, default: int) -> int:
        raw = attrs.get(kind)
        return _U32.unpack(raw[:4])[0] if raw is not None and len(raw) >= 4 else default

    fwmark = u32(FRA_FWMARK, 0)
    mask = u32(FRA_FWMASK, 0xFFFFFFFF if FRA_FWMARK in attrs else 0)
    selectors = bool(dst_len or tos or any(k in attrs for k in _SELECTORS))
    if fwmark and mask != 0xFFFFFFFF:
        selectors = True  # a masked mark: not one of ours
    src = None
    raw_src = attrs.get(FRA_SRC)
    if src_len:
        if raw_src is not None and len(raw_src) == HOST_LEN[family] // 8:
            src = f"{socket.inet_ntop(AF[family], raw_src)}/{src_len}"
        else:
            selectors = True  # a length without an address: not one we would write
    raw_iif = attrs.get(FRA_IIFNAME)
    iif = bytes(raw_iif).split(b"\0", 1)[0].decode(errors="replace") if raw_iif else None
    protocol = attrs.get(FRA_PROTOCOL, b"\0")[0]
    return Rule(
        family, u32(FRA_PRIORITY, 0), u32(FRA_TABLE, table), action, protocol,
        fwmark or None, selectors, src, iif or None,
    )  # fmt: skip


def rule_dump_request(family: int) -> Message:
    return RTM_GETRULE, NLM_F_REQUEST | NLM_F_DUMP, FIB_RULE_HDR.pack(AF[family], *([0] * 8))


async def dump_rules(channel: netlink.Channel) -> list[Rule]:
    """Every IPv4 and IPv6 ip rule."""
    out: list[Rule] = []
    for family in (4, 6):
        for body in await channel.request(*rule_dump_request(family)):
            rule = parse_rule(body)
            if rule is not None:
                out.append(rule)
    return out


def split_cidr(cidr: str) -> tuple[int, bytes, int]:
    """'13.67.59.89/32' -> (4, packed network, 32)."""
    net, _, plen = cidr.partition("/")
    family = 6 if ":" in net else 4
    length = int(plen) if plen else HOST_LEN[family]
    return family, socket.inet_pton(AF[family], net), length


def owned(routes: Iterable[Route], protocol: int) -> list[Route]:
    """The routes carrying `protocol`: resolverd's own."""
    return [r for r in routes if r.protocol == protocol]


def foreign_hosts(routes: Iterable[Route], protocol: int) -> set[str]:
    """Addresses of the host routes someone else put in the table (resolverd never takes one
    over)."""
    return {r.dst for r in routes if r.protocol != protocol and r.dst_len == HOST_LEN[r.family]}
