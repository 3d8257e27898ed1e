"""Upstream replies as bytes: accepted or dropped, walked once, cut, their chains followed.

`accept_reply` decides whether a datagram is the reply to our query (stricter than dnspython:
source, id, QR, opcode and question must all match; the caller checks the source).
`scan_reply` walks a reply once: it finds every TTL field (so a cached reply can be re-served
by patching those four-byte fields), every compression pointer (so the OPT record can be cut
out), the answer records, and the SOA that bounds negative caching. `chains.py` follows the
CNAME chain from the query name and collects its A and AAAA addresses.
"""

from __future__ import annotations

import struct
from bisect import bisect_right
from dataclasses import dataclass
from typing import Final

from resolver.dns.wire import (
    FORMERR,
    NOTIMP,
    T_OPT,
    T_SOA,
    TC,
    WireError,
    read_name,
    skip_name,
)

_U16: Final = struct.Struct("!H")
_U32: Final = struct.Struct("!I")

# RDATA layouts that hold (compressible) domain names: type -> (offset of the first name, count).
# RFC 3597 section 4 fixes this list; names in other types are never compressed.
_RDATA_NAMES: Final[dict[int, tuple[int, int]]] = {
    2: (0, 1),  # NS
    3: (0, 1),  # MD
    4: (0, 1),  # MF
    5: (0, 1),  # CNAME
    6: (0, 2),  # SOA: mname, rname
    7: (0, 1),  # MB
    8: (0, 1),  # MG
    9: (0, 1),  # MR
    12: (0, 1),  # PTR
    14: (0, 2),  # MINFO
    15: (2, 1),  # MX: preference, exchange
}


def _header_matches(data: bytes, qid: int) -> bool:
    """A header long enough, our id, QR set, opcode QUERY."""
    return (
        len(data) >= 12
        and data[0] == qid >> 8
        and data[1] == qid & 0xFF
        and data[2] & 0x80 != 0
        and not data[2] & 0x78
    )


def _question_matches(data: bytes, question: bytes) -> bool:
    """One question, `question` (the name compared without regard to case)."""
    qend = 12 + len(question)
    if len(data) < qend or data[4] or data[5] != 1:
        return False
    return (
        data[12 : qend - 4].lower() == question[:-4].lower()
        and data[qend - 4 : qend] == question[-4:]
    )


def accept_reply(data: bytes, qid: int, question: bytes) -> Layout | None:
    """The layout of an upstream reply to our query `qid` for `question`; None when it is not
    a reply to that query (to be dropped); WireError when it is, but malformed.

    - FORMERR or NOTIMP with QDCOUNT 0 (what servers that reject EDNS or the query often
      send): accepted on id, QR and opcode alone, nothing else is read from it;
    - otherwise the id, QR, opcode QUERY and the one question (name compared without regard
      to case, type and class exactly) must match, as dnspython requires;
    - TC set: accepted on the header and question alone (the layout says `truncated`), since
      a server may cut a truncated reply anywhere, even inside a record (RFC 2181 9), and
      the answer is fetched again over TCP anyway;
    - else walked by `scan_reply`, bytes after the last record tolerated: the layout's `end`
      says where the message ends (like Unbound; the caller cuts and counts them).
    """
    if not _header_matches(data, qid):
        return None
    rcode = data[3] & 0xF
    if not (data[4] or data[5]):
        if rcode in (FORMERR, NOTIMP):
            return Layout(rcode=rcode, qend=12, end=len(data))
        return None
    if not _question_matches(data, question):
        return None
    if data[2] & 0x02:
        return Layout(rcode=rcode, qend=12 + len(question), end=len(data), truncated=True)
    layout = scan_reply(data, trailing=True)
    if layout.end < len(data):
        # A name read through a pointer can run on into the bytes past the last record: walk
        # what will be kept once more (rare: only replies with trailing bytes pay for it).
        return scan_reply(data[: layout.end])
    return layout


# -- replies from upstreams -------------------------------------------------------------------


