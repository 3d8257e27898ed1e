"""Several breakout links and their health, end to end, with the real daemon.

The lab has two breakout links (``Lab(links=2)``): wan0 to the server answering "breakout" and
wan1 to the one answering "breakout2"; the tunnel server answers "tunnel". resolverd probes
PROBE4/PROBE6 through each link every 0.5 s. Both breakout servers own the probe target, and
so does the tunnel server: a probe that leaked into the tunnel would still be answered, and
the failover below would not happen. An upstream "dies" when its server drops the probe
target's packets (an nftables drop inside that server's namespace): its link stays up. The
ISP's resolver (BREAKOUT_RESOLVER4) sits behind both links, and each one answers the stage's
name with an address of its own, so the answer says which link the query took; the default
upstream (in the router) answers with a third one. Every stage asserts on the server that
answered the client's first connection after the switch.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from tests.netns.lab import (
    BREAKOUT2_GW4,
    BREAKOUT2_GW6,
    BREAKOUT_GW4,
    BREAKOUT_GW6,
    BREAKOUT_RESOLVER4,
    PORT,
    PROBE4,
    PROBE6,
    ROUTER_LAN4,
    ROUTER_LAN6,
    SERVICE4,
    SERVICE6,
    Lab,
    wait_for,
)
from tests.netns.scenario import PRIORITY, PROTOCOL, TABLE, Daemon, fetch

pytestmark = pytest.mark.netns

INTERVAL, FAILURES, SUCCESSES = 0.5, 2, 2
SWITCH = INTERVAL * FAILURES + 2.0  # the longest a move may take after the upstream died
BACK = INTERVAL * SUCCESSES + 2.0  # ... or after it came back
PROBE_TABLES = (TABLE + 1, TABLE + 2)
# Who answers sN.office365.com with which address: the default upstream, and the breakout
# resolver behind each link.
OFFSET = {"default": 10, "breakout": 20, "breakout2": 30}
WAN0 = f"{{interface: wan0, gateway4: {BREAKOUT_GW4}, gateway6: '{BREAKOUT_GW6}'}}"
WAN1 = f"{{interface: wan1, gateway4: {BREAKOUT2_GW4}, gateway6: '{BREAKOUT2_GW6}'}}"
TIMES: dict[str, float] = {}  # measured switch times, printed at the end (pytest -s)


def name(n: int) -> str:
    return f"s{n}.office365.com"


def records(who: str) -> dict[str, list[dict[str, Any]]]:
    at = OFFSET[who]
    return {
        name(n): [
            {"type": "A", "value": SERVICE4[at + n], "ttl": 300},
            {"type": "AAAA", "value": SERVICE6[at + n], "ttl": 300},
        ]
        for n in range(1, 10)
    }


def answered_by(address: str) -> str:
    """Which resolver handed out `address` (see records)."""
    for who, at in OFFSET.items():
        if address in SERVICE4[at + 1 : at + 10] or address in SERVICE6[at + 1 : at + 10]:
            return who
    return f"unknown {address}"


def config(tmp: str, links: tuple[str, str] = (WAN0, WAN1)) -> str:
    return f"""
listen: ["{ROUTER_LAN4}:53", "[{ROUTER_LAN6}]:53"]
upstreams: ["127.0.0.1:5300"]
allow: ["192.0.2.128/25", "2001:db8:c::/64", "127.0.0.0/8"]
state_dir: {tmp}/state
control: {{socket: {tmp}/control.sock}}
metrics: {{listen: "127.0.0.1:9365"}}
breakout:
  mode: kernel
  links: [{links[0]}, {links[1]}]
  resolvers: ["{BREAKOUT_RESOLVER4}"]
  health:
    targets: ["{PROBE4}:{PORT}", "[{PROBE6}]:{PORT}"]
    interval: {INTERVAL}
    timeout: 0.4
    failures: {FAILURES}
    successes: {SUCCESSES}
  table: {TABLE}
  rule_priority: {PRIORITY}
  route_protocol: {PROTOCOL}
  ipset4: m365-v4
  ipset6: m365-v6
  min_hold: 300
  grace: 0
  ack_timeout: 5  # generous: other namespaces on this host may hold the rtnl lock
