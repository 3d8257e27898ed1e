"""Property tests: the wire parsers never fail with anything but WireError."""

from __future__ import annotations

import pytest
from dnslib import EDNS0, QTYPE, RR, A, DNSRecord
from hypothesis import example, given, settings
from hypothesis import strategies as st

from resolver.dns import chains, replies, wire

pytestmark = pytest.mark.unit

LABEL = st.text(alphabet="abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-",
                min_size=1, max_size=20)  # fmt: skip
NAME = st.lists(LABEL, min_size=1, max_size=5).map(".".join)


def _reply() -> bytes:
    q = DNSRecord.question("www.example.test")
    q.add_ar(EDNS0())
    r = q.reply()
    r.add_answer(RR("www.example.test", QTYPE.A, rdata=A("192.0.2.1"), ttl=60))
    r.add_ar(RR("www.example.test", QTYPE.A, rdata=A("192.0.2.2"), ttl=60))
    r.add_ar(EDNS0())
    return bytes(r.pack())


REPLY = _reply()


def _query() -> bytes:
    q = DNSRecord.question("www.example.test", "AAAA")
    q.add_ar(EDNS0(udp_len=1232, flags="do"))
    return bytes(q.pack())


QUERY = _query()


def mutated(message: bytes) -> st.SearchStrategy[bytes]:
    """`message` with up to 6 bytes changed, then cut short or with bytes appended: mostly
    well-formed enough to get past the header, so the checks after the parse run too (random
    bytes alone almost never do)."""
    edits = st.lists(st.tuples(st.integers(0, len(message) - 1), st.integers(0, 255)), max_size=6)

    def apply(args: tuple[list[tuple[int, int]], int, bytes]) -> bytes:
        changes, keep, tail = args
        data = bytearray(message)
        for at, value in changes:
            data[at] = value
        return bytes(data[:keep]) + tail

    keep = st.one_of(st.just(len(message)), st.integers(0, len(message)))
    tail = st.one_of(st.just(b""), st.binary(max_size=40))
    return st.tuples(edits, keep, tail).map(apply)


@settings(max_examples=2000)
@given(st.one_of(st.binary(max_size=700), mutated(QUERY)))
@example(QUERY)
def test_parse_query_random_bytes(data: bytes) -> None:
    try:
        qend, _qtype, _flags, limit = wire.parse_query(data)
    except wire.WireError:
        return
    assert 12 < qend <= len(data) and 512 <= limit <= 1232


@settings(max_examples=2000)
@given(st.one_of(st.binary(max_size=700), mutated(REPLY)))
@example(REPLY)
def test_scan_reply_random_bytes(data: bytes) -> None:
    try:
        layout = replies.scan_reply(data)
    except wire.WireError:
        return
    assert all(0 <= at <= len(data) - 4 for at in layout.ttl_offsets)


@settings(max_examples=2000)
@given(st.lists(st.tuples(st.integers(0, len(REPLY) - 1), st.integers(0, 255)), max_size=6))
def test_mutated_replies_scan_and_cut_cleanly(edits: list[tuple[int, int]]) -> None:
    data = bytearray(REPLY)
    for at, value in edits:
        data[at] = value
    try:
        layout = replies.scan_reply(bytes(data))
        buf, offsets = replies.without_opt(bytes(data), layout)
        cut = bytes(buf)
        for rec in layout.answers:
            wire.read_name(bytes(data), rec.rdata) if rec.rtype == wire.T_CNAME else None
        chains.chain_of(bytes(data), layout, "www.example.test")
    except wire.WireError:
        return
    again = replies.scan_reply(cut)  # what we cache is well-formed too
    assert again.opt is None and again.ttl_offsets == offsets


@given(NAME, st.sampled_from(["A", "AAAA", "TXT", "MX"]), st.booleans(), st.booleans())
def test_valid_queries_are_accepted(name: str, qtype: str, edns: bool, do: bool) -> None:
    q = DNSRecord.question(name, qtype)
    if edns:
        q.add_ar(EDNS0(flags="do" if do else ""))
    data = bytes(q.pack())
    qend, parsed_type, flags, _limit = wire.parse_query(data)
    assert parsed_type == getattr(QTYPE, qtype)
    assert bool(flags & wire.EDNS) == edns and bool(flags & wire.DO_BIT) == (edns and do)
    assert wire.name_text(data[12 : qend - 4]) == name.lower()