@dataclass(slots=True, init=False)
class Record:
    """An answer-section record: owner (lower case, no trailing dot), type, TTL, RDATA span."""

    owner: str
    rtype: int
    ttl: int
    rdata: int  # offset of the RDATA
    rdlen: int

    # The __init__s here are written out (init=False): compiled, a dataclass's own __init__ stays
    # Python code, run by the interpreter for every record and reply (4x the cost).
    def __init__(self, owner: str, rtype: int, ttl: int, rdata: int, rdlen: int) -> None:
        self.owner = owner
        self.rtype = rtype
        self.ttl = ttl
        self.rdata = rdata
        self.rdlen = rdlen


@dataclass(slots=True, init=False)
class Layout:
    """What `scan_reply` found in a reply; offsets are into the reply as received."""

    rcode: int
    qend: int
    ttl_offsets: list[int]  # every TTL field except the OPT's
    ttls: list[int]  # their values, same order
    answer_ttls: int  # how many of the TTL fields belong to the answer section
    pointers: list[int]  # offsets of every compression pointer
    opt: tuple[int, int] | None  # [start, end) of the OPT record
    answers: list[Record]
    soa: tuple[int, int] | None  # (TTL, MINIMUM) of the first SOA in the authority section
    truncated: bool
    end: int  # where the message ends: past its last record

    def __init__(
        self, rcode: int, qend: int, pointers: list[int] | None = None, truncated: bool = False,
        end: int = 0,
    ) -> None:  # fmt: skip
        self.rcode = rcode
        self.qend = qend
        self.ttl_offsets = []
        self.ttls = []
        self.answer_ttls = 0
        self.pointers = [] if pointers is None else pointers
        self.opt = None
        self.answers = []
        self.soa = None
        self.truncated = truncated
        self.end = end


def scan_reply(data: bytes, records: bool = True, trailing: bool = False) -> Layout:
    """Walk a whole reply once; raise WireError for anything malformed (a compression loop or
    forward pointer, a truncated record, a second or non-root OPT, trailing bytes unless
    `trailing` allows them: then `end` says where the last record ends).

    A TTL with the top bit set counts as 0 (RFC 2181 8), in `ttls`, the answers and the SOA.
    With `records` false the answer records are counted but not decoded (a check only)."""
    n = len(data)
    if n < 12:
        raise WireError("shorter than a DNS header")
    # Read byte by byte rather than with struct: compiled, its values would be objects, and
    # every comparison and sum below a generic one.
    flags = (data[2] << 8) | data[3]
    qd = (data[4] << 8) | data[5]
    an = (data[6] << 8) | data[7]
    ns = (data[8] << 8) | data[9]
    records_count = an + ns + ((data[10] << 8) | data[11])
    pointers: list[int] = []
    pos = 12
    for _ in range(qd):
        pos = skip_name(data, pos, pointers) + 4
        if pos > n:
            raise WireError("question truncated")
    layout = Layout(rcode=flags & 0xF, qend=pos, pointers=pointers, truncated=bool(flags & TC))
    offsets, ttls, answers = layout.ttl_offsets, layout.ttls, layout.answers
    qname: str | None = None
    for index in range(records_count):
        owner = pos
        pos = skip_name(data, pos, pointers)
        if pos + 10 > n:
            raise WireError("record truncated")
        rtype = (data[pos] << 8) | data[pos + 1]
        ttl = (data[pos + 4] << 24) | (data[pos + 5] << 16) | (data[pos + 6] << 8) | data[pos + 7]
        rdlen = (data[pos + 8] << 8) | data[pos + 9]
        rdata = pos + 10
        end = rdata + rdlen
        if end > n:
            raise WireError("record data truncated")
        if rtype == T_OPT:
            if index < an + ns or layout.opt is not None or pos != owner + 1:
                raise WireError("misplaced, repeated or non-root OPT record")
            layout.opt = (owner, end)
            if data[rdata - 6]:
                layout.rcode = data[rdata - 6] << 4 | (flags & 0xF)
        else:
            if ttl & 0x80000000:
                ttl = 0
            offsets.append(pos + 4)
            ttls.append(ttl)
            names = _RDATA_NAMES.get(rtype)
            if names is not None:
                at = rdata + names[0]
                for _ in range(names[1]):
                    at = skip_name(data, at, pointers)
                    if at > end:
                        raise WireError("name runs past its record")
            if index < an:
                if records:
                    if data[owner] == 0xC0 and data[owner + 1] == 12:  # the question's name
                        if qname is None:  # most answers' owner: read once
                            qname = read_name(data, 12)
                        name = qname
                    else:
                        name = read_name(data, owner)
                    answers.append(Record(name, rtype, ttl, rdata, rdlen))
            elif index < an + ns and rtype == T_SOA and layout.soa is None and rdlen >= 22:
                minimum: int = _U32.unpack_from(data, end - 4)[0]
                layout.soa = (ttl, 0 if minimum & 0x80000000 else minimum)
        pos = end
    if pos != n and not trailing:
        raise WireError("trailing bytes after the last record")
    if pointers and offsets:
        _check_pointed_names(data, pointers, offsets, None)
    layout.end = pos
    layout.answer_ttls = an if an < len(ttls) else len(ttls)
    return layout