"""


# -- fixtures and helpers -------------------------------------------------------------------------


@pytest.fixture(scope="module")
def lab2() -> Iterator[Lab]:
    with Lab("fo", links=2) as built:
        yield built


@pytest.fixture(scope="module")
def daemon(lab2: Lab, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Daemon]:
    tmp = str(tmp_path_factory.mktemp("failover"))
    for ns, who in ((lab2.breakout, "breakout"), (lab2.breakout2, "breakout2")):
        zone = os.path.join(tmp, f"{who}.yaml")
        with open(zone, "w") as fh:
            json.dump({"records": records(who)}, fh)
        lab2.spawn(
            ns, sys.executable, "-m", "tests.fakeupstream", "--listen",
            f"{BREAKOUT_RESOLVER4}:53", "--zone", zone, stdout=subprocess.DEVNULL,
            stderr=open(os.path.join(tmp, f"{who}-resolver.log"), "w"),  # noqa: SIM115
        )  # fmt: skip
    d = Daemon(lab2, tmp, text=config(tmp), records=records("default"))
    d.start()
    try:
        yield d
    finally:
        d.stop()
        lab2.python(lab2.router, "-m", "resolver.daemon", "--cleanup", "--config", d.cfg,
                    check=False)  # fmt: skip
        if TIMES:
            print("\nmeasured:", ", ".join(f"{k} {v:.2f} s" for k, v in TIMES.items()))


@pytest.fixture(autouse=True)
def both_healthy(lab2: Lab, daemon: Daemon) -> Iterator[None]:
    """Each test starts and ends with both upstreams alive and wan0 carrying the routes."""

    def settle() -> None:
        lab2.blackhole(lab2.breakout, False)
        lab2.blackhole(lab2.breakout2, False)
        if daemon.proc is None or daemon.proc.poll() is not None:
            daemon.start()
        ok = wait_for(lambda: state(daemon) == ("wan0", [True, True]), BACK + 3)
        assert ok, f"not settled: {daemon.status()}\n{daemon.log()}"

    settle()
    yield
    settle()


def state(daemon: Daemon) -> tuple[Any, list[Any]]:
    s = daemon.status()
    return s["active"], [link["healthy"] for link in s["links"]]


def timed(check: Callable[[], bool], timeout: float) -> float | None:
    """Seconds until `check` held (polled every 20 ms), or None."""
    started = time.monotonic()
    while time.monotonic() - started < timeout:
        if check():
            return time.monotonic() - started
        time.sleep(0.02)
    return None


def route_dev(lab: Lab, address: str, table: int = TABLE) -> str | None:
    """The interface `table` routes `address` through, or None (no route there)."""
    family = "-6" if ":" in address else "-4"
    out = lab.ip(lab.router, family, "route", "show", "table", str(table), address, check=False)
    words = out.split()
    return words[words.index("dev") + 1] if "dev" in words else None


def devices(lab: Lab, table: int = TABLE) -> set[str]:
    """The interfaces of every route in `table` (both families)."""
    lines = lab.table(table, 4) + lab.table(table, 6)
    return {line.split(" dev ")[1].split()[0] for line in lines if " dev " in line}


def our_rules(lab: Lab) -> list[str]:
    out = lab.ip(lab.router, "-4", "rule") + lab.ip(lab.router, "-6", "rule")
    return [line.strip() for line in out.splitlines() if f"proto {PROTOCOL}" in line]


def log_lines(daemon: Daemon) -> list[str]:
    """Every line of the current daemon's log."""
    with open(os.path.join(daemon.tmp, f"resolverd{daemon.starts}.log")) as fh:
        return fh.read().splitlines()


def metrics(lab: Lab) -> list[str]:
    res = lab.python(lab.router, "-c", "import urllib.request; print(urllib.request.urlopen("
                     "'http://127.0.0.1:9365/metrics', timeout=5).read().decode())")  # fmt: skip
    return res.stdout.splitlines()


