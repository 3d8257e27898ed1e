"""Conntrack entries of moved breakout addresses: ctnetlink encoders, a parser, and the flush.

When a family's host routes move to another breakout link, or are withdrawn, a flow that was
source-NATed on the old link keeps its conntrack entry, and with it the old link's address:
its packets leave the new link with a source that link does not own and die there, until the
client gives up. Deleting the entry makes the flow's next packet a new one (TCP's loose
pick-up), NATed on the new link: the server answers it with a reset and the client reconnects
at once. This matters for `snat to ADDRESS`; for `masquerade` the kernel does it by itself
(nf_nat drops a masqueraded packet that leaves another interface and kills its entry), so
the flush finds nothing left to do there (tests/netns/test_conntrack_flush.py shows both).

`flush` deletes the entries whose *original* destination is one of the moved addresses, and
only those, through NFNL_SUBSYS_CTNETLINK on a `netlink.Channel(NETLINK_NETFILTER)`:

1. one IPCTNL_MSG_CT_GET dump per family concerned (the kernel leaves out the other family);
   each entry's original destination is read from its first attributes (CTA_TUPLE_ORIG,
   whose first is CTA_TUPLE_IP) at fixed offsets, the rest decoded only for a match. The
   channel's writer thread reads it as the dump arrives (`keeping`, the request's `keep`) and
   copies only the matches: the table, which the clients grow up to nf_conntrack_max, is
   neither held nor walked on the event loop (205,800 entries, 1,000 matches, both builds:
   peak RSS +40 MB and a 140-480 ms stall of the loop when it was; +0.6 MB, 14-28 ms now).
   The filter is Python code (this module is not compiled): while it runs the writer lets the
   loop in every switch interval, which a compiled writer reading a dump does not do;
2. for each match, an IPCTNL_MSG_CT_DELETE that echoes the dumped CTA_TUPLE_ORIG unchanged (so
   every protocol works: TCP, UDP, ICMP, GRE...), the entry's CTA_ZONE when it has one, and
   its CTA_ID, so that an entry recreated meanwhile for the same tuple (NATed on the new link
   already) is left alone. DELETE_BATCH deletes per `submit`; ENOENT (gone meanwhile) is
   neither counted nor a failure.

Why not the kernel's filters (measured on Linux 6.18, 2 cores, for issue 19): a
CTA_FILTER on the original destination, for a dump or (Linux 6.12+) a flush, costs one walk of
the whole conntrack hash table per address (0.3-6 ms each here), where a dump costs one walk
per family whatever the number of addresses (about 30 ms for 10,000 entries, 120 ms for
50,000, deletes included); a filtered flush does not say how many entries it deleted; and on
this kernel an IPv6 address filter is inverted (it selects every entry but the address's).

The deadline bounds the whole: no dump or batch starts after it, and a dump still running when
it passes is abandoned (the writer thread reads it to its end and drops it). A long dump holds
the channel's writer thread: give the flush a channel of its own, not the one the reply path
uses for set elements. Nothing here but `flush` does I/O.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import socket
import struct
import time
from collections.abc import Callable, Collection, Iterator, Sequence
from dataclasses import dataclass

from resolver.net import netlink
from resolver.net.netlink import NLA_TYPE_MASK, NLM_F_DUMP, NLM_F_REQUEST, Buffer, Message

log = logging.getLogger(__name__)

NFNL_SUBSYS_CTNETLINK = 1
IPCTNL_MSG_CT_GET = 1
IPCTNL_MSG_CT_DELETE = 2
MSG_GET = (NFNL_SUBSYS_CTNETLINK << 8) | IPCTNL_MSG_CT_GET
MSG_DELETE = (NFNL_SUBSYS_CTNETLINK << 8) | IPCTNL_MSG_CT_DELETE

CTA_TUPLE_ORIG = 1
CTA_ID = 12
CTA_ZONE = 18
CTA_TUPLE_IP = 1
CTA_IP_V4_SRC = 1
CTA_IP_V4_DST = 2
CTA_IP_V6_SRC = 3
CTA_IP_V6_DST = 4

AF = {4: socket.AF_INET, 6: socket.AF_INET6}
FAMILY_OF_LEN = {4: 4, 16: 6}  # packed address length -> family
NFNETLINK_V0 = 0
DELETE_BATCH = 256  # deletes per submit; the deadline is checked between batches

NFGENMSG = struct.Struct("=BBH")
_ATTR = struct.Struct("=HH")
_FAMILY: dict[int, int] = {socket.AF_INET: 4, socket.AF_INET6: 6}


@dataclass(frozen=True, slots=True)
class Entry:
    """A conntrack entry as much as deleting it needs, and its original destination."""

    family: int  # 4 or 6
    dst: bytes  # original destination, packed
    tuple_orig: bytes  # the CTA_TUPLE_ORIG payload as dumped (nested attributes)
    zone: bytes | None  # the CTA_ZONE payload (be16), when the entry has a zone
    id: bytes | None  # the CTA_ID payload (be32)


@dataclass(frozen=True, slots=True)
class Flushed:
    """What a flush did: entries deleted, deletes refused (not ENOENT), and whether it got
    through every family and batch before its deadline."""

    deleted: int
    failed: int
    complete: bool


# -- encoders ----------------------------------------------------------------------------------


def _nfgen(family: int) -> bytes:
    return NFGENMSG.pack(AF[family] if family else socket.AF_UNSPEC, NFNETLINK_V0, 0)


def dump_request(family: int) -> bytes:
    """The body of a CT_GET dump of one family's entries (0: both families)."""
    return _nfgen(family)


