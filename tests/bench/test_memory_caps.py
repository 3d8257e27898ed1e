"""The daemon's memory with the shipped caps filled, measured against tests/memorycaps.py and the
unit's MemoryHigh / MemoryMax (`make bench`, `make bench-compiled`; figures printed and written
to tests/bench/results/memory_caps.json).

Each case runs in a fresh process (``python -m tests.bench.test_memory_caps``, reading its
case as JSON on stdin), which imports the daemon's modules (resolver.daemon: what the daemon
loads; not dnslib, pytest or the harness), loads the built-in policy, notes VmRSS, then fills,
with the daemon's own code:

- the cache: cache.max_entries answers, each a copy of the case's upstream reply (built here
  with dnslib) under a query name of its own, walked by `replies.scan_reply` and stored the
  way misses.py's `Misses._entry` does (`cache.build_entry`, tagged with the built-in
  policy's matcher, charged to one of many clients, `Cache.put`);
- the holds: breakout.max_entries addresses, each added as breakout.py's `_new_hold` adds
  one (`Ledger.add`, charged to one of many clients), given holds.MAX_NAMES names in all as
  its hot path does (`Ledger.extend`), and acknowledged by the kernel (`Ledger.installed`);

- the budgets' two tables (ratelimit.Budgets: upstream queries and new routes), as a flood of
  misses from DEFAULT_MAX_CLIENTS source addresses fills them;

and notes VmRSS after each. Cases: typical (Microsoft 365 answers of about 300 bytes, a CNAME
chain to A records; 16 names of 30 characters per hold) and hostile (the largest UDP answers,
1,232 bytes, a CNAME into the policy and AAAA records, the most addresses a tag keeps bytes
for; 16 names of 100 characters per hold).
"""

from __future__ import annotations

import itertools
import json
import re
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tests.memorycaps import AT_THE_CAPS, AT_THE_CAPS_HOSTILE, MiB

if __name__ != "__main__":  # the measuring process loads neither pytest nor the harness (9 MiB)
    import pytest

    pytestmark = pytest.mark.bench

ROOT = Path(__file__).resolve().parents[2]
UNIT = ROOT / "systemd" / "resolverd.service"
DIGITS = 7  # the query name's numbered label: "t0000000" (room for 10 million entries)
UDP_MAX = 1232  # the largest UDP answer a client gets (cache.ENTRY_BYTES)


@dataclass(frozen=True)
class Case:
    name: str
    reply: bytes  # an upstream reply, with OPT, to a query whose name starts with "t" + DIGITS
    name_chars: int  # the length of each name a hold keeps
    limit: int  # what the total may reach (tests/memorycaps.py)
    unit_key: str  # the unit's directive the total must stay below


def typical_reply() -> bytes:
    """outlook.office365.com as a client's query meets it: three CNAMEs, then A records."""
    from dnslib import CNAME, EDNS0, QTYPE, RR, A, DNSRecord

    query = DNSRecord.question(f"t{0:0{DIGITS}d}.outlook.office365.com", "A")
    reply = query.reply()
    chain = [
        query.q.qname, "outlook.ha.office365.com", "outlook.ms-acdc.office.com",
        "fra-efz.ms-acdc.office.com",
    ]  # fmt: skip
    for owner, target in itertools.pairwise(chain):
        reply.add_answer(RR(owner, QTYPE.CNAME, rdata=CNAME(target), ttl=300))
    for i in range(10):
        reply.add_answer(RR(chain[-1], QTYPE.A, rdata=A(f"52.97.{i}.18"), ttl=30))
    reply.add_ar(EDNS0(udp_len=UDP_MAX))
    return bytes(reply.pack())


def hostile_reply() -> bytes:
    """A zone owner's largest UDP answer that tagging keeps the most of: its name CNAMEs into
    the policy, then as many AAAA records (17 bytes each in the tag) as 1,232 bytes hold."""
    from dnslib import AAAA, CNAME, EDNS0, QTYPE, RR, DNSRecord

    qname = f"t{0:0{DIGITS}d}." + "x" * 40 + ".attacker.example"
    target = "outlook.office365.com"
    reply = DNSRecord.question(qname, "AAAA").reply()
    reply.add_answer(RR(qname, QTYPE.CNAME, rdata=CNAME(target), ttl=3600))
    reply.add_ar(EDNS0(udp_len=UDP_MAX))
    i = 0
    while True:
        rr = RR(target, QTYPE.AAAA, rdata=AAAA(f"2603:1026:{i >> 8:x}:{i & 0xFF:x}::12"), ttl=3600)
        reply.add_answer(rr)
        if len(reply.pack()) > UDP_MAX:
            reply.rr.pop()
            return bytes(reply.pack())
        i += 1


