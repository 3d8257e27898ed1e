"""Writes the seed corpus, tests/fuzz/corpus/TARGET/seed-NAME: `python -m tests.fuzz.seeds`.

Small, valid-looking inputs in each target's layout (targets.py, scenario.py) that reach the
interesting paths at once: EDNS and DO, compression, CNAME chains (long, looping, into a
policy name to be spliced), negative answers with an SOA, truncation and the TCP retry,
refusals, wrong ids, garbage. The fuzzer mutates from here. Crash files (crash-*) found by
test_fuzz.py land in the same directories and stay there as regression cases.
"""

from __future__ import annotations

import itertools
import struct
from pathlib import Path

from dnslib import AAAA, CNAME, EDNS0, QTYPE, RCODE, RR, SOA, TXT, A, DNSRecord

CORPUS = Path(__file__).resolve().parent / "corpus"
FORMERR_QUERIES = {
    "qdcount0": struct.pack("!HHHHHH", 0x1111, 0x0100, 0, 0, 0, 0),
    "pointer": struct.pack("!HHHHHH", 1, 0x100, 1, 0, 0, 0) + b"\x03www\xc0\x0c\0\x01\0\x01",
    "two-opt": struct.pack("!HHHHHH", 1, 0x100, 1, 0, 0, 2)
    + b"\x01a\0\0\x01\0\x01"
    + b"\0\0\x29\x04\xd0\0\0\0\0\0\0" * 2,
    "notify": struct.pack("!HHHHHH", 1, 4 << 11, 1, 0, 0, 0) + b"\x01a\0\0\x01\0\x01",
    "badvers": struct.pack("!HHHHHH", 1, 0x100, 1, 0, 0, 1)
    + b"\x01a\0\0\x01\0\x01"
    + b"\0\0\x29\x04\xd0\0\x01\0\0\0\0",
}


def query(name: str, qtype: str = "A", edns: int | None = None, do: bool = False) -> DNSRecord:
    q = DNSRecord.question(name, qtype)
    if edns is not None:
        q.add_ar(EDNS0(udp_len=edns, flags="do" if do else ""))
    return q


def reply(q: DNSRecord, *answers: RR, rcode: int = 0, soa: bool = False, tc: bool = False) -> bytes:
    r = q.reply()
    r.header.rcode = rcode
    r.header.tc = int(tc)
    for rr in answers:
        r.add_answer(rr)
    if soa:
        times = (1, 3600, 600, 86400, 30)
        r.add_auth(RR("test.", QTYPE.SOA, rdata=SOA("ns.test.", "h.test.", times), ttl=30))
    if any(rr.rtype == QTYPE.OPT for rr in q.ar):
        r.add_ar(EDNS0(udp_len=1232))
    return bytes(r.pack())


def a(name: str, address: str, ttl: int = 60) -> RR:
    return RR(name, QTYPE.A, rdata=A(address), ttl=ttl)


def cname(name: str, target: str, ttl: int = 300) -> RR:
    return RR(name, QTYPE.CNAME, rdata=CNAME(target), ttl=ttl)


def chain(names: list[str], address: str) -> list[RR]:
    out = [cname(x, y) for x, y in itertools.pairwise(names)]
    return [*out, a(names[-1], address)]


KEEP_ID = 2  # an item kind: the datagram goes out with the id it has


def handler_input(options: int, q: bytes, *items: bytes | tuple[int, bytes] | None) -> bytes:
    """scenario.py's layout: None is "no reply", (KEEP_ID, datagram) keeps its id."""
    out = bytes((options,)) + struct.pack("!H", len(q)) + q
    for item in items:
        if item is None:
            out += b"\x01"
            continue
        kind, data = item if isinstance(item, tuple) else (0, item)
        out += bytes((kind,)) + struct.pack("!H", len(data)) + data
    return out


def handler_seeds() -> dict[str, bytes]:
    www = query("www.example.test", edns=1232)
    ad = query("autodiscover.corp.example")
    outlook = query("outlook.office.com")
    big = query("big.example.test", "TXT", edns=512)
    txts = [RR("big.example.test", QTYPE.TXT, rdata=TXT("x" * 200), ttl=60) for _ in range(8)]
    long_names = [f"c{i}.office.com" for i in range(40)]
    loop = query("loop.office.com")
    nx = query("nx.example.test", "AAAA", edns=1232, do=True)
    six = query("x.sharepoint.com", "AAAA")
    six_rr = RR("x.sharepoint.com", QTYPE.AAAA, rdata=AAAA("2001:db8::5"), ttl=30)
    www_answer = reply(www, a("www.example.test", "192.0.2.10"))
    return {
        "plain": handler_input(0, www.pack(), www_answer),
        "tcp": handler_input(1, www.pack(), www_answer),
        "spliced": handler_input(
            4 | 2,
            ad.pack(),
            reply(ad, *chain(["autodiscover.corp.example", "outlook.office.com"], "203.0.113.5")),
            reply(outlook, a("outlook.office.com", "198.51.100.5")),
        ),
        "truncated-then-tcp": handler_input(0, big.pack(), reply(big, tc=True), reply(big, *txts)),
        "long-chain": handler_input(
            4,
            query(long_names[0]).pack(),
            reply(query(long_names[0]), *chain(long_names, "203.0.113.9")),
        ),
        "cname-loop": handler_input(
            2,
            loop.pack(),
            reply(
                loop,
                cname("loop.office.com", "l2.office.com"),
                cname("l2.office.com", "loop.office.com"),
            ),
        ),
        "negative-do": handler_input(0x20, nx.pack(), reply(nx, rcode=RCODE.NXDOMAIN, soa=True)),
        "servfail-then-answer": handler_input(
            0x40, six.pack(), reply(six, rcode=RCODE.SERVFAIL), reply(six, six_rr)
        ),
        "timeout-then-wrong-id": handler_input(
            0, www.pack(), None, (KEEP_ID, b"\x12\x34" + www_answer[2:]), www_answer
        ),
        "garbage": handler_input(0, www.pack(), www_answer[:2] + b"\x81\x80" + bytes(30)),
        "formerr-no-edns": handler_input(
            0, www.pack(), struct.pack("!HHHHHH", 0, 0x8101, 0, 0, 0, 0), www_answer
        ),
        "refused-acl": handler_input(8, www.pack(), www_answer),
        "budgets": handler_input(16, www.pack(), www_answer),
        **{f"formerr-{k}": handler_input(0, v) for k, v in FORMERR_QUERIES.items()},
    }


