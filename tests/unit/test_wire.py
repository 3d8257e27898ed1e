"""resolver.dns.wire: query checks, upstream queries, reply acceptance and the reply walker."""

from __future__ import annotations

import struct

import pytest
from dnslib import AAAA, CNAME, EDNS0, QTYPE, RR, SOA, A, DNSRecord

from resolver.dns import chains, messages, replies, wire

pytestmark = pytest.mark.unit


def _query(name: str = "www.example.test", qtype: str = "A", **edns: object) -> bytes:
    q = DNSRecord.question(name, qtype)
    if edns:
        q.add_ar(EDNS0(**edns))
    return bytes(q.pack())


def _header(flags: int = 0x0100, qd: int = 1, an: int = 0, ns: int = 0, ar: int = 0) -> bytes:
    return struct.pack("!HHHHHH", 0xABCD, flags, qd, an, ns, ar)


QUESTION = wire.encode_name("www.example.test") + b"\x00\x01\x00\x01"
OPT = messages.opt_record(False)


# -- parse_query ------------------------------------------------------------------------------


def test_plain_query() -> None:
    data = _query()
    qend, qtype, flags, limit = wire.parse_query(data)
    assert qend == len(data) and qtype == 1 and flags == 0 and limit == 512


@pytest.mark.parametrize(("size", "limit"), [(4096, 1232), (1232, 1232), (800, 800), (100, 512)])
def test_edns_limit(size: int, limit: int) -> None:
    qend, _qtype, flags, got = wire.parse_query(_query(udp_len=size))
    assert got == limit and flags & wire.EDNS and not flags & wire.DO_BIT
    assert qend == 12 + len(QUESTION)


def test_do_and_cd_flags() -> None:
    q = DNSRecord.question("www.example.test")
    q.header.cd = 1
    q.add_ar(EDNS0(flags="do"))
    _qend, _qtype, flags, _limit = wire.parse_query(bytes(q.pack()))
    assert flags == wire.EDNS | wire.DO_BIT | wire.CD_BIT


def test_edns_with_options_and_other_additional_records() -> None:
    opt_with_cookie = b"\x00\x00\x29\x04\xd0\x00\x00\x80\x00\x00\x0c\x00\x0a\x00\x08" + b"c" * 8
    data = _header(ar=1) + QUESTION + opt_with_cookie
    assert wire.parse_query(data)[2] == wire.EDNS | wire.DO_BIT
    a_record = b"\xc0\x0c\x00\x01\x00\x01\x00\x00\x00\x3c\x00\x04\xc0\x00\x02\x01"
    data = _header(ar=2) + QUESTION + a_record + OPT
    assert wire.parse_query(data)[2] == wire.EDNS


@pytest.mark.parametrize(
    ("data", "rcode"),
    [
        (b"", None),
        (b"\x00" * 11, None),
        (_header(flags=0x8100) + QUESTION, None),
        (_header(flags=0x2100) + QUESTION, wire.NOTIMP),
        (_header(qd=0), wire.FORMERR),
        (_header(qd=2) + QUESTION * 2, wire.FORMERR),
        (_header() + QUESTION[:-1], wire.FORMERR),
        (_header() + b"\x05ab", wire.FORMERR),
        (_header() + b"\x03www\xc0\x0c\x00\x01\x00\x01", wire.FORMERR),
        (_header() + b"\x80abc\x00\x00\x01\x00\x01", wire.FORMERR),
        (_header() + (b"\x3f" + b"a" * 63) * 4 + b"\x00\x00\x01\x00\x01", wire.FORMERR),
        (_header() + QUESTION + b"x", wire.FORMERR),
        (_header(ar=1) + QUESTION + OPT + b"x", wire.FORMERR),
        (_header(ar=2) + QUESTION + OPT + OPT, wire.FORMERR),
        (_header(ar=1) + QUESTION + b"\x01a" + OPT[1:], wire.FORMERR),
        (_header(an=1) + QUESTION + OPT, wire.FORMERR),
        (_header(ar=1) + QUESTION + OPT[:-1], wire.FORMERR),
        (_header(ar=1) + QUESTION + b"\xc0\x40" + OPT[1:], wire.FORMERR),
    ],
    ids=lambda v: v.hex()[:40] if isinstance(v, bytes) else str(v),
)
def test_bad_queries(data: bytes, rcode: int | None) -> None:
    with pytest.raises(wire.WireError) as err:
        wire.parse_query(data)
    assert err.value.rcode == rcode


