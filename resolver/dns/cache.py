"""The answer cache: one copy of each reply's bytes with the offsets of its TTL fields, LRU-bounded.

The bound is `max_entries` answers and `max_entries` x ENTRY_BYTES bytes of them, whichever
comes first: answers fetched over TCP after TC can be 64 KB, and a few thousand of those would
otherwise take the memory 100,000 answers are sized for (the unit's MemoryMax counts 1,232
bytes an answer, the largest a UDP client gets). Each answer is charged to the client whose
miss fetched it (its `clients.charge_key`), and a client owns at most `per_client` of them and
`per_client_bytes` of their bytes (the same `client_share` of each bound): past either, its new
answer evicts its own least recently used ones, so that a client asking for ever new names, or
for ever bigger answers over TCP, cycles its own share and not the other clients' answers
(`client_evicted`); a share is at least one answer of ENTRY_BYTES, and an answer bigger than
a share is answered and not kept. A reload that shrinks the shares trims the clients past
theirs before the LRU bound takes anyone's.

An `Entry` is built once, on the miss path, from an upstream reply that `replies.scan_reply`
walked. It keeps one byte string, `wire`: the reply without its OPT record, with our header
(AA and TC cleared: a forwarder is no authority and a truncated reply is never stored; RA set)
and every TTL as it was at age 0 (capped). A hit never parses: the TTL fields listed in
`ttl_at` are re-written for the entry's age in whole seconds, then the reply is the client's
id, the stored header (RD as the client set it, one more additional record for our OPT when
the client sent EDNS), the client's own question bytes (its letter case), the patched tail and,
for an EDNS client, our OPT. What can be computed is not stored: the CNAME chain and the
addresses are read again from `wire` when a reload re-tags the cache (`Entry.chain`).

Positive answers live for the smallest answer TTL, capped at `max_ttl`; an SOA in their
authority section changes nothing. Negative answers (NXDOMAIN, or NOERROR whose CNAME chain
does not end in a record of the asked type: NODATA) live for min(answer TTLs, SOA TTL, SOA
MINIMUM, max_negative_ttl), and no TTL handed out from them is higher (RFC 2308 section 5);
without an SOA they are not cached. SERVFAIL and other errors, and TTL 0, are never cached.
"""

from __future__ import annotations

import struct
from collections import OrderedDict
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TypeVar

from resolver.dns import replies, wire
from resolver.hooks import Tagged

_TTL = struct.Struct("!I")
_OFFSETS = "!{}H"
_OPT = (wire.opt_record(False), wire.opt_record(True))  # by the DO bit of the key
T = TypeVar("T")
_SHARED: dict[int, int] = {}
_SHARED_OFFSETS: dict[bytes, bytes] = {}
SHARED_MAX = 4096
SHARED_OFFSETS_MAX = 32  # bytes: the TTLs of 16 records
ENTRY_BYTES = 1232  # bytes of answers the cache may hold per entry of max_entries
# Addresses of one answer that tagging sees (and the breakout routes): Microsoft 365's answers
# carry fewer than 20; a 64 KB answer could carry 4,000 and take a twelfth of the holds.
MAX_ADDRESSES = 64


def shared_int(n: int) -> int:
    """One int object per value for TTLs (a few hundred distinct ones in practice): each entry
    holding its own 300 would cost 28 bytes a time."""
    return n if -5 <= n <= 256 else _share(_SHARED, n)


def shared_offsets(at: bytes) -> bytes:
    """One bytes object per pattern of TTL offsets: replies of one shape (question length and
    records) have the same, and each entry holding its own few bytes would cost about 40 bytes
    a time (61,000 cached answers: 2.3 MB). Only patterns of at most SHARED_OFFSETS_MAX bytes
    are kept (a table that hostile replies can fill stays small)."""
    return at if len(at) > SHARED_OFFSETS_MAX else _share(_SHARED_OFFSETS, at)