def reply_seeds() -> dict[str, bytes]:
    www = query("www.example.test", edns=1232, do=True)
    long_names = [f"c{i}.example.test" for i in range(20)]
    return {
        "a-opt": reply(www, a("www.example.test", "192.0.2.10")),
        "chain": reply(
            query("alias.test"),
            *chain(["alias.test", "edge.cdn.test", "n.cdn.test"], "198.51.100.7"),
        ),
        "long-chain": reply(query(long_names[0]), *chain(long_names, "192.0.2.1")),
        "nxdomain": reply(query("nx.test"), rcode=RCODE.NXDOMAIN, soa=True),
        "tc": reply(www, tc=True),
    }


def splice_seeds() -> dict[str, bytes]:
    ad = query("autodiscover.corp.example")
    outlook = query("outlook.office.com")
    first = reply(
        ad,
        *chain(
            ["autodiscover.corp.example", "x.corp.example", "outlook.office.com"], "203.0.113.5"
        ),
    )
    local = reply(
        outlook,
        cname("outlook.office.com", "edge.office.com"),
        a("edge.office.com", "198.51.100.5"),
    )
    return {"two-step": bytes((1,)) + struct.pack("!H", len(first)) + first + local}


def chain_seeds() -> dict[str, bytes]:
    """Replies whose records a zone owner crafted: the chain extractor's hard cases."""
    q = query("mixed.attacker.test")
    target = "outlook.office365.com"
    return {
        **reply_seeds(),
        "cname-and-a": reply(q, a("mixed.attacker.test", "192.0.2.66"),
                             cname("mixed.attacker.test", target), a(target, "203.0.113.5")),
        "a-before-cname": reply(q, a(target, "192.0.2.66"), cname("mixed.attacker.test", target)),
        "out-of-chain": reply(q, cname("mixed.attacker.test", "x.attacker.test"),
                              a(target, "192.0.2.66"), a("x.attacker.test", "192.0.2.67")),
        "loop": reply(q, cname("mixed.attacker.test", target), cname(target, "mixed.attacker.test"),
                      a(target, "192.0.2.66")),
        "control-bytes": reply(query("x\n+ 192.0.2.66 9999999999 3 y.attacker.test"),
                               cname("x\n+ 192.0.2.66 9999999999 3 y.attacker.test", target),
                               a(target, "203.0.113.5")),
    }  # fmt: skip


def journal_seeds() -> dict[str, bytes]:
    head = b"resolverd-holds 1 365 245\n"
    good = b"+ 203.0.113.5 1900000000 3 outlook.office365.com\n+ 2001:db8::5 1900000000 2 a.b\n"
    return {
        "good": head + good + b"- 203.0.113.5\n",
        "flush": head + good + b"F\n" + good,
        "unaccounted": head
        + b"+ 203.0.113.9 1900000000 0 (kept: the hold journal was unreadable)\n",
        "escaped": head + b"+ 203.0.113.5 1900000000 3 x\\010\\032.attacker.test\n",
        "injected": head + b"+ 203.0.113.5 1900000000 3 x\n+ 192.0.2.66 4102444800 3 o.test\n",
        "inf": head + b"+ 203.0.113.5 inf 3 outlook.office365.com\n",
        "far": head + b"+ 203.0.113.5 99999999999 3 outlook.office365.com\n",
        "cut": head + good[:30],
    }  # fmt: skip


def cache_seeds() -> dict[str, bytes]:
    out: dict[str, bytes] = {}
    for name, data in reply_seeds().items():
        out[f"edns-{name}"] = b"\x01\x04\xd0\x05" + data
        out[f"plain-{name}"] = b"\x00\x02\x00\x3c" + data
    return out


def query_seeds() -> dict[str, bytes]:
    return {
        "plain": query("www.example.test").pack(),
        "edns-do": query("www.example.test", "AAAA", edns=4096, do=True).pack(),
        **FORMERR_QUERIES,
    }


def main() -> None:
    for target, seeds in (
        ("query", query_seeds()),
        ("reply", reply_seeds()),
        ("splice", splice_seeds()),
        ("cache", cache_seeds()),
        ("handler", handler_seeds()),
        ("chain", chain_seeds()),
        ("journal", journal_seeds()),
    ):
        folder = CORPUS / target
        folder.mkdir(parents=True, exist_ok=True)
        for name, data in seeds.items():
            (folder / f"seed-{name}").write_bytes(bytes(data))


if __name__ == "__main__":
    main()