def test_name_of_exactly_255_octets_is_fine() -> None:
    name = (b"\x3f" + b"a" * 63) * 3 + b"\x3d" + b"b" * 61 + b"\x00"
    assert len(name) == 255
    wire.parse_query(_header() + name + b"\x00\x01\x00\x01")


def test_badvers() -> None:
    with pytest.raises(wire.WireError) as err:
        wire.parse_query(_query(version=1, flags="do"))
    assert err.value.rcode == wire.BADVERS and err.value.edns and err.value.do
    assert err.value.qend == 12 + len(QUESTION)


def test_question_key_folds_only_the_name() -> None:
    upper = _query("WWW.Example.TEST")
    lower = _query("www.example.test")
    assert wire.question_key(upper, len(upper), 0) == wire.question_key(lower, len(lower), 0)
    assert wire.question_key(lower, len(lower), wire.DO_BIT) != wire.question_key(
        lower, len(lower), 0
    )
    assert wire.question_key(lower, len(lower), wire.EDNS) == wire.question_key(
        lower, len(lower), 0
    )
    t65 = _header() + wire.encode_name("a.test") + b"\x00\x41\x00\x01"
    t97 = _header() + wire.encode_name("a.test") + b"\x00\x61\x00\x01"
    assert wire.question_key(t65, len(t65), 0) != wire.question_key(t97, len(t97), 0)


# -- replies we build -------------------------------------------------------------------------


def test_error_reply_echoes_id_question_and_flags() -> None:
    q = DNSRecord.question("www.example.test")
    q.header.cd = 1
    data = bytes(q.pack())
    reply = DNSRecord.parse(messages.error_reply(data, wire.SERVFAIL, len(data), False, False))
    assert reply.header.id == q.header.id and reply.header.rcode == wire.SERVFAIL
    assert reply.header.qr and reply.header.rd and reply.header.cd
    assert str(reply.q.qname) == "www.example.test." and not reply.ar
    bare = messages.error_reply(data, wire.FORMERR, 0, False, False)
    assert bare[4:6] == b"\x00\x00" and len(bare) == 12


def test_error_reply_badvers_carries_extended_rcode() -> None:
    data = _query(version=1)
    raw = messages.error_reply(data, wire.BADVERS, 12 + len(QUESTION), True, True)
    reply = DNSRecord.parse(raw)
    opt = reply.ar[0]
    assert reply.header.rcode == 0 and opt.ttl >> 24 == 1 and opt.ttl & 0x8000
    assert opt.rclass == 1232


def test_build_query() -> None:
    raw = messages.build_query(0x1234, QUESTION, do=True, cd=True)
    q = DNSRecord.parse(raw)
    assert q.header.id == 0x1234 and q.header.rd and q.header.cd and not q.header.qr
    assert str(q.q.qname) == "www.example.test." and q.q.qtype == QTYPE.A
    [opt] = q.ar
    assert opt.rtype == QTYPE.OPT and opt.rclass == 1232 and opt.ttl == 0x8000
    plain = DNSRecord.parse(messages.build_query(1, QUESTION, do=False, cd=False))
    assert not plain.header.cd and plain.ar[0].ttl == 0


# -- reply acceptance -------------------------------------------------------------------------


def _reply_to(query: bytes, name: str = "www.example.test", **changes: int) -> bytes:
    q = DNSRecord.parse(query)
    r = q.reply()
    r.add_answer(RR(name, QTYPE.A, rdata=A("192.0.2.1"), ttl=60))
    for key, value in changes.items():
        setattr(r.header, key, value)
    return bytes(r.pack())


