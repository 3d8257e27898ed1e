"""The breakout's scope in the kernel (netns, root): `breakout.clients` with real packets.

The lab's client namespace gets a second address on the LAN: IN4/IN6 (the lab's client
address) is in the scope, OUT4/OUT6 is not. The breakout runs in the router (the driver,
tests/netns/driver.py: the same Breakout resolverd runs) with `clients: [IN4/32, IN6/128]`
and holds a service address. nftables counters in the router count, per source and output
interface, what the client sends; they show:

- the ip rules: one `from PREFIX` per client prefix in its family, `iif lo` for the router's
  own traffic, no `from all`; the router's own lookup goes out wan0;
- the in-scope client's first packet (the SYN) leaves by the breakout link (wan0), the
  out-of-scope client's first packet by the tunnel (tun0), and each connection reaches the
  server on that side;
- a reload that changes the scope (IN4/32 <-> a /28 holding both) swaps the rules with no gap:
  a datagram stream from IN4 during 10 reloads never leaves by the tunnel, and every rule dump
  taken meanwhile in a tight loop has a rule covering IN4;
- a scoped rule deleted by hand comes back; `--cleanup` removes the scoped rules, and those
  of an earlier scope found by our protocol.
"""

from __future__ import annotations

import ipaddress
import json
import subprocess
import sys
import threading
import time
from typing import Any

import pytest

from tests.netns.conftest import Router, breakout_cfg
from tests.netns.driver import DriverProcess
from tests.netns.lab import (
    CLIENT4,
    CLIENT6,
    LAN_IF,
    PORT,
    SERVICE4,
    SERVICE6,
    TUN_IF,
    WAN_IF,
    Lab,
    wait_for,
)
from tests.netns.scenario import PRIORITY, PROTOCOL, TABLE

pytestmark = pytest.mark.netns

IN4, IN6 = CLIENT4, CLIENT6  # 192.0.2.130, 2001:db8:c::2
OUT4, OUT6 = "192.0.2.140", "2001:db8:c::40"
HELD4, HELD6 = SERVICE4[5], SERVICE6[5]
SCOPE = {"clients": [f"{IN4}/32", f"{IN6}/128"]}
WIDE = {"clients": ["192.0.2.128/28", f"{IN6}/128"]}  # IN4 and OUT4 (.128-.143)
UDP_PORT = 9999


@pytest.fixture(scope="module")
def scoped_lab(lab: Lab) -> Lab:
    """The module's lab with OUT4/OUT6 on the client too (the lab goes with the module)."""
    lab.ip(lab.client, "addr", "add", f"{OUT4}/25", "dev", "eth0")
    lab.ip(lab.client, "-6", "addr", "add", f"{OUT6}/64", "dev", "eth0", "nodad")
    return lab


@pytest.fixture
def counted(scoped_lab: Lab, router: Router) -> Router:
    """The router with counters per (source, output interface) for traffic to the held
    addresses (removed by `router.reset`: `nft flush ruleset`)."""
    lab = scoped_lab
    rules = []
    for src, dst, fam in ((IN4, HELD4, "ip"), (OUT4, HELD4, "ip"), (IN6, HELD6, "ip6"),
                          (OUT6, HELD6, "ip6")):  # fmt: skip
        for oif in (WAN_IF, TUN_IF):
            rules.append(f'{fam} saddr {src} {fam} daddr {dst} oifname "{oif}" counter')
    lab.run(lab.router, "nft", "-f", "-", input=(
        "table inet scope_count {\n  chain forward_count { type filter hook forward priority 0;"
        " policy accept;\n    " + "\n    ".join(rules) + "\n  }\n}\n"
    ))  # fmt: skip
    return router


def counts(lab: Lab) -> dict[tuple[str, str], int]:
    """(source, interface) -> packets counted so far."""
    out = lab.run(lab.router, "nft", "-j", "list", "table", "inet", "scope_count").stdout
    found: dict[tuple[str, str], int] = {}
    for item in json.loads(out)["nftables"]:
        rule = item.get("rule")
        if rule is None:
            continue
        src = oif = ""
        packets = 0
        for expr in rule["expr"]:
            match = expr.get("match")
            if match is not None:
                field = match["left"].get("payload", {}).get("field")
                if field == "saddr":
                    src = match["right"]
                elif "meta" in match["left"]:
                    oif = match["right"]
            elif "counter" in expr:
                packets = expr["counter"]["packets"]
        found[(src, oif)] = packets
    return found


