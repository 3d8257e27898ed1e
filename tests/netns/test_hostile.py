"""resolverd as an attacker would see it (issue 17, item 9), in a namespace lab with real Unbound.

The attacker owns attacker.test: its authoritative server (tests/netns/hostile.py, behind the
tunnel) sends crafted replies, and resolverd's default upstream, real Unbound, resolves the zone
through it (tests/netns/hostilekit.py). office365.com has an authoritative server of its own that
behaves. A forward zone of resolverd, direct.attacker.test, points straight at the hostile server:
nothing scrubs those replies. A LAN client asks resolverd; what counts is what the kernel then
holds: the routes in table 365 and the entries of the ipsets, and the hold journal on disk.

- journal injection: a query name with a newline and spaces in its labels whose zone answers
  with a CNAME into Microsoft 365; after a SIGKILL and a restart nothing it wrote is routed,
  and lines the writer would never write (as the old one wrote that name, an infinite or
  far-future expiry, a raw escape sequence) are refused at the next start, which goes on;
- CNAME and other data through Unbound (`mixed A X` beside `mixed CNAME outlook.office365.com`:
  Unbound passes both on when the A comes first), with and without DO, spliced or not;
- crafted answers through the forward zone: out-of-chain records, the target's A before the
  CNAME, CNAME and other data in both orders, addresses in the authority and additional
  sections; the addresses of the well-formed chain are still routed;
- a flood of names under a required wildcard, one address: 16 names per hold, a small journal
  that is not rewritten while idle, an RSS under the unit's MemoryHigh;
- one client's answers of many addresses against a small max_entries: its share, then another
  client's Microsoft 365 name is still routed;
- control characters in names: `resolverctl routes` and `monitor` (text forms) print none;
- the optional rows' wildcards (anybody's names) are not routed by default.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import pytest

from tests.netns.hostilekit import (
    BENIGN4,
    DIRECT,
    HOSTILE4,
    UNBOUND4,
    UNBOUND_PORT,
    ZONE,
    Resolverd,
    Unbound,
    addresses,
    ask,
    in_sets,
    memory_high,
    q,
    reset_router,
    routed,
    start_authority,
    start_breakout_resolver,
)
from tests.netns.lab import CLIENT4, REPO, ROUTER_LAN6, Lab, wait_for

pytestmark = pytest.mark.netns

OUTLOOK = "outlook.office365.com"  # row 3, required
OUTLOOK4 = ("203.0.113.101", "203.0.113.102")  # Microsoft's (BENIGN4's) addresses for it
OUTLOOK6 = "2001:db8:365:1::1"
LOCAL4 = "203.0.113.120"  # the ISP's resolver's address for it (the splice)
FLOOD = "flood.office365.com"  # *.office365.com: row 2, required
FLOOD4 = "203.0.113.110"
MANY = 16  # names many-I.office365.com with PER_NAME AAAA records each
PER_NAME = 40
INJECTED = "198.51.100.166"  # what the journal injection tries to get routed
MAX_NAMES = 16  # names a hold keeps


def evil(n: int) -> str:
    """The attacker's addresses: never to be routed (198.51.100.128/25 is no lab network)."""
    return f"198.51.100.{128 + n}"


def legit(n: int) -> str:
    """Addresses at the end of a well-formed chain from the hostile server: routed."""
    return f"203.0.113.{160 + n}"


def many6(i: int, j: int) -> str:
    return f"2001:db8:6e:{i:x}::{j + 1:x}"


# -- the zones ------------------------------------------------------------------------------------


def rr(owner: str, rtype: str, value: str, ttl: int = 300) -> list[Any]:
    return [owner, rtype, value, ttl]


# Case 2: CNAME and other data through Unbound; one name per variant (DO, splice), each its X.
MIXED = {"mixed": 1, "mixed-do": 2, "mixed-s": 3, "mixed-s-do": 4}
# Case 3: the forward zone's crafted answers, each with and without DO: (evil, legit) addresses.
CRAFTED: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {}


