"""Host and prefix routes in resolverd's table, and the ip rules that send traffic to it.

Routes go through the raw `netlink.Channel` (see there for why): a route message is an rtmsg
header, RTA_DST, and a suffix (table, output interface, gateway) packed once per configuration.
Installing uses NLM_F_CREATE|NLM_F_REPLACE, so installing twice is harmless; deleting names
the table and the protocol, so the kernel never deletes a route resolverd does not own, even
one for the same prefix. The rules use pyroute2 (on a side loop, see sideloop): they change
once per start.
"""

from __future__ import annotations

import errno
import logging
import socket
import struct
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from pyroute2 import AsyncIPRoute
from pyroute2.netlink.exceptions import NetlinkError

from resolver.net import netlink
from resolver.net.netlink import (
    NLM_F_CREATE,
    NLM_F_DUMP,
    NLM_F_REPLACE,
    NLM_F_REQUEST,
    Buffer,
    Message,
)
from resolver.net.sideloop import in_side_loop

log = logging.getLogger(__name__)

RTM_NEWROUTE = 24
RTM_DELROUTE = 25
RTM_GETROUTE = 26

RTA_DST = 1
RTA_OIF = 4
RTA_GATEWAY = 5
RTA_TABLE = 15

RT_SCOPE_UNIVERSE = 0
RT_SCOPE_LINK = 253
RT_SCOPE_NOWHERE = 255
RTN_UNICAST = 1
RTPROT_KERNEL = 2  # routes the kernel adds for an address's prefix
RT_TABLE_MAIN = 254

AF = {4: socket.AF_INET, 6: socket.AF_INET6}
FAMILY = {socket.AF_INET: 4, socket.AF_INET6: 6}
HOST_LEN = {4: 32, 6: 128}

RTMSG = struct.Struct("=BBBBBBBBI")  # family dst_len src_len tos table protocol scope type flags
_U32 = struct.Struct("=I")


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


class RouteEncoder:
    """Packs resolverd's route messages for one configuration (table, protocol, link, gateways)."""

    def __init__(
        self,
        table: int,
        protocol: int,
        oif: int | None,
        gateway4: str | None,
        gateway6: str | None,
    ) -> None:
        self.table = table
        self.protocol = protocol
        self.oif = oif
        table_u8 = table if table < 256 else 0
        self._table_u8 = table_u8
        table_attr = netlink.attr(RTA_TABLE, _U32.pack(table))
        self._del_tail = table_attr
        self._add_tail: dict[int, bytes] = {}
        self._scope: dict[int, int] = {}
        for family, gw in ((4, gateway4), (6, gateway6)):
            tail = table_attr
            if oif is not None:
                tail += netlink.attr(RTA_OIF, _U32.pack(oif))
            if gw is not None:
                tail += netlink.attr(RTA_GATEWAY, socket.inet_pton(AF[family], gw))
            self._add_tail[family] = tail
            # A device-only IPv4 route is on-link (scope link); IPv6 routes are always universe.
            self._scope[family] = RT_SCOPE_LINK if gw is None and family == 4 else RT_SCOPE_UNIVERSE

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


def is_selectorless_rule(rule: Any, table: int, priority: int) -> bool:
    """True for a `from all lookup <table>` rule at `priority` (a pyroute2 fibmsg)."""
    if rule.get("priority") != priority:
        return False
    if (rule.get("table") or rule["table"]) != table:
        return False
    if rule["action"] != 1 or rule["src_len"] or rule["dst_len"]:  # FR_ACT_TO_TBL
        return False
    for selector in ("iifname", "oifname", "fwmark", "uid_range", "ip_proto", "dport_range"):
        if rule.get(selector):
            return False
    return True


async def ensure_rules(table: int, priority: int, protocol: int) -> int:
    """Add `priority: from all lookup table` (IPv4 and IPv6) unless present; return the count."""
    return await in_side_loop(lambda: _ensure_rules(table, priority, protocol))


async def remove_rules(table: int, priority: int, protocol: int) -> int:
    """Remove our `from all lookup table` rules (those carrying our protocol); return the count."""
    return await in_side_loop(lambda: _remove_rules(table, priority, protocol))


async def _ensure_rules(table: int, priority: int, protocol: int) -> int:
    added = 0
    async with AsyncIPRoute() as ipr:
        for af in (socket.AF_INET, socket.AF_INET6):
            rules = [r async for r in await ipr.get_rules(family=af)]
            if any(is_selectorless_rule(r, table, priority) for r in rules):
                continue
            try:
                await ipr.rule(
                    "add", family=af, table=table, priority=priority, action="to_tbl",
                    protocol=protocol,
                )  # fmt: skip
                added += 1
            except NetlinkError as err:
                if err.code != errno.EEXIST:
                    raise
    return added


async def _remove_rules(table: int, priority: int, protocol: int) -> int:
    removed = 0
    async with AsyncIPRoute() as ipr:
        for af in (socket.AF_INET, socket.AF_INET6):
            rules = [r async for r in await ipr.get_rules(family=af)]
            for r in rules:
                if not is_selectorless_rule(r, table, priority):
                    continue
                if r.get("protocol") not in (protocol, None):
                    continue  # someone else's identical rule: not ours to remove
                try:
                    await ipr.rule(
                        "del", family=af, table=table, priority=priority, protocol=protocol
                    )
                    removed += 1
                except NetlinkError as err:
                    if err.code not in (errno.ENOENT, errno.ESRCH):
                        raise
    return removed


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
