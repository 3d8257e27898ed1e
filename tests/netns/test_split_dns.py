"""Split DNS end to end, with the real daemon in a ``Lab(split_dns=True)``, asserted on the server
that answered, by the addresses each one hands out (tests/netns/scenario.py, "Split DNS"):

- the breakout resolver's address, BREAKOUT_RESOLVER4, is owned by the breakout server ("local",
  the ISP's resolver close to the branch) and by the tunnel server ("tunnel side"), and the two
  answer every Microsoft 365 name differently. The router's default route is the tunnel, so
  only resolverd's own host route in its table (365, through wan0) takes its queries to the
  local one: the tunnel side's addresses must never show up once resolverd runs;
- head office's DNS server (HEAD_OFFICE4, the forward zones corp.example and
  2.0.192.in-addr.arpa) sits behind the tunnel only; the default upstream in the router;
- an nftables table of the test's in the router counts the DNS queries leaving it by server
  and interface, so each test also says who was asked, through which link, and that nobody
  was asked for a canary or a cache hit.

The client asks resolverd with tests.netns.agents (a real query over the LAN) and connects to
the address it got: "breakout" or "tunnel" says which path the connection took. The last test
kills the local resolver: it runs last.
"""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest

from tests.netns.lab import (
    BREAKOUT_GW4,
    BREAKOUT_RESOLVER4,
    HEAD_OFFICE4,
    ROUTER_LAN6,
    TUNNEL_GW4,
    WAN_IF,
    Lab,
    wait_for,
)
from tests.netns.scenario import (
    CANARY,
    CHAIN,
    DO_CHAIN,
    HEAD_OFFICE_ZONES,
    INTRANET,
    PROTOCOL,
    PTR_NAME,
    SPLIT_M365,
    TABLE,
    Daemon,
    answered_by,
    config,
    fetch,
    query,
    split_address,
    split_records,
    start_split_servers,
)

pytestmark = pytest.mark.netns

TIMEOUT = 1.0  # forward.timeout: what a dead breakout resolver costs a question
TEAMS = SPLIT_M365[0]
LOCAL_TEAMS4, LOCAL_TEAMS6 = split_address("local", 0), split_address("local", 0, 6)
# The router's DNS queries, counted where they leave it (output hook: after routing).
COUNTERS = {
    "local": f'ip daddr {BREAKOUT_RESOLVER4} udp dport 53 oifname "{WAN_IF}"',
    "resolver_elsewhere": f'ip daddr {BREAKOUT_RESOLVER4} udp dport 53 oifname != "{WAN_IF}"',
    "head_office": f'ip daddr {HEAD_OFFICE4} udp dport 53 oifname "tun0"',
    "head_office_elsewhere": f'ip daddr {HEAD_OFFICE4} udp dport 53 oifname != "tun0"',
    "default": "ip daddr 127.0.0.1 udp dport 5300",
    "any": "udp dport { 53, 5300 }",
}
SEEN: dict[str, str] = {}  # what the client got, printed at the end (pytest -s)


@dataclass
class Split:
    lab: Lab
    daemon: Daemon
    servers: dict[str, subprocess.Popen[str]]
    before: dict[str, Any]  # the client's own query to BREAKOUT_RESOLVER4 before resolverd ran


@pytest.fixture(scope="module")
def split(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Split]:
    tmp = str(tmp_path_factory.mktemp("split"))
    with Lab("split", split_dns=True) as lab:
        servers = start_split_servers(lab, tmp)
        count_queries(lab)
        before = query(lab, TEAMS, server=BREAKOUT_RESOLVER4)
        text = config(tmp, hold=(300, 0), split_dns=True) + f"forward: {{timeout: {TIMEOUT}}}\n"
        daemon = Daemon(lab, tmp, text=text, records=split_records("default"))
        try:
            daemon.start()
            assert wait_for(lambda: route_dev(lab, BREAKOUT_RESOLVER4) is not None, 5), (
                f"no route to the breakout resolver:\n{daemon.log()}"
            )
            yield Split(lab, daemon, servers, before)
        finally:
            daemon.stop()
            if SEEN:
                print("\nseen:\n" + "".join(f"  {k}: {v}\n" for k, v in SEEN.items()), end="")


# -- helpers --------------------------------------------------------------------------------------


def count_queries(lab: Lab) -> None:
    """The nftables table `lab_dns` in the router: one named counter per COUNTERS entry."""
    lines = ["table inet lab_dns {"]
    lines += [f"  counter {name} {{ }}" for name in COUNTERS]
    lines.append("  chain output { type filter hook output priority 0; policy accept;")
    lines += [f'    {match} counter name "{name}"' for name, match in COUNTERS.items()]
    lines += ["  }", "}"]
    lab.run(lab.router, "nft", "-f", "-", input="\n".join(lines) + "\n")


