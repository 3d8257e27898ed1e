"""What the fuzzer found (tests/fuzz/corpus/*/crash-*), as plain cases: upstream replies whose
names lean on bytes that do not stay as they are, and names that are not ASCII."""

from __future__ import annotations

import struct

import pytest

from resolver.dns import cache, chains, replies, wire

pytestmark = pytest.mark.unit

QUESTION = wire.encode_name("www.example.test") + b"\0\x01\0\x01"
QEND = 12 + len(QUESTION)


def head(an: int, ident: int = 0x4242) -> bytes:
    return struct.pack("!HHHHHH", ident, 0x8180, 1, an, 0, 0)


def test_a_name_that_runs_on_into_the_bytes_after_the_last_record_is_malformed() -> None:
    """A CNAME whose target points back at its own RDLENGTH byte (2: a label of the pointer's
    two bytes) and ends in the one byte after the record. Cut at its last record, as the
    reply is kept, the name runs past the end: the whole reply is malformed, not accepted
    (read_name on the kept bytes raised IndexError before)."""
    record = 12 + len(QUESTION)
    rdlen_low = record + 2 + 10 - 1  # the low byte of RDLENGTH, value 2
    data = (
        head(1)
        + QUESTION
        + b"\xc0\x0c"
        + struct.pack("!HHIH", wire.T_CNAME, 1, 60, 2)
        + struct.pack("!H", 0xC000 | rdlen_low)
        + b"\0"  # the byte after the record: the name's end, before the cut
    )
    layout = replies.scan_reply(data, trailing=True)  # walks, with one byte "trailing"
    assert layout.end == len(data) - 1
    with pytest.raises(wire.WireError, match="past the end"):
        replies.accept_reply(data, 0x4242, QUESTION)


def test_a_name_read_through_a_ttl_field_is_malformed() -> None:
    """The second record's owner is a pointer into the first one's TTL (bytes 01 'a' 00 00:
    the name "a"). The cache re-writes TTLs as an answer ages (and caps them), which would
    change the name or make it no name at all: refused."""
    first = b"\xc0\x0c" + struct.pack("!HH", wire.T_A, 1) + b"\x01a\0\0" + b"\0\x04" + b"\1\2\3\4"
    ttl_at = QEND + 6
    second = struct.pack("!H", 0xC000 | ttl_at) + struct.pack("!HHIH", wire.T_A, 1, 60, 4)
    data = head(2) + QUESTION + first + second + b"\5\6\7\x08"
    with pytest.raises(wire.WireError, match="TTL field"):
        replies.scan_reply(data)


def test_pointers_into_the_question_and_into_rdata_are_fine() -> None:
    """The usual compression: owners pointing at the question, a CNAME target pointing into
    an earlier CNAME's RDATA. Nothing crosses a TTL."""
    target = QEND + 12  # the first record's RDATA: "edge" + pointer to "example.test"
    data = (
        head(2)
        + QUESTION
        + b"\xc0\x0c"
        + struct.pack("!HHIH", wire.T_CNAME, 1, 300, 7)
        + b"\x04edge\xc0\x10"
        + struct.pack("!H", 0xC000 | target)
        + struct.pack("!HHIH", wire.T_A, 1, 60, 4)
        + b"\xc0\0\2\1"
    )
    layout = replies.accept_reply(data, 0x4242, QUESTION)
    assert layout is not None
    chain, addresses = chains.chain_of(data, layout, "www.example.test")
    assert chain == ["www.example.test", "edge.example.test"]
    assert addresses == [(b"\xc0\0\2\1", 60)]
    entry, _chain = cache.build_entry(b"k", data, layout, 0.0, 86_400, 3_600)
    assert entry.ttl == 60


def test_names_that_are_not_ascii_encode_back_to_their_bytes() -> None:
    """A label read from the wire is bytes, written as text with \\DDD for every byte that is
    not a letter, digit, hyphen or underscore; encode_name gives the same bytes back, so a
    chain through such a name can be spliced (once it raised UnicodeEncodeError, and the query
    got SERVFAIL with a traceback in the log)."""
    raw = b"\x02\xd5x\x06office\x03com\x00"
    text = wire.read_name(b"\0" * 12 + raw, 12)
    assert text == "\\213x.office.com"
    assert wire.encode_name(text) == raw
    with pytest.raises(ValueError):
        wire.encode_name("\u0400.office.com")  # no byte: still an error


def test_a_chain_into_a_name_that_is_not_ascii_is_spliced() -> None:
    odd = b"\x02\xd5x\x06office\x03com\x00"
    first = (
        head(1)
        + QUESTION
        + b"\xc0\x0c"
        + struct.pack("!HHIH", wire.T_CNAME, 1, 300, len(odd))
        + odd
    )
    local_q = odd + b"\0\x01\0\x01"
    local = (
        head(1) + local_q + b"\xc0\x0c" + struct.pack("!HHIH", wire.T_A, 1, 60, 4) + b"\x34\x60\0\1"
    )
    joined = chains.splice(
        first, replies.scan_reply(first), "\\213x.office.com", local, replies.scan_reply(local)
    )
    assert joined is not None
    layout = replies.scan_reply(joined)
    chain, addresses = chains.chain_of(joined, layout, "www.example.test")
    assert chain == ["www.example.test", "\\213x.office.com"]
    assert addresses == [(b"\x34\x60\0\1", 60)]
