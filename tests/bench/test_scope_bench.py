"""What the breakout's scope rules cost per forwarded packet (netns, root; make bench, figures: -s).

With `breakout.clients` (or `client_interfaces`) set, resolverd sends traffic to its table
through one `from PREFIX` rule per prefix, then `iif lo` (then one `iif NAME` per interface),
all at one priority, instead of one `from all` (resolver.net.probes.scope_specs); the kernel
walks them in order for every forwarded packet. Here the lab's router (tests/netns/lab.py)
forwards 64-byte UDP (iperf3 -u -b 0 -l 64, one stream, client and servers pinned to a CPU
each) from the client to SERVICE4[0], which table 365 routes out wan0 (the breakout link) and
the main table out tun0 (the tunnel), under four sets of IPv4 rules at PRIORITY:

- `all`: one `from all lookup 365` (no scope, the default);
- `in64`: 63 other /32s, then the client's own (IN4/32), then `iif lo`: the client is matched
  by the 64th rule, the worst case for a client in scope;
- `out64`: the same rules, the client sending from OUT4 (in none of them): it walks all 65
  and goes on to the main table;
- `in256`: as `in64` with 255 others before the client's prefix.

The configurations alternate, ROUNDS runs of SECONDS each. Two figures per run: wall-clock ns
per packet sent (as tests/bench/test_counters_bench.py), and the sender's CPU time per packet
(iperf3's own CPU use: the whole path, forwarding included, runs in softirq on the sender's
CPU, charged to it), which holds steady when other work shares the CPU and the wall clock
does not. The medians are printed, with the cost per rule derived from them ((in - all) /
rules walked past). What is asserted is loose, to catch a broken setup rather than a slow
machine: the path each packet took (the router's tx counters: in scope out wan0, out of scope
out tun0) and a per-rule CPU cost under PER_RULE_LIMIT ns.
"""

from __future__ import annotations

import json
import shutil
import statistics
import subprocess
import time
from collections.abc import Iterator
from typing import Any

import pytest

from tests.netns.lab import BREAKOUT_GW4, CLIENT4, SERVICE4, TUN_IF, WAN_IF, Lab
from tests.netns.scenario import PRIORITY, PROTOCOL, TABLE

pytestmark = pytest.mark.bench

IN4, OUT4 = CLIENT4, "192.0.2.140"  # both on the client's LAN (192.0.2.128/25)
TARGET = SERVICE4[0]  # owned by the breakout server and the tunnel server alike
IPERF_PORT = 5201
ROUNDS, SECONDS = 3, 2  # iperf3 takes whole seconds (-t 0.5 would be "no limit")
PER_RULE_LIMIT = 200.0  # ns: generous; measured 6-11 ns a rule on a 2-core VM


def fillers(count: int) -> list[str]:
    """`count` /32s that hold no address of the lab (nor IN4/OUT4): other clients' prefixes."""
    pool = [f"203.0.113.{i}/32" for i in range(100, 250) if i not in (153, 200)]
    pool += [f"198.51.100.{i}/32" for i in range(3, 127)]
    assert count <= len(pool)
    return pool[:count]


def scope_rules(rules: int) -> list[str]:
    """The selectors resolverd installs for `rules` client prefixes, in its order, the
    client's prefix last of them; `iif lo` after (resolver.net.probes.scope_specs)."""
    return [f"from {p}" for p in fillers(rules - 1)] + [f"from {IN4}/32", "iif lo"]


CONFIGS: dict[str, tuple[list[str], str, str]] = {  # name: (selectors, source, link taken)
    "all": (["from all"], IN4, WAN_IF),
    "in64": (scope_rules(64), IN4, WAN_IF),
    "out64": (scope_rules(64), OUT4, TUN_IF),
    "in256": (scope_rules(256), IN4, WAN_IF),
}


@pytest.fixture(scope="module")
def lab() -> Iterator[Lab]:
    if shutil.which("iperf3") is None:
        pytest.fail("tests/bench/test_scope_bench.py needs iperf3: run make sysdeps")
    with Lab("scp") as built:
        built.ip(built.client, "addr", "add", f"{OUT4}/25", "dev", "eth0")
        built.ip(built.router, "route", "add", f"{TARGET}/32", "via", BREAKOUT_GW4, "dev",
                 WAN_IF, "table", str(TABLE))  # fmt: skip
        yield built


