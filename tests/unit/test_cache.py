"""resolver.dns.cache and store: entries from replies (TTL rules, variants, TC), the LRU, retag."""

from __future__ import annotations

import random
import struct
from collections.abc import Iterable

import pytest
from dnslib import AAAA, CNAME, EDNS0, QTYPE, RR, SOA, TXT, A, DNSLabel, DNSRecord

from policy.loader import builtin_policy
from policy.matcher import Matcher
from policy.model import Match, Rule
from resolver.dns import replies, wire
from resolver.dns.cache import ENTRY_BYTES, SHARED_OFFSETS_MAX, Entry, build_entry
from resolver.dns.store import Cache
from resolver.dns.tagging import tag
from resolver.hooks import address_texts

pytestmark = pytest.mark.unit


class Rows:
    def __init__(self, rows: dict[str, int]) -> None:
        self.rows = rows

    def match(self, name: str) -> Match | None:
        found = self.match_any([name])
        return found[1] if found is not None else None

    def match_any(self, names: Iterable[str]) -> tuple[str, Match] | None:
        for name in names:
            if name in self.rows:
                return name, Match(Rule(row=self.rows[name], purpose="", required=True), name)
        return None


def _query(name: str, qtype: str = "A", edns: bool = False, do: bool = False) -> bytes:
    q = DNSRecord.question(name, qtype)
    if edns:
        q.add_ar(EDNS0(udp_len=1232, flags="do" if do else ""))
    return bytes(q.pack())


def _entry(
    reply: DNSRecord,
    now: float = 100.0,
    max_ttl: int = 86400,
    max_neg: int = 3600,
    rows: dict[str, int] | None = None,
    do: bool = False,
) -> Entry:
    data = bytes(reply.pack())
    layout = replies.scan_reply(data)
    key = wire.question_key(data, layout.qend, wire.DO_BIT if do else 0)
    entry, chain = build_entry(key, data, layout, now, max_ttl, max_neg)
    # The miss path hands in the name it asked about: the same entry and chain.
    given, same = build_entry(key, data, layout, now, max_ttl, max_neg, wire.read_name(data, 12))
    assert (given.wire, given.ttl_at, given.ttl) == (entry.wire, entry.ttl_at, entry.ttl)
    assert same == chain
    entry.tag = tag(chain, Rows(rows or {}))
    entry.addr_base = chain.addr_ttl
    return entry


def bases(entry: Entry) -> list[int]:
    """The TTLs the entry hands out at age 0."""
    offsets = [at for (at,) in struct.iter_unpack("!H", entry.ttl_at)]
    return [struct.unpack_from("!I", entry.wire, at)[0] for at in offsets]


def addresses(entry: Entry) -> list[str]:
    return address_texts(entry.chain().addresses)


def _positive(name: str = "www.example.test") -> DNSRecord:
    r = DNSRecord.parse(_query(name, edns=True)).reply()
    r.add_answer(RR(name, QTYPE.A, rdata=A("192.0.2.1"), ttl=120))
    r.add_answer(RR(name, QTYPE.A, rdata=A("192.0.2.2"), ttl=60))
    r.add_ar(EDNS0(udp_len=4096))
    return r


def _negative(rcode: int, soa_ttl: int = 900, minimum: int = 300) -> DNSRecord:
    r = DNSRecord.parse(_query("nope.example.test")).reply()
    r.header.rcode = rcode
    times = (1, 2, 3, 4, minimum)
    r.add_auth(RR("example.test", QTYPE.SOA, rdata=SOA("ns.t", "h.t", times), ttl=soa_ttl))
    return r


def test_positive_ttl_is_smallest_answer_ttl() -> None:
    entry = _entry(_positive())
    assert entry.ttl == 60 and entry.expires == 160.0 and entry.result == "noerror"
    assert addresses(entry) == ["192.0.2.1", "192.0.2.2"] and entry.addr_ttl(0) == 60