def crafted(e: list[str], g: list[str]) -> dict[str, dict[str, list[list[Any]]]]:
    """The crafted answers, by first label, with the attacker's addresses `e` and the chain's
    own `g` (each answer's evil address is e[i], its legitimate one g[i], in this order)."""
    return {
        # An address record of a name that is not on the chain.
        "oob": {"answer": [rr("{q}", "CNAME", "portal.office.com"),
                           rr("portal.office.com", "A", g[0]), rr(OUTLOOK, "A", e[0])]},
        # The target's A before the CNAME that leads to it (then its A in order).
        "order": {"answer": [rr(OUTLOOK, "A", e[1]), rr("{q}", "CNAME", OUTLOOK),
                             rr(OUTLOOK, "A", g[1])]},
        # CNAME and other data on the query name, the A first ...
        "both": {"answer": [rr("{q}", "A", e[2]), rr("{q}", "CNAME", OUTLOOK),
                            rr(OUTLOOK, "A", g[2])]},
        # ... and the CNAME first.
        "both2": {"answer": [rr("{q}", "CNAME", OUTLOOK), rr("{q}", "A", e[3]),
                             rr(OUTLOOK, "A", g[3])]},
        # A policy name's A records in the authority and additional sections.
        "sections": {
            "answer": [rr("{q}", "CNAME", OUTLOOK), rr(OUTLOOK, "A", g[4])],
            "authority": [rr(OUTLOOK, "A", e[4]), rr("portal.office.com", "A", e[4])],
            "additional": [rr(OUTLOOK, "A", e[4]), rr("portal.office.com", "A", e[4])],
        },
    }  # fmt: skip


def crafted_rules() -> dict[str, Any]:
    """The forward zone's rules: each crafted answer without and with DO ("-do"), each with
    addresses of its own (recorded in CRAFTED)."""
    rules: dict[str, Any] = {}
    for k, suffix in enumerate(("", "-do")):
        e = [evil(10 + 5 * k + i) for i in range(5)]
        g = [legit(5 * k + i) for i in range(5)]
        for i, (label, sections) in enumerate(crafted(e, g).items()):
            rules[f"{label}{suffix}.{DIRECT}"] = sections
            CRAFTED[f"{label}{suffix}"] = ((e[i],), (g[i],))
    return rules


CRAFTED_RULES = crafted_rules()
OPTIONAL = "mine.sharepointonline.com"  # row 12's *.sharepointonline.com: optional
OPTIONAL4 = evil(40)


def hostile_script() -> dict[str, Any]:
    rules: dict[str, Any] = {
        # Every other name of the zone leads into Microsoft 365 (cases 1 and 6).
        f"*.{ZONE}": {"answer": [rr("{q}", "CNAME", OUTLOOK, 60)]},
        f"opt.{DIRECT}": {"answer": [rr("{q}", "CNAME", OPTIONAL), rr(OPTIONAL, "A", OPTIONAL4)]},
    }
    for label, n in MIXED.items():  # the A first: Unbound then takes it as the answer
        rules[f"{label}.{ZONE}"] = {
            "answer": [rr("{q}", "A", evil(n)), rr("{q}", "CNAME", OUTLOOK)]
        }
    rules.update(CRAFTED_RULES)
    return {"zone": ZONE, "rules": rules}


def benign_script() -> dict[str, Any]:
    rules: dict[str, Any] = {
        OUTLOOK: {"answer": [*(rr(OUTLOOK, "A", a) for a in OUTLOOK4),
                             rr(OUTLOOK, "AAAA", OUTLOOK6)]},
        f"*.{FLOOD}": {"answer": [rr("{q}", "A", FLOOD4)]},
    }  # fmt: skip
    for i in range(MANY):
        rules[f"many-{i}.office365.com"] = {
            "answer": [rr("{q}", "AAAA", many6(i, j)) for j in range(PER_NAME)]
        }
    return {"zone": "office365.com", "filter": True, "rules": rules}


# -- fixtures -------------------------------------------------------------------------------------


@dataclass
class World:
    lab: Lab
    unbound: Unbound


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    tmp = str(tmp_path_factory.mktemp("hostile"))
    with Lab("hostile", split_dns=True) as lab:
        # The daemon and resolverctl run from REPO with PYTHONPATH=REPO: this tree's code.
        where = lab.python(lab.router, "-c", "import resolver; print(resolver.__file__)").stdout
        print(f"\nresolverd under test: {where.strip()}")
        assert where.startswith(REPO + os.sep), (where, REPO)
        start_authority(lab, tmp, "hostile", HOSTILE4, hostile_script())
        start_authority(lab, tmp, "benign", BENIGN4, benign_script())
        start_breakout_resolver(lab, tmp, {OUTLOOK: [{"type": "A", "value": LOCAL4, "ttl": 300}]})
        unbound = Unbound(lab, tmp)
        try:
            yield World(lab, unbound)
        finally:
            unbound.stop()


Start = Callable[..., Resolverd]


