"""DNS messages as bytes: the client's query, our upstream query, the upstream's reply.

Everything on the hot path works on wire bytes: a query is checked by `parse_query` (no
objects built), a reply is walked once by `scan_reply` when it arrives from upstream. The walk
finds every TTL field (so a cached reply can be re-served by patching those four-byte fields),
every compression pointer (so the OPT record can be cut out), the CNAME chain and the A/AAAA
addresses of the answer, and the SOA that bounds negative caching. It follows compression
pointers only backwards (and never into the header) and at most `MAX_HOPS` times, so loops
and forward references are rejected, never followed.

This is the only module of the package that may import dnslib; it does not need to, since the
walker below interprets only the few record types it must (CNAME, A, AAAA, SOA) and passes every
other record through untouched, DNSSEC records included.
"""

from __future__ import annotations

import socket
import struct
from dataclasses import dataclass, field

# Header flags and codes (RFC 1035 4.1.1, RFC 4035 3.2, RFC 6891 6.1.3).
QR = 0x8000
AA = 0x0400
TC = 0x0200
RD = 0x0100
RA = 0x0080
CD = 0x0010
DO = 0x8000  # in the OPT record's TTL field

NOERROR, FORMERR, SERVFAIL, NXDOMAIN, NOTIMP, REFUSED = 0, 1, 2, 3, 4, 5
BADVERS = 16

T_A, T_NS, T_CNAME, T_SOA, T_AAAA, T_OPT = 1, 2, 5, 6, 28, 41
T_IXFR, T_AXFR, T_ANY = 251, 252, 255

EDNS_SIZE = 1232  # what we advertise and the most we hand out over UDP (DNS flag day 2020)
PLAIN_SIZE = 512  # the limit for a client without EDNS (RFC 1035 4.2.1)
MAX_NAME = 255  # octets of a wire name, the root label's zero byte included (RFC 1035 3.1)
MAX_HOPS = 64  # compression pointers followed for one name
MAX_CHAIN = 16  # CNAMEs followed from the query name

RCODE_NAMES = {
    NOERROR: "noerror",
    FORMERR: "formerr",
    SERVFAIL: "servfail",
    NXDOMAIN: "nxdomain",
    NOTIMP: "notimp",
    REFUSED: "refused",
}