def test_accept_reply_matches_id_qr_opcode_and_question() -> None:
    query = messages.build_query(0x4242, QUESTION, False, False)
    good = _reply_to(query)
    assert replies.accept_reply(good, 0x4242, QUESTION) is not None
    assert replies.accept_reply(good, 0x4243, QUESTION) is None
    assert (
        replies.accept_reply(good[:2] + bytes((good[2] & 0x7F,)) + good[3:], 0x4242, QUESTION)
        is None
    )
    assert replies.accept_reply(_reply_to(query, opcode=2), 0x4242, QUESTION) is None
    assert replies.accept_reply(good[:20], 0x4242, QUESTION) is None
    upper = wire.encode_name("WWW.EXAMPLE.test") + b"\x00\x01\x00\x01"
    assert (
        replies.accept_reply(good[:12] + upper + good[12 + len(upper) :], 0x4242, QUESTION)
        is not None
    )
    other_type = QUESTION[:-4] + b"\x00\x1c\x00\x01"
    assert replies.accept_reply(good, 0x4242, other_type) is None
    other_class = QUESTION[:-4] + b"\x00\x01\x00\x03"
    assert replies.accept_reply(good, 0x4242, other_class) is None
    other_name = wire.encode_name("wwx.example.test") + b"\x00\x01\x00\x01"
    assert replies.accept_reply(good, 0x4242, other_name) is None


# -- scan_reply -------------------------------------------------------------------------------


def _full_reply() -> bytes:
    q = DNSRecord.question("alias.example.test", "A")
    q.add_ar(EDNS0(udp_len=1232))
    r = q.reply()
    r.add_answer(RR("alias.example.test", QTYPE.CNAME, rdata=CNAME("edge.cdn.test"), ttl=300))
    r.add_answer(RR("edge.cdn.test", QTYPE.A, rdata=A("198.51.100.7"), ttl=30))
    r.add_answer(RR("edge.cdn.test", QTYPE.A, rdata=A("198.51.100.8"), ttl=20))
    r.add_answer(RR("unrelated.test", QTYPE.A, rdata=A("203.0.113.9"), ttl=5))
    r.add_ar(RR("edge.cdn.test", QTYPE.AAAA, rdata=AAAA("2001:db8::7"), ttl=40))
    r.add_ar(EDNS0(udp_len=4096))
    r.add_ar(RR("edge.cdn.test", QTYPE.AAAA, rdata=AAAA("2001:db8::8"), ttl=50))
    return bytes(r.pack())


def test_scan_reply_finds_ttls_opt_and_answers() -> None:
    data = _full_reply()
    layout = replies.scan_reply(data)
    assert layout.rcode == 0 and not layout.truncated
    assert layout.ttls == [300, 30, 20, 5, 40, 50]
    assert [struct.unpack_from("!I", data, at)[0] for at in layout.ttl_offsets] == layout.ttls
    assert layout.answer_ttls == 4
    assert layout.opt is not None and data[layout.opt[0] + 1 : layout.opt[0] + 3] == b"\x00\x29"
    assert [(r.owner, r.rtype) for r in layout.answers] == [
        ("alias.example.test", 5),
        ("edge.cdn.test", 1),
        ("edge.cdn.test", 1),
        ("unrelated.test", 1),
    ]


def test_chain_of_follows_cnames_and_ignores_unrelated_records() -> None:
    data = _full_reply()
    chain, addresses = chains.chain_of(data, replies.scan_reply(data), "alias.example.test")
    assert chain == ["alias.example.test", "edge.cdn.test"]
    # packed, with their TTLs; not the additional data
    assert addresses == [(bytes([198, 51, 100, 7]), 30), (bytes([198, 51, 100, 8]), 20)]


