"""ipset hash:ip sets with per-entry timeouts: encoders, the check that a set is usable, and
its creation.

Entries are added and deleted on the raw nfnetlink `Channel` (one message per address, many per
sendmsg; the same transport as the routes). Adding an entry that exists updates its timeout:
without NLM_F_EXCL the kernel treats an add as `ipset add -exist`. `inspect` reads a set's
header (start, reload, and the periodic check that finds a set someone destroyed). `create`
makes a missing set (`ipset create NAME hash:ip family inet|inet6 timeout T maxelem M`) with
two requests on the same channel: IPSET_CMD_TYPE for the newest hash:ip revision the kernel
knows, as the ipset tool does, then IPSET_CMD_CREATE. A set of that name that appeared
meanwhile is judged by `inspect`, not by the kernel's `-exist`, which accepts a set of the
other family when the other settings agree. Tests decode every message here with pyroute2's
ipset_msg (tests/unit/test_encoders_oracle.py).
"""

from __future__ import annotations

import errno
import logging
import socket
import struct
from dataclasses import dataclass
from typing import Final

from resolver.net import netlink
from resolver.net.errors import BreakoutError, needs_net_admin, strerror
from resolver.net.netlink import (
    NLA_F_NET_BYTEORDER,
    NLM_F_DUMP,
    NLM_F_EXCL,
    NLM_F_REQUEST,
    Message,
)

log = logging.getLogger(__name__)

NFNL_SUBSYS_IPSET: Final = 6
IPSET_CMD_CREATE: Final = 2
IPSET_CMD_LIST: Final = 7
IPSET_CMD_ADD: Final = 9
IPSET_CMD_DEL: Final = 10
IPSET_CMD_TYPE: Final = 13
IPSET_ATTR_PROTOCOL: Final = 1
IPSET_ATTR_SETNAME: Final = 2
IPSET_ATTR_TYPENAME: Final = 3
IPSET_ATTR_REVISION: Final = 4
IPSET_ATTR_FAMILY: Final = 5
IPSET_ATTR_FLAGS: Final = 6
IPSET_ATTR_DATA: Final = 7
IPSET_ATTR_IP: Final = 1
IPSET_ATTR_TIMEOUT: Final = 6
IPSET_ATTR_MAXELEM: Final = 19  # in IPSET_ATTR_DATA of a create
IPSET_ATTR_IPADDR: Final = {4: 1, 6: 2}
IPSET_FLAG_LIST_HEADER: Final = 1 << 2
IPSET_ERR_FIND_TYPE: Final = 4098  # no such set type (its module is missing)
IPSET_ERR_EXIST: Final = 4103  # delete: "it's not added"; the entry timed out already
IPSET_PROTOCOL: Final = 7
IPSET_MAX_TIMEOUT: Final = 2_147_483  # UINT_MAX / 1000 / 2 seconds
SET_TYPE: Final = "hash:ip"

NFGENMSG: Final = struct.Struct("=BBH")
_BE32: Final = struct.Struct(">I")
# Also the NFPROTO_IPV4/IPV6 of IPSET_ATTR_FAMILY.
AF: Final = {4: socket.AF_INET, 6: socket.AF_INET6}


def _timeout(seconds: int) -> int:
    """Seconds for the kernel: at least 1 (0 would mean "permanent"), at most its maximum."""
    return min(max(int(seconds), 1), IPSET_MAX_TIMEOUT)


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
        timeout = _timeout(timeout)
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


def list_header_request(name: str, family: int) -> Message:
    """`ipset list -terse NAME`: the set's header (type, family, timeout support)."""
    body = (
        NFGENMSG.pack(AF[family], 0, 0)
        + netlink.attr(IPSET_ATTR_PROTOCOL, bytes([IPSET_PROTOCOL]))
        + netlink.attr(IPSET_ATTR_SETNAME, netlink.asciiz(name))
        + netlink.attr(IPSET_ATTR_FLAGS | NLA_F_NET_BYTEORDER, _BE32.pack(IPSET_FLAG_LIST_HEADER))
    )
    return (NFNL_SUBSYS_IPSET << 8) | IPSET_CMD_LIST, NLM_F_REQUEST | NLM_F_DUMP, body


@dataclass(frozen=True, slots=True)
class Header:
    kind: str  # "hash:ip"
    family: int  # AF_INET or AF_INET6
    timeout: bool  # created with timeout support


def parse_header(body: bytes) -> Header:
    attrs = netlink.parse_attrs(body, NFGENMSG.size)
    kind = attrs.get(IPSET_ATTR_TYPENAME, b"").split(b"\0", 1)[0].decode(errors="replace")
    family = attrs.get(IPSET_ATTR_FAMILY, b"\0")[0]
    data = netlink.parse_attrs(attrs.get(IPSET_ATTR_DATA, b""))
    return Header(kind, family, IPSET_ATTR_TIMEOUT in data)


