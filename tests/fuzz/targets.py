"""The fuzz targets: one function of bytes each, raising only on a bug.

Each target takes the fuzzer's bytes, runs a piece of resolverd on them and checks its
properties (`checks.check_reply` and the asserts below). The only exception a parser may raise
for bad input is `wire.WireError`, and only where its docstring says so; anything else, or a
property that does not hold, is a crash the fuzzer keeps.

    query    wire.parse_query, question_key, messages.error_reply
    reply    replies.accept_reply, scan_reply, without_opt, chain_of
    splice   chains.splice over two upstream replies
    cache    cache.build_entry and Entry.reply at an age and a size limit
    handler  Handler.handle end to end (scenario.py), upstream replies from the input
    chain    chains.walk_chain against dnslib's reading of the same reply: which addresses
             may be routed, and the names that go into the hold journal
    journal  the hold journal's reader (records.parse) on any bytes: what it restores

Input layouts are documented per target; `seeds.py` writes a corpus in them.
"""

from __future__ import annotations

import math
import socket
import struct
from collections.abc import Callable
from typing import Any

from dnslib import QTYPE, DNSRecord

from resolver.dns import cache, chains, messages, replies, wire
from resolver.net import records
from tests.fuzz.checks import (
    Violation,
    check_reply,
    dnslib_agrees,
    dnslib_question,
    question_end,
    require,
)

FALLBACK_QUESTION = b"\x03www\x07example\x04test\x00\x00\x01\x00\x01"
MAX_TTL, MAX_NEGATIVE_TTL = 86_400, 3_600


def target_query(data: bytes) -> None:
    """A client's query, as it comes: parsed, keyed, answered with an error."""
    try:
        qend, qtype, flags, limit = wire.parse_query(data)
    except wire.WireError as err:
        require(err.rcode in (None, wire.FORMERR, wire.NOTIMP, wire.BADVERS), "rcode")
        require(0 <= err.qend <= len(data), "qend out of the message")
        if err.rcode is None:
            return
        require(err.qend == 0 or err.qend == question_end(data), "qend is no question end")
        reply = messages.error_reply(data, err.rcode, err.qend, err.edns, err.do)
        check_reply(
            reply, data, err.qend, limit=wire.PLAIN_SIZE, strict=dnslib_question(data, err.qend)
        )
        return
    require(12 < qend <= len(data) and qend == question_end(data), "qend")
    require(wire.PLAIN_SIZE <= limit <= wire.EDNS_SIZE, "UDP limit out of range")
    require(qtype == (data[qend - 4] << 8) | data[qend - 3], "qtype")
    key = wire.question_key(data, qend, flags)
    name = data[12 : qend - 4]
    require(key == name.lower() + data[qend - 4 : qend] + key[-1:] and key[-1] < 8, "key")
    require(wire.read_name(key, 0) == wire.name_text(data[12 : qend - 4]), "key name")
    edns, do = bool(flags & wire.EDNS), bool(flags & wire.DO_BIT)
    for rcode in (wire.SERVFAIL, wire.NXDOMAIN, wire.REFUSED):
        reply = messages.error_reply(data, rcode, qend, edns, do)
        check_reply(reply, data, qend, limit=limit, strict=dnslib_question(data, qend))
        require(reply[3] & 0xF == rcode and bool(reply[11]) == edns, "error reply header")


def target_reply(data: bytes) -> None:
    """An upstream reply: accepted (against its own id and question), walked, cut, chained."""
    qend = question_end(data)
    question = data[12:qend] if qend else FALLBACK_QUESTION
    qid = (data[0] << 8 | data[1]) if len(data) >= 2 else 0
    try:
        layout = replies.accept_reply(data, qid, question)
    except wire.WireError:
        return
    if layout is None or layout.truncated or layout.qend == 12:
        return
    require(layout.qend == qend and layout.end <= len(data), "layout bounds")
    body = data[: layout.end]
    try:
        again = replies.scan_reply(body)
    except wire.WireError as err:
        raise Violation(f"the cut reply no longer walks: {err}") from None
    require(again.ttl_offsets == layout.ttl_offsets and again.ttls == layout.ttls, "rescan")
    for at, ttl in zip(layout.ttl_offsets, layout.ttls, strict=True):
        raw = struct.unpack_from("!I", body, at)[0]
        require(ttl == (0 if raw & 0x80000000 else raw), "TTL offset reads another value")
    qname = wire.read_name(body, 12)
    chain, addresses = chains.chain_of(body, layout, qname)
    require(chain[0] == qname and len(chain) <= wire.MAX_CHAIN + 1, "chain length")
    require(len(set(chain)) == len(chain), "a name twice on the chain")
    require(all(len(a) in (4, 16) for a, _ttl in addresses), "address length")
    try:
        buf, offsets = replies.without_opt(body, layout)
        cut = bytes(buf)
    except wire.WireError:
        return
    try:
        cut_layout = replies.scan_reply(cut)
    except wire.WireError as err:
        raise Violation(f"without_opt made a reply that does not walk: {err}") from None
    require(cut_layout.opt is None and cut_layout.ttl_offsets == offsets, "cut layout")
    require(cut_layout.ttls == layout.ttls, "cutting the OPT changed a TTL")
    require(chains.chain_of(cut, cut_layout, qname) == (chain, addresses), "cut chain")
    if dnslib_agrees(body):
        require(dnslib_agrees(cut), "dnslib reads the reply but not without its OPT")