def _check_pointed_names(
    data: bytes, pointers: list[int], offsets: list[int], opt: tuple[int, int] | None
) -> None:
    """WireError when a name read through a compression pointer would not stay the same name in
    what the cache keeps: it reads bytes of a TTL field at `offsets` (rewritten as the answer
    ages; scan_reply checks), or of the `opt` record (cut out; without_opt checks), or runs
    through a pointer behind that record which is not one of `pointers` (without_opt moves only
    those). Each label is looked at once, however many names share it."""
    first = offsets[0] if offsets else len(data)
    start, end = opt if opt is not None else (len(data), len(data))
    moved = set(pointers) if opt is not None else set()
    seen: set[int] = set()
    for at in pointers:
        pos = ((data[at] & 0x3F) << 8) | data[at + 1]
        while pos not in seen:
            seen.add(pos)
            length = data[pos]
            size = 2 if length & 0xC0 else length + 1
            if pos + size > first:
                i = bisect_right(offsets, pos + size - 1) - 1
                if i >= 0 and offsets[i] + 4 > pos:
                    raise WireError("a compressed name runs through a TTL field")
            if pos < end and pos + size > start:
                raise WireError("a compressed name runs through the OPT record")
            if length & 0xC0:
                target = ((length & 0x3F) << 8) | data[pos + 1]
                if pos >= end and target >= end and pos not in moved:
                    raise WireError("a compression pointer the OPT record's cut would not move")
                pos = target
            elif length:
                pos += size
            else:
                break


def without_opt(data: bytes, layout: Layout) -> tuple[bytearray, list[int]]:
    """The reply with its OPT record cut out (ARCOUNT one less), and its TTL offsets moved: a
    new buffer, for the caller to patch.

    Compression pointers after the cut that point past it are moved with it; one that points
    into the cut, or a name read through a pointer that runs into it, makes the reply unusable
    (WireError). That is checked on the pointers' names alone: the result is not walked again.
    """
    if layout.opt is None:
        return bytearray(data), list(layout.ttl_offsets)
    start, end = layout.opt
    _check_pointed_names(data, layout.pointers, [], layout.opt)
    cut = end - start
    out = bytearray(data)
    del out[start:end]
    for at in layout.pointers:
        if at < end:
            continue
        target = ((data[at] & 0x3F) << 8) | data[at + 1]
        if target >= end:
            target -= cut
        elif target >= start:
            raise WireError("compression pointer into the OPT record")
        _U16.pack_into(out, at - cut, 0xC000 | target)
    _U16.pack_into(out, 10, (out[10] << 8 | out[11]) - 1)  # ARCOUNT
    offsets = [at - cut if at > start else at for at in layout.ttl_offsets]
    return out, offsets