def _share(table: dict[T, T], value: T) -> T:
    """The one object `table` keeps for `value` (kept from now on while there is room: at
    most SHARED_MAX), or `value` itself."""
    found = table.get(value)
    if found is not None:
        return found
    if len(table) < SHARED_MAX:
        table[value] = value
    return value


@dataclass(slots=True)
class Chain:
    """What tagging reads of an answer: the CNAME chain from the query name, and its A/AAAA
    addresses (packed, see hooks.pack_addresses: the first MAX_ADDRESSES distinct ones; how
    many more there were is `capped`) with the smallest of their TTLs."""

    names: list[str]
    addresses: bytes
    addr_ttl: int
    capped: int = 0


class Entry:
    """One cached answer. `expires` <= now means dead (evicted entries get -1)."""

    __slots__ = (
        "addr_base",
        "key",
        "origin",
        "owner",
        "qend",
        "result",
        "stored",
        "tag",
        "ttl",
        "ttl_at",
        "wire",
    )

    def __init__(
        self, key: bytes, template: bytes, ttl_at: bytes, qend: int, ttl: int, stored: float
    ) -> None:
        self.key = key  # folded name, type, class, DO/CD flags (wire.question_key)
        self.wire = template
        self.ttl_at = ttl_at  # the TTL fields' offsets in `wire`, two bytes each
        self.qend = qend
        self.result = wire.RCODE_NAMES.get(template[3] & 0xF, "other")
        self.ttl = shared_int(ttl)  # how long the entry lives; 0 = not cacheable
        self.stored = stored
        self.tag: Tagged | None = None
        self.addr_base = 0  # the smallest address TTL at age 0 (tagged entries)
        self.origin: object = None  # the upstream set that answered (see forwarder)
        self.owner = b""  # the client charged for it (clients.charge_key); b"": nobody

    @property
    def expires(self) -> float:
        return self.stored + self.ttl

    def kill(self) -> None:
        """Evicted or replaced: it expired long ago."""
        self.stored, self.ttl = -1.0, 0

    def addr_ttl(self, el: int) -> int:
        """The smallest TTL of the chain's address records as handed out at age `el`."""
        left = self.addr_base - el
        return left if left > 0 else 0

    def tail(self, el: int) -> bytes:
        """Everything after the question, TTLs as handed out at age `el` whole seconds."""
        buf = bytearray(self.wire)
        at = self.ttl_at
        for (offset,) in struct.iter_unpack("!H", at):
            left = _TTL.unpack_from(buf, offset)[0] - el
            _TTL.pack_into(buf, offset, left if left > 0 else 0)
        return bytes(buf[self.qend :])

    def reply(self, data: bytes, qend: int, edns: bool, limit: int, now: float) -> bytes:
        """The answer to the query `data` (whose question ends at `qend`) at time `now`, cut
        to a minimal TC answer when it is bigger than `limit`."""
        template = self.wire
        b2 = (template[2] & 0xFE) | (data[2] & 1)
        opt = _OPT[self.key[-1] & wire.DO_BIT != 0] if edns else b""
        ar = ((template[10] << 8) | template[11]) + (1 if edns else 0)
        head = bytes((b2, template[3])) + template[4:10] + bytes((ar >> 8, ar & 0xFF))
        tail = self.tail(int(now - self.stored)) if self.ttl_at else template[self.qend :]
        if 12 + (qend - 12) + len(tail) + len(opt) > limit:
            return data[:2] + wire.truncated_header(head, edns) + data[12:qend] + opt
        return data[:2] + head + data[12:qend] + tail + opt

    def chain(self) -> Chain:
        """The chain and addresses, read again from the stored bytes (a reload re-tags)."""
        return chain_of(self.wire, replies.scan_reply(self.wire))


def chain_of(data: bytes, layout: replies.Layout, cap: int = 2**31) -> Chain:
    """The chain of a reply `layout` describes; address TTLs capped at `cap`."""
    names, addresses = replies.chain_of(data, layout, wire.read_name(data, 12))
    return _chain(names, addresses, cap)