def resolve(lab: Lab, n: int, qtype: str = "A") -> tuple[str, str, float]:
    """(who answered sN, who answered the first connection to it, resolve ms)."""
    res = fetch(lab, name(n), qtype, ROUTER_LAN6 if qtype == "AAAA" else ROUTER_LAN4)
    return answered_by(res.get("address", "")), res["identity"], res["resolve_ms"]


# -- the scenarios --------------------------------------------------------------------------------


def test_both_links_are_probed_and_the_primary_carries_everything(
    lab2: Lab, daemon: Daemon
) -> None:
    s = daemon.status()
    assert s["active"] == "wan0" and s["interface"] == "wan0"
    assert [(x["interface"], x["link_up"], x["healthy"]) for x in s["links"]] == [
        ("wan0", True, True),
        ("wan1", True, True),
    ]
    rules = our_rules(lab2)
    for mark, table in (("0x73650000", PROBE_TABLES[0]), ("0x73650001", PROBE_TABLES[1])):
        assert rules.count(f"{PRIORITY - 1}:\tfrom all fwmark {mark} lookup {table} proto 245") == 2
    for table, gw4, gw6, dev in (
        (PROBE_TABLES[0], BREAKOUT_GW4, BREAKOUT_GW6, "wan0"),
        (PROBE_TABLES[1], BREAKOUT2_GW4, BREAKOUT2_GW6, "wan1"),
    ):
        v4, v6 = lab2.table(table, 4), lab2.table(table, 6)
        assert f"default via {gw4} dev {dev} proto 245" in v4[0]
        assert any(line.startswith("unreachable default proto 245") for line in v4)
        assert f"default via {gw6} dev {dev} proto 245" in v6[0]
        assert any(line.startswith("unreachable default") for line in v6)
    # A probe route someone else removes comes back at once.
    table1, gone = str(PROBE_TABLES[1]), f"default via {BREAKOUT2_GW4} dev wan1"
    lab2.ip(lab2.router, "route", "del", "default", "via", BREAKOUT2_GW4, "table", table1)
    assert wait_for(lambda: any(gone in line for line in lab2.table(table1)), 2)
    assert route_dev(lab2, BREAKOUT_RESOLVER4) == "wan0"
    assert devices(lab2) == {"wan0"}
    assert resolve(lab2, 1)[:2] == ("breakout", "breakout")
    assert resolve(lab2, 1, "AAAA")[:2] == ("breakout", "breakout")
    text = daemon.ctl("status").stdout
    assert "         Active: wan0\n" in text
    assert "      Link wan0: up, healthy, rtt " in text and ", active\n" in text
    assert "      Link wan1: up, healthy, rtt " in text