def test_chain_of_is_loop_safe_and_bounded() -> None:
    q = DNSRecord.question("a.test")
    r = q.reply()
    r.add_answer(RR("a.test", QTYPE.CNAME, rdata=CNAME("b.test"), ttl=60))
    r.add_answer(RR("b.test", QTYPE.CNAME, rdata=CNAME("a.test"), ttl=60))
    data = bytes(r.pack())
    assert chains.chain_of(data, replies.scan_reply(data), "a.test")[0] == ["a.test", "b.test"]
    r = DNSRecord.question("c0.test").reply()
    for i in range(40):
        r.add_answer(RR(f"c{i}.test", QTYPE.CNAME, rdata=CNAME(f"c{i + 1}.test"), ttl=60))
    data = bytes(r.pack())
    chain, _ = chains.chain_of(data, replies.scan_reply(data), "c0.test")
    assert len(chain) == wire.MAX_CHAIN + 1


def test_scan_reply_extended_rcode_and_soa() -> None:
    q = DNSRecord.question("nope.test")
    r = q.reply()
    r.header.rcode = 3
    r.add_auth(RR("test", QTYPE.SOA, rdata=SOA("ns.test", "h.test", (1, 2, 3, 4, 30)), ttl=900))
    data = bytes(r.pack())
    layout = replies.scan_reply(data)
    assert layout.rcode == 3 and layout.soa == (900, 30) and layout.answer_ttls == 0


@pytest.mark.parametrize(
    "tail",
    [
        b"\xc0\x22\x00\x01\x00\x01\x00\x00\x00\x3c\x00\x04\xc0\x00\x02\x01",  # points to itself
        b"\xc0\x40\x00\x01\x00\x01\x00\x00\x00\x3c\x00\x04\xc0\x00\x02\x01",  # points forward
        b"\xc0\x0c\x00\x01\x00\x01\x00\x00\x00\x3c\x00\x09\xc0\x00\x02\x01",  # rdata too long
        b"\xc0\x0c\x00\x01\x00\x01\x00\x00",  # fixed part truncated
        b"\xc0\x0c\x00\x01\x00\x01\x00\x00\x00\x3c\x00\x04\xc0\x00\x02\x01junk",  # trailing
        b"\xc0\x0c\x00\x05\x00\x01\x00\x00\x00\x3c\x00\x02\xc0\x2e",  # CNAME rdata loops
    ],
)
def test_scan_reply_rejects(tail: bytes) -> None:
    data = struct.pack("!HHHHHH", 1, 0x8180, 1, 1, 0, 0) + QUESTION + tail
    assert len(QUESTION) + 12 == 0x22  # where the record starts
    with pytest.raises(wire.WireError):
        replies.scan_reply(data)


def test_scan_reply_rejects_two_opts() -> None:
    data = struct.pack("!HHHHHH", 1, 0x8180, 1, 0, 0, 2) + QUESTION + OPT + OPT
    with pytest.raises(wire.WireError):
        replies.scan_reply(data)


def test_pointer_chain_hop_limit() -> None:
    # a long chain of pointers, each to the previous one: valid per se but over MAX_HOPS
    body = bytearray(QUESTION)
    prev = 12
    names = bytearray()
    for _ in range(wire.MAX_HOPS + 2):
        here = 12 + len(body) + len(names)
        names += struct.pack("!H", 0xC000 | prev)
        prev = here
    rr = (
        struct.pack("!H", 0xC000 | prev)
        + b"\x00\x01\x00\x01\x00\x00\x00\x3c\x00\x04\x01\x02\x03\x04"
    )
    data = struct.pack("!HHHHHH", 1, 0x8180, 1, 1, 0, 0) + bytes(body) + bytes(names) + rr
    with pytest.raises(wire.WireError):
        replies.scan_reply(data)


# -- without_opt ------------------------------------------------------------------------------


def test_without_opt_moves_pointers_after_the_cut() -> None:
    data = _full_reply()
    layout = replies.scan_reply(data)
    buf, offsets = replies.without_opt(data, layout)
    cut = bytes(buf)
    original = DNSRecord.parse(data)
    stripped = DNSRecord.parse(cut)
    assert [r for r in stripped.ar if r.rtype == QTYPE.OPT] == []
    assert [str(r) for r in stripped.ar] == [str(r) for r in original.ar if r.rtype != QTYPE.OPT]
    assert [str(r) for r in stripped.rr] == [str(r) for r in original.rr]
    assert [struct.unpack_from("!I", cut, at)[0] for at in offsets] == layout.ttls
    again = replies.scan_reply(cut)
    assert again.ttl_offsets == offsets and again.opt is None


