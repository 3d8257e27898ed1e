"""What every reply resolverd sends must be, checked on bytes: shared by the fuzz targets.

A property that does not hold raises `Violation` (an AssertionError), which the fuzzer reports
as a crash like any other exception. dnslib is the independent parser: what it cannot read
is malformed to a client too.
"""

from __future__ import annotations

import struct

from dnslib import RR, DNSBuffer, DNSHeader, DNSQuestion, DNSRecord

from resolver.dns import replies, wire


class Violation(AssertionError):
    """A property of the wire format or of the handler that does not hold."""


def require(condition: bool, what: str) -> None:
    if not condition:
        raise Violation(what)


def dnslib_reads(data: bytes) -> bool:
    """Whether dnslib parses `data` as a whole DNS message."""
    try:
        DNSRecord.parse(data)
    except Exception:  # noqa: BLE001 - dnslib raises many kinds; any of them means "no"
        return False
    return True


def dnslib_question(query: bytes, qend: int) -> bool:
    """Whether dnslib reads the question of `query` (ending at `qend`; 0: none, true)."""
    return not qend or dnslib_reads(query[:4] + b"\0\x01\0\0\0\0\0\0" + query[12:qend])


def dnslib_agrees(data: bytes) -> bool:
    """Whether dnslib parses the message `data` record for record as our walker does: every
    record ends where its RDLENGTH says. dnslib reads some RDATA by its type and not by its
    length (an A record of 1 byte is read as 4): a message like that is passed on as it came,
    and dnslib cannot be the judge of our reply to it."""
    try:
        layout = replies.scan_reply(data)
    except wire.WireError:
        return False
    ends = [at + 6 + (data[at + 4] << 8 | data[at + 5]) for at in layout.ttl_offsets]
    if layout.opt is not None:
        ends = sorted([*ends, layout.opt[1]])
    buffer = DNSBuffer(data)
    got = []
    try:
        header = DNSHeader.parse(buffer)
        for _ in range(header.q):
            DNSQuestion.parse(buffer)
        for _ in range(header.a + header.auth + header.ar):
            RR.parse(buffer)
            got.append(buffer.offset)
    except Exception:  # noqa: BLE001 - as above
        return False
    return got == ends and buffer.offset == len(data)


def check_reply(
    reply: bytes,
    query: bytes,
    qend: int,
    *,
    limit: int | None,
    strict: bool,
    max_ttl: int = 2**31,
) -> replies.Layout:
    """A reply to `query` whose question ends at `qend` (0: no well-formed question):

    - a response (QR), the query's id and opcode;
    - the query's question, byte for byte (the client's letter case), or none when `qend` is 0;
    - a message our own walker accepts whole (no trailing bytes, no forward pointers);
    - no TTL above `max_ttl`;
    - at most `limit` bytes (UDP), unless None (TCP);
    - with `strict`, a message dnslib parses, with the same id and question.
    """
    require(len(reply) >= 12, "reply shorter than a header")
    require(reply[:2] == query[:2], "reply id is not the query's")
    require(bool(reply[2] & 0x80), "QR clear in a reply")
    require((reply[2] & 0x78) == (query[2] & 0x78), "reply opcode is not the query's")
    if qend:
        require(reply[4:6] == b"\0\x01", "reply does not carry exactly one question")
        require(reply[12:qend] == query[12:qend], "reply question is not the query's")
    else:
        require(reply[4:6] == b"\0\0", "reply to a query without a question has one")
    try:
        layout = replies.scan_reply(reply)
    except wire.WireError as err:
        raise Violation(f"reply does not walk: {err}") from None
    require(all(t <= max_ttl for t in layout.ttls), "a TTL above the cap")
    if limit is not None:
        require(len(reply) <= limit, f"{len(reply)}-byte UDP reply over the client's {limit}")
    if strict:
        try:
            parsed = DNSRecord.parse(reply)
        except Exception as err:  # noqa: BLE001 - any dnslib failure is the finding
            raise Violation(f"dnslib cannot parse the reply: {err!r}") from None
        require(parsed.header.id == struct.unpack("!H", query[:2])[0], "dnslib: id differs")
        if qend:
            asked = DNSRecord.parse(
                query[:4] + b"\0\x01\0\0\0\0\0\0" + query[12:qend]
            ).q  # the question alone, as dnslib reads it
            require(parsed.q == asked, "dnslib: question differs")
    return layout


def question_end(data: bytes) -> int:
    """The end of an uncompressed first question, or 0 when there is none to be read."""
    if len(data) < 12 or data[4:6] != b"\0\x01":
        return 0
    pos = 12
    try:
        while data[pos]:
            if data[pos] & 0xC0:
                return 0
            pos += data[pos] + 1
    except IndexError:
        return 0
    end = pos + 5
    return end if end <= len(data) and end - 12 <= wire.MAX_NAME + 4 else 0