def unit_sizes() -> dict[str, int]:
    """MemoryHigh and MemoryMax of the unit, in bytes (systemd sizes: base 1024)."""
    found = {}
    for key in ("MemoryHigh", "MemoryMax"):
        match = re.search(rf"(?m)^{key}=(\d+)([KMGT]?)$", UNIT.read_text())
        assert match is not None, f"{key}= missing from {UNIT}"
        found[key] = int(match.group(1)) * 1024 ** " KMGT".index(match.group(2) or " ")
    return found


def measure(case: Case) -> dict[str, Any]:
    """Runs the case in a fresh process; its figures (bytes)."""
    request = {"reply": case.reply.hex(), "name_chars": case.name_chars}
    started = time.monotonic()
    res = subprocess.run(
        [sys.executable, "-m", "tests.bench.test_memory_caps"],
        input=json.dumps(request), capture_output=True, text=True, cwd=ROOT, timeout=300,
        check=False,
    )  # fmt: skip
    assert res.returncode == 0, res.stderr
    out: dict[str, Any] = json.loads(res.stdout)
    out["seconds"] = round(time.monotonic() - started, 1)
    return out


def test_memory_at_the_caps() -> None:
    from tests.bench import harness as h

    sizes = unit_sizes()
    cases = [
        Case("typical", typical_reply(), 30, AT_THE_CAPS, "MemoryHigh"),
        Case("hostile", hostile_reply(), 100, AT_THE_CAPS_HOSTILE, "MemoryMax"),
    ]
    report: dict[str, Any] = {"started_at": h.now_utc(), "code": h.code_version()}
    report["unit"] = sizes
    for case in cases:
        out = report[case.name] = measure(case)
        out["limit"] = case.limit
        print(
            f"\n{case.name} ({out['build']} build): reply {out['reply_bytes']} bytes; "
            f"{out['entries']} answers, {out['holds']} holds of {out['names_per_hold']} names "
            f"of {case.name_chars} characters: import {out['import'] / MiB:.0f} MiB, "
            f"cache +{out['cache'] / MiB:.0f} MiB, holds +{out['holds_rss'] / MiB:.0f} MiB, "
            f"budgets of {out['clients']} clients +{out['budgets'] / MiB:.0f} MiB, "
            f"total {out['total'] / MiB:.0f} MiB (limit {case.limit / MiB:.0f} MiB, "
            f"{case.unit_key} {sizes[case.unit_key] / MiB:.0f} MiB) in {out['seconds']} s"
        )
    report["finished_at"] = h.now_utc()
    h.save_results("memory_caps.json", report)
    problems = []  # both cases' verdicts, then one failure
    for case in cases:
        out = report[case.name]
        assert out["entries"] == out["max_entries"] and out["holds"] == out["max_holds"], out
        if out["total"] > case.limit:
            problems.append(f"{case.name}: above its figure in tests/memorycaps.py")
        if out["total"] >= sizes[case.unit_key]:
            problems.append(f"{case.name}: above the unit's {case.unit_key}")
    assert not problems, problems


# -- the measuring process ---------------------------------------------------------------------


def _rss() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise KeyError("VmRSS")