@pytest.fixture
def start(world: World, tmp_path: Any) -> Iterator[Start]:
    """Start a resolverd with `hostilekit.config(**cfg)`; a second call stops the first one
    and clears the router first. Everything is stopped and cleared at the end."""
    daemons: list[Resolverd] = []

    def clear() -> None:
        for d in daemons:
            d.stop()
        reset_router(world.lab)

    def run(**cfg: Any) -> Resolverd:
        clear()
        d = Resolverd(world.lab, os.path.join(str(tmp_path), f"d{len(daemons) + 1}"), **cfg)
        daemons.append(d)
        d.start()
        return d

    reset_router(world.lab)
    try:
        yield run
    finally:
        clear()


def settle() -> None:
    """Before asserting that something is not routed: any install of the answers just given
    has been acknowledged by now (a reply waits for its routes, at most ack_timeout)."""
    time.sleep(0.3)


def kernel(lab: Lab) -> set[str]:
    """Every address the kernel holds for resolverd: routes and set entries."""
    return routed(lab) | in_sets(lab)


# -- 1. journal injection -------------------------------------------------------------------------


def test_a_query_name_cannot_write_lines_into_the_hold_journal(world: World, start: Start) -> None:
    lab = world.lab
    d = start()
    # Labels with a newline (\010) and spaces (\032): written raw, they would end the record
    # and add "+ INJECTED 4102444800 3 outlook.office365.com" (a hold until 2100) and a
    # removal line of their own.
    qname = f"x\\010+\\032{INJECTED}\\0324102444800\\0323\\032{OUTLOOK}\\010-\\0321.1.1.1.{ZONE}"
    (reply,) = ask(lab, [q(qname)])
    assert reply["rcode"] == "NOERROR" and reply["answer"][0][1:3] == ["CNAME", OUTLOOK], reply
    assert sorted(addresses(reply)) == sorted(OUTLOOK4), reply
    assert wait_for(lambda: set(OUTLOOK4) <= routed(lab), 3)
    d.kill()
    d.start()
    held = routed(lab), in_sets(lab)
    assert INJECTED not in held[0], f"the injected address is routed after the restart: {held}"
    assert INJECTED not in held[1], f"the injected address is in the ipset: {held}"
    assert set(OUTLOOK4) <= held[0] and set(OUTLOOK4) <= held[1], held  # the real holds stayed
    lines = d.journal_lines()
    assert not [line for line in lines if INJECTED.encode() in line], lines
    bad = [line for line in lines if any(b < 0x20 or b == 0x7F for b in line)]
    assert not bad, f"journal lines with control characters: {bad}"
    assert not [line for line in lines if b"attacker" in line], f"a query name: {lines}"
    routes = d.routes()
    for a in OUTLOOK4:  # the policy name that earned the hold, not the client's name
        assert routes[a]["names"] == [OUTLOOK], routes[a]
    assert d.status()["journal"]["problems"] == [], d.status()["journal"]

    # Lines the writer would never write (as an older resolverd wrote this query's name, an
    # infinite expiry, a raw escape sequence): refused one by one, and the start goes on.
    d.kill()
    soon = int(time.time()) + 60
    forged = [
        f"+ {INJECTED} 4102444800 3 {OUTLOOK}",  # beyond the longest hold the config allows
        f"- 1.1.1.1.{ZONE}",  # not an address
        f"+ {evil(50)} inf 3 {OUTLOOK}",  # not whole seconds (an OverflowError once)
        f"+ {evil(51)} {soon} 3 \x1b[2J.{ZONE}",  # not a name resolverd writes
    ]
    with open(d.journal, "a") as fh:
        fh.write("".join(line + "\n" for line in forged))
    d.start()
    held = routed(lab), in_sets(lab)
    for address in (INJECTED, evil(50), evil(51)):
        assert address not in held[0] and address not in held[1], (address, held)
    assert set(OUTLOOK4) <= held[0] and set(OUTLOOK4) <= held[1], held
    problems = d.status()["journal"]["problems"]
    assert len(problems) == len(forged), problems


# -- 2. CNAME and other data through Unbound ------------------------------------------------------