class Rules:
    """The router's IPv4 rules at PRIORITY, swapped in one `ip -batch` each time."""

    def __init__(self, lab: Lab) -> None:
        self.lab = lab
        self.current: list[str] = []

    def use(self, selectors: list[str]) -> None:
        if selectors == self.current:
            return
        tail = f"pref {PRIORITY} lookup {TABLE}"
        batch = [f"rule del {s} {tail}" for s in self.current]
        batch += [f"rule add {s} {tail} protocol {PROTOCOL}" for s in selectors]
        self.lab.batch(self.lab.router, batch)
        self.current = selectors
        shown = self.lab.ip(self.lab.router, "-4", "rule", "show", "pref", str(PRIORITY))
        assert len(shown.splitlines()) == len(selectors), shown

    def clear(self) -> None:
        self.use([])


def tx_packets(lab: Lab) -> dict[str, int]:
    """The router's transmitted packets per interface."""
    out = lab.ip(lab.router, "-s", "-j", "link", "show")
    return {link["ifname"]: link["stats64"]["tx"]["packets"] for link in json.loads(out)}


def iperf(lab: Lab, source: str, seconds: int) -> dict[str, Any]:
    res = lab.run(
        lab.client, "iperf3", "-c", TARGET, "-B", source, "-p", str(IPERF_PORT), "-u", "-b", "0",
        "-l", "64", "-t", str(seconds), "-A", "0", "-J", timeout=seconds + 20,
    )  # fmt: skip
    out: dict[str, Any] = json.loads(res.stdout)["end"]
    return out


def measure(lab: Lab, rules: Rules, name: str, seconds: int) -> tuple[float, float]:
    """One run under configuration `name`: wall-clock and CPU ns per packet sent; and the
    path its packets took."""
    selectors, source, link = CONFIGS[name]
    rules.use(selectors)
    before = tx_packets(lab)
    end = iperf(lab, source, seconds)
    after = tx_packets(lab)
    wall, sent = end["sum"]["seconds"], int(end["sum"]["packets"])
    cpu = wall * end["cpu_utilization_percent"]["host_total"] / 100
    moved = {ifname: after[ifname] - before[ifname] for ifname in (WAN_IF, TUN_IF)}
    other = TUN_IF if link == WAN_IF else WAN_IF
    # Every datagram (and the test's TCP control connection) leaves by `link`, none by the
    # other one (a few neighbour packets at most).
    assert moved[link] >= 0.9 * sent, (name, sent, moved)
    assert moved[other] <= 20, (name, sent, moved)
    return 1e9 * wall / sent, 1e9 * cpu / sent


def test_per_packet_cost_of_scope_rules(lab: Lab) -> None:
    serve = ["iperf3", "-s", "-B", TARGET, "-p", str(IPERF_PORT), "-A", "1"]
    sides = (lab.breakout, lab.tunnel)
    servers = [lab.spawn(ns, *serve, stdout=subprocess.DEVNULL) for ns in sides]
    rules = Rules(lab)
    wall: dict[str, list[float]] = {name: [] for name in CONFIGS}
    cpu: dict[str, list[float]] = {name: [] for name in CONFIGS}
    try:
        time.sleep(0.3)
        for name in ("all", "out64"):  # warm both paths (neighbours, caches), unmeasured
            measure(lab, rules, name, 1)
        for _ in range(ROUNDS):
            for name in CONFIGS:
                w, c = measure(lab, rules, name, SECONDS)
                wall[name].append(w)
                cpu[name].append(c)
    finally:
        rules.clear()
        for server in servers:
            server.kill()
    per_rule: dict[str, tuple[float, float]] = {}
    print("\nscope rules: ns per 64-byte UDP datagram forwarded (92-byte IPv4 packets), medians")
    for label, runs in (("wall", wall), ("cpu", cpu)):
        med = {name: statistics.median(x) for name, x in runs.items()}
        per_rule[label] = ((med["in64"] - med["all"]) / 63, (med["in256"] - med["all"]) / 255)
        print(f"  {label}: " + ", ".join(f"{name} {med[name]:.0f}" for name in CONFIGS))
        print("    runs: " + "; ".join(f"{n} {[round(x) for x in r]}" for n, r in runs.items()))
        print(
            f"    per rule walked: {per_rule[label][0]:.1f} ns (64 rules), "
            f"{per_rule[label][1]:.1f} ns (256 rules); out64 - in64: "
            f"{med['out64'] - med['in64']:+.0f} ns"
        )
    assert max(per_rule["cpu"]) < PER_RULE_LIMIT