def target_splice(data: bytes) -> None:
    """Two upstream replies: byte 0 picks the target on the first one's chain, then a 2-byte
    length and the first reply, then the second (the breakout resolvers' answer)."""
    if len(data) < 3:
        return
    pick, size = data[0], struct.unpack_from("!H", data, 1)[0]
    first, local = data[3 : 3 + size], data[3 + size :]
    try:
        layout = replies.scan_reply(first)
        local_layout = replies.scan_reply(local)
    except wire.WireError:
        return
    if first[4:6] != b"\0\x01" or local[4:6] != b"\0\x01":
        return
    qname = wire.read_name(first, 12)
    chain, _ = chains.chain_of(first, layout, qname)
    if len(chain) < 2:
        return
    target = chain[1 + pick % (len(chain) - 1)]
    joined = chains.splice(first, layout, target, local, local_layout)
    if joined is None:
        return
    try:
        joined_layout = replies.scan_reply(joined)
    except wire.WireError as err:
        raise Violation(f"the spliced answer does not walk: {err}") from None
    require(joined[:2] == first[:2] and joined[12 : layout.qend] == first[12 : layout.qend], "q")
    require(joined_layout.rcode == wire.NOERROR and joined_layout.opt is None, "rcode/OPT")
    joined_chain, _ = chains.chain_of(joined, joined_layout, qname)
    require(joined_chain[: chain.index(target) + 1] == chain[: chain.index(target) + 1], "chain")
    if dnslib_agrees(first) and dnslib_agrees(local):
        require(dnslib_agrees(joined), "dnslib reads both replies but not the spliced one")


def target_cache(data: bytes) -> None:
    """An upstream reply cached and served: byte 0 the client's flags (bit 0 EDNS, bit 1 DO,
    bit 2 CD), bytes 1-2 its size limit, byte 3 the age in seconds, then the reply. The query
    is the reply's own question, under another id."""
    if len(data) < 16:
        return
    options, age = data[0], data[3]
    limit = max(struct.unpack_from("!H", data, 1)[0], wire.PLAIN_SIZE)  # as parse_query gives
    reply = data[4:]
    qend = question_end(reply)
    if not qend:
        return
    question = reply[12:qend]
    qid = reply[0] << 8 | reply[1]
    try:
        layout = replies.accept_reply(reply, qid, question)
    except wire.WireError:
        return
    if layout is None or layout.truncated or layout.qend == 12:
        return
    body = reply[: layout.end]
    edns = bool(options & 1)
    query = bytes((reply[0] ^ 0x5A, reply[1], 0x01, 0x10 if options & 4 else 0))
    query += b"\0\x01\0\0\0\0\0" + (b"\x01" if edns else b"\0") + question
    if edns:
        query += messages.opt_record(bool(options & 2))
    try:
        qend_q, _qtype, flags, _limit = wire.parse_query(query)
    except wire.WireError:
        return  # e.g. a question name the client could not have sent
    key = wire.question_key(query, qend_q, flags)
    try:
        entry, chain = cache.build_entry(
            key, body, replies.scan_reply(body), 1000.0, MAX_TTL, MAX_NEGATIVE_TTL
        )
    except wire.WireError:
        return
    require(0 <= entry.ttl <= MAX_TTL, "entry TTL out of range")
    require(entry.addr_base <= max(entry.ttl, MAX_TTL), "address TTL")
    strict = dnslib_agrees(body) and dnslib_question(query, qend_q)
    before: list[int] | None = None
    for when in (0, age):
        out = entry.reply(query, qend_q, edns, limit, 1000.0 + when)
        got = check_reply(out, query, qend_q, limit=limit, strict=strict, max_ttl=MAX_TTL)
        if before is not None and not got.truncated and len(got.ttls) == len(before):
            require(all(b - when <= t <= b for b, t in zip(before, got.ttls, strict=True)), "age")
        if not got.truncated and when == 0:
            before = got.ttls
    again = entry.chain()
    require(again.names == chain.names and again.addresses == chain.addresses, "entry chain")