def test_without_opt_rejects_pointer_into_the_opt() -> None:
    head = struct.pack("!HHHHHH", 1, 0x8180, 1, 0, 0, 2) + QUESTION
    opt_at = len(head)
    rr = (
        struct.pack("!H", 0xC000 | opt_at)
        + b"\x00\x01\x00\x01\x00\x00\x00\x3c\x00\x04\x01\x02\x03\x04"
    )
    data = head + OPT + rr
    layout = replies.scan_reply(data)
    with pytest.raises(wire.WireError):
        replies.without_opt(data, layout)


# -- names ------------------------------------------------------------------------------------


def test_names() -> None:
    assert wire.encode_name("www.Example.test.") == b"\x03www\x07Example\x04test\x00"
    assert wire.encode_name(".") == b"\x00"
    assert wire.name_text(b"\x03www\x07Example\x04test\x00") == "www.example.test"
    assert wire.name_text(b"\x03a.b\x00") == "a\\046b"
    assert wire.name_text(b"\x05ab") == "<bad name>"
    with pytest.raises(ValueError):
        wire.encode_name("x" * 64 + ".test")


def test_truncated_header() -> None:
    head = bytes((0x81, 0xA0)) + b"\x00\x01\x00\x03\x00\x01\x00\x02"
    tc = messages.truncated_header(head, True)
    assert tc == bytes((0x83, 0xA0)) + b"\x00\x01\x00\x00\x00\x00\x00\x01"
    assert messages.truncated_header(head, False)[-2:] == b"\x00\x00"


# -- review fixes: name length, header pointers, TTL top bit, errors with OPT, acceptance ------


def _long_name(total: int) -> bytes:
    """An uncompressed wire name of exactly `total` octets, the root label's zero included."""
    out = b""
    left = total - 1
    while left:
        size = min(63, left - 1)
        out += bytes((size,)) + b"a" * size
        left -= size + 1
    return out + b"\0"


def test_name_of_256_octets_is_too_long_in_queries_and_replies() -> None:
    for total, ok in ((255, True), (256, False)):
        name = _long_name(total)
        assert len(name) == total
        query = _header() + name + b"\x00\x01\x00\x01"
        reply = struct.pack("!HHHHHH", 1, 0x8180, 1, 0, 0, 0) + name + b"\x00\x01\x00\x01"
        if ok:
            wire.parse_query(query)
            replies.scan_reply(reply)
            continue
        with pytest.raises(wire.WireError) as err:
            wire.parse_query(query)
        assert err.value.rcode == wire.FORMERR
        with pytest.raises(wire.WireError):
            replies.scan_reply(reply)


def test_compression_pointer_into_the_header_is_rejected() -> None:
    record = b"\xc0\x04\x00\x01\x00\x01\x00\x00\x00\x3c\x00\x04\xc0\x00\x02\x01"
    data = struct.pack("!HHHHHH", 1, 0x8180, 1, 1, 0, 0) + QUESTION + record
    with pytest.raises(wire.WireError, match="header"):
        replies.scan_reply(data)
    with pytest.raises(wire.WireError, match="header"):
        wire.read_name(data, 12 + len(QUESTION))
    assert wire.name_text(b"\x01a\xc0\x00") == "<bad name>"


def test_ttl_with_the_top_bit_set_counts_as_zero() -> None:
    head = struct.pack("!HHHHHH", 1, 0x8183, 1, 1, 1, 0)
    a_record = b"\xc0\x0c\x00\x01\x00\x01\x80\x00\x00\x00\x00\x04\xc0\x00\x02\x01"
    soa_rdata = b"\x00\x00" + struct.pack("!IIIII", 1, 2, 3, 4, 0xFFFFFFFF)
    soa = b"\x00\x00\x06\x00\x01" + struct.pack("!IH", 0x80000001, len(soa_rdata)) + soa_rdata
    layout = replies.scan_reply(head + QUESTION + a_record + soa)
    assert layout.ttls == [0, 0] and layout.answers[0].ttl == 0 and layout.soa == (0, 0)