def delete_message(entry: Entry) -> Message:
    """A CT_DELETE of exactly `entry`: its original tuple, zone and id, as dumped."""
    body = _nfgen(entry.family) + netlink.nested(CTA_TUPLE_ORIG, entry.tuple_orig)
    if entry.zone is not None:
        body += netlink.attr(CTA_ZONE, entry.zone)
    if entry.id is not None:
        body += netlink.attr(CTA_ID, entry.id)
    return (MSG_DELETE, NLM_F_REQUEST, body)


# -- parsing -----------------------------------------------------------------------------------


def _attrs(buf: Buffer, offset: int, end: int) -> Iterator[tuple[int, int, int]]:
    """(type, payload start, payload end) of each attribute from `offset` to `end`."""
    while offset + 4 <= end:
        size, kind = _ATTR.unpack_from(buf, offset)
        if size < 4 or offset + size > end:
            return
        yield kind & NLA_TYPE_MASK, offset + 4, offset + size
        offset += (size + 3) & ~3


# The kernel dumps an entry as CTA_TUPLE_ORIG { CTA_TUPLE_IP { SRC, DST }, ... }, first of all:
# read that layout at fixed offsets, and walk the attributes only when it is not there.
_HEAD = struct.Struct("=HHHHHH")  # (length, type) of orig, ip and src, from offset 4
_DST_AT = {  # (src type, src length) -> (dst offset, dst type, dst length)
    (CTA_IP_V4_SRC, 8): (20, CTA_IP_V4_DST, 8),
    (CTA_IP_V6_SRC, 20): (32, CTA_IP_V6_DST, 20),
}


def orig_dst(body: Buffer) -> bytes | None:
    """The original destination of a dumped entry (the body after the netlink header); None
    when the entry has none (malformed)."""
    if len(body) >= 16:
        _s1, t1, _s2, t2, s3, t3 = _HEAD.unpack_from(body, NFGENMSG.size)
        where = _DST_AT.get((t3, s3))
        nested = (t1 & NLA_TYPE_MASK, t2 & NLA_TYPE_MASK) == (CTA_TUPLE_ORIG, CTA_TUPLE_IP)
        if where is not None and nested:
            at, kind, size = where
            if len(body) >= at + size and _ATTR.unpack_from(body, at) == (size, kind):
                return bytes(body[at + 4 : at + size])
    return _walk_orig_dst(body)


def _walk_orig_dst(body: Buffer) -> bytes | None:
    for kind, start, end in _attrs(body, NFGENMSG.size, len(body)):
        if kind != CTA_TUPLE_ORIG:
            continue
        for kind2, start2, end2 in _attrs(body, start, end):
            if kind2 != CTA_TUPLE_IP:
                continue
            for kind3, start3, end3 in _attrs(body, start2, end2):
                if kind3 in (CTA_IP_V4_DST, CTA_IP_V6_DST):
                    return bytes(body[start3:end3])
            return None
        return None
    return None