def connect_from(lab: Lab, source: str, host: str) -> str:
    """A TCP connection from the client's `source` address; the identity that answered."""
    code = (
        "import socket, sys\n"
        "fam = socket.AF_INET6 if ':' in sys.argv[1] else socket.AF_INET\n"
        "s = socket.socket(fam, socket.SOCK_STREAM); s.settimeout(2)\n"
        "s.bind((sys.argv[1], 0)); s.connect((sys.argv[2], int(sys.argv[3])))\n"
        "print(s.recv(64).decode().strip())\n"
    )
    res = lab.python(lab.client, "-c", code, source, host, str(PORT), check=False)
    return res.stdout.strip() or f"error: {res.stderr.strip()}"


def rules(lab: Lab, family: int) -> list[str]:
    out = lab.ip(lab.router, f"-{family}", "rule", "show", "table", str(TABLE))
    return [" ".join(line.split()[1:]) for line in out.splitlines() if line.strip()]


def start(router: Router, **scope: Any) -> DriverProcess:
    d = router.start(**scope)
    res = d.call("answer", name="outlook.office365.com", addresses=[HELD4, HELD6], ttl=300)
    assert res["matched"]
    assert HELD4 in router.hosts(4) and HELD6 in router.hosts(6)
    return d


def test_the_in_scope_client_breaks_out_and_the_other_keeps_the_tunnel(counted: Router) -> None:
    lab = counted.lab
    start(counted, **SCOPE)
    assert rules(lab, 4) == [
        f"from {IN4} lookup {TABLE} proto {PROTOCOL}",
        f"from all iif lo lookup {TABLE} proto {PROTOCOL}",
    ]
    assert rules(lab, 6) == [
        f"from {IN6} lookup {TABLE} proto {PROTOCOL}",
        f"from all iif lo lookup {TABLE} proto {PROTOCOL}",
    ]
    # The router's own traffic (the queries to breakout.resolvers) stays in scope.
    assert f"dev {WAN_IF}" in lab.ip(lab.router, "route", "get", HELD4)
    # What the kernel decides for a forwarded packet of each client.
    get = lab.ip(lab.router, "route", "get", HELD4, "from", OUT4, "iif", LAN_IF)
    assert f"dev {TUN_IF}" in get, get
    before = counts(lab)
    assert connect_from(lab, IN4, HELD4) == "breakout"
    assert connect_from(lab, OUT4, HELD4) == "tunnel"
    assert connect_from(lab, IN6, HELD6) == "breakout"
    assert connect_from(lab, OUT6, HELD6) == "tunnel"
    after = counts(lab)
    delta = {key: after[key] - before.get(key, 0) for key in after}
    print("\npackets per (source, interface):", delta)
    for inside, outside in ((IN4, OUT4), (IN6, OUT6)):
        # Every packet of the in-scope client, the first (the SYN) included, left by wan0;
        # every packet of the other by the tunnel: not even its first by the breakout.
        assert delta[(inside, WAN_IF)] >= 3 and delta[(inside, TUN_IF)] == 0
        assert delta[(outside, TUN_IF)] >= 3 and delta[(outside, WAN_IF)] == 0


def udp_stream(lab: Lab, source: str, host: str, seconds: float) -> subprocess.Popen[str]:
    """Datagrams from `source` to host:UDP_PORT, one every 200 us, for `seconds`."""
    code = (
        "import socket, sys, time\n"
        "s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.bind((sys.argv[1], 0))\n"
        "end = time.monotonic() + float(sys.argv[3]); n = 0\n"
        "while time.monotonic() < end:\n"
        f"    try: s.sendto(b'x', (sys.argv[2], {UDP_PORT})); n += 1\n"
        "    except OSError: pass\n"
        "    time.sleep(0.0002)\n"
        "print(n)\n"
    )
    return lab.spawn(lab.client, sys.executable, "-c", code, source, host, str(seconds))


