"""The answer cache's entries: one copy of each reply's bytes with the offsets of its TTL
fields (the store that bounds them, LRU and per client: store.py).

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
from dataclasses import dataclass
from typing import Final, TypeVar

from resolver.dns import chains, messages, replies, wire
from resolver.hooks import Tagged

_TTL: Final = struct.Struct("!I")
_U16: Final = struct.Struct("!H")
_OPT: Final = (messages.opt_record(False), messages.opt_record(True))  # by the DO bit of the key
T = TypeVar("T")
_SHARED: Final[dict[int, int]] = {}
_SHARED_OFFSETS: Final[dict[bytes, bytes]] = {}
SHARED_MAX: Final = 4096
SHARED_OFFSETS_MAX: Final = 32  # bytes: the TTLs of 16 records
ENTRY_BYTES: Final = 1232  # bytes of answers the cache may hold per entry of max_entries
# Addresses of one answer that tagging sees (and the breakout routes): Microsoft 365's answers
# carry fewer than 20; a 64 KB answer could carry 4,000 and take a twelfth of the holds.
MAX_ADDRESSES: Final = 64


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


@dataclass(slots=True, init=False)
class Chain:
    """What tagging reads of an answer: the CNAME chain from the query name, and its A/AAAA
    addresses (packed, see hooks.pack_addresses: the first MAX_ADDRESSES distinct ones; how
    many more there were is `capped`) with the smallest of their TTLs."""

    names: list[str]
    addresses: bytes
    addr_ttl: int
    capped: int

    # Written out (init=False): a dataclass's own __init__ stays Python code when compiled.
    def __init__(self, names: list[str], addresses: bytes, addr_ttl: int, capped: int = 0) -> None:
        self.names = names
        self.addresses = addresses
        self.addr_ttl = addr_ttl
        self.capped = capped


class Entry:
    """One cached answer. `expires` <= now means dead (evicted entries get -1)."""

    __slots__ = (
        "addr_base",
        "key",
        "newer",
        "older",
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
        # Its neighbours in its owner's share, least recently used first (store.py).
        self.older: Entry | None = None
        self.newer: Entry | None = None

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
        stored = self.wire
        buf = bytearray(stored)
        at = self.ttl_at
        for i in range(0, len(at), 2):
            # Byte by byte rather than with struct: compiled, the values stay native ints.
            offset = (at[i] << 8) | at[i + 1]
            base = (
                (stored[offset] << 24)
                | (stored[offset + 1] << 16)
                | (stored[offset + 2] << 8)
                | stored[offset + 3]
            )
            _TTL.pack_into(buf, offset, base - el if base > el else 0)
        return bytes(buf[self.qend :])

    def reply(self, data: bytes, qend: int, edns: bool, limit: int, now: float) -> bytes:
        """The answer to the query `data` (whose question ends at `qend`) at time `now`, cut
        to a minimal TC answer when it is bigger than `limit`."""
        template = self.wire
        b2 = (template[2] & 0xFE) | (data[2] & 1)
        opt = _OPT[self.key[-1] & wire.DO_BIT != 0] if edns else b""
        ar = ((template[10] << 8) | template[11]) + (1 if edns else 0)
        head = bytes((b2, template[3])) + template[4:10] + bytes((ar >> 8, ar & 0xFF))
        el = int(now - self.stored)
        # At age 0 the stored TTLs are what is handed out (a miss's own reply): no rewrite.
        tail = self.tail(el) if self.ttl_at and el > 0 else template[self.qend :]
        if 12 + (qend - 12) + len(tail) + len(opt) > limit:
            return data[:2] + messages.truncated_header(head, edns) + data[12:qend] + opt
        return data[:2] + head + data[12:qend] + tail + opt

    def chain(self) -> Chain:
        """The chain and addresses, read again from the stored bytes (a reload re-tags)."""
        return chain_of(self.wire, replies.scan_reply(self.wire))


def chain_of(data: bytes, layout: replies.Layout, cap: int = 2**31) -> Chain:
    """The chain of a reply `layout` describes; address TTLs capped at `cap`."""
    names, addresses = chains.chain_of(data, layout, wire.read_name(data, 12))
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
    capped = len(seen) - MAX_ADDRESSES if len(seen) > MAX_ADDRESSES else 0
    smallest = addresses[0][1] if addresses else 0
    for _address, ttl in addresses:
        if ttl < smallest:
            smallest = ttl
    return Chain(names, bytes(packed), smallest if smallest < cap else cap, capped)


def build_entry(
    key: bytes,
    data: bytes,
    layout: replies.Layout,
    now: float,
    max_ttl: int,
    max_negative_ttl: int,
    qname: str | None = None,
) -> tuple[Entry, Chain]:
    """An entry from an upstream reply `data` that `replies.scan_reply` walked into `layout`,
    and the chain for tagging it. `qname` is the reply's question name when the caller has
    read it already (`wire.read_name`: the name of the question it asked).

    Raises WireError when the OPT record cannot be cut out. The entry's `ttl` is 0 when the
    reply must not be cached (the caller still answers from it).
    """
    buf, offsets = replies.without_opt(data, layout)
    rcode = layout.rcode
    ttls = layout.ttls
    n_answers = layout.answer_ttls
    start = wire.read_name(data, 12) if qname is None else qname
    names, addresses = chains.chain_of(data, layout, start)
    ttl, cap = 0, max_ttl
    if rcode == wire.NOERROR and _answers(data, layout, names):
        ttl = _smallest(ttls, n_answers, max_ttl)
    elif rcode == wire.NOERROR or rcode == wire.NXDOMAIN:
        # Negative, wholly or at the end of a CNAME chain: cached for the SOA's negative TTL
        # (RFC 2308 5), and not at all without an SOA.
        soa = layout.soa
        if soa is not None:
            ttl = cap = _smallest(ttls, n_answers, min(soa[0], soa[1], max_negative_ttl, max_ttl))
    flags = ((buf[2] << 8) | buf[3]) & ~(wire.AA | wire.TC) | wire.RA
    buf[2] = flags >> 8
    buf[3] = flags & 0xFF
    count = len(offsets)
    if count != len(ttls):
        raise ValueError(f"{count} TTL offsets for {len(ttls)} TTLs")
    packed = bytearray(2 * count)
    for i in range(count):
        at, base = offsets[i], ttls[i]
        _TTL.pack_into(buf, at, base if base < cap else cap)
        _U16.pack_into(packed, 2 * i, at)
    entry = Entry(key, bytes(buf), shared_offsets(bytes(packed)), layout.qend, ttl, now)
    return entry, _chain(names, addresses, cap)


def _smallest(ttls: list[int], n: int, limit: int) -> int:
    """The smallest of the first `n` TTLs and `limit`."""
    least = limit
    for i in range(n):
        if ttls[i] < least:
            least = ttls[i]
    return least


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
