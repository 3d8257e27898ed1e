"""ipset hash:ip sets with per-entry timeouts: created when missing, never flushed or recreated.

Entries are added and deleted on the raw nfnetlink `Channel` (one message per address, many per
sendmsg; the same transport as the routes). Adding an entry that exists updates its timeout:
without NLM_F_EXCL the kernel treats an add as `ipset add -exist`. Creating and inspecting the
sets uses pyroute2's AsyncIPSet, once per start (on a side loop, see sideloop).
"""

from __future__ import annotations

import errno
import logging
import socket
import struct

from pyroute2.ipset import AsyncIPSet
from pyroute2.netlink.exceptions import NetlinkError

from resolver.net import netlink
from resolver.net.errors import BreakoutError
from resolver.net.netlink import NLA_F_NET_BYTEORDER, NLM_F_EXCL, NLM_F_REQUEST, Message
from resolver.net.sideloop import in_side_loop

log = logging.getLogger(__name__)

NFNL_SUBSYS_IPSET = 6
IPSET_CMD_ADD = 9
IPSET_CMD_DEL = 10
IPSET_ATTR_PROTOCOL = 1
IPSET_ATTR_SETNAME = 2
IPSET_ATTR_DATA = 7
IPSET_ATTR_IP = 1
IPSET_ATTR_TIMEOUT = 6
IPSET_ATTR_IPADDR = {4: 1, 6: 2}
IPSET_FLAG_LIST_HEADER = 1 << 2
IPSET_ERR_EXIST = 4103  # delete: "it's not added"; the entry timed out already
IPSET_PROTOCOL = 7
IPSET_MAX_TIMEOUT = 2_147_483  # UINT_MAX / 1000 / 2 seconds

NFGENMSG = struct.Struct("=BBH")
_BE32 = struct.Struct(">I")
AF = {4: socket.AF_INET, 6: socket.AF_INET6}


class IpsetEncoder:
    """Packs add/delete messages for one set."""

    def __init__(self, name: str, family: int, protocol: int = IPSET_PROTOCOL) -> None:
        self.name = name
        self.family = family
        self._head = (
            NFGENMSG.pack(AF[family], 0, 0)
            + netlink.attr(IPSET_ATTR_PROTOCOL, bytes([protocol]))
            + netlink.attr(IPSET_ATTR_SETNAME, netlink.asciiz(name))
        )
        self._ipattr = IPSET_ATTR_IPADDR[family] | NLA_F_NET_BYTEORDER

    def add(self, packed: bytes, timeout: int) -> Message:
        timeout = min(max(int(timeout), 1), IPSET_MAX_TIMEOUT)  # 0 would mean "permanent"
        data = netlink.nested(
            IPSET_ATTR_DATA,
            netlink.nested(IPSET_ATTR_IP, netlink.attr(self._ipattr, packed)),
            netlink.attr(IPSET_ATTR_TIMEOUT | NLA_F_NET_BYTEORDER, _BE32.pack(timeout)),
        )
        return (NFNL_SUBSYS_IPSET << 8) | IPSET_CMD_ADD, NLM_F_REQUEST, self._head + data

    def delete(self, packed: bytes) -> Message:
        data = netlink.nested(
            IPSET_ATTR_DATA, netlink.nested(IPSET_ATTR_IP, netlink.attr(self._ipattr, packed))
        )
        # NLM_F_EXCL: an entry that is not there (it timed out) is reported, so removals count
        # only what was really removed; callers treat that report as success.
        return (
            (NFNL_SUBSYS_IPSET << 8) | IPSET_CMD_DEL,
            NLM_F_REQUEST | NLM_F_EXCL,
            self._head + data,
        )


def delete_ok(code: int) -> bool:
    """A delete that failed only because the entry is gone already (it timed out)."""
    return code in (0, IPSET_ERR_EXIST, errno.ENOENT)


async def inspect_ipset(name: str, family: int) -> int | None:
    """The netlink protocol to use for existing set `name`, or None when there is no such set.

    Changes nothing. An existing set is used as it is (never flushed, never recreated), but it
    must be a hash:ip set of the right family created with `timeout`, else entries with
    timeouts cannot go in: BreakoutError.
    """
    return await in_side_loop(lambda: _inspect_ipset(name, family))


async def create_ipset(name: str, family: int, default_timeout: int, maxelem: int) -> int:
    """Create hash:ip set `name` with timeout support (a set created meanwhile with the same
    type is fine); return the protocol. BreakoutError when the kernel refuses."""
    return await in_side_loop(lambda: _create_ipset(name, family, default_timeout, maxelem))


async def _inspect_ipset(name: str, family: int) -> int | None:
    async with AsyncIPSet() as ips:
        protocol = int(ips._proto_version or IPSET_PROTOCOL)
        try:
            msgs = [m async for m in await ips.list(name=name, flags=IPSET_FLAG_LIST_HEADER)]
        except NetlinkError as err:
            if err.code != errno.ENOENT:
                raise
            msgs = []
        if not msgs:
            return None
        head = msgs[0]
        kind = head.get_attr("IPSET_ATTR_TYPENAME")
        fam = head.get_attr("IPSET_ATTR_FAMILY")
        data = head.get_attr("IPSET_ATTR_DATA")
        timeout = data.get_attr("IPSET_ATTR_TIMEOUT") if data is not None else None
        if kind != "hash:ip" or fam != AF[family] or timeout is None:
            raise BreakoutError(
                f"ipset {name} exists as {kind} family {fam} "
                f"{'with' if timeout is not None else 'without'} timeout support; breakout "
                f"needs hash:ip family inet{'6' if family == 6 else ''} with timeout: "
                "destroy it or name another set in breakout.ipset"
                f"{family}"
            )
        return protocol


async def _create_ipset(name: str, family: int, default_timeout: int, maxelem: int) -> int:
    async with AsyncIPSet() as ips:
        protocol = int(ips._proto_version or IPSET_PROTOCOL)
        try:
            await ips.create(
                name, stype="hash:ip", family=AF[family], timeout=default_timeout,
                maxelem=maxelem, exclusive=False,
            )  # fmt: skip
        except NetlinkError as err:
            if err.code == errno.EPERM:
                raise
            raise BreakoutError(f"cannot create ipset {name}: {err}") from err
        log.info(
            "created ipset %s (hash:ip, inet%s, timeout %d)",
            name,
            "6" if family == 6 else "",
            default_timeout,
        )
        return protocol
