"""nftables sets (`family table set`): elements added with a timeout, refreshed, removed.

Transport: raw nf_tables messages on the nfnetlink `Channel`, not pyroute2 and not `nft`.
pyroute2 0.9.7's AsyncNFTables is not usable from a running event loop: `sets("get")` returns
an un-awaited coroutine (TypeError), and the sync NFTables runs its own event loop, so it
would need a thread per call; it also looks the set up on every `set_elems` call. Running
`nft -f -` costs a process per batch (milliseconds), too slow for the reply path. The three
messages needed here (GETSET once, NEWSETELEM, DESTROYSETELEM) are short to pack by hand.

Each change is its own nf_tables transaction (BATCH_BEGIN, one element-list message, BATCH_END
in one sendmsg), so a failure is reported for exactly the elements it concerns. The sets
belong to the firewall configuration: resolverd checks that they exist with `flags timeout`
and never creates or deletes them. Re-adding an element refreshes its timeout on Linux 6.10
and later; removal uses DESTROYSETELEM (Linux 6.3+), which does not fail for an element that
timed out already.
"""

from __future__ import annotations

import errno
import logging
import socket
import struct
from collections.abc import Sequence
from typing import Final

from resolver.config import NftSet
from resolver.net import netlink
from resolver.net.errors import BreakoutError
from resolver.net.netlink import NLM_F_ACK, NLM_F_CREATE, NLM_F_REQUEST, Message

log = logging.getLogger(__name__)

NFNL_SUBSYS_NFTABLES: Final = 10
NFNL_MSG_BATCH_BEGIN: Final = 16
NFNL_MSG_BATCH_END: Final = 17
NFT_MSG_GETSET: Final = 10
NFT_MSG_NEWSETELEM: Final = 12
NFT_MSG_DESTROYSETELEM: Final = 30
NFTA_SET_TABLE: Final = 1
NFTA_SET_NAME: Final = 2
NFTA_SET_FLAGS: Final = 3
NFTA_SET_KEY_LEN: Final = 5
NFTA_SET_ELEM_LIST_TABLE: Final = 1
NFTA_SET_ELEM_LIST_SET: Final = 2
NFTA_SET_ELEM_LIST_ELEMENTS: Final = 3
NFTA_LIST_ELEM: Final = 1
NFTA_SET_ELEM_KEY: Final = 1
NFTA_SET_ELEM_TIMEOUT: Final = 4
NFTA_DATA_VALUE: Final = 1
NFT_SET_TIMEOUT: Final = 0x10

NFPROTO: Final = {"inet": 1, "ip": 2, "arp": 3, "netdev": 5, "bridge": 7, "ip6": 10}
KEY_LEN: Final = {4: 4, 6: 16}
ELEMENTS_PER_MESSAGE: Final = 512

NFGENMSG: Final = struct.Struct("=BBH")
_BE32: Final = struct.Struct(">I")
_BE64: Final = struct.Struct(">Q")


def describe(s: NftSet) -> str:
    return f"{s.family} {s.table} {s.name}"


