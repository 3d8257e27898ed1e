"""DNS messages as bytes: the client's query and names (what we write ourselves: messages.py).

Everything on the hot path works on wire bytes: a query is checked by `parse_query` (no
objects built) and answered from bytes. Upstream replies are walked once in `replies`. Names
are followed through compression pointers only backwards (and never into the header) and at
most `MAX_HOPS` times, so loops and forward references are rejected, never followed.

Nothing under resolver/ needs dnslib at run time: the walker interprets only the few record
types it must (CNAME, A, AAAA, SOA) and passes every other record through untouched, DNSSEC
records included.
"""

from __future__ import annotations

import struct
from typing import Final

# Header flags and codes (RFC 1035 4.1.1, RFC 4035 3.2, RFC 6891 6.1.3).
QR: Final = 0x8000
AA: Final = 0x0400
TC: Final = 0x0200
RD: Final = 0x0100
RA: Final = 0x0080
CD: Final = 0x0010
DO: Final = 0x8000  # in the OPT record's TTL field

NOERROR: Final = 0
FORMERR: Final = 1
SERVFAIL: Final = 2
NXDOMAIN: Final = 3
NOTIMP: Final = 4
REFUSED: Final = 5
BADVERS: Final = 16

T_A: Final = 1
T_NS: Final = 2
T_CNAME: Final = 5
T_SOA: Final = 6
T_AAAA: Final = 28
T_OPT: Final = 41
T_IXFR: Final = 251
T_AXFR: Final = 252
T_ANY: Final = 255

EDNS_SIZE: Final = 1232  # what we advertise and the most we hand out over UDP (DNS flag day 2020)
PLAIN_SIZE: Final = 512  # the limit for a client without EDNS (RFC 1035 4.2.1)
MAX_NAME: Final = 255  # octets of a wire name, the root label's zero byte included (RFC 1035 3.1)
MAX_HOPS: Final = 64  # compression pointers followed for one name
MAX_CHAIN: Final = 16  # CNAMEs followed from the query name

RCODE_NAMES: Final = {
    NOERROR: "noerror",
    FORMERR: "formerr",
    SERVFAIL: "servfail",
    NXDOMAIN: "nxdomain",
    NOTIMP: "notimp",
    REFUSED: "refused",
}


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
EDNS: Final = 1  # the client sent an OPT record
DO_BIT: Final = 2  # ... with the DO bit
CD_BIT: Final = 4  # the client set CD
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
    size = (data[at + 2] << 8) | data[at + 3]  # byte by byte: compiled, these stay native ints
    version = data[at + 5]
    ednsflags = (data[at + 6] << 8) | data[at + 7]
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
            pos = skip_name(data, pos, None)
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
            pos = skip_name(data, pos, None) + 4
        for index in range(an + ns + ar):
            owner = pos
            pos = skip_name(data, pos, None)
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


def skip_name(data: bytes, pos: int, pointers: list[int] | None) -> int:
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
    """The name at `pos` in its one presentation form: lower case, no trailing dot ("" for the
    root), every byte outside letters, digits, hyphen and underscore written as RFC 1035's
    ``\\DDD`` (a dot inside a label is ``\\046``, a space ``\\032``). So a name from the wire
    is plain ASCII with no space, control character or separator of ours in it, whatever its
    bytes: it can be logged, journaled and printed as it is, and never poses as two labels.

    Assumes `skip_name` accepted it."""
    labels: list[bytes] = []
    hops = 0
    while True:
        length = data[pos]
        if length == 0:
            break
        if length & 0xC0:
            hops += 1
            if hops > MAX_HOPS:
                raise WireError("too many compression pointers")
            pos = ((length & 0x3F) << 8) | data[pos + 1]
            if pos < 12:
                raise WireError("compression pointer into the header")
            continue
        labels.append(data[pos + 1 : pos + 1 + length])
        pos += length + 1
    # The common case: plain bytes only (no dot inside a label), looked at byte by byte, which
    # compiled is cheaper than the method calls that would do it.
    for label in labels:
        for i in range(len(label)):
            if not _IS_PLAIN[label[i]]:
                return ".".join("".join(_ESCAPED[byte] for byte in raw.lower()) for raw in labels)
    return b".".join(labels).decode("ascii").lower()


# Bytes a label keeps as they are in text; every other byte is written \DDD (RFC 1035 5.1).
_PLAIN: Final = b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_"
_IS_PLAIN: Final = bytes(1 if bytes((b,)) in _PLAIN else 0 for b in range(256))
_ESCAPED: Final = tuple(chr(b) if bytes((b,)) in _PLAIN else f"\\{b:03d}" for b in range(256))


def name_text(wire: bytes) -> str:
    """An uncompressed wire name (as in a question) as text, for logs and tags."""
    try:
        return read_name(wire, 0)
    except (IndexError, WireError):
        return "<bad name>"


def encode_name(text: str) -> bytes:
    """A name in presentation form -> wire format (no compression); ValueError when it is not
    one. ``\\DDD`` (and ``\\X`` for any other character X) stand for one byte, as `read_name`
    writes them, so a name read from the wire encodes back to the bytes it was read from."""
    out = bytearray()
    if "\\" not in text:
        labels = [label.encode("ascii") for label in text.rstrip(".").split(".") if label]
    else:
        labels = _unescaped_labels(text)
    for raw in labels:
        if len(raw) > 63:
            raise ValueError(f"label longer than 63 octets: {raw!r}")
        out.append(len(raw))
        out += raw
    out.append(0)
    if len(out) > MAX_NAME:
        raise ValueError("name longer than 255 octets")
    return bytes(out)


def _unescaped_labels(text: str) -> list[bytes]:
    labels: list[bytes] = []
    label = bytearray()
    at, n = 0, len(text)
    while at < n:
        ch = text[at]
        if ch == ".":
            if not label:
                raise ValueError(f"empty label in {text!r}")
            labels.append(bytes(label))
            label = bytearray()
        elif ch != "\\":
            label += ch.encode("ascii")
        elif text[at + 1 : at + 4].isdigit() and len(text[at + 1 : at + 4]) == 3:
            value = int(text[at + 1 : at + 4])
            if value > 255:
                raise ValueError(f"escape \\{value} is not a byte in {text!r}")
            label.append(value)
            at += 3
        elif at + 1 < n:
            label += text[at + 1].encode("ascii")
            at += 1
        else:
            raise ValueError(f"name ends in a lone backslash: {text!r}")
        at += 1
    if label:
        labels.append(bytes(label))
    return labels
