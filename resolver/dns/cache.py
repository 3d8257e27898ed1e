"""The answer cache: reply bytes with the offsets of their TTL fields, LRU-bounded.

An `Entry` is built once, on the miss path, from an upstream reply that `wire.scan_reply`
walked. It keeps the reply in two variants (without OPT, for clients without EDNS; with our
OPT, for EDNS clients) so that neither kind of client causes a second upstream query. A hit
never parses: the TTL fields are re-patched at most once per second of age, then the reply is
the client's id, the stored header (RD as the client set it), the client's own question bytes
(its letter case) and the stored tail. The stored header is ours, not the upstream's: AA and
TC cleared (a forwarder is no authority, and a truncated reply is never stored), RA set.

Positive answers live for the smallest answer TTL, capped at `max_ttl`; an SOA in their
authority section changes nothing. Negative answers (NXDOMAIN, or NOERROR whose CNAME chain
does not end in a record of the asked type: NODATA) live for min(answer TTLs, SOA TTL, SOA
MINIMUM, max_negative_ttl), and no TTL handed out from them is higher (RFC 2308 section 5);
without an SOA they are not cached. SERVFAIL and other errors, and TTL 0, are never cached.
"""

from __future__ import annotations

import struct
from collections import OrderedDict
from collections.abc import Iterable, Iterator
from typing import Protocol

from policy.model import Match
from resolver.dns import wire
from resolver.dns.hook import Tagged

_pack_ttl = struct.Struct("!I").pack_into


class NameMatcher(Protocol):
    """What the DNS path needs of the policy (policy.matcher.Matcher provides it)."""

    def match_any(self, names: Iterable[str]) -> tuple[str, Match] | None: ...


class Entry:
    """One cached answer. `expires` <= now means dead (evicted entries get -1)."""

    __slots__ = (
        "addr_base",
        "addresses",
        "bases",
        "chain",
        "do",
        "edns",
        "el",
        "expires",
        "hdr",
        "key",
        "offsets",
        "opt",
        "plain",
        "qend",
        "rcode",
        "result",
        "size",
        "stored",
        "tag",
        "tc",
        "template",
        "ttl",
    )

    def __init__(
        self,
        key: bytes,
        template: bytes,
        offsets: list[int],
        bases: list[int],
        qend: int,
        do: bool,
        rcode: int,
        ttl: int,
        stored: float,
    ) -> None:
        self.key = key
        self.template = template  # the reply without OPT, TTLs as received (capped)
        self.offsets = offsets
        self.bases = bases  # the TTL each field has at age 0
        self.qend = qend
        self.do = do
        self.rcode = rcode
        self.result = wire.RCODE_NAMES.get(rcode, "other")
        self.ttl = ttl  # how long the entry lives; 0 = not cacheable
        self.stored = stored
        self.expires = stored + ttl
        self.opt = wire.opt_record(do)
        flags = (template[2] << 8 | template[3]) & ~(wire.AA | wire.TC) | wire.RA
        head = struct.pack("!H", flags) + template[4:12]
        ar = (head[8] << 8) | head[9]
        edns_head = head[:8] + struct.pack("!H", ar + 1)
        # Index: 2 * edns + rd (rd = the client's RD bit, data[2] & 1).
        self.hdr = (
            bytes((head[0] & 0xFE,)) + head[1:],
            bytes((head[0] | 1,)) + head[1:],
            bytes((edns_head[0] & 0xFE,)) + edns_head[1:],
            bytes((edns_head[0] | 1,)) + edns_head[1:],
        )
        self.tc: tuple[bytes, ...] | None = None  # the TC headers, made when first needed
        self.size = (len(template), len(template) + len(self.opt))
        self.el = -1
        self.plain = b""
        self.edns = b""
        self.patch(0)
        self.chain: tuple[str, ...] = ()
        self.addresses: tuple[str, ...] = ()
        self.addr_base = 0
        self.tag: Tagged | None = None

    def patch(self, el: int) -> None:
        """Re-write every TTL field for an age of `el` whole seconds (0 at the least)."""
        buf = bytearray(self.template)
        for at, base in zip(self.offsets, self.bases, strict=True):
            left = base - el
            _pack_ttl(buf, at, left if left > 0 else 0)
        tail = bytes(buf[self.qend :])
        self.plain = tail
        self.edns = tail + self.opt
        self.el = el

    def addr_ttl(self, el: int) -> int:
        """The smallest TTL of the chain's address records as handed out at age `el`."""
        left = self.addr_base - el
        return left if left > 0 else 0

    def retag(self, matcher: NameMatcher) -> None:
        # A label holding a literal dot reads as "a\\.b"; it is no host name and must not
        # match as if the dot separated labels.
        names = [n for n in self.chain if "\\" not in n]
        found = matcher.match_any(names) if names else None
        if found is None:
            self.tag = None
        else:
            self.tag = Tagged(self.chain[0], found[0], found[1], self.addresses)

    def reply(self, data: bytes, qend: int, edns: bool, limit: int, now: float) -> bytes:
        """The answer to the query `data` (whose question ends at `qend`): the handler inlines
        this on its hot path; kept here for the TCP path and the tests."""
        el = int(now - self.stored)
        if el != self.el:
            self.patch(el)
        i = 2 * edns + (data[2] & 1)
        if self.size[edns] > limit:
            tc = self.tc
            if tc is None:
                tc = self.tc = tuple(
                    wire.truncated_header(h, k >= 2) for k, h in enumerate(self.hdr)
                )
            return data[:2] + tc[i] + data[12:qend] + (self.opt if edns else b"")
        return data[:2] + self.hdr[i] + data[12:qend] + (self.edns if edns else self.plain)