def test_failover_to_the_second_link_then_the_tunnel_then_back(lab2: Lab, daemon: Daemon) -> None:
    held4, held6 = SERVICE4[OFFSET["breakout"] + 2], SERVICE6[OFFSET["breakout"] + 2]
    assert resolve(lab2, 2)[:2] == ("breakout", "breakout")
    assert resolve(lab2, 2, "AAAA")[:2] == ("breakout", "breakout")
    failovers = daemon.status()["failovers"]
    seen = len(log_lines(daemon))

    # The primary's upstream dies, its link stays up: everything moves to wan1.
    lab2.blackhole(lab2.breakout, True)
    took = timed(lambda: route_dev(lab2, BREAKOUT_RESOLVER4) == "wan1", SWITCH + 3)
    assert took is not None and took <= SWITCH, f"moved after {took} s"
    TIMES["wan0 -> wan1"] = took
    assert lab2.connect(held4) == "breakout2"  # the first connection after the switch
    assert lab2.connect(held6) == "breakout2"
    assert devices(lab2) == {"wan1"}  # holds, policy prefixes, the resolver's route
    assert resolve(lab2, 3)[:2] == ("breakout2", "breakout2")  # asked through wan1 too
    s = daemon.status()
    assert s["active"] == "wan1" and s["failovers"] == failovers + 1
    assert [(x["link_up"], x["healthy"]) for x in s["links"]] == [(True, False), (True, True)]
    text = daemon.ctl("status").stdout
    assert "         Active: wan1\n" in text and "      Link wan0: up, unhealthy\n" in text

    # The second one dies too: withdrawn, the tunnel carries it, the holds stay.
    lab2.blackhole(lab2.breakout2, True)
    took = timed(lambda: route_dev(lab2, BREAKOUT_RESOLVER4) is None, SWITCH + 3)
    assert took is not None and took <= SWITCH, f"withdrawn after {took} s"
    TIMES["wan1 -> none"] = took
    assert lab2.connect(held4) == "tunnel"
    assert lab2.connect(held6) == "tunnel"
    assert lab2.table(TABLE, 4) == [] and lab2.table(TABLE, 6) == []
    s = daemon.status()
    assert s["active"] is None and s["failovers"] == failovers + 2
    assert (s["routes_v4"], s["routes_v6"], s["cidr_routes"]) == (0, 0, 0)
    assert {held4, held6} <= set(daemon.routes())  # the holds are kept
    who, identity, ms = resolve(lab2, 4)
    assert (who, identity) == ("default", "tunnel")  # no usable link: the default upstreams
    assert ms < 1000  # asked at once, not after a breakout resolver's timeout
    assert "Active: none: the main table (the tunnel)" in daemon.ctl("status").stdout

    # Both come back, the primary first: the routes return to wan0 in one move.
    lab2.blackhole(lab2.breakout, False)
    lab2.blackhole(lab2.breakout2, False)
    took = timed(lambda: route_dev(lab2, BREAKOUT_RESOLVER4) == "wan0", BACK + 3)
    assert took is not None and took <= BACK, f"back after {took} s"
    TIMES["none -> wan0"] = took
    assert lab2.connect(held4) == "breakout" and lab2.connect(held6) == "breakout"
    assert wait_for(lambda: devices(lab2) == {"wan0"}, 2)
    assert resolve(lab2, 5)[:2] == ("breakout", "breakout")
    s = daemon.status()
    assert s["active"] == "wan0" and s["links"][0]["healthy"] is True
    assert s["failovers"] == failovers + 3

    # Each move logged once, with its reason.
    lines = log_lines(daemon)[seen:]
    moved = [line for line in lines if "moving" in line]
    assert len(moved) == 1 and "from wan0 to wan1 (wan0: unhealthy)" in moved[0], moved
    assert "IPv4 and IPv6" in moved[0]
    withdrawn = [line for line in lines if "no usable link" in line]
    assert len(withdrawn) == 1 and "wan0: unhealthy; wan1: unhealthy" in withdrawn[0]
    restored = [line for line in lines if "usable: restoring" in line]
    assert len(restored) == 1 and "wan0 usable" in restored[0], restored
    m = metrics(lab2)
    assert f"resolverd_breakout_failovers_total {failovers + 3}" in m
    assert 'resolverd_breakout_interface_healthy{interface="wan0"} 1' in m  # wan1: maybe not yet
    assert 'resolverd_breakout_interface_active{interface="wan0"} 1' in m
    assert any(line.startswith('resolverd_breakout_probe_rtt_seconds{interface="wan0"}')
               for line in m)  # fmt: skip


def test_a_restart_with_a_dead_primary_never_installs_through_it(lab2: Lab, daemon: Daemon) -> None:
    held = SERVICE4[OFFSET["breakout"] + 6]
    assert resolve(lab2, 6)[:2] == ("breakout", "breakout")
    lab2.blackhole(lab2.breakout, True)
    assert wait_for(lambda: route_dev(lab2, held) == "wan1", SWITCH + 3)
    daemon.stop()  # SIGTERM: the routes stay
    assert lab2.connect(held) == "breakout2"
    monitor = lab2.spawn(lab2.router, "ip", "-o", "monitor", "route")
    time.sleep(0.3)  # subscribed before the daemon starts
    daemon.start()
    assert daemon.status()["active"] == "wan1"  # known before anything was installed
    time.sleep(0.3)
    monitor.kill()
    out, _ = monitor.communicate(timeout=5)
    through_wan0 = [ln for ln in out.splitlines() if f"table {TABLE}" in ln and "dev wan0" in ln]
    assert through_wan0 == [], through_wan0
    assert route_dev(lab2, held) == "wan1" and lab2.connect(held) == "breakout2"
    assert held in daemon.routes()  # adopted from the journal
    lab2.blackhole(lab2.breakout, False)
    took = timed(lambda: route_dev(lab2, held) == "wan0", BACK + 3)
    assert took is not None and took <= BACK
    TIMES["after restart, wan1 -> wan0"] = took
    assert lab2.connect(held) == "breakout"