class NftSetEncoder:
    """Packs element transactions for one set."""

    def __init__(self, nftset: NftSet, family: int) -> None:
        self.set = nftset
        self.family = family
        self._nfproto = NFPROTO[nftset.family]
        self._list_head = (
            NFGENMSG.pack(self._nfproto, 0, 0)
            + netlink.attr(NFTA_SET_ELEM_LIST_TABLE, netlink.asciiz(nftset.table))
            + netlink.attr(NFTA_SET_ELEM_LIST_SET, netlink.asciiz(nftset.name))
        )
        batch = NFGENMSG.pack(socket.AF_UNSPEC, 0, socket.htons(NFNL_SUBSYS_NFTABLES))
        self._begin: Message = (NFNL_MSG_BATCH_BEGIN, NLM_F_REQUEST, batch)
        self._end: Message = (NFNL_MSG_BATCH_END, NLM_F_REQUEST, batch)

    def _transaction(self, kind: int, flags: int, elements: Sequence[bytes]) -> list[Message]:
        body = self._list_head + netlink.nested(NFTA_SET_ELEM_LIST_ELEMENTS, *elements)
        msg = ((NFNL_SUBSYS_NFTABLES << 8) | kind, NLM_F_REQUEST | NLM_F_ACK | flags, body)
        return [self._begin, msg, self._end]

    def add(self, items: Sequence[tuple[bytes, int]]) -> list[list[Message]]:
        """Transactions adding (packed address, timeout seconds) elements."""
        out = []
        for i in range(0, len(items), ELEMENTS_PER_MESSAGE):
            elements = [
                netlink.nested(
                    NFTA_LIST_ELEM,
                    netlink.nested(NFTA_SET_ELEM_KEY, netlink.attr(NFTA_DATA_VALUE, packed)),
                    netlink.attr(NFTA_SET_ELEM_TIMEOUT, _BE64.pack(max(timeout, 1) * 1000)),
                )
                for packed, timeout in items[i : i + ELEMENTS_PER_MESSAGE]
            ]
            out.append(self._transaction(NFT_MSG_NEWSETELEM, NLM_F_CREATE, elements))
        return out

    def delete(self, items: Sequence[bytes]) -> list[list[Message]]:
        out = []
        for i in range(0, len(items), ELEMENTS_PER_MESSAGE):
            elements = [
                netlink.nested(
                    NFTA_LIST_ELEM,
                    netlink.nested(NFTA_SET_ELEM_KEY, netlink.attr(NFTA_DATA_VALUE, packed)),
                )
                for packed in items[i : i + ELEMENTS_PER_MESSAGE]
            ]
            out.append(self._transaction(NFT_MSG_DESTROYSETELEM, 0, elements))
        return out


async def check_nftset(channel: netlink.Channel, nftset: NftSet, family: int) -> None:
    """Raise BreakoutError unless the set exists, holds IPv`family` addresses and has timeouts."""
    if nftset.family not in NFPROTO:
        raise BreakoutError(f"nftables set {describe(nftset)}: unknown family {nftset.family}")
    body = (
        NFGENMSG.pack(NFPROTO[nftset.family], 0, 0)
        + netlink.attr(NFTA_SET_TABLE, netlink.asciiz(nftset.table))
        + netlink.attr(NFTA_SET_NAME, netlink.asciiz(nftset.name))
    )
    key_type = "ipv4_addr" if family == 4 else "ipv6_addr"
    hint = (
        f"create it in the firewall configuration, e.g. nft add set {describe(nftset)} "
        f"'{{ type {key_type}; flags timeout; }}'"
    )
    try:
        replies = await channel.request(
            (NFNL_SUBSYS_NFTABLES << 8) | NFT_MSG_GETSET, NLM_F_REQUEST, body
        )
    except netlink.NetlinkSocketError as err:
        if err.code == errno.ENOENT:
            raise BreakoutError(f"nftables set {describe(nftset)} does not exist: {hint}") from None
        raise BreakoutError(f"nftables set {describe(nftset)}: {err.strerror}") from None
    if not replies:
        raise BreakoutError(f"nftables set {describe(nftset)} does not exist: {hint}")
    attrs = netlink.parse_attrs(replies[0], NFGENMSG.size)
    flags = _BE32.unpack(attrs[NFTA_SET_FLAGS])[0] if NFTA_SET_FLAGS in attrs else 0
    key_len = _BE32.unpack(attrs[NFTA_SET_KEY_LEN])[0] if NFTA_SET_KEY_LEN in attrs else 0
    if key_len != KEY_LEN[family]:
        raise BreakoutError(f"nftables set {describe(nftset)} is not of type {key_type}: {hint}")
    if not flags & NFT_SET_TIMEOUT:
        raise BreakoutError(f"nftables set {describe(nftset)} lacks 'flags timeout': {hint}")