def test_cname_and_other_data_through_unbound_is_not_routed(world: World, start: Start) -> None:
    lab = world.lab
    # Unbound passes both records on when the A comes first (it is then the answer to the
    # question, and the CNAME is not chased): what resolverd gets is the attack itself.
    (direct,) = ask(lab, [{**q(f"mixed.{ZONE}", server=UNBOUND4), "port": UNBOUND_PORT}],
                    ns=lab.router)  # fmt: skip
    sent = [rr(f"mixed.{ZONE}", "A", evil(1), 300), rr(f"mixed.{ZONE}", "CNAME", OUTLOOK, 300)]
    assert [r[:3] for r in direct["answer"]] == [r[:3] for r in sent], direct
    leaked: dict[str, list[str]] = {}

    # Without a breakout resolver: the answer as Unbound gave it, with and without DO.
    start()
    got = ask(lab, [q(f"mixed.{ZONE}"), q(f"mixed-do.{ZONE}", do=True)])
    for reply, n in zip(got, (1, 2), strict=True):
        assert evil(n) in addresses(reply), reply  # the client got the attack
    settle()
    held = kernel(lab)
    leaked["plain"] = [evil(1)] if evil(1) in held else []
    leaked["DO"] = [evil(2)] if evil(2) in held else []

    # With the ISP's resolver: the chain into outlook.office365.com is finished there (no DO),
    # or passed on as it came (DO).
    start(resolvers=True)
    plain, do = ask(lab, [q(f"mixed-s.{ZONE}"), q(f"mixed-s-do.{ZONE}", do=True)])
    assert addresses(plain) == [LOCAL4], plain  # spliced: X is gone from the answer too
    assert evil(4) in addresses(do), do
    assert wait_for(lambda: LOCAL4 in routed(lab) and LOCAL4 in in_sets(lab), 3)
    settle()
    held = kernel(lab)
    leaked["spliced"] = [evil(3)] if evil(3) in held else []
    leaked["spliced, DO"] = [evil(4)] if evil(4) in held else []
    assert not any(leaked.values()), f"routed or in the ipset: {leaked}"


# -- 3. crafted answers through a forward zone -----------------------------------------------------


def test_only_the_chain_of_a_forward_zones_answer_is_routed(world: World, start: Start) -> None:
    lab = world.lab
    start()
    labels = list(CRAFTED)
    got = ask(lab, [q(f"{label}.{DIRECT}", do=label.endswith("-do")) for label in labels])
    seen = {label: reply for label, reply in zip(labels, got, strict=True)}
    for label, reply in seen.items():  # nothing scrubbed: the client got the crafted records
        every = {
            a for part in ("answer", "authority", "additional") for a in addresses(reply, part)
        }
        assert reply["rcode"] == "NOERROR" and set(CRAFTED[label][0]) <= every, (label, reply)
    chains = {a for _evils, legits in CRAFTED.values() for a in legits}
    wait_for(lambda: chains <= routed(lab), 3)
    settle()
    routes, sets = routed(lab), in_sets(lab)
    wrong = {
        label: {
            "routed": sorted(a for a in evils if a in routes),
            "in the set": sorted(a for a in evils if a in sets),
            "chain not routed": sorted(a for a in legits if a not in routes or a not in sets),
        }
        for label, (evils, legits) in CRAFTED.items()
    }
    wrong = {label: w for label, w in wrong.items() if any(w.values())}
    assert not wrong, json.dumps(wrong, indent=1) + "\n" + json.dumps(seen, indent=1)


# -- 4. a flood of names for one address ---------------------------------------------------------


def test_a_flood_of_names_keeps_one_small_hold(world: World, start: Start) -> None:
    lab = world.lab
    d = start()
    names = [f"n{i}.{FLOOD}" for i in range(300)]
    got = ask(lab, [q(name) for name in names])
    assert all(addresses(reply) == [FLOOD4] for reply in got), got[:3]
    hold = d.routes()[FLOOD4]
    assert len(hold["names"]) <= MAX_NAMES, f"{len(hold['names'])} names on one hold"
    assert set(hold["names"]) <= set(names[-MAX_NAMES:]), hold["names"]  # the newest
    lines = [line for line in d.journal_lines() if line]
    assert len(lines) <= 4 * MAX_NAMES, f"{len(lines)} journal lines for one address"
    # Idle: no rewrite of the journal (a compaction is a new file: a new inode).
    before = os.stat(d.journal)
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        now = os.stat(d.journal)
        assert (now.st_ino, now.st_mtime_ns, now.st_size) == (
            before.st_ino, before.st_mtime_ns, before.st_size
        ), f"the journal was written while idle: {before} -> {now}"  # fmt: skip
        time.sleep(0.5)
    high = memory_high(REPO)
    rss = d.rss_bytes()
    print(f"\nflood: {len(lines)} journal lines, RSS {rss >> 20} MiB, MemoryHigh {high >> 20} MiB")
    assert rss < high, (rss, high)


# -- 5. one client against everybody's holds -------------------------------------------------------