def covers(lines: list[str], address: str) -> bool:
    ip = ipaddress.ip_address(address)
    for line in lines:
        words = line.split()
        if words[:2] == ["from", "all"] and "iif" not in words:
            return True
        if words[0] == "from" and words[1] != "all" and ip in ipaddress.ip_network(words[1]):
            return True
    return False


def test_a_reload_that_changes_the_scope_leaves_no_gap(counted: Router) -> None:
    lab = counted.lab
    d = start(counted, **SCOPE)
    base = counts(lab)
    stop = threading.Event()
    dumps: list[list[str]] = []

    def dump_loop() -> None:  # `ip rule` in a tight loop, in the router
        while not stop.is_set():
            dumps.append(rules(lab, 4))

    dumper = threading.Thread(target=dump_loop)
    stream = udp_stream(lab, IN4, HELD4, 4.0)
    dumper.start()
    try:
        time.sleep(0.3)
        for i in range(10):
            scope = WIDE if i % 2 == 0 else SCOPE
            d.call("reconfigure", breakout=breakout_cfg(**scope))
            expected = "192.0.2.128/28" if i % 2 == 0 else IN4
            assert f"from {expected} lookup {TABLE} proto {PROTOCOL}" in rules(lab, 4)
            time.sleep(0.2)
    finally:
        assert stream.stdout is not None
        sent = int(stream.stdout.read().strip() or 0)
        stop.set()
        dumper.join()
    after = counts(lab)
    out_wan = after[(IN4, WAN_IF)] - base[(IN4, WAN_IF)]
    out_tun = after[(IN4, TUN_IF)] - base[(IN4, TUN_IF)]
    gaps = [rs for rs in dumps if not covers(rs, IN4)]
    print(f"\n{sent} datagrams during 10 reloads: {out_wan} by wan0, {out_tun} by the tunnel; "
          f"{len(dumps)} rule dumps, {len(gaps)} without a rule for {IN4}")  # fmt: skip
    assert sent > 1000 and out_wan == sent and out_tun == 0
    assert len(dumps) > 50 and gaps == []
    assert sorted(rules(lab, 4)) == [  # the last reload went back to SCOPE
        f"from {IN4} lookup {TABLE} proto {PROTOCOL}",
        f"from all iif lo lookup {TABLE} proto {PROTOCOL}",
    ]


def test_a_deleted_scoped_rule_comes_back_and_cleanup_removes_every_one(
    scoped_lab: Lab, router: Router
) -> None:
    lab = scoped_lab
    d = start(router, **SCOPE)
    lab.ip(lab.router, "rule", "del", "pref", str(PRIORITY), "from", IN4, "table", str(TABLE))
    # Put back on the deletion event (an audit), within milliseconds; the audit's bound is 5 s.
    assert wait_for(lambda: covers(rules(lab, 4), IN4), timeout=6.0), rules(lab, 4)
    assert wait_for(lambda: "ip rules for table 365 were missing: added again" in router.log())
    assert connect_from(lab, IN4, HELD4) == "breakout"
    # A rule of an earlier scope, left while resolverd was stopped: found by its protocol.
    d.call("stop")
    lab.ip(lab.router, "rule", "add", "pref", str(PRIORITY), "from", "203.0.113.0/24", "table",
           str(TABLE), "proto", str(PROTOCOL))  # fmt: skip
    lab.ip(lab.router, "-6", "rule", "add", "pref", str(PRIORITY), "iif", "vlan9", "table",
           str(TABLE), "proto", str(PROTOCOL))  # fmt: skip
    lab.ip(lab.router, "rule", "add", "pref", str(PRIORITY), "from", "198.51.100.0/24",
           "table", str(TABLE))  # someone else's (protocol boot): stays  # fmt: skip
    res = router.driver().call("cleanup", breakout=breakout_cfg(**SCOPE),
                               state_dir=router.state_dir)  # fmt: skip
    assert res["rules"] == 2 + 2 + 1 + 1  # from IN4/IN6, iif lo (v4, v6), the two left
    assert rules(lab, 4) == [f"from 198.51.100.0/24 lookup {TABLE}"]
    assert rules(lab, 6) == []
    lab.ip(lab.router, "rule", "del", "pref", str(PRIORITY), "from", "198.51.100.0/24")