def counts(lab: Lab) -> dict[str, int]:
    out = lab.run(lab.router, "nft", "-j", "list", "counters", "table", "inet", "lab_dns").stdout
    found = (item["counter"] for item in json.loads(out)["nftables"] if "counter" in item)
    return {c["name"]: c["packets"] for c in found}


def sent(before: dict[str, int], lab: Lab) -> dict[str, int]:
    """The queries the router sent since `before`, by counter."""
    now = counts(lab)
    return {name: now[name] - before[name] for name in COUNTERS}


def route_dev(lab: Lab, address: str) -> str | None:
    """The interface resolverd's table routes `address` through, or None (no route there)."""
    family = "-6" if ":" in address else "-4"
    out = lab.ip(lab.router, family, "route", "show", "table", str(TABLE), address, check=False)
    words = out.split()
    return words[words.index("dev") + 1] if "dev" in words else None


def records(res: dict[str, Any]) -> list[tuple[str, str, str]]:
    """The answer section without the TTLs: (owner, type, value)."""
    return [(owner, rtype, value) for owner, rtype, value, _ttl in res["answer"]]


def addresses(res: dict[str, Any]) -> list[str]:
    """The addresses of a `query` (or a `fetch`) result."""
    if "answer" not in res:
        return list(res["addresses"])
    return [value for _owner, rtype, value, _ttl in res["answer"] if rtype in ("A", "AAAA")]


def status(daemon: Daemon) -> dict[str, Any]:
    result: dict[str, Any] = daemon.json("status")
    return result


def seen(key: str, res: dict[str, Any]) -> None:
    """Note what the client got and who gave it (printed at the end with pytest -s)."""
    if "answer" in res:
        got = "; ".join(f"{o} {t} {v}" for o, t, v in records(res)) or "(no records)"
        got = f"{res['rcode']}: {got}"
    else:
        got = f"{' '.join(res['addresses'])}, first connection: {res['identity']}"
    who = sorted({answered_by(a) for a in addresses(res)})
    SEEN[key] = got + (f" [from {', '.join(who)}]" if who else "")


def no_tunnel_side(lab: Lab, *results: dict[str, Any]) -> None:
    """The same address behind the tunnel was never asked, and none of its answers leaked."""
    for res in results:
        assert all(answered_by(a) != "tunnel side" for a in addresses(res)), res
    now = counts(lab)
    assert now["resolver_elsewhere"] == 0 and now["head_office_elsewhere"] == 0, now


# -- the scenarios --------------------------------------------------------------------------------


def test_the_breakout_resolver_is_reached_only_through_the_breakout_link(split: Split) -> None:
    lab, daemon = split.lab, split.daemon
    # Before resolverd, the client's query for the resolver's address took the router's
    # default route, the tunnel, and the tunnel side answered.
    assert lab.ip(lab.router, "route", "show", "default").split()[:5] == [
        "default", "via", TUNNEL_GW4, "dev", "tun0"
    ]  # fmt: skip
    assert addresses(split.before) == [split_address("tunnel side", 0)], split.before
    # resolverd owns a host route for it in its table, through wan0 ...
    lines = [x.split() for x in lab.table(TABLE) if x.startswith(BREAKOUT_RESOLVER4 + " ")]
    assert lines == [
        [BREAKOUT_RESOLVER4, "via", BREAKOUT_GW4, "dev", WAN_IF, "proto", str(PROTOCOL)]
    ], lab.table(TABLE)  # fmt: skip
    got = lab.ip(lab.router, "route", "get", BREAKOUT_RESOLVER4)
    assert f" dev {WAN_IF} table {TABLE} " in got, got
    # ... so the same query now reaches the local resolver: a different answer.
    now = query(lab, TEAMS, server=BREAKOUT_RESOLVER4)
    assert addresses(now) == [LOCAL_TEAMS4], now
    seen("resolver address, before resolverd", split.before)
    seen("resolver address, with resolverd", now)
    # Head office's server has no route of resolverd's: the tunnel (the main table) reaches it.
    assert route_dev(lab, HEAD_OFFICE4) is None
    got = lab.ip(lab.router, "route", "get", HEAD_OFFICE4)
    assert f"via {TUNNEL_GW4} dev tun0 " in got and " table " not in got, got
    roles = {(u["address"], u["role"], u["healthy"]) for u in status(daemon)["upstreams"]}
    assert roles == {
        ("127.0.0.1:5300", "default", True),
        (f"{BREAKOUT_RESOLVER4}:53", "breakout", True),
        *((f"{HEAD_OFFICE4}:53", f"zone:{zone}", True) for zone in HEAD_OFFICE_ZONES),
    }
    no_tunnel_side(split.lab)