def test_ttls_count_down_by_whole_seconds() -> None:
    entry = _entry(_positive())
    query = _query("WWW.example.test")
    first = DNSRecord.parse(entry.reply(query, len(query), False, 512, 100.0))
    assert [r.ttl for r in first.rr] == [120, 60]
    same = DNSRecord.parse(entry.reply(query, len(query), False, 512, 100.9))
    assert [r.ttl for r in same.rr] == [120, 60]
    earlier = DNSRecord.parse(entry.reply(query, len(query), False, 512, 98.5))
    assert [r.ttl for r in earlier.rr] == [120, 60]  # a clock gone back raises no TTL
    later = DNSRecord.parse(entry.reply(query, len(query), False, 512, 130.2))
    assert [r.ttl for r in later.rr] == [90, 30]
    assert str(later.q.qname) == "WWW.example.test."
    assert entry.addr_ttl(30) == 30
    assert [r.ttl for r in DNSRecord.parse(entry.reply(query, len(query), False, 512, 500)).rr] == [
        0,
        0,
    ]


def test_replies_of_one_shape_share_their_ttl_offsets_and_big_ones_do_not() -> None:
    one, other = _entry(_positive("a1.example.test")), _entry(_positive("b2.example.test"))
    assert one.ttl_at == other.ttl_at and one.ttl_at is other.ttl_at  # one object for both
    assert _entry(_positive("longer.example.test")).ttl_at != one.ttl_at
    big = DNSRecord.parse(_query("many.example.test")).reply()
    for i in range(SHARED_OFFSETS_MAX // 2 + 1):  # one TTL more than a shared pattern has
        big.add_answer(RR("many.example.test", QTYPE.A, rdata=A(f"192.0.2.{i + 1}"), ttl=60))
    first, second = _entry(big), _entry(big)
    assert first.ttl_at == second.ttl_at and first.ttl_at is not second.ttl_at
    assert len(first.ttl_at) > SHARED_OFFSETS_MAX


def test_positive_ttl_capped_at_max_ttl() -> None:
    entry = _entry(_positive(), max_ttl=30)
    assert entry.ttl == 30 and bases(entry) == [30, 30]


def test_both_variants_and_rd_echo() -> None:
    entry = _entry(_positive())
    edns_q = _query("www.example.test", edns=True)
    plain_q = _query("www.example.test")
    edns_r = DNSRecord.parse(entry.reply(edns_q, len(edns_q) - 11, True, 1232, 100.0))
    plain_r = DNSRecord.parse(entry.reply(plain_q, len(plain_q), False, 512, 100.0))
    assert [r.rtype for r in edns_r.ar] == [QTYPE.OPT] and edns_r.ar[0].rclass == 1232
    assert plain_r.ar == []
    no_rd = bytearray(plain_q)
    no_rd[2] &= 0xFE
    assert DNSRecord.parse(entry.reply(bytes(no_rd), len(no_rd), False, 512, 100.0)).header.rd == 0


def test_too_big_becomes_minimal_tc() -> None:
    r = DNSRecord.parse(_query("big.example.test", "TXT")).reply()
    for i in range(20):
        r.add_answer(RR("big.example.test", QTYPE.TXT, rdata=TXT("x" * 60 + str(i)), ttl=60))
    entry = _entry(r)
    query = _query("big.example.test", "TXT")
    raw = entry.reply(query, len(query), False, 512, 100.0)
    tc = DNSRecord.parse(raw)
    assert tc.header.tc == 1 and tc.rr == [] and tc.ar == [] and len(raw) == len(query)
    edns_q = _query("big.example.test", "TXT", edns=True)
    tc = DNSRecord.parse(entry.reply(edns_q, len(edns_q) - 11, True, 1232, 100.0))
    assert tc.header.tc == 1 and [x.rtype for x in tc.ar] == [QTYPE.OPT]
    full = DNSRecord.parse(entry.reply(query, len(query), False, 65535, 100.0))
    assert len(full.rr) == 20 and full.header.tc == 0


@pytest.mark.parametrize("rcode", [0, 3])
def test_negative_ttl_rules(rcode: int) -> None:
    assert _entry(_negative(rcode, 900, 300)).ttl == 300
    assert _entry(_negative(rcode, 200, 300)).ttl == 200
    assert _entry(_negative(rcode, 900, 300), max_neg=50).ttl == 50
    entry = _entry(_negative(rcode, 900, 300))
    assert bases(entry) == [300]  # the SOA handed out never outlives the negative entry
    no_soa = DNSRecord.parse(_query("nope.example.test")).reply()
    no_soa.header.rcode = rcode
    assert _entry(no_soa).ttl == 0


def test_servfail_and_ttl_zero_not_cacheable() -> None:
    r = DNSRecord.parse(_query("x.test")).reply()
    r.header.rcode = 2
    assert _entry(r).ttl == 0
    zero = DNSRecord.parse(_query("x.test")).reply()
    zero.add_answer(RR("x.test", QTYPE.A, rdata=A("192.0.2.1"), ttl=0))
    assert _entry(zero).ttl == 0


def test_tag_from_chain_and_retag() -> None:
    r = DNSRecord.parse(_query("alias.test")).reply()
    r.add_answer(RR("alias.test", QTYPE.CNAME, rdata=CNAME("edge.test"), ttl=300))
    r.add_answer(RR("edge.test", QTYPE.A, rdata=A("198.51.100.7"), ttl=30))
    r.add_answer(RR("other.test", QTYPE.A, rdata=A("203.0.113.1"), ttl=5))
    entry = _entry(r, rows={"edge.test": 5, "other.test": 6})
    assert entry.tag is not None
    assert (entry.tag.qname, entry.tag.via, entry.tag.match.rule.row) == (
        "alias.test",
        "edge.test",
        5,
    )
    assert address_texts(entry.tag.addresses) == ["198.51.100.7"] and entry.addr_base == 30
    # A reload re-tags from the stored bytes: the chain is read again, not kept.
    again = tag(entry.chain(), Rows({"alias.test": 9}))
    assert again is not None and again.match.rule.row == 9
    assert tag(entry.chain(), Rows({})) is None


def test_cache_lru_and_expiry() -> None:
    cache = Cache(2)
    a, b, c = (_entry(_positive(f"{n}.test")) for n in "abc")
    cache.put(a)
    cache.put(b)
    assert cache.get(a.key, 100.0) is a  # a is now the most recent
    cache.put(c)
    assert cache.get(b.key, 100.0) is None and b.expires == -1.0
    assert len(cache) == 2 and cache.evicted == 1
    assert cache.get(a.key, 160.0) is None  # expired: dropped
    assert len(cache) == 1
    cache.resize(0)
    assert len(cache) == 0 and c.expires == -1.0


def test_cache_replaces_same_key() -> None:
    cache = Cache(5)
    old, new = _entry(_positive()), _entry(_positive(), now=110.0)
    cache.put(old)
    cache.put(new)
    assert len(cache) == 1 and old.expires == -1.0 and cache.get(new.key, 111.0) is new
    cache.drop(old)  # not the one stored under its key: nothing happens
    assert cache.get(new.key, 111.0) is new
    cache.clear()
    assert len(cache) == 0 and new.expires == -1.0


def test_a_label_holding_a_dot_is_not_matched_as_two_labels() -> None:
    """`evil.office` + `com` is one odd label then `com`: not a name under office.com."""
    odd = DNSLabel([b"evil.office", b"com"])
    reply = DNSRecord.question("x.example.test").reply()
    reply.questions[0].qname = odd
    reply.add_answer(RR(odd, QTYPE.A, rdata=A("203.0.113.9"), ttl=60))
    data = bytes(reply.pack())
    layout = replies.scan_reply(data)
    key = wire.question_key(data, layout.qend, 0)
    entry, chain = build_entry(key, data, layout, 0.0, 86400, 3600)
    assert entry.chain().names == chain.names == ["evil\\046office.com"]
    assert tag(chain, Matcher(builtin_policy().rules)) is None
    assert Matcher(builtin_policy().rules).match("evil.office.com") is not None  # the lookalike


# -- review fixes: our header bits, positive vs negative with an SOA, TTL top bit ----------------


def test_stored_header_is_ours_no_aa_no_tc_ra_set() -> None:
    r = _positive()
    r.header.aa = 1
    r.header.ra = 0
    entry = _entry(r)
    for edns in (False, True):
        query = _query("www.example.test", edns=edns)
        qend = len(query) - 11 if edns else len(query)
        reply = DNSRecord.parse(entry.reply(query, qend, edns, 1232, 100.0))
        assert not reply.header.aa and not reply.header.tc and reply.header.ra


def test_positive_answer_with_soa_in_authority_is_not_negative() -> None:
    r = _positive()
    soa = SOA("ns.t", "h.t", (1, 2, 3, 4, 5))
    r.add_auth(RR("example.test", QTYPE.SOA, rdata=soa, ttl=900))
    entry = _entry(r)
    assert entry.ttl == 60 and bases(entry) == [120, 60, 900]


def test_cname_answer_to_a_cname_query_is_positive() -> None:
    r = DNSRecord.parse(_query("alias.test", "CNAME")).reply()
    r.add_answer(RR("alias.test", QTYPE.CNAME, rdata=CNAME("edge.test"), ttl=300))
    r.add_auth(RR("test", QTYPE.SOA, rdata=SOA("ns.t", "h.t", (1, 2, 3, 4, 5)), ttl=900))
    assert _entry(r).ttl == 300


def test_nodata_after_cnames_is_negative_and_needs_an_soa() -> None:
    r = DNSRecord.parse(_query("alias.test", "AAAA")).reply()
    r.add_answer(RR("alias.test", QTYPE.CNAME, rdata=CNAME("edge.test"), ttl=300))
    r.add_answer(RR("other.test", QTYPE.AAAA, rdata=AAAA("2001:db8::1"), ttl=300))  # off-chain
    assert _entry(r).ttl == 0  # RFC 2308 5: no SOA, not cached
    r.add_auth(RR("test", QTYPE.SOA, rdata=SOA("ns.t", "h.t", (1, 2, 3, 4, 20)), ttl=900))
    entry = _entry(r)
    assert entry.ttl == 20 and bases(entry) == [20, 20, 20]


def test_ttl_with_the_top_bit_set_is_zero_and_not_cached() -> None:
    entry = _entry(_positive())
    data = bytearray(entry.wire)
    struct.pack_into("!I", data, struct.unpack_from("!H", entry.ttl_at)[0], 0x80000000)
    layout = replies.scan_reply(bytes(data))
    key = wire.question_key(bytes(data), layout.qend, 0)
    odd, _chain = build_entry(key, bytes(data), layout, 0.0, 86400, 3600)
    assert odd.ttl == 0 and bases(odd) == [0, 60]
    query = _query("www.example.test")
    assert [r.ttl for r in DNSRecord.parse(odd.reply(query, len(query), False, 512, 0.0)).rr] == [
        0,
        60,
    ]


def test_cache_bounds_the_bytes_of_its_answers_too() -> None:
    """Answers fetched over TCP can be 64 KB: the cache holds max_entries x ENTRY_BYTES bytes
    of answers at most, however few entries that is, the least recently used going first."""
    cache = Cache(100)  # 123,200 bytes
    small = [_entry(_positive(f"{n}.test")) for n in range(5)]
    for entry in small:
        cache.put(entry)
    assert cache.bytes == sum(len(e.wire) for e in small)
    huge = []
    for n in range(3):
        reply = _positive(f"big{n}.test")
        for _ in range(200):
            reply.add_answer(RR(f"big{n}.test", QTYPE.TXT, rdata=TXT("x" * 250), ttl=60))
        huge.append(_entry(reply))
    assert all(50_000 < len(e.wire) < 60_000 for e in huge)
    for entry in huge:
        cache.put(entry)
    assert list(cache) == huge[1:]  # the small ones and the oldest big one made room
    assert cache.evicted == 6 and all(e.expires == -1.0 for e in (*small, huge[0]))
    assert cache.bytes == len(huge[1].wire) + len(huge[2].wire) <= cache.max_bytes
    assert cache.max_bytes == 100 * ENTRY_BYTES
    cache.drop(huge[1])
    assert cache.bytes == len(huge[2].wire)
    cache.resize(1)  # 1,232 bytes: no 55 KB answer fits
    assert len(cache) == 0 and cache.bytes == 0


def test_an_answer_bigger_than_the_whole_cache_is_answered_but_not_kept() -> None:
    cache = Cache(10)  # 12,320 bytes
    small = _entry(_positive("big.test"), now=50.0)
    cache.put(small)
    reply = _positive("big.test")
    for _ in range(200):
        reply.add_answer(RR("big.test", QTYPE.TXT, rdata=TXT("x" * 250), ttl=300))
    entry = _entry(reply, now=100.0)
    assert entry.key == small.key and len(entry.wire) > cache.max_bytes
    cache.put(entry)  # a newer answer to the same question, too big to keep
    assert len(cache) == 0 and cache.bytes == 0 and small.expires == -1.0
    assert entry.expires > 100.0  # not killed: the reply made from it keeps its TTLs
    query = _query("big.test")
    answer = DNSRecord.parse(entry.reply(query, len(query), False, 65535, 105.0))
    assert sorted({r.ttl for r in answer.rr}) == [55, 115, 295]  # 60, 120 and 300, 5 s on


def _owned(name: str, owner: bytes, now: float = 100.0) -> Entry:
    entry = _entry(_positive(name), now=now)
    entry.owner = owner
    return entry


A_CLIENT, B_CLIENT = bytes([192, 0, 2, 1]), bytes([192, 0, 2, 2])


def test_a_client_past_its_share_evicts_its_own_oldest_answer_not_anothers() -> None:
    cache = Cache(8, client_share=0.25)  # two answers per client
    theirs = _owned("theirs.test", B_CLIENT)
    cache.put(theirs)
    flood = [_owned(f"f{n}.test", A_CLIENT) for n in range(6)]
    for entry in flood:
        cache.put(entry)
    assert cache.get(theirs.key, 101.0) is theirs
    assert [e.key for e in cache] == [flood[4].key, flood[5].key, theirs.key]
    assert all(e.expires == -1.0 for e in flood[:4])
    assert cache.client_evicted == 4 and cache.evicted == 0
    assert cache.owned(A_CLIENT) == 2 and cache.owned(B_CLIENT) == 1
    # Its own least recently used goes first: a hit renews an answer in its client's share too.
    assert cache.get(flood[4].key, 101.0) is flood[4]
    cache.put(_owned("f6.test", A_CLIENT))
    assert flood[5].expires == -1.0 and cache.get(flood[4].key, 101.0) is flood[4]


def test_a_client_share_follows_every_way_an_answer_leaves() -> None:
    cache = Cache(3, client_share=1.0)
    a, b = _owned("a.test", A_CLIENT, now=100.0), _owned("b.test", A_CLIENT, now=100.0)
    cache.put(a)
    cache.put(b)
    cache.put(_owned("a.test", B_CLIENT, now=110.0))  # replaced: charged to its new client
    assert cache.owned(A_CLIENT) == 1 and cache.owned(B_CLIENT) == 1
    assert cache.get(b.key, 1000.0) is None  # expired
    assert cache.owned(A_CLIENT) == 0
    c, d, e = (_owned(f"{n}.test", A_CLIENT, now=900.0) for n in "cde")
    for entry in (c, d, e):
        cache.put(entry)  # the LRU bound evicts a.test (B's), then c
    assert cache.owned(B_CLIENT) == 0 and cache.owned(A_CLIENT) == 3 and cache.evicted == 1
    cache.drop(d)
    assert cache.owned(A_CLIENT) == 2
    cache.resize(3, client_share=0.34)  # one per client now: its least recently used go
    assert cache.owned(A_CLIENT) == 1 and cache.get(e.key, 901.0) is e
    assert cache.client_evicted == 1
    unowned = _entry(_positive("nobody.test"))  # no client (b""): never charged
    cache.put(unowned)
    assert cache.get(unowned.key, 101.0) is unowned
    cache.clear()
    assert cache.owned(A_CLIENT) == 0 and len(cache) == 0


def test_a_share_of_the_whole_cache_leaves_the_lru_order() -> None:
    cache = Cache(3, client_share=1.0)  # one client: another DNS server in the branch
    a, b, c, d = (_owned(f"{n}.test", A_CLIENT) for n in "abcd")
    for entry in (a, b, c):
        cache.put(entry)
    assert cache.get(a.key, 101.0) is a  # a is the most recently used
    cache.put(d)
    assert b.expires == -1.0 and cache.get(a.key, 101.0) is a  # b went, not a (stored first)
    assert cache.owned(A_CLIENT) == 3
    assert cache.evicted == 1 and cache.client_evicted == 0
    cache.resize(2, client_share=1.0)
    assert c.expires == -1.0 and cache.client_evicted == 0


def test_a_share_of_one_answer_keeps_the_new_one() -> None:
    """With a share of one answer (15 entries, an eighth), a client's new answer replaces its
    only one, and the cache still finds it."""
    cache = Cache(15, client_share=0.125)
    first, second = _owned("first.test", A_CLIENT), _owned("second.test", A_CLIENT)
    cache.put(first)
    cache.put(second)
    assert first.expires == -1.0 and cache.get(second.key, 101.0) is second
    assert cache.owned(A_CLIENT) == 1 and cache.client_evicted == 1
    cache.drop(second)
    assert cache.owned(A_CLIENT) == 0 and len(cache) == 0 and cache.bytes == 0


def _big(name: str, owner: bytes) -> Entry:
    reply = _positive(name)
    for _ in range(40):
        reply.add_answer(RR(name, QTYPE.TXT, rdata=TXT("x" * 250), ttl=60))
    entry = _entry(reply)
    entry.owner = owner
    return entry


def test_a_client_past_its_share_of_the_bytes_evicts_its_own_answers_not_anothers() -> None:
    """Big answers over TCP: within its share of entries, a client still holds at most its
    share of the bytes, and its big answers do not push the other clients' out."""
    cache = Cache(100, client_share=0.25)  # 25 answers and 30,800 bytes per client
    theirs = [_owned(f"t{n}.test", B_CLIENT) for n in range(20)]
    for entry in theirs:
        cache.put(entry)
    flood = [_big(f"big{n}.test", A_CLIENT) for n in range(10)]
    assert all(10_000 < len(e.wire) < 11_000 for e in flood)
    for entry in flood:
        cache.put(entry)
    assert all(cache.get(e.key, 101.0) is e for e in theirs) and cache.evicted == 0
    assert cache.owned(A_CLIENT) == 2 and [e.expires for e in flood[:8]] == [-1.0] * 8
    assert cache.owned_bytes(A_CLIENT) == len(flood[8].wire) + len(flood[9].wire)
    assert cache.client_evicted == 8
    cache.resize(100, client_share=0.1)  # 12,320 bytes: one of them
    assert cache.owned(A_CLIENT) == 1 and cache.get(flood[9].key, 101.0) is flood[9]
    whole = _big("whole.test", A_CLIENT)
    whole.wire *= 2  # bigger than a share: answered, not kept, nothing evicted for it
    cache.put(whole)
    assert cache.get(whole.key, 101.0) is None and cache.owned(A_CLIENT) == 1


@pytest.mark.parametrize("seed", range(5))
def test_the_shares_always_add_up_to_the_cache(seed: int) -> None:
    """Whatever the order of puts, hits, drops, expiries and resizes: every entry is charged to
    its owner once, the bytes add up, no client holds more than its share, and no empty share
    is left behind."""
    rng = random.Random(seed)
    owners = [bytes([192, 0, 2, n]) for n in range(4)] + [b""]
    cache = Cache(12, client_share=0.25)
    made = [
        (_big if rng.random() < 0.2 else _owned)(f"n{n}.test", rng.choice(owners))
        for n in range(40)
    ]
    for _ in range(600):
        entry, roll = rng.choice(made), rng.random()
        if roll < 0.5:
            cache.put(_copy(entry))
        elif roll < 0.8:
            cache.get(entry.key, rng.choice((101.0, 101.0, 101.0, 1000.0)))
        elif roll < 0.95:
            found = cache.get(entry.key, 101.0)
            if found is not None:
                cache.drop(found)
        else:
            cache.resize(rng.choice((4, 12, 40)), rng.choice((0.1, 0.25, 1.0)))
        live = list(cache)
        assert cache.bytes == sum(len(e.wire) for e in live) <= cache.max_bytes
        assert len(live) <= cache.max_entries and all(e.expires > 0 for e in live)
        for owner in owners[:-1]:
            mine = [e for e in live if e.owner == owner]
            assert cache.owned(owner) == len(mine) <= cache.per_client
            assert cache.owned_bytes(owner) == sum(len(e.wire) for e in mine)
            assert cache.owned_bytes(owner) <= cache.per_client_bytes
        assert sorted(cache._owned) == sorted({e.owner for e in live if e.owner})
        for owner, share in cache._owned.items():  # each share's list: its entries, once
            walked, at = [], share.oldest
            while at is not None:
                walked.append(at)
                at = at.newer
            assert {id(e) for e in walked} == {id(e) for e in live if e.owner == owner}
            assert len(walked) == share.count and share.newest is walked[-1]


def _copy(entry: Entry) -> Entry:
    fresh = Entry(entry.key, entry.wire, entry.ttl_at, entry.qend, entry.ttl, entry.stored)
    fresh.owner = entry.owner
    return fresh


def test_a_share_of_one_answer_has_room_for_the_largest_udp_answer() -> None:
    cache = Cache(100, client_share=0.001)  # a tenth of an answer: rounded up to one
    assert cache.per_client == 1 and cache.per_client_bytes == ENTRY_BYTES
    entry = _owned("one.test", A_CLIENT)
    cache.put(entry)
    assert cache.get(entry.key, 101.0) is entry
    cache.put(entry)  # the same answer again: still there, alive
    assert cache.get(entry.key, 101.0) is entry and cache.owned(A_CLIENT) == 1


def test_a_reload_that_shares_the_cache_evicts_the_flooders_answers_first() -> None:
    cache = Cache(100, client_share=1.0)
    theirs = [_owned(f"t{n}.test", B_CLIENT) for n in range(5)]
    flood = [_owned(f"f{n}.test", A_CLIENT) for n in range(95)]
    for entry in (*theirs, *flood):
        cache.put(entry)
    cache.resize(50, client_share=0.125)  # six answers a client
    assert all(cache.get(e.key, 101.0) is e for e in theirs) and cache.evicted == 0
    assert cache.owned(A_CLIENT) == 6 and cache.client_evicted == 89
    assert [e for e in flood if e.expires > 0] == flood[-6:]


def test_answer_owners_read_through_a_pointer_to_the_question_are_its_name() -> None:
    """scan_reply reads the question's name once for every owner that points at it (most
    answers' owner); others are read where they are. Both as read_name gives them."""
    q = DNSRecord.question("WWW.Example.TEST")
    reply = q.reply()
    reply.add_answer(RR("WWW.Example.TEST", QTYPE.CNAME, rdata=CNAME("Edge.CDN.test"), ttl=60))
    reply.add_answer(RR("www.example.test", QTYPE.CNAME, rdata=CNAME("other.test"), ttl=60))
    reply.add_answer(RR("edge.cdn.test", QTYPE.A, rdata=A("192.0.2.7"), ttl=60))
    data = bytearray(reply.pack())
    owners = []
    at = len(bytes(q.pack()))  # the first answer's owner
    for _ in range(3):
        owners.append(bytes(data[at : at + 2]))
        at = wire.skip_name(bytes(data), at, []) + 8
        at += 2 + struct.unpack_from("!H", data, at)[0]
    # dnslib points the first owner at the question and writes the other two out, up to a
    # pointer to "test" (its compression minds letter case).
    assert owners[0] == b"\xc0\x0c" and b"\xc0\x0c" not in owners[1:]
    layout = replies.scan_reply(bytes(data))
    assert [r.owner for r in layout.answers] == [
        "www.example.test", "www.example.test", "edge.cdn.test"
    ]  # fmt: skip


def test_a_clients_answers_hold_one_key_object() -> None:
    """Each miss makes its client's key anew (clients.charge_key); kept, the answers of one
    client share the first one: 48 bytes an answer otherwise, 2.9 MB at 61,000 answers."""
    cache = Cache(100, 0.5)
    first = _owned("a.example.test", bytes([192, 0, 2, 1]))
    second = _owned("b.example.test", bytes([192, 0, 2, 1]))
    assert first.owner is not second.owner
    cache.put(first)
    cache.put(second)
    assert second.owner is first.owner and cache.owned(first.owner) == 2