def test_errors_carry_the_queries_opt_found_best_effort() -> None:
    notimp = bytearray(_query(udp_len=1232, flags="do"))
    notimp[2] |= 15 << 3
    with pytest.raises(wire.WireError) as err:
        wire.parse_query(bytes(notimp))
    assert err.value.rcode == wire.NOTIMP and err.value.edns and err.value.do
    with pytest.raises(wire.WireError) as err:
        wire.parse_query(_header(ar=1) + QUESTION + OPT + b"x")
    assert err.value.rcode == wire.FORMERR and err.value.edns and not err.value.do
    with pytest.raises(wire.WireError) as err:
        wire.parse_query(_header() + QUESTION + b"x")
    assert not err.value.edns
    assert wire.find_opt(_header(ar=1) + b"\x05ab") == (False, False)  # the walk fails
    assert wire.find_opt(b"\x00" * 5) == (False, False)


def test_error_reply_offers_recursion_unless_told_not_to() -> None:
    data = _query()
    assert DNSRecord.parse(
        messages.error_reply(data, wire.SERVFAIL, len(data), False, False)
    ).header.ra
    refused = messages.error_reply(data, wire.REFUSED, len(data), False, False, ra=False)
    assert not DNSRecord.parse(refused).header.ra


def test_build_query_without_edns() -> None:
    q = DNSRecord.parse(messages.build_query(7, QUESTION, do=True, cd=False, edns=False))
    assert q.ar == [] and q.header.rd and str(q.q.qname) == "www.example.test."


def test_accept_reply() -> None:
    query = messages.build_query(0x4242, QUESTION, False, False)
    good = _reply_to(query)
    layout = replies.accept_reply(good, 0x4242, QUESTION)
    assert layout is not None and layout.end == len(good) and len(layout.answers) == 1
    assert replies.accept_reply(good, 0x4243, QUESTION) is None
    # bytes after the last record: accepted, `end` says where the reply stops
    layout = replies.accept_reply(good + b"\x00junk", 0x4242, QUESTION)
    assert layout is not None and layout.end == len(good)
    # TC: header and question suffice, even with counts running past the end
    tc = struct.pack("!HHHHHH", 0x4242, 0x8380, 1, 3, 0, 0) + QUESTION + b"\xc0"
    layout = replies.accept_reply(tc, 0x4242, QUESTION)
    assert layout is not None and layout.truncated and layout.qend == 12 + len(QUESTION)
    other = wire.encode_name("other.test") + b"\x00\x01\x00\x01"
    assert replies.accept_reply(tc, 0x4242, other) is None
    # FORMERR and NOTIMP without a question: accepted on id, QR and opcode
    for rcode in (wire.FORMERR, wire.NOTIMP):
        bare = struct.pack("!HHHHHH", 0x4242, 0x8180 | rcode, 0, 0, 0, 0)
        layout = replies.accept_reply(bare, 0x4242, QUESTION)
        assert layout is not None and layout.rcode == rcode
        assert replies.accept_reply(bare, 0x4243, QUESTION) is None
        assert (
            replies.accept_reply(bare[:2] + b"\x01" + bare[3:], 0x4242, QUESTION) is None
        )  # no QR
        notify = struct.pack("!HHHHHH", 0x4242, 0xA180 | rcode, 0, 0, 0, 0)
        assert replies.accept_reply(notify, 0x4242, QUESTION) is None
    no_question = struct.pack("!HHHHHH", 0x4242, 0x8182, 0, 0, 0, 0)
    assert replies.accept_reply(no_question, 0x4242, QUESTION) is None  # SERVFAIL needs one
    with pytest.raises(wire.WireError):
        replies.accept_reply(good[:-1], 0x4242, QUESTION)  # our reply, but a record cut short