def _chain(names: list[str], addresses: list[tuple[bytes, int]], cap: int) -> Chain:
    packed = bytearray()
    seen: set[bytes] = set()
    for address, _ttl in addresses:
        if address not in seen:
            seen.add(address)
            if len(seen) <= MAX_ADDRESSES:
                packed.append(len(address))
                packed += address
    capped = max(0, len(seen) - MAX_ADDRESSES)
    smallest = min((ttl for _address, ttl in addresses), default=0)
    return Chain(names, bytes(packed), smallest if smallest < cap else cap, capped)


def build_entry(
    key: bytes,
    data: bytes,
    layout: replies.Layout,
    now: float,
    max_ttl: int,
    max_negative_ttl: int,
) -> tuple[Entry, Chain]:
    """An entry from an upstream reply `data` that `replies.scan_reply` walked into `layout`,
    and the chain for tagging it.

    Raises WireError when the OPT record cannot be cut out. The entry's `ttl` is 0 when the
    reply must not be cached (the caller still answers from it).
    """
    template, offsets = replies.without_opt(data, layout)
    rcode = layout.rcode
    ttls = layout.ttls
    n_answers = layout.answer_ttls
    names, addresses = replies.chain_of(data, layout, wire.read_name(data, 12))
    ttl, cap = 0, max_ttl
    if rcode == wire.NOERROR and _answers(data, layout, names):
        ttl = min(min(ttls[:n_answers]), max_ttl)
    elif rcode == wire.NOERROR or rcode == wire.NXDOMAIN:
        # Negative, wholly or at the end of a CNAME chain: cached for the SOA's negative TTL
        # (RFC 2308 5), and not at all without an SOA.
        soa = layout.soa
        if soa is not None:
            ttl = min(ttls[:n_answers]) if n_answers else max_ttl
            ttl = cap = min(ttl, soa[0], soa[1], max_negative_ttl, max_ttl)
    buf = bytearray(template)
    flags = ((buf[2] << 8) | buf[3]) & ~(wire.AA | wire.TC) | wire.RA
    buf[2:4] = bytes((flags >> 8, flags & 0xFF))
    for at, base in zip(offsets, ttls, strict=True):
        _TTL.pack_into(buf, at, base if base < cap else cap)
    packed_offsets = shared_offsets(struct.pack(_OFFSETS.format(len(offsets)), *offsets))
    entry = Entry(key, bytes(buf), packed_offsets, layout.qend, ttl, now)
    return entry, _chain(names, addresses, cap)


def _answers(data: bytes, layout: replies.Layout, chain: list[str]) -> bool:
    """True when the answer section holds a record of the asked type (any type for ANY)
    owned by a name on the CNAME chain from the query name: a positive answer."""
    qend = layout.qend
    qtype = (data[qend - 4] << 8) | data[qend - 3]
    names = set(chain)
    for rec in layout.answers:
        if rec.owner in names and (rec.rtype == qtype or qtype == wire.T_ANY):
            return True
    return False


class _Share:
    """What a client is charged for: its entries, least recently used first while the cache is
    shared (else a hit does not pay for their order), and their bytes."""

    __slots__ = ("entries", "size")

    def __init__(self) -> None:
        # Not a dict: its oldest key is found past all keys deleted before it (3 us a time).
        self.entries: OrderedDict[bytes, Entry] = OrderedDict()
        self.size = 0