def _fill(reply: bytes, name_chars: int) -> dict[str, Any]:
    import resolver.daemon  # noqa: F401  (what the daemon loads: counted in "import")
    from policy.loader import builtin_policy
    from policy.matcher import Matcher
    from resolver import buildinfo
    from resolver.clients import charge_key, client_key
    from resolver.config import BreakoutConfig, CacheConfig, ForwardConfig, RateLimitConfig
    from resolver.dns import replies, wire
    from resolver.dns.cache import build_entry, shared_int
    from resolver.dns.ratelimit import DEFAULT_MAX_CLIENTS, Budgets
    from resolver.dns.store import Cache
    from resolver.dns.tagging import tag
    from resolver.net.holds import MAX_NAMES
    from resolver.net.ledger import Ledger

    cache_cfg, breakout_cfg = CacheConfig(), BreakoutConfig()
    matcher = Matcher(builtin_policy().rules)  # as daemon.py loads it
    origin = object()  # the upstream set that answered: one for all
    clock = time.monotonic
    before = _rss()

    # The cache, as Misses._entry fills it.
    cache = Cache(cache_cfg.max_entries, cache_cfg.client_share)
    askers = [charge_key(f"10.1.{i}.1") for i in range(2 * int(1 / cache_cfg.client_share))]
    label = 13  # the query name's first label, past the header and its length byte
    buf = bytearray(reply)
    for i in range(cache_cfg.max_entries):
        buf[label : label + 1 + DIGITS] = b"t%0*d" % (DIGITS, i)
        data = bytes(buf)
        layout = replies.scan_reply(data, trailing=True)
        key = wire.question_key(data, layout.qend, 0)
        entry, chain = build_entry(
            key, data, layout, clock(), cache_cfg.max_ttl, cache_cfg.max_negative_ttl
        )
        entry.origin = origin
        entry.owner = askers[i % len(askers)]  # none of them at its share
        entry.tag = tag(chain, matcher)
        entry.addr_base = shared_int(chain.addr_ttl)
        assert entry.ttl > 0 and entry.tag is not None
        cache.put(entry)
    assert cache.client_evicted == 0
    cached = _rss()

    # The holds, as Breakout._on_answer and _new_hold make and extend them.
    ledger = Ledger(breakout_cfg.max_entries, breakout_cfg.client_share)
    clients = max(8, int(2 / breakout_cfg.client_share))  # none of them at its share
    pad = "x" * name_chars
    for i in range(breakout_cfg.max_entries):
        packed = (b"\x20\x01\x0d\xb8" + bytes(8) if i % 2 else b"") + i.to_bytes(4, "big")
        client = client_key(f"10.0.{i % clients}.1")
        row = 2 + i % 8
        names = [(f"n{j}.{i}." + pad)[:name_chars] for j in range(MAX_NAMES)]
        hold = ledger.add(packed, names[0], clock() + 300.0, row, client)
        assert hold is not None
        for name in names[1:]:
            ledger.extend(hold, name, row, clock() + 300.0)
        ledger.installed(hold, None)
        hold.set_expires = clock() + 300.0  # the set entries' lapse (installs.py)
        hold.noted = hold.expires  # what the journal wrote
    held = _rss()
    assert ledger.names == breakout_cfg.max_entries * MAX_NAMES

    # The budgets' tables, as a flood of misses from ever new source addresses fills them: a
    # bucket for upstream queries and one for new routes per client, DEFAULT_MAX_CLIENTS each.
    rl = RateLimitConfig()
    budgets = Budgets(rl.qps, rl.burst, rl.share, rl.routes, ForwardConfig().max_pending)
    for i in range(DEFAULT_MAX_CLIENTS):
        client = client_key(f"10.{128 + (i >> 16)}.{(i >> 8) & 0xFF}.{i & 0xFF}")
        assert client is not None
        asked, routed = budgets.take_query(client), budgets.take_routes(client, 1)
        assert asked and routed  # (not inside the assert: python -O would skip the takes)
        budgets.done_query(client)
    assert len(budgets.queries) == len(budgets.routes) == DEFAULT_MAX_CLIENTS
    budgeted = _rss()
    return {
        "build": buildinfo.build(),
        "reply_bytes": len(reply),
        "entry_bytes": cache.bytes // len(cache),
        "entries": len(cache), "max_entries": cache_cfg.max_entries,
        "holds": len(ledger), "max_holds": breakout_cfg.max_entries,
        "names_per_hold": MAX_NAMES,
        "clients": DEFAULT_MAX_CLIENTS,
        "import": before, "cache": cached - before, "holds_rss": held - cached,
        "budgets": budgeted - held, "total": budgeted,
    }  # fmt: skip


if __name__ == "__main__":
    request = json.load(sys.stdin)
    print(json.dumps(_fill(bytes.fromhex(request["reply"]), request["name_chars"])))