def test_one_client_cannot_take_every_hold(world: World, start: Start) -> None:
    lab = world.lab
    d = start(max_entries=400)  # client_share (0.125) at its default: 50 holds per client
    share = 50
    asked = 0
    while asked < MANY:  # client A (CLIENT4): 40 addresses per answer, until it is refused
        names = [f"many-{i}.office365.com" for i in range(asked, asked + 2)]
        for reply in ask(lab, [q(name, "AAAA") for name in names]):
            assert len(addresses(reply)) == PER_NAME, reply
        asked += 2
        c = d.counters()
        if c.get("client_capped", 0) or c.get("capped", 0):
            break
    flood = {a for a in routed(lab) if a.startswith("2001:db8:6e:")}
    # Client B (CLIENT6, another client) asks for a real Microsoft 365 name.
    (reply,) = ask(lab, [q(OUTLOOK, server=ROUTER_LAN6)])
    assert sorted(addresses(reply)) == sorted(OUTLOOK4), reply
    wait_for(lambda: set(OUTLOOK4) <= routed(lab), 3)
    routes, sets = routed(lab), in_sets(lab)
    c = d.counters()
    print(f"\nshare: client A asked {asked} names, {len(flood)} routed; counters {c.get('capped')}"
          f" capped, {c.get('client_capped')} client_capped")  # fmt: skip
    assert set(OUTLOOK4) <= routes and set(OUTLOOK4) <= sets, (
        f"client B's addresses are not routed; client A ({CLIENT4}) holds {len(flood)}"
    )
    assert len(flood) <= share, f"client A holds {len(flood)} of max_entries 400"
    assert c.get("client_capped", 0) > 0, c


# -- 6. control characters in names ----------------------------------------------------------------


def read(path: str) -> bytes:
    with open(path, "rb") as fh:
        return fh.read()


def control_bytes(data: bytes) -> list[int]:
    return sorted({b for b in data if (b < 0x20 and b != 0x0A) or b == 0x7F})


def test_resolverctl_prints_no_control_character(world: World, start: Start) -> None:
    lab = world.lab
    d = start()
    out_path = os.path.join(d.tmp, "monitor.out")
    with open(out_path, "wb") as out:
        monitor = subprocess.Popen(
            [sys.executable, "-m", "resolver.ctl.main", "--socket", d.socket, "monitor"],
            stdout=out, stderr=subprocess.DEVNULL, env={**os.environ, "PYTHONPATH": REPO},
        )  # fmt: skip
    try:
        deadline = time.monotonic() + 10
        while d.json("status").get("monitor", {}).get("watchers", 0) < 1:
            assert time.monotonic() < deadline, "the monitor did not connect"
            time.sleep(0.1)
        # ESC [ 2 J (clear the screen), BEL; an OSC that sets the terminal's title.
        names = [f"\\027[2J\\007.{ZONE}", f"\\027]0;pwned\\007.{DIRECT}"]
        ask(lab, [q(name) for name in names])
        deadline = time.monotonic() + 5
        while read(out_path).count(b"attacker") < 2 and time.monotonic() < deadline:
            time.sleep(0.1)
    finally:
        monitor.send_signal(signal.SIGINT)
        with contextlib.suppress(subprocess.TimeoutExpired):
            monitor.wait(timeout=5)
        if monitor.poll() is None:
            monitor.kill()
            monitor.wait(timeout=5)
    seen = read(out_path)
    routes = subprocess.run(
        [sys.executable, "-m", "resolver.ctl.main", "--socket", d.socket, "routes"],
        capture_output=True, timeout=20, env={**os.environ, "PYTHONPATH": REPO},
    )  # fmt: skip
    print(f"\nmonitor:\n{seen.decode(errors='replace')}routes:\n{routes.stdout.decode()}")
    assert seen.count(b"attacker") >= 2, seen  # both queries were shown
    assert OUTLOOK4[0].encode() in routes.stdout, routes
    printed = {"routes": control_bytes(routes.stdout), "monitor": control_bytes(seen)}
    assert printed == {"routes": [], "monitor": []}, f"control characters printed: {printed}"


# -- 7. the optional rows ------------------------------------------------------------------------


def test_an_optional_rows_wildcard_is_not_routed_by_default(world: World, start: Start) -> None:
    lab = world.lab
    d = start()
    (reply,) = ask(lab, [q(f"opt.{DIRECT}")])  # a well-formed chain into the optional row
    assert addresses(reply) == [OPTIONAL4], reply
    settle()
    assert OPTIONAL4 not in kernel(lab), "an address of an optional row's wildcard is routed"
    explained = {
        item["name"]: item["match"]
        for item in d.json("explain", "--config", d.cfg, OUTLOOK, f"n1.{FLOOD}", OPTIONAL)
    }
    assert explained[OUTLOOK]["required"] and explained[f"n1.{FLOOD}"]["required"], explained
    assert explained[OPTIONAL] is None, f"{OPTIONAL} (row 12, optional) is in the policy"