class Cache:
    """Entries by key (folded name, type, class, DO, CD), least recently used evicted first
    when there are more than `max_entries` of them or their answers take more than
    `max_bytes`; a client's own first when it holds `per_client` of them or `per_client_bytes`
    (see the module docstring)."""

    def __init__(self, max_entries: int, client_share: float = 1.0) -> None:
        self.bytes = 0  # the answers' bytes (Entry.wire) held
        self._entries: OrderedDict[bytes, Entry] = OrderedDict()
        self._owned: dict[bytes, _Share] = {}  # by owner
        self.evicted = 0
        self.client_evicted = 0
        self._bound(max_entries, client_share)

    def _bound(self, max_entries: int, client_share: float) -> None:
        self.max_entries = max_entries
        self.max_bytes = max_entries * ENTRY_BYTES
        self.per_client = max(1, int(max_entries * client_share))
        self.shared = self.per_client < max_entries  # False: one client may fill it all
        # At least per_client answers of the largest size a UDP client gets.
        share_bytes = max(int(self.max_bytes * client_share), self.per_client * ENTRY_BYTES)
        self.per_client_bytes = share_bytes if self.shared else self.max_bytes

    def __len__(self) -> int:
        return len(self._entries)

    def __iter__(self) -> Iterator[Entry]:
        return iter(list(self._entries.values()))

    def owned(self, owner: bytes) -> int:
        """How many entries `owner` is charged for."""
        share = self._owned.get(owner)
        return 0 if share is None else len(share.entries)

    def owned_bytes(self, owner: bytes) -> int:
        """The bytes of the answers `owner` is charged for."""
        share = self._owned.get(owner)
        return 0 if share is None else share.size

    def get(self, key: bytes, now: float) -> Entry | None:
        entry = self._entries.get(key)
        if entry is None:
            return None
        if now >= entry.stored + entry.ttl:
            del self._entries[key]
            self._forget(entry)
            return None
        self._entries.move_to_end(key)
        owner = entry.owner
        if owner and self.shared:  # its client's least recently used go first too
            self._owned[owner].entries.move_to_end(key)
        return entry

    def put(self, entry: Entry) -> None:
        entries = self._entries
        old = entries.get(entry.key)
        if old is entry:
            return
        if old is not None:
            del entries[entry.key]
            self._forget(old)
        size = len(entry.wire)
        owner = entry.owner
        if size > (self.per_client_bytes if owner else self.max_bytes):
            return  # not kept (nor killed: the caller still answers from it)
        if owner:
            if self.shared:  # a share of it all: the client's own least recently used go
                self._trim(owner, self.per_client - 1, self.per_client_bytes - size)
            share = self._owned.get(owner)
            if share is None:
                share = self._owned[owner] = _Share()
            share.entries[entry.key] = entry
            share.size += size
        entries[entry.key] = entry
        self.bytes += size
        self._shrink()

    def drop(self, entry: Entry) -> None:
        if self._entries.get(entry.key) is entry:
            del self._entries[entry.key]
            self._forget(entry)
        entry.kill()

    def resize(self, max_entries: int, client_share: float = 1.0) -> None:
        self._bound(max_entries, client_share)
        if self.shared:  # first: the clients past their share make room, not the others
            for owner in list(self._owned):
                self._trim(owner, self.per_client, self.per_client_bytes)
        self._shrink()

    def _trim(self, owner: bytes, count: int, size: int) -> None:
        """Evict `owner`'s least recently used until it holds at most `count` entries of at
        most `size` bytes."""
        share = self._owned.get(owner)
        while share is not None and (len(share.entries) > count or share.size > size):
            self._evict(next(iter(share.entries.values())))
            self.client_evicted += 1
            share = self._owned.get(owner)  # gone with its last entry

    def _shrink(self) -> None:
        entries = self._entries
        while len(entries) > self.max_entries or self.bytes > self.max_bytes:
            _key, old = entries.popitem(last=False)
            self._forget(old)
            self.evicted += 1

    def _evict(self, entry: Entry) -> None:
        del self._entries[entry.key]
        self._forget(entry)

    def _forget(self, entry: Entry) -> None:
        """`entry` has left `_entries`: its bytes and its owner's charge go with it."""
        size = len(entry.wire)
        self.bytes -= size
        owner = entry.owner
        if owner:
            share = self._owned[owner]
            del share.entries[entry.key]
            share.size -= size
            if not share.entries:
                del self._owned[owner]
        entry.kill()

    def clear(self) -> None:
        for entry in self._entries.values():
            entry.kill()
        self._entries.clear()
        self._owned.clear()
        self.bytes = 0