# RDATA layouts that hold (compressible) domain names: type -> (offset of the first name, count).
# RFC 3597 section 4 fixes this list; names in other types are never compressed.
_RDATA_NAMES: dict[int, tuple[int, int]] = {
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

_HEADER = struct.Struct("!HHHHHH")
_RR_FIXED = struct.Struct("!HHIH")  # type, class, ttl, rdlength
_U16 = struct.Struct("!H")
_U32 = struct.Struct("!I")


class WireError(ValueError):
    """A message that is not acceptable; `rcode` is what to answer, None means drop silently."""

    def __init__(self, reason: str, rcode: int | None = FORMERR, qend: int = 0) -> None:
        super().__init__(reason)
        self.rcode = rcode
        self.qend = qend  # end of a well-formed question (so it can be echoed), else 0
        self.edns = False
        self.do = False


# -- queries from clients ---------------------------------------------------------------------

# The result of parse_query, a plain tuple because it is built on every uncached query:
# (qend, qtype, flags) where qend is the offset just past the question and flags is a bit set:
EDNS = 1  # the client sent an OPT record
DO_BIT = 2  # ... with the DO bit
CD_BIT = 4  # the client set CD
ParsedQuery = tuple[int, int, int, int]  # qend, qtype, flags, client's UDP payload limit


def parse_query(data: bytes) -> ParsedQuery:
    """Check a query from a client. Returns (qend, qtype, flags, udp_limit); raises WireError.

    Drops (rcode None): shorter than a header, or QR set. NOTIMP: opcode other than QUERY.
    FORMERR: qdcount != 1, a bad or compressed question name, a name over 255 octets, a
    truncated message, trailing bytes, an OPT that is not in the additional section, not at the
    root, or not alone. BADVERS: EDNS version other than 0.

    An error to answer carries `edns` and `do` from the query's OPT record, found best effort,
    so that the error reply has an OPT too (RFC 6891 6.1.1).
    """
    try:
        return _parse_query(data)
    except WireError as err:
        if err.rcode is not None and not err.edns:
            err.edns, err.do = find_opt(data)
        raise


def _parse_query(data: bytes) -> ParsedQuery:
    n = len(data)
    if n < 12:
        raise WireError("shorter than a DNS header", None)
    b2 = data[2]
    if b2 & 0x80:
        raise WireError("QR set in a query", None)
    if b2 & 0x78:
        raise WireError("opcode is not QUERY", NOTIMP)
    if data[4] or data[5] != 1:
        raise WireError("qdcount is not 1")
    pos = 12
    while True:
        if pos >= n:
            raise WireError("question truncated")
        length = data[pos]
        if length == 0:
            pos += 1
            break
        if length & 0xC0:
            raise WireError("compressed or extended label in the question")
        pos += length + 1
        if pos - 11 > MAX_NAME:  # the labels so far and the root label's zero byte
            raise WireError("name longer than 255 octets")
    qend = pos + 4
    if qend > n:
        raise WireError("question truncated")
    qtype = (data[pos] << 8) | data[pos + 1]
    flags = CD_BIT if data[3] & 0x10 else 0
    if not (data[6] or data[7] or data[8] or data[9] or data[10]):
        ar = data[11]
        if ar == 0:
            if qend != n:
                raise WireError("trailing bytes after the question", FORMERR, qend)
            return qend, qtype, flags, PLAIN_SIZE
        if ar == 1 and n >= qend + 11 and data[qend] == 0 and data[qend + 1 : qend + 3] == b"\0)":
            if qend + 11 + ((data[qend + 9] << 8) | data[qend + 10]) != n:
                raise WireError("OPT record truncated or followed by bytes", FORMERR, qend)
            return _opt_query(data, qend, qend + 1, qtype, flags)
    return _general_query(data, qend, qtype, flags)


def _opt_query(data: bytes, qend: int, at: int, qtype: int, flags: int) -> ParsedQuery:
    """The OPT record whose type field starts at `at` (its root owner is at `at - 1`)."""
    size, _ext, version, ednsflags = struct.unpack_from("!HBBH", data, at + 2)
    flags |= EDNS
    if ednsflags & DO:
        flags |= DO_BIT
    if version != 0:
        err = WireError(f"EDNS version {version}", BADVERS, qend)
        err.edns, err.do = True, bool(ednsflags & DO)
        raise err
    limit = size if size > PLAIN_SIZE else PLAIN_SIZE
    return qend, qtype, flags, limit if limit < EDNS_SIZE else EDNS_SIZE


def _general_query(data: bytes, qend: int, qtype: int, flags: int) -> ParsedQuery:
    """A query with records after the question: walk them all, find at most one OPT."""
    an, ns, ar = struct.unpack_from("!HHH", data, 6)
    n = len(data)
    pos = qend
    opt_at = -1
    for index in range(an + ns + ar):
        owner = pos
        try:
            pos = _skip_name(data, pos, None)
        except WireError as err:
            raise WireError(str(err), FORMERR, qend) from None
        if pos + 10 > n:
            raise WireError("record truncated", FORMERR, qend)
        rtype = (data[pos] << 8) | data[pos + 1]
        rdlen = (data[pos + 8] << 8) | data[pos + 9]
        if rtype == T_OPT:
            if index < an + ns:
                raise WireError("OPT outside the additional section", FORMERR, qend)
            if opt_at >= 0:
                raise WireError("more than one OPT record", FORMERR, qend)
            if pos != owner + 1:
                raise WireError("OPT owner is not the root", FORMERR, qend)
            opt_at = pos
        pos += 10 + rdlen
        if pos > n:
            raise WireError("record data truncated", FORMERR, qend)
    if pos != n:
        raise WireError("trailing bytes after the last record", FORMERR, qend)
    if opt_at < 0:
        return qend, qtype, flags, PLAIN_SIZE
    return _opt_query(data, qend, opt_at, qtype, flags)


def find_opt(data: bytes) -> tuple[bool, bool]:
    """(edns, do) of a query that `parse_query` rejected: its first OPT record, looked for best
    effort (records are walked until the OPT's fixed part is found or the walk fails)."""
    n = len(data)
    if n < 12:
        return False, False
    qd, an, ns, ar = struct.unpack_from("!HHHH", data, 4)
    pos = 12
    try:
        for _ in range(qd):
            pos = _skip_name(data, pos, None) + 4
        for index in range(an + ns + ar):
            owner = pos
            pos = _skip_name(data, pos, None)
            if pos + 10 > n:
                break
            if index >= an + ns and pos == owner + 1 and data[pos : pos + 2] == b"\0)":
                return True, bool(data[pos + 6] & 0x80)
            pos += 10 + ((data[pos + 8] << 8) | data[pos + 9])
    except WireError:
        return False, False  # a name that does not walk: no OPT can be found past it
    return False, False


def question_key(data: bytes, qend: int, flags: int) -> bytes:
    """Cache and coalescing key: the name folded to lower case, type, class, DO and CD.

    Folding the wire bytes is safe because label lengths are at most 63, never an ASCII letter;
    the type and class bytes are kept as they are (0x41 is a type, not an 'A').
    """
    return data[12 : qend - 4].lower() + data[qend - 4 : qend] + b"%c" % (flags & (DO_BIT | CD_BIT))


def error_reply(data: bytes, rcode: int, qend: int, edns: bool, do: bool, ra: bool = True) -> bytes:
    """An answer with no records: the query's id, opcode, RD and CD, RA (we offer recursion;
    `ra` false for a client the ACL refuses), its question when `qend` says it is
    well-formed, and our OPT (carrying the upper rcode bits) for an EDNS client."""
    flags = QR | ((data[2] << 8 | data[3]) & (0x7800 | RD | CD)) | (rcode & 0xF)
    if ra:
        flags |= RA
    header = data[:2] + _U16.pack(flags)
    question = data[12:qend] if qend else b""
    counts = b"\0\x01" if qend else b"\0\0"
    if edns:
        return header + counts + b"\0\0\0\0\0\x01" + question + opt_record(do, rcode >> 4)
    return header + counts + b"\0\0\0\0\0\0" + question


def opt_record(do: bool, ext_rcode: int = 0) -> bytes:
    """Our OPT record: root owner, payload size 1232, version 0, DO as given, no options."""
    return b"\0\0\x29\x04\xd0" + bytes((ext_rcode & 0xFF, 0, 0x80 if do else 0, 0, 0, 0))


# -- queries to upstreams ---------------------------------------------------------------------


def build_query(qid: int, question: bytes, do: bool, cd: bool, edns: bool = True) -> bytes:
    """Our upstream query: RD, CD as the client set it, EDNS 1232 with DO as the client set it
    (without `edns`: no OPT at all, for a server that rejects EDNS).

    `question` is the question section (name + type + class) exactly as it goes on the wire.
    """
    flags = RD | CD if cd else RD
    if not edns:
        return _HEADER.pack(qid, flags, 1, 0, 0, 0) + question
    return _HEADER.pack(qid, flags, 1, 0, 0, 1) + question + opt_record(do)


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


def reply_matches(data: bytes, qid: int, question: bytes) -> bool:
    """dnspython's rule: the id, QR, opcode QUERY and the one question (name compared without
    regard to case, type and class exactly) must match. The source is checked by the caller."""
    return _header_matches(data, qid) and _question_matches(data, question)


def accept_reply(data: bytes, qid: int, question: bytes) -> Layout | None:
    """The layout of an upstream reply to our query `qid` for `question`; None when it is not
    a reply to that query (to be dropped); WireError when it is, but malformed.

    - FORMERR or NOTIMP with QDCOUNT 0 (what servers that reject EDNS or the query often
      send): accepted on id, QR and opcode alone, nothing else is read from it;
    - otherwise the question must match (`reply_matches`);
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
    return scan_reply(data, trailing=True)


# -- replies from upstreams -------------------------------------------------------------------


@dataclass(slots=True)
class Record:
    """An answer-section record: owner (lower case, no trailing dot), type, TTL, RDATA span."""

    owner: str
    rtype: int
    ttl: int
    rdata: int  # offset of the RDATA
    rdlen: int


@dataclass(slots=True)
class Layout:
    """What `scan_reply` found in a reply; offsets are into the reply as received."""

    rcode: int
    qend: int
    ttl_offsets: list[int] = field(default_factory=list)  # every TTL field except the OPT's
    ttls: list[int] = field(default_factory=list)  # their values, same order
    answer_ttls: int = 0  # how many of the TTL fields belong to the answer section
    pointers: list[int] = field(default_factory=list)  # offsets of every compression pointer
    opt: tuple[int, int] | None = None  # [start, end) of the OPT record
    answers: list[Record] = field(default_factory=list)
    soa: tuple[int, int] | None = None  # (TTL, MINIMUM) of the first SOA in the authority section
    truncated: bool = False
    end: int = 0  # where the message ends: past its last record


def _skip_name(data: bytes, pos: int, pointers: list[int] | None) -> int:
    """Validate the name at `pos`; return the offset just past it (past its first pointer).

    Follows pointers to check the whole name: each pointer must point strictly before the
    position it is found at and past the header, at most MAX_HOPS of them, total length at
    most 255 octets (the root label's zero byte included).
    """
    n = len(data)
    end = -1
    total = 0
    hops = 0
    while True:
        if pos >= n:
            raise WireError("name runs past the end")
        length = data[pos]
        if length == 0:
            return pos + 1 if end < 0 else end
        kind = length & 0xC0
        if kind == 0xC0:
            if pos + 1 >= n:
                raise WireError("pointer runs past the end")
            target = ((length & 0x3F) << 8) | data[pos + 1]
            if target >= pos:
                raise WireError("compression pointer does not point backwards")
            if target < 12:
                raise WireError("compression pointer into the header")
            hops += 1
            if hops > MAX_HOPS:
                raise WireError("too many compression pointers")
            if end < 0:
                end = pos + 2
                if pointers is not None:
                    pointers.append(pos)
            pos = target
            continue
        if kind:
            raise WireError("extended label type")
        total += length + 1
        if total >= MAX_NAME:  # with the root label's zero byte still to come
            raise WireError("name longer than 255 octets")
        pos += length + 1


def read_name(data: bytes, pos: int) -> str:
    """The name at `pos` as lower-case text without the trailing dot ("" for the root).

    Assumes `_skip_name` accepted it; a '.' inside a label is escaped so it cannot pose as a
    label boundary to the policy matcher.
    """
    labels: list[str] = []
    hops = 0
    while True:
        length = data[pos]
        if length == 0:
            return ".".join(labels)
        if length & 0xC0:
            hops += 1
            if hops > MAX_HOPS:
                raise WireError("too many compression pointers")
            pos = ((length & 0x3F) << 8) | data[pos + 1]
            if pos < 12:
                raise WireError("compression pointer into the header")
            continue
        label = data[pos + 1 : pos + 1 + length].lower().decode("latin-1")
        labels.append(label.replace(".", "\\.") if "." in label else label)
        pos += length + 1


def name_text(wire: bytes) -> str:
    """An uncompressed wire name (as in a question) as lower-case text, for logs and tags."""
    try:
        return read_name(wire, 0)
    except (IndexError, WireError):
        return "<bad name>"


def encode_name(text: str) -> bytes:
    """'www.example.com' -> wire format (no compression)."""
    out = bytearray()
    for label in text.rstrip(".").split("."):
        if label:
            raw = label.encode("ascii")
            if len(raw) > 63:
                raise ValueError(f"label longer than 63 octets: {label!r}")
            out.append(len(raw))
            out += raw
    out.append(0)
    if len(out) > MAX_NAME:
        raise ValueError("name longer than 255 octets")
    return bytes(out)


def scan_reply(data: bytes, records: bool = True, trailing: bool = False) -> Layout:
    """Walk a whole reply once; raise WireError for anything malformed (a compression loop or
    forward pointer, a truncated record, a second or non-root OPT, trailing bytes unless
    `trailing` allows them: then `end` says where the last record ends).

    A TTL with the top bit set counts as 0 (RFC 2181 8), in `ttls`, the answers and the SOA.
    With `records` false the answer records are counted but not decoded (a check only)."""
    n = len(data)
    if n < 12:
        raise WireError("shorter than a DNS header")
    _id, flags, qd, an, ns, ar = _HEADER.unpack_from(data)
    pointers: list[int] = []
    pos = 12
    for _ in range(qd):
        pos = _skip_name(data, pos, pointers) + 4
        if pos > n:
            raise WireError("question truncated")
    layout = Layout(rcode=flags & 0xF, qend=pos, pointers=pointers, truncated=bool(flags & TC))
    offsets, ttls, answers = layout.ttl_offsets, layout.ttls, layout.answers
    for index in range(an + ns + ar):
        owner = pos
        pos = _skip_name(data, pos, pointers)
        if pos + 10 > n:
            raise WireError("record truncated")
        rtype, _rclass, ttl, rdlen = _RR_FIXED.unpack_from(data, pos)
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
                    at = _skip_name(data, at, pointers)
                    if at > end:
                        raise WireError("name runs past its record")
            if index < an:
                if records:
                    answers.append(Record(read_name(data, owner), rtype, ttl, rdata, rdlen))
            elif index < an + ns and rtype == T_SOA and layout.soa is None and rdlen >= 22:
                minimum = _U32.unpack_from(data, end - 4)[0]
                layout.soa = (ttl, 0 if minimum & 0x80000000 else minimum)
        pos = end
    if pos != n and not trailing:
        raise WireError("trailing bytes after the last record")
    layout.end = pos
    layout.answer_ttls = an if an < len(ttls) else len(ttls)
    return layout


def without_opt(data: bytes, layout: Layout) -> tuple[bytes, list[int]]:
    """The reply with its OPT record cut out (ARCOUNT one less), and its TTL offsets moved.

    Compression pointers after the cut that point past it are moved with it; one that points
    into the cut, or a result that no longer walks cleanly, makes the reply unusable
    (WireError).
    """
    if layout.opt is None:
        return data, list(layout.ttl_offsets)
    start, end = layout.opt
    cut = end - start
    out = bytearray(data[:start] + data[end:])
    for at in layout.pointers:
        if at < end:
            continue
        target = ((data[at] & 0x3F) << 8) | data[at + 1]
        if target >= end:
            target -= cut
        elif target >= start:
            raise WireError("compression pointer into the OPT record")
        struct.pack_into("!H", out, at - cut, 0xC000 | target)
    arcount = (out[10] << 8 | out[11]) - 1
    out[10:12] = _U16.pack(arcount)
    offsets = [at - cut if at > start else at for at in layout.ttl_offsets]
    result = bytes(out)
    # A name read through a pointer can run on, label by label, into the bytes that were cut:
    # walk the result once more (miss path only) rather than cache something malformed.
    if scan_reply(result, records=False).ttl_offsets != offsets:
        raise WireError("the reply does not survive cutting its OPT record")
    return result, offsets


def chain_of(data: bytes, layout: Layout, qname: str) -> tuple[list[str], list[tuple[str, int]]]:
    """The CNAME chain that starts at `qname` (owner -> target, at most MAX_CHAIN, no loops),
    and the A/AAAA addresses owned by a name on that chain with their TTLs.

    Records that are not on the chain (unrelated answers, additional data) do not count.
    """
    targets: dict[str, str] = {}
    for rec in layout.answers:
        if rec.rtype == T_CNAME and rec.owner not in targets:
            targets[rec.owner] = read_name(data, rec.rdata)
    chain = [qname]
    seen = {qname}
    name = qname
    while len(chain) <= MAX_CHAIN:
        target = targets.get(name)
        if target is None or target in seen:
            break
        chain.append(target)
        seen.add(target)
        name = target
    addresses: list[tuple[str, int]] = []
    for rec in layout.answers:
        if rec.owner not in seen:
            continue
        if rec.rtype == T_A and rec.rdlen == 4:
            raw = data[rec.rdata : rec.rdata + 4]
            addresses.append((socket.inet_ntop(socket.AF_INET, raw), rec.ttl))
        elif rec.rtype == T_AAAA and rec.rdlen == 16:
            raw = data[rec.rdata : rec.rdata + 16]
            addresses.append((socket.inet_ntop(socket.AF_INET6, raw), rec.ttl))
    return chain, addresses


def truncated_header(head: bytes, edns: bool) -> bytes:
    """Header bytes 2-12 of a minimal TC answer made from the header bytes 2-12 `head` of the
    full one: TC set, one question, no records but (for an EDNS client) our OPT. The caller
    puts the client's id in front and the question and OPT after it."""
    return bytes((head[0] | 0x02, head[1])) + b"\0\x01\0\0\0\0" + (b"\0\x01" if edns else b"\0\0")