def test_a_reload_that_reorders_the_links_moves_without_a_gap(lab2: Lab, daemon: Daemon) -> None:
    held = SERVICE4[OFFSET["breakout"] + 7]
    assert resolve(lab2, 7)[:2] == ("breakout", "breakout")
    loop = lab2.spawn(
        lab2.client, sys.executable, "-m", "tests.netns.agents", "loop", held, str(PORT), "3.5"
    )
    try:
        time.sleep(0.8)
        with open(daemon.cfg, "w") as fh:
            fh.write(config(daemon.tmp, (WAN1, WAN0)))
        daemon.ctl("reload")
        assert wait_for(lambda: route_dev(lab2, held) == "wan1", 3, step=0.02)
        out, _ = loop.communicate(timeout=15)
        answers = out.split("\n")[:-1]
        assert set(answers) == {"breakout", "breakout2"}, answers  # never the tunnel, no error
        first = answers.index("breakout2")
        assert set(answers[first:]) == {"breakout2"}  # one switch, no flapping back
        s = daemon.status()
        assert s["active"] == "wan1" and [x["interface"] for x in s["links"]] == ["wan1", "wan0"]
        assert [x["healthy"] for x in s["links"]] == [True, True]  # verdicts kept
        assert devices(lab2) == {"wan1"}
        # The first probe table and mark now belong to wan1.
        assert f"dev wan1 proto {PROTOCOL}" in lab2.table(PROBE_TABLES[0])[0]
        assert resolve(lab2, 8)[:2] == ("breakout2", "breakout2")
    finally:
        if loop.poll() is None:
            loop.kill()
        with open(daemon.cfg, "w") as fh:
            fh.write(config(daemon.tmp))
        daemon.ctl("reload")
    assert wait_for(lambda: route_dev(lab2, held) == "wan0", 3)
    assert f"dev wan0 proto {PROTOCOL}" in lab2.table(PROBE_TABLES[0])[0]


def test_flush_and_cleanup_leave_no_probe_route_or_rule(lab2: Lab, daemon: Daemon) -> None:
    assert resolve(lab2, 9)[:2] == ("breakout", "breakout")
    counts = daemon.json("flush")
    assert counts["rules"] == 6  # 2 main rules, 2 probe rules per link (IPv4 and IPv6)
    assert our_rules(lab2) == []
    for table in (TABLE, *PROBE_TABLES):
        assert lab2.table(table, 4) == [] and lab2.table(table, 6) == []
    # The probes wait meanwhile (they would find no path): the verdicts stay.
    time.sleep(3 * INTERVAL)
    assert state(daemon) == ("wan0", [True, True])
    assert lab2.table(PROBE_TABLES[0]) == []
    # The next install puts the rules back, and the probe tables come back before a round.
    assert resolve(lab2, 9)[:2] == ("breakout", "breakout")
    assert wait_for(lambda: len(our_rules(lab2)) == 6, 2 * INTERVAL + 2)
    assert wait_for(lambda: all(lab2.table(t) for t in PROBE_TABLES), 2 * INTERVAL + 2)
    time.sleep(3 * INTERVAL)
    assert state(daemon) == ("wan0", [True, True])

    daemon.stop()
    res = lab2.python(lab2.router, "-m", "resolver.daemon", "--cleanup", "--config", daemon.cfg,
                      check=False)  # fmt: skip
    assert res.returncode == 0, res.stderr
    assert our_rules(lab2) == []
    for table in (TABLE, *PROBE_TABLES):
        assert lab2.table(table, 4) == [] and lab2.table(table, 6) == []
    daemon.start()  # for the fixture's last check