async def inspect(channel: netlink.Channel, name: str, family: int) -> bool:
    """Whether ipset `name` exists; BreakoutError when it cannot take entries with timeouts
    for this family. Changes nothing."""
    try:
        replies = await channel.request(*list_header_request(name, family))
    except netlink.NetlinkSocketError as err:
        if err.code == errno.ENOENT:
            return False
        raise
    if not replies:
        return False
    head = parse_header(replies[0])
    if head.kind != "hash:ip" or head.family != AF[family] or not head.timeout:
        raise BreakoutError(
            f"ipset {name} exists as {head.kind} family {head.family} "
            f"{'with' if head.timeout else 'without'} timeout support; breakout needs hash:ip "
            f"family inet{'6' if family == 6 else ''} with timeout: destroy it or name another "
            f"set in breakout.ipset{family}"
        )
    return True


def type_request(family: int) -> Message:
    """`IPSET_CMD_TYPE hash:ip`: the revisions of the type the kernel knows (loads its module)."""
    body = (
        NFGENMSG.pack(AF[family], 0, 0)
        + netlink.attr(IPSET_ATTR_PROTOCOL, bytes([IPSET_PROTOCOL]))
        + netlink.attr(IPSET_ATTR_TYPENAME, netlink.asciiz(SET_TYPE))
        + netlink.attr(IPSET_ATTR_FAMILY, bytes([AF[family]]))
    )
    return (NFNL_SUBSYS_IPSET << 8) | IPSET_CMD_TYPE, NLM_F_REQUEST, body


def parse_revision(body: bytes) -> int | None:
    """The newest revision in an IPSET_CMD_TYPE reply (None: the reply has none)."""
    raw = netlink.parse_attrs(body, NFGENMSG.size).get(IPSET_ATTR_REVISION)
    return raw[0] if raw else None


def create_request(name: str, family: int, revision: int, timeout: int, maxelem: int) -> Message:
    """`ipset create NAME hash:ip family inet[6] timeout T maxelem M`; EEXIST when a set of
    that name exists (NLM_F_EXCL: without it the kernel also accepts an existing set of the
    other family whose timeout and maxelem agree)."""
    data = netlink.nested(
        IPSET_ATTR_DATA,
        netlink.attr(IPSET_ATTR_TIMEOUT | NLA_F_NET_BYTEORDER, _BE32.pack(_timeout(timeout))),
        netlink.attr(IPSET_ATTR_MAXELEM | NLA_F_NET_BYTEORDER, _BE32.pack(maxelem)),
    )
    body = (
        NFGENMSG.pack(AF[family], 0, 0)
        + netlink.attr(IPSET_ATTR_PROTOCOL, bytes([IPSET_PROTOCOL]))
        + netlink.attr(IPSET_ATTR_SETNAME, netlink.asciiz(name))
        + netlink.attr(IPSET_ATTR_TYPENAME, netlink.asciiz(SET_TYPE))
        + netlink.attr(IPSET_ATTR_REVISION, bytes([revision]))
        + netlink.attr(IPSET_ATTR_FAMILY, bytes([AF[family]]))
        + data
    )
    return (NFNL_SUBSYS_IPSET << 8) | IPSET_CMD_CREATE, NLM_F_REQUEST | NLM_F_EXCL, body


async def create(
    channel: netlink.Channel, name: str, family: int, timeout: int, maxelem: int
) -> None:
    """Create hash:ip set `name` with timeout support; one that exists meanwhile and can take
    the entries (hash:ip, this family, timeouts) is fine. BreakoutError when the kernel
    refuses, with what to do."""
    what = f"ipset {name} (hash:ip family inet{'6' if family == 6 else ''})"
    try:
        replies = await channel.request(*type_request(family))
        revision = parse_revision(replies[0]) if replies else None
        if revision is None:
            raise BreakoutError(f"cannot create {what}: the kernel did not report a revision")
        await channel.request(*create_request(name, family, revision, timeout, maxelem))
    except netlink.NetlinkSocketError as err:
        if err.code != errno.EEXIST:
            raise _create_error(what, err.code) from err
        # A set of that name appeared since `inspect` found none: fine if it can take our
        # entries; inspect says what it is and what to do when it cannot.
        try:
            usable = await inspect(channel, name, family)
        except netlink.NetlinkSocketError as again:
            raise _create_error(what, again.code) from again
        if not usable:  # destroyed again meanwhile
            raise _create_error(what, err.code) from err
        log.info("ipset %s exists already (hash:ip with timeouts): using it", name)
        return
    log.info("created ipset %s (hash:ip, inet%s, timeout %d)", name, "6" * (family == 6), timeout)


def _create_error(what: str, code: int) -> BreakoutError:
    if code == errno.EPERM:
        return needs_net_admin("create ipsets")
    if code == IPSET_ERR_FIND_TYPE:
        return BreakoutError(
            f"cannot create {what}: the kernel has no ipset type hash:ip (load the module "
            "ip_set_hash_ip, or leave breakout.ipset4/ipset6 out)"
        )
    return BreakoutError(f"cannot create {what}: {strerror(code)}")