def parse_entry(body: Buffer) -> Entry | None:
    """The entry a dump reply body describes; None when it lacks an original tuple."""
    if len(body) < NFGENMSG.size:
        return None
    family = _FAMILY.get(body[0])
    tuple_orig = zone = ident = None
    for kind, start, end in _attrs(body, NFGENMSG.size, len(body)):
        if kind == CTA_TUPLE_ORIG:
            tuple_orig = bytes(body[start:end])
        elif kind == CTA_ZONE:
            zone = bytes(body[start:end])
        elif kind == CTA_ID:
            ident = bytes(body[start:end])
    dst = orig_dst(body)
    if family is None or tuple_orig is None or dst is None:
        return None
    return Entry(family, dst, tuple_orig, zone, ident)


def keeping(addresses: Collection[bytes]) -> netlink.Keep:
    """A dump's filter (`Channel.request`'s `keep`): an entry whose original destination is in
    `addresses`. Run by the writer thread on each body before it is copied; thread-safe."""
    wanted = frozenset(addresses)

    def keep(body: Buffer) -> bool:
        dst = orig_dst(body)
        return dst is not None and dst in wanted

    return keep


def matching(bodies: Sequence[Buffer], addresses: Collection[bytes]) -> list[Entry]:
    """The entries among dump reply `bodies` whose original destination is in `addresses`."""
    out = []
    for body in bodies:
        dst = orig_dst(body)
        if dst is not None and dst in addresses:
            entry = parse_entry(body)
            if entry is not None:
                out.append(entry)
    return out


# -- the flush ---------------------------------------------------------------------------------


def _submit(channel: netlink.ChannelLike, messages: Sequence[Message]) -> asyncio.Future[list[int]]:
    fut: asyncio.Future[list[int]] = asyncio.get_running_loop().create_future()

    def settled(errors: list[int]) -> None:
        if not fut.done():
            fut.set_result(errors)

    channel.submit(messages, settled)
    return fut


async def flush(
    channel: netlink.ChannelLike,
    addresses: Collection[bytes],
    deadline: float,
    clock: Callable[[], float] = time.monotonic,
) -> Flushed:
    """Delete the conntrack entries whose original destination is one of `addresses` (packed,
    4 or 16 bytes), before `deadline` (on `clock`). Never raises for kernel errors: a dump
    that fails ends the flush (logged), deletes that fail are counted in `failed`."""
    wanted = set(addresses)
    families = sorted({FAMILY_OF_LEN[len(a)] for a in wanted if len(a) in FAMILY_OF_LEN})
    keep = keeping(wanted)
    deleted = failed = 0
    for family in families:
        remaining = deadline - clock()
        if remaining <= 0:
            return Flushed(deleted, failed, False)
        try:
            bodies = await asyncio.wait_for(
                channel.request(
                    MSG_GET, NLM_F_REQUEST | NLM_F_DUMP, dump_request(family), keep=keep
                ),
                remaining,
            )
        except TimeoutError:
            log.warning("conntrack flush: the IPv%d dump outlasted the deadline", family)
            return Flushed(deleted, failed, False)
        except netlink.NetlinkSocketError as err:
            log.warning("conntrack flush: IPv%d dump failed: %s", family, err.strerror)
            return Flushed(deleted, failed, False)
        entries = matching(bodies, wanted)
        for i in range(0, len(entries), DELETE_BATCH):
            remaining = deadline - clock()
            if remaining <= 0:
                return Flushed(deleted, failed, False)
            batch = [delete_message(e) for e in entries[i : i + DELETE_BATCH]]
            try:
                errors = await asyncio.wait_for(_submit(channel, batch), remaining)
            except TimeoutError:
                return Flushed(deleted, failed, False)
            for code in errors:
                if code == 0:
                    deleted += 1
                elif code != errno.ENOENT:
                    failed += 1
    if failed:
        log.warning("conntrack flush: %d deletes refused", failed)
    return Flushed(deleted, failed, True)