def build_entry(
    key: bytes,
    data: bytes,
    layout: wire.Layout,
    now: float,
    do: bool,
    max_ttl: int,
    max_negative_ttl: int,
    matcher: NameMatcher,
) -> Entry:
    """An entry from an upstream reply `data` that `wire.scan_reply` walked into `layout`.

    Raises WireError when the OPT record cannot be cut out. The entry's `ttl` is 0 when the
    reply must not be cached (the caller still answers from it).
    """
    template, offsets = wire.without_opt(data, layout)
    rcode = layout.rcode
    ttls = layout.ttls
    n_answers = layout.answer_ttls
    qname = wire.read_name(data, 12)
    chain, addresses = wire.chain_of(data, layout, qname)
    ttl, cap = 0, max_ttl
    if rcode == wire.NOERROR and _answers(data, layout, chain):
        ttl = min(min(ttls[:n_answers]), max_ttl)
    elif rcode == wire.NOERROR or rcode == wire.NXDOMAIN:
        # Negative, wholly or at the end of a CNAME chain: cached for the SOA's negative TTL
        # (RFC 2308 5), and not at all without an SOA.
        soa = layout.soa
        if soa is not None:
            ttl = min(ttls[:n_answers]) if n_answers else max_ttl
            ttl = cap = min(ttl, soa[0], soa[1], max_negative_ttl, max_ttl)
    bases = [t if t < cap else cap for t in ttls]
    entry = Entry(key, template, offsets, bases, layout.qend, do, rcode, ttl, now)
    entry.chain = tuple(chain)
    seen: dict[str, None] = {}
    for address, _ttl in addresses:
        seen.setdefault(address, None)
    entry.addresses = tuple(seen)
    entry.addr_base = min((t if t < cap else cap for _a, t in addresses), default=0)
    entry.retag(matcher)
    return entry


def _answers(data: bytes, layout: wire.Layout, chain: list[str]) -> bool:
    """True when the answer section holds a record of the asked type (any type for ANY)
    owned by a name on the CNAME chain from the query name: a positive answer."""
    qend = layout.qend
    qtype = (data[qend - 4] << 8) | data[qend - 3]
    names = set(chain)
    for rec in layout.answers:
        if rec.owner in names and (rec.rtype == qtype or qtype == wire.T_ANY):
            return True
    return False


class Cache:
    """Entries by key (folded name, type, class, DO, CD), least recently used evicted first."""

    def __init__(self, max_entries: int) -> None:
        self.max_entries = max_entries
        self._entries: OrderedDict[bytes, Entry] = OrderedDict()
        self.evicted = 0

    def __len__(self) -> int:
        return len(self._entries)

    def __iter__(self) -> Iterator[Entry]:
        return iter(list(self._entries.values()))

    def get(self, key: bytes, now: float) -> Entry | None:
        entry = self._entries.get(key)
        if entry is None:
            return None
        if now >= entry.expires:
            del self._entries[key]
            entry.expires = -1.0
            return None
        self._entries.move_to_end(key)
        return entry

    def touch(self, key: bytes) -> None:
        """Mark as recently used (a hit that found the entry another way)."""
        entries = self._entries
        if key in entries:
            entries.move_to_end(key)

    def put(self, entry: Entry) -> None:
        entries = self._entries
        old = entries.pop(entry.key, None)
        if old is not None:
            old.expires = -1.0
        entries[entry.key] = entry
        self._shrink()

    def resize(self, max_entries: int) -> None:
        self.max_entries = max_entries
        self._shrink()

    def _shrink(self) -> None:
        entries = self._entries
        while len(entries) > self.max_entries:
            _key, old = entries.popitem(last=False)
            old.expires = -1.0
            self.evicted += 1

    def clear(self) -> None:
        for entry in self._entries.values():
            entry.expires = -1.0
        self._entries.clear()

    def retag(self, matcher: NameMatcher) -> int:
        """Recompute every entry's tag against a new policy (no parsing); returns how many
        entries are tagged afterwards."""
        tagged = 0
        for entry in self._entries.values():
            entry.retag(matcher)
            tagged += entry.tag is not None
        return tagged