def test_a_microsoft_365_name_is_answered_by_the_local_resolver(split: Split) -> None:
    lab, daemon = split.lab, split.daemon
    c0, tagged = counts(lab), status(daemon)["queries"]["tagged"]
    res4 = fetch(lab, TEAMS)  # resolve, then connect at once
    res6 = fetch(lab, TEAMS, "AAAA", ROUTER_LAN6)
    assert (res4["addresses"], res4["identity"]) == ([LOCAL_TEAMS4], "breakout"), res4
    assert (res6["addresses"], res6["identity"]) == ([LOCAL_TEAMS6], "breakout"), res6
    seen(f"(a) {TEAMS} A", res4)
    seen(f"(a) {TEAMS} AAAA", res6)
    assert route_dev(lab, LOCAL_TEAMS4) == WAN_IF and route_dev(lab, LOCAL_TEAMS6) == WAN_IF
    routes = daemon.routes()
    assert routes[LOCAL_TEAMS4]["names"] == [TEAMS] and routes[LOCAL_TEAMS6]["names"] == [TEAMS]
    assert status(daemon)["queries"]["tagged"] == tagged + 2
    asked = sent(c0, lab)
    assert asked["local"] == 2 and asked["default"] == 0 and asked["head_office"] == 0, asked
    no_tunnel_side(lab)


def test_a_corporate_name_is_answered_by_head_office(split: Split) -> None:
    lab, daemon = split.lab, split.daemon
    c0, tagged = counts(lab), status(daemon)["queries"]["tagged"]
    res = query(lab, INTRANET)
    office = split_address("head office", 7)
    assert res["rcode"] == "NOERROR" and records(res) == [(INTRANET, "A", office)], res
    assert route_dev(lab, office) is None and office not in daemon.routes()
    assert lab.connect(office) == "tunnel"
    ptr = query(lab, PTR_NAME, "PTR")  # the reverse zone
    assert records(ptr) == [(PTR_NAME, "PTR", "ns.corp.example")], ptr
    seen(f"(b) {INTRANET} A", res)
    seen(f"(b) {PTR_NAME} PTR", ptr)
    assert status(daemon)["queries"]["tagged"] == tagged  # neither is tagged
    asked = sent(c0, lab)
    assert asked["head_office"] == 2 and asked["any"] == 2, asked  # the zones beat the default
    no_tunnel_side(lab, res)


def test_a_chain_from_head_office_is_finished_by_the_local_resolver(split: Split) -> None:
    lab, daemon = split.lab, split.daemon
    name, target = CHAIN
    local4, office4 = split_address("local", 1), split_address("head office", 1)
    s0, c0 = status(daemon), counts(lab)
    res = fetch(lab, name)  # the first connection, at once
    assert res["addresses"] == [local4] and res["identity"] == "breakout", res
    full = query(lab, name)  # the whole answer (a cache hit by now)
    expected = [(name, "CNAME", target), (target, "A", local4)]
    assert records(full) == expected, full
    seen(f"(c) {name} A", res)
    seen(f"(c) {name} A, whole answer", full)
    assert route_dev(lab, local4) == WAN_IF
    assert route_dev(lab, office4) is None  # head office's addresses for the target: not routed
    assert target in daemon.routes()[local4]["names"]
    s1 = status(daemon)
    assert s1["forwarding"]["spliced"] == s0["forwarding"]["spliced"] + 1
    asked = sent(c0, lab)
    assert (asked["head_office"], asked["local"], asked["default"]) == (1, 1, 0), asked
    # A cache hit serves the same finished answer, and asks nobody.
    c1 = counts(lab)
    again = query(lab, name)
    assert records(again) == expected, again
    seen(f"(c) {name} A, cache hit", again)
    s2 = status(daemon)
    assert s2["cache"]["hits"] == s1["cache"]["hits"] + 1
    assert s2["cache"]["misses"] == s1["cache"]["misses"]
    assert s2["forwarding"]["spliced"] == s1["forwarding"]["spliced"]
    assert sent(c1, lab)["any"] == 0
    assert route_dev(lab, local4) == WAN_IF and lab.connect(local4) == "breakout"
    # The same for AAAA.
    res6 = query(lab, name, "AAAA", ROUTER_LAN6)
    local6 = split_address("local", 1, 6)
    assert records(res6) == [(name, "CNAME", target), (target, "AAAA", local6)], res6
    assert route_dev(lab, local6) == WAN_IF
    seen(f"(c) {name} AAAA", res6)
    no_tunnel_side(lab, res, full, again, res6)