def target_chain(data: bytes) -> None:
    """An upstream reply, as `reply` takes it: the chain and the addresses that may be routed
    are those a plain reading by dnslib gives (answer records in order, a CNAME of the name
    reached so far moves on, its addresses count until a CNAME of it shows up), and every name
    on the chain is one the journal's reader takes back and encodes back to its bytes."""
    try:
        layout = replies.scan_reply(data, trailing=True)
        body = data[: layout.end]
        layout = replies.scan_reply(body)
    except wire.WireError:
        return
    if body[4:6] != b"\0\x01" or layout.qend == 12:
        return
    qname = wire.read_name(body, 12)
    chain, cnames, addresses = chains.walk_chain(body, layout, qname)
    require(chain[0] == qname and len(chain) == len(cnames) + 1, "chain and its CNAMEs")
    require(len(set(chain)) == len(chain) and len(chain) <= wire.MAX_CHAIN + 1, "chain shape")
    for name in chain:
        require(records.name_ok(name) or name == "", "a name the journal would refuse")
        require(wire.read_name(wire.encode_name(name), 0) == name, "name round trip")
    if dnslib_agrees(body):
        require((chain, addresses) == _dnslib_chain(body), "dnslib reads another chain")


def _dnslib_chain(body: bytes) -> tuple[list[str], list[tuple[bytes, int]]]:
    """walk_chain's rule, on dnslib's records: the independent reading."""
    record = DNSRecord.parse(body)

    def key(label: Any) -> tuple[bytes, ...]:
        return tuple(bytes(part).lower() for part in label.label)

    name = key(record.q.qname)
    names: list[tuple[bytes, ...]] = [name]
    out: list[tuple[bytes, int]] = []
    for rr in record.rr:
        if key(rr.rname) != name:
            continue
        if rr.rtype == QTYPE.CNAME:
            out = []
            target = key(rr.rdata.label)
            if target in names or len(names) > wire.MAX_CHAIN:
                break
            names.append(target)
            name = target
        elif rr.rtype in (QTYPE.A, QTYPE.AAAA) and len(rr.rdata.data) in (4, 16):
            ttl = 0 if rr.ttl & 0x80000000 else rr.ttl
            out.append((bytes(rr.rdata.data), ttl))
    texts = [wire.read_name(b"".join(bytes((len(p),)) + p for p in n) + b"\0", 0) for n in names]
    return texts, out


def target_journal(data: bytes) -> None:
    """Any bytes as a hold journal: read without an exception, and what it restores is what
    the writer could have written: an address in its canonical form, a finite expiry no later
    than the limit given, a name in read_name's form (or the unaccounted marker)."""
    latest = 2_000_000_000.0
    loaded = records.parse(data, "fuzz.journal", latest)
    require(loaded.ok or bool(loaded.problems), "untrusted without a reason")
    for address, saved in loaded.holds.items():
        family = socket.AF_INET6 if ":" in address else socket.AF_INET
        require(socket.inet_ntop(family, socket.inet_pton(family, address)) == address, "addr")
        require(math.isfinite(saved.expires) and saved.expires <= latest, "expiry")
        require(all(e <= saved.expires for e in saved.names.values()), "name expiry")
        for name in saved.names:
            require(name == records.UNACCOUNTED or records.name_ok(name), "name")
            require(all(32 < ord(ch) < 127 for ch in name.replace(" ", "!")), "printable")


def target_handler(data: bytes) -> None:
    from tests.fuzz import scenario

    scenario.run(data)


TARGETS: dict[str, Callable[[bytes], None]] = {
    "query": target_query,
    "reply": target_reply,
    "splice": target_splice,
    "cache": target_cache,
    "handler": target_handler,
    "chain": target_chain,
    "journal": target_journal,
}