def test_the_canary_gets_nxdomain_without_an_upstream_query(split: Split) -> None:
    lab, daemon = split.lab, split.daemon
    # The name has addresses upstream (here: at the local resolver, asked directly) ...
    direct = query(lab, CANARY, server=BREAKOUT_RESOLVER4)
    assert addresses(direct) == [split_address("local", 9)], direct
    # ... but resolverd answers NXDOMAIN itself.
    s0, c0 = status(daemon), counts(lab)
    res = query(lab, CANARY)
    res6 = query(lab, CANARY, "AAAA", ROUTER_LAN6)
    assert (res["rcode"], res["answer"]) == ("NXDOMAIN", []), res
    assert (res6["rcode"], res6["answer"]) == ("NXDOMAIN", []), res6
    seen(f"(d) {CANARY} A, asked of the local resolver directly", direct)
    seen(f"(d) {CANARY} A", res)
    assert sent(c0, lab)["any"] == 0
    s1 = status(daemon)
    assert s1["forwarding"]["canaries"] == s0["forwarding"]["canaries"] + 2
    assert s1["cache"]["misses"] == s0["cache"]["misses"]


def test_with_do_the_chain_is_passed_through_unspliced(split: Split) -> None:
    lab, daemon = split.lab, split.daemon
    name, target = DO_CHAIN
    office4 = split_address("head office", 0)  # head office's address for teams.office365.com
    s0, c0 = status(daemon), counts(lab)
    res = query(lab, name, do=True)
    assert res["do"] is True, res
    assert records(res) == [(name, "CNAME", target), (target, "A", office4)], res
    seen(f"(e) {name} A with DO", res)
    assert status(daemon)["forwarding"]["spliced"] == s0["forwarding"]["spliced"]
    asked = sent(c0, lab)
    assert (asked["head_office"], asked["local"]) == (1, 0), asked
    assert route_dev(lab, office4) == WAN_IF  # tagged and routed as they came
    # Without DO the same question is finished locally.
    plain = query(lab, name)
    assert records(plain) == [(name, "CNAME", target), (target, "A", LOCAL_TEAMS4)], plain
    seen(f"(e) {name} A without DO", plain)
    assert status(daemon)["forwarding"]["spliced"] == s0["forwarding"]["spliced"] + 1
    no_tunnel_side(lab, res, plain)


def test_when_the_local_resolver_stops_answering_the_default_upstreams_answer(
    split: Split,
) -> None:
    """Runs last: the local resolver stays dead."""
    lab, daemon = split.lab, split.daemon
    local = split.servers["local"]
    local.kill()
    local.wait(timeout=5)
    s0, c0 = status(daemon), counts(lab)
    for n in range(1, 4):  # DEAD_AFTER failures, a forward.timeout each
        name = SPLIT_M365[1 + n]
        res = query(lab, name)
        assert addresses(res) == [split_address("default", 1 + n)], (name, res)
        seen(f"(f) {name} A, local resolver dead", res)
    s1 = status(daemon)
    (breakout,) = [u for u in s1["upstreams"] if u["role"] == "breakout"]
    assert breakout["address"] == f"{BREAKOUT_RESOLVER4}:53" and breakout["healthy"] is False
    assert all(u["healthy"] for u in s1["upstreams"] if u["role"] != "breakout")
    assert s1["forwarding"]["breakout_fallbacks"] == s0["forwarding"]["breakout_fallbacks"] + 3
    text = daemon.ctl("status").stdout
    assert f"{BREAKOUT_RESOLVER4}:53: breakout, unhealthy" in text, text
    asked = sent(c0, lab)
    assert asked["local"] == 3 and asked["default"] == 3, asked  # through wan0 still
    # Now skipped: the next name goes to the default upstreams at once, and is routed.
    name, address = SPLIT_M365[5], split_address("default", 5)
    res = fetch(lab, name)
    assert res["addresses"] == [address] and res["identity"] == "breakout", res
    assert res["resolve_ms"] < TIMEOUT * 1000, res
    seen(f"(f) {name} A, local resolver unhealthy", res)
    SEEN["(f) status: breakout upstream"] = json.dumps(breakout)
    assert route_dev(lab, address) == WAN_IF and route_dev(lab, BREAKOUT_RESOLVER4) == WAN_IF
    after = status(daemon)["forwarding"]["breakout_fallbacks"]
    assert after == s0["forwarding"]["breakout_fallbacks"] + 4
    no_tunnel_side(lab, res)
