"""The breakout library against a real kernel, in the lab's router namespace (driver process).

Every assertion about "which path" is made on the server that answered a real connection from
the client namespace: "breakout" (through wan0) or "tunnel" (the router's default route).
"""

from __future__ import annotations

import os
import signal
import time

import pytest

from tests.netns.conftest import Router, breakout_cfg
from tests.netns.driver import DriverError
from tests.netns.lab import (
    BREAKOUT_GW4,
    CLIENT4,
    CLIENT6,
    ROUTER_LAN4,
    ROUTER_WAN4,
    SERVICE4,
    SERVICE6,
    TUN_IF,
    TUNNEL_GW4,
    TUNNEL_GW6,
    WAN_IF,
    wait_for,
)
from tests.netns.scenario import PRIORITY, PROTOCOL, TABLE

pytestmark = pytest.mark.netns

M365 = "outlook.office.com"  # row 1, required
OTHER_POLICY = """
rules:
  - row: 1
    purpose: Exchange
    required: true
    domains: [outlook.office.com, "*.office.com"]
  - row: 2
    purpose: SharePoint
    required: true
    domains: ["*.sharepoint.com"]
    cidrs: [203.0.113.50/32]
"""


def test_rules_sets_and_the_first_connection_takes_the_breakout(router: Router) -> None:
    lab = router.lab
    a4, a6, other = SERVICE4[0], SERVICE6[0], SERVICE4[1]
    assert lab.connect(a4) == "tunnel"
    d = router.start()
    assert router.rules(4) == [f"{PRIORITY}:\tfrom all lookup {TABLE} proto {PROTOCOL}"]
    assert len(router.rules(6)) == 1
    assert "timeout" in router.ipset("m365-v4") and "family inet6" in router.ipset("m365-v6")

    res = d.call("answer", name=M365, addresses=[a4, a6], ttl=60)
    assert res["waited"] is True
    # The reply would leave now: the routes are there already.
    assert router.hosts(4) >= {a4} and router.hosts(6) >= {a6}
    assert f"{a4} via {BREAKOUT_GW4} dev {WAN_IF} proto {PROTOCOL}" in "\n".join(router.table(4))
    assert lab.connect(a4) == "breakout"
    assert lab.connect(a6) == "breakout"
    assert lab.connect(other) == "tunnel"  # not handed out for a Microsoft 365 name
    entry = [ln for ln in router.ipset("m365-v4").splitlines() if ln.startswith(a4 + " ")]
    assert entry and 320 <= int(entry[0].split()[-1]) <= 330  # the hold: max(60, 300) + 30
    assert d.call("answer", name=M365, addresses=[a4], ttl=60)["waited"] is False  # cache hit

    s = d.call("status")
    assert (s["routes_v4"], s["routes_v6"], s["ipset_v4"], s["ipset_v6"]) == (1, 1, 1, 1)
    assert s["cidr_routes"] == 5 and s["link_up"] is True and s["errors"] == 0
    assert {"13.67.59.89", "104.211.54.134"} <= router.hosts(4)  # row 14's prefixes

    # A second start: the rule is not duplicated, the set not flushed nor recreated.
    d.call("stop")
    d2 = router.start()
    assert len(router.rules(4)) == 1 and len(router.rules(6)) == 1
    assert a4 in router.ipset("m365-v4")
    assert lab.connect(a4) == "breakout"
    d2.call("stop")


def test_nftables_sets_get_elements_with_timeouts(router: Router) -> None:
    lab = router.lab
    lab.run(
        lab.router, "nft", "-f", "-",
        input="table inet filter {\n set m365v4 { type ipv4_addr; flags timeout; }\n"
        " set m365v6 { type ipv6_addr; flags timeout; }\n}\n",
    )  # fmt: skip
    d = router.start(
        ipset4=None, ipset6=None, nftset4="inet filter m365v4", nftset6="inet filter m365v6"
    )
    d.call("answer", name=M365, addresses=[SERVICE4[2], SERVICE6[2]], ttl=600)
    listing = lab.run(lab.router, "nft", "list", "set", "inet", "filter", "m365v4").stdout
    assert SERVICE4[2] in listing and "timeout 10m30s" in listing
    assert (
        SERVICE6[2] in lab.run(lab.router, "nft", "list", "set", "inet", "filter", "m365v6").stdout
    )
    assert d.call("flush")["set_entries"] == 2
    assert SERVICE4[2] not in lab.run(lab.router, "nft", "list", "ruleset").stdout
    d.call("stop")
    # A set that does not exist is a clear start-up error.
    d2 = router.driver()
    with pytest.raises(Exception, match="does not exist"):
        d2.call(
            "start", breakout=breakout_cfg(ipset4=None, nftset4="inet filter nope"),
            state_dir=router.state_dir,
        )  # fmt: skip


def test_expiry_removes_the_route_and_traffic_falls_back(router: Router) -> None:
    lab = router.lab
    d = router.start(min_hold=1, grace=0, sweep_interval=0.2)
    d.call("answer", name=M365, addresses=[SERVICE4[3]], ttl=1)
    assert lab.connect(SERVICE4[3]) == "breakout"
    assert wait_for(lambda: SERVICE4[3] not in router.hosts(4), 5)
    assert lab.connect(SERVICE4[3]) == "tunnel"
    assert d.call("status")["counters"]["removed"] == 1
    d.call("stop")


def test_a_cache_hit_after_the_route_was_deleted_by_hand_puts_it_back(router: Router) -> None:
    lab = router.lab
    a = SERVICE4[4]
    d = router.start()
    d.call("answer", name=M365, addresses=[a], ttl=60)
    lab.ip(lab.router, "route", "del", f"{a}/32", "table", str(TABLE))
    assert lab.connect(a) == "tunnel"
    assert wait_for(lambda: d.call("status")["counters"]["route_lost"] == 1)
    assert d.call("answer", name=M365, addresses=[a], ttl=60)["waited"] is True
    assert lab.connect(a) == "breakout"
    d.call("stop")


def test_sigkill_and_restart_keep_and_reconcile_routes(router: Router) -> None:
    lab, r = router.lab, router.lab.router
    d = router.start()
    d.call("answer", name=M365, addresses=[SERVICE4[5], SERVICE6[5]], ttl=600)
    # Killed the moment the answer was released: the journal has the holds already.
    os.kill(d.proc.pid, signal.SIGKILL)  # `ip netns exec` execs: the pid is the driver's
    d.proc.wait(timeout=5)
    assert lab.connect(SERVICE4[5]) == "breakout"  # the kernel kept the route
    # An owned route nobody has state for, and a route that is not ours in our table.
    lab.ip(r, "route", "add", f"{SERVICE4[6]}/32", "via", BREAKOUT_GW4, "table", str(TABLE),
           "proto", str(PROTOCOL))  # fmt: skip
    lab.ip(r, "route", "add", f"{SERVICE4[7]}/32", "via", BREAKOUT_GW4, "table", str(TABLE),
           "proto", "static")  # fmt: skip
    d2 = router.start()
    routes = {x["address"]: x for x in d2.call("routes")}
    assert set(routes) == {SERVICE4[5], SERVICE6[5]}
    assert routes[SERVICE4[5]]["names"] == [M365] and routes[SERVICE4[5]]["hold_s"] > 600
    hosts = router.hosts(4)
    assert SERVICE4[5] in hosts and SERVICE4[6] not in hosts and SERVICE4[7] in hosts
    assert d2.call("status")["counters"]["adopted"] == 2
    # The address of the foreign route is never taken over.
    assert d2.call("answer", name=M365, addresses=[SERVICE4[7]], ttl=60)["waited"] is False
    assert "proto static" in "\n".join(router.table(4))
    d2.call("stop")
    lab.ip(r, "route", "del", f"{SERVICE4[7]}/32", "table", str(TABLE))


def test_flush_removes_routes_rules_entries_and_prefixes(router: Router) -> None:
    lab = router.lab
    d = router.start()
    d.call("answer", name=M365, addresses=[SERVICE4[8], SERVICE6[8]], ttl=60)
    counts = d.call("flush")
    assert counts == {"routes": 2, "cidr_routes": 5, "rules": 2, "set_entries": 2}
    assert router.table(4) == [] and router.table(6) == []
    assert router.rules(4) == [] and router.rules(6) == []
    assert SERVICE4[8] not in router.ipset("m365-v4")
    assert lab.connect(SERVICE4[8]) == "tunnel"
    # The next answer brings the routes and the rules back; the prefixes wait for a reload.
    d.call("answer", name=M365, addresses=[SERVICE4[8]], ttl=60)
    assert len(router.rules(4)) == 1 and lab.connect(SERVICE4[8]) == "breakout"
    assert d.call("status")["cidr_routes"] == 0
    d.call("reconfigure", breakout=breakout_cfg(), policy=None)
    assert d.call("status")["cidr_routes"] == 5
    d.call("stop")


def test_reload_with_a_changed_policy_keeps_the_rest_without_a_gap(router: Router) -> None:
    lab = router.lab
    d = router.start(policy=OTHER_POLICY)
    d.call("answer", name="x.office.com", addresses=[SERVICE4[9]], ttl=60)
    d.call("answer", name="x.sharepoint.com", addresses=[SERVICE4[10]], ttl=60)
    assert SERVICE4[40] in router.hosts(4)  # 203.0.113.50/32, the policy's prefix
    without_sharepoint = OTHER_POLICY.split("  - row: 2")[0]
    d.call("reconfigure", breakout=breakout_cfg(), policy=without_sharepoint)
    hosts = router.hosts(4)
    assert SERVICE4[9] in hosts and SERVICE4[10] not in hosts and SERVICE4[40] not in hosts
    assert [x["address"] for x in d.call("routes")] == [SERVICE4[9]]
    assert lab.connect(SERVICE4[9]) == "breakout" and lab.connect(SERVICE4[10]) == "tunnel"
    assert d.call("status")["counters"]["installed"] == 2  # the kept route was not re-sent
    d.call("stop")


def test_never_route_the_lan_the_router_or_special_addresses(router: Router) -> None:
    lab = router.lab
    # Another LAN behind a device route: connected too.
    lab.ip(lab.router, "route", "add", "198.51.100.128/25", "dev", "lan0")
    d = router.start()
    bad = [CLIENT4, CLIENT6, ROUTER_LAN4, ROUTER_WAN4, "198.51.100.130", "10.0.0.1", "fe80::1"]
    res = d.call("answer", name="x.blob.core.windows.net", addresses=bad, ttl=60)
    assert res["matched"] and res["waited"] is False
    assert router.hosts(4) == {"13.67.59.89", "40.69.150.142", "40.85.91.8", "104.211.54.99",
                               "104.211.54.134"}  # fmt: skip
    assert router.table(6) == []
    assert d.call("status")["skipped"] == len(bad)
    assert lab.connect(ROUTER_LAN4, 9, 1.0).startswith("error")  # refused: the LAN path works
    d.call("stop")
    lab.ip(lab.router, "route", "del", "198.51.100.128/25", "dev", "lan0")


def test_link_down_and_address_loss_withdraw_and_restore(router: Router) -> None:
    lab, r = router.lab, router.lab.router
    a4, a6 = SERVICE4[11], SERVICE6[11]
    d = router.start()
    d.call("answer", name=M365, addresses=[a4, a6], ttl=600)

    # Carrier loss (the modem's side goes down).
    lab.set_link(lab.breakout, "eth0", False)
    assert wait_for(lambda: d.call("status")["link_up"] is False)
    assert wait_for(lambda: router.table(4) == [] and router.table(6) == [])
    assert lab.connect(a4) == "tunnel" and lab.connect(a6) == "tunnel"
    lab.set_link(lab.breakout, "eth0", True)
    assert wait_for(lambda: a4 in router.hosts(4) and a6 in router.hosts(6))
    assert d.call("status")["link_up"] is True
    lab.warm()
    assert lab.connect(a4) == "breakout" and lab.connect(a6) == "breakout"

    # Administratively down, then up.
    lab.ip(r, "link", "set", WAN_IF, "down")
    assert wait_for(lambda: d.call("status")["link_up"] is False)
    assert lab.connect(a4) == "tunnel"
    lab.ip(r, "link", "set", WAN_IF, "up")
    assert wait_for(lambda: a4 in router.hosts(4) and a6 in router.hosts(6))
    lab.warm()
    assert lab.connect(a4) == "breakout"

    # The IPv4 address goes away: IPv4 routes are withdrawn, IPv6 ones stay.
    lab.ip(r, "addr", "del", f"{ROUTER_WAN4}/25", "dev", WAN_IF)
    assert wait_for(lambda: a4 not in router.hosts(4))
    assert a6 in router.hosts(6) and lab.connect(a4) == "tunnel"
    lab.ip(r, "addr", "add", f"{ROUTER_WAN4}/25", "dev", WAN_IF)
    assert wait_for(lambda: a4 in router.hosts(4))
    lab.warm()
    assert lab.connect(a4) == "breakout"
    assert d.call("status")["errors"] == 0
    d.call("stop")


def test_without_cap_net_admin_start_fails_clearly(router: Router) -> None:
    d = router.driver(user="65534")
    with pytest.raises(Exception, match="needs CAP_NET_ADMIN"):
        d.call("start", breakout=breakout_cfg(), state_dir=router.tmp + "/nobody")


def test_dry_run_changes_nothing_and_shows_its_decisions(router: Router) -> None:
    d = router.start(mode="dry-run")
    d.call("answer", name=M365, addresses=[SERVICE4[12], CLIENT4], ttl=60)
    assert router.table(4) == [] and router.rules(4) == []
    assert router.ipset("m365-v4") == ""
    decisions = d.call("status")["dry_run_decisions"]
    assert [(x["action"], x["address"]) for x in decisions] == [
        ("install", SERVICE4[12]),
        ("skip", CLIENT4),
    ]
    assert "connected network 192.0.2.128/25 on lan0" in decisions[1]["reason"]
    d.call("stop")


def test_cleanup_removes_what_it_owns_and_nothing_else(router: Router) -> None:
    lab, r = router.lab, router.lab.router
    d = router.start()
    d.call("answer", name=M365, addresses=[SERVICE4[13], SERVICE6[13]], ttl=60)
    d.call("stop")
    lab.ip(r, "route", "add", f"{SERVICE4[14]}/32", "via", BREAKOUT_GW4, "table", str(TABLE),
           "proto", "static")  # fmt: skip
    counts = router.driver().call("cleanup", breakout=breakout_cfg(), state_dir=router.state_dir)
    # 2 host routes + row 14's five /32s (cleanup has no policy: /32s all count as routes)
    assert counts["routes"] == 7 and counts["rules"] == 2 and counts["set_entries"] == 2
    assert counts["state_file"] == 1
    assert router.hosts(4) == {SERVICE4[14]} and router.rules(4) == []
    assert "Name: m365-v4" in router.ipset("m365-v4")  # the set itself stays


def test_a_new_gateway_or_table_is_applied_without_losing_routes(router: Router) -> None:
    lab, r = router.lab, router.lab.router
    lab.ip(lab.breakout, "addr", "add", "192.0.2.3/25", "dev", "eth0")
    try:
        d = router.start()
        d.call("answer", name=M365, addresses=[SERVICE4[15]], ttl=60)
        d.call("reconfigure", breakout=breakout_cfg(gateway4="192.0.2.3"), policy=None)
        assert f"{SERVICE4[15]} via 192.0.2.3 dev {WAN_IF}" in "\n".join(router.table(4))
        assert lab.connect(SERVICE4[15]) == "breakout"
        d.call("reconfigure", breakout=breakout_cfg(gateway4="192.0.2.3", table=366), policy=None)
        assert router.table(4) == [] and router.rules(4) == []
        assert SERVICE4[15] in "\n".join(lab.table(366))
        assert any("lookup 366" in ln for ln in lab.ip(r, "rule").splitlines())
        assert lab.connect(SERVICE4[15]) == "breakout"
        d.call("flush")
        d.call("stop")
    finally:
        lab.ip(lab.breakout, "addr", "del", "192.0.2.3/25", "dev", "eth0", check=False)
        lab.ip(r, "route", "flush", "table", "366", check=False)


def test_without_a_gateway_the_routes_are_device_routes(router: Router) -> None:
    lab = router.lab
    d = router.start(gateway4=None)
    d.call("answer", name=M365, addresses=[SERVICE4[16]], ttl=60)
    assert f"{SERVICE4[16]} dev {WAN_IF} proto {PROTOCOL} scope link" in "\n".join(router.table(4))
    assert lab.connect(SERVICE4[16]) == "breakout"  # on-link: the breakout server answers ARP
    d.call("stop")


SPLIT_DEFAULT = (("-4", "0.0.0.0/1"), ("-4", "128.0.0.0/1"), ("-6", "::/1"), ("-6", "8000::/1"))


def test_a_full_tunnels_split_default_route_does_not_stop_the_breakout(router: Router) -> None:
    lab, r = router.lab, router.lab.router
    a4, a6, b4, b6 = SERVICE4[18], SERVICE6[18], SERVICE4[19], SERVICE6[19]

    def split_default(op: str) -> None:
        for fam, cidr in SPLIT_DEFAULT:
            lab.ip(r, fam, "route", op, cidr, "dev", TUN_IF, check=op == "add")

    split_default("add")  # the tunnel's way of overriding the default route
    try:
        d = router.start()
        s = d.call("status")
        assert s["cidr_routes"] == 5
        assert not {"0.0.0.0/1", "128.0.0.0/1", "::/1", "8000::/1"} & set(s["connected_networks"])
        assert d.call("answer", name=M365, addresses=[a4, a6], ttl=60)["waited"] is True
        assert a4 in router.hosts(4) and a6 in router.hosts(6)
        assert lab.connect(a4) == "breakout" and lab.connect(a6) == "breakout"
        # The tunnel going down and coming back up (its routes with it) changes nothing either.
        split_default("del")
        split_default("add")
        time.sleep(0.5)  # the events are in
        assert a4 in router.hosts(4) and a6 in router.hosts(6)
        assert d.call("status")["cidr_routes"] == 5 and len(d.call("routes")) == 2
        assert d.call("answer", name=M365, addresses=[b4, b6], ttl=60)["waited"] is True
        assert lab.connect(b4) == "breakout" and lab.connect(b6) == "breakout"
        d.call("stop")
    finally:
        split_default("del")


def test_a_tunnel_route_over_a_policy_prefix_holds_it_back_only_while_it_is_there(
    router: Router,
) -> None:
    lab, r = router.lab, router.lab.router
    inside, outside, prefix = "203.0.113.49", SERVICE4[20], SERVICE4[40]  # 203.0.113.50/32
    lab.ip(r, "route", "add", "203.0.113.48/29", "dev", TUN_IF)
    try:
        d = router.start(policy=OTHER_POLICY)
        assert d.call("status")["cidr_routes"] == 0 and prefix not in router.hosts(4)
        res = d.call("answer", name="x.office.com", addresses=[inside, outside], ttl=600)
        assert res["waited"] is True and router.hosts(4) == {outside}
        # The route goes: the prefix comes back without a reload.
        lab.ip(r, "route", "del", "203.0.113.48/29", "dev", TUN_IF)
        assert wait_for(lambda: prefix in router.hosts(4))
        assert d.call("answer", name="x.office.com", addresses=[inside], ttl=600)["waited"]
        assert router.hosts(4) == {outside, inside, prefix}
        # It comes back: only what lies inside it goes.
        lab.ip(r, "route", "add", "203.0.113.48/29", "dev", TUN_IF)
        assert wait_for(lambda: router.hosts(4) == {outside})
        assert [x["address"] for x in d.call("routes")] == [outside]
        # The tunnel is shut down: the kernel drops its IPv4 routes without telling anyone.
        lab.ip(r, "link", "set", TUN_IF, "down")
        assert wait_for(lambda: prefix in router.hosts(4))
        assert d.call("status")["cidr_routes"] == 1 and d.call("status")["errors"] == 0
        d.call("stop")
    finally:
        lab.ip(r, "link", "set", TUN_IF, "up")
        lab.ip(r, "route", "del", "203.0.113.48/29", "dev", TUN_IF, check=False)
        lab.ip(r, "route", "replace", "default", "via", TUNNEL_GW4)
        lab.ip(r, "-6", "route", "replace", "default", "via", TUNNEL_GW6)
        lab.server_routes(lab.tunnel)
        lab.warm()
    assert lab.connect(SERVICE4[21]) == "tunnel" and lab.connect(SERVICE6[21]) == "tunnel"


def test_a_reload_onto_a_link_that_is_not_there_leaves_no_route_behind(router: Router) -> None:
    a4, a6 = SERVICE4[22], SERVICE6[22]
    d = router.start(min_hold=1, grace=0, sweep_interval=0.2)
    d.call("answer", name=M365, addresses=[a4, a6], ttl=1)
    assert a4 in router.hosts(4) and a6 in router.hosts(6)
    s = d.call("reconfigure", breakout=breakout_cfg(interface="nosuch0", min_hold=1, grace=0))
    assert s["link_up"] is False
    assert router.table(4) == [] and router.table(6) == []  # withdrawn, prefixes too
    assert wait_for(lambda: d.call("routes") == [])  # the holds lapse
    assert router.table(4) == [] and router.table(6) == []
    assert router.lab.connect(a4) == "tunnel"
    # Back on wan0: the policy's prefixes return.
    d.call("reconfigure", breakout=breakout_cfg(min_hold=1, grace=0))
    assert d.call("status")["cidr_routes"] == 5 and len(router.table(4)) == 5
    d.call("stop")


def test_a_failed_reload_changes_nothing_and_a_good_one_creates_its_set(router: Router) -> None:
    lab, r = router.lab, router.lab.router
    a4 = SERVICE4[23]
    d = router.start()
    d.call("answer", name=M365, addresses=[a4], ttl=60)
    try:
        bad = breakout_cfg(ipset4="rv-new-v4", nftset4="inet filter nosuch", table=366)
        with pytest.raises(DriverError, match="does not exist"):
            d.call("reconfigure", breakout=bad, policy=None)
        sets = lab.run(r, "ipset", "list", "-n").stdout.split()
        assert "rv-new-v4" not in sets and "m365-v4" in sets
        assert lab.table(366) == [] and router.rules(4) and a4 in router.hosts(4)
        assert not any("lookup 366" in ln for ln in lab.ip(r, "rule").splitlines())
        s = d.call("status")
        assert s["table"] == TABLE and s["routes_v4"] == 1 and s["errors"] == 0
        assert d.call("answer", name=M365, addresses=[SERVICE4[24]], ttl=60)["waited"] is True
        assert SERVICE4[24] in router.ipset("m365-v4")
        # The same new set without the missing nftables set: created once the reload is on.
        d.call("reconfigure", breakout=breakout_cfg(ipset4="rv-new-v4"), policy=None)
        assert "rv-new-v4" in lab.run(r, "ipset", "list", "-n").stdout.split()
        assert a4 in router.ipset("rv-new-v4") and a4 not in router.ipset("m365-v4")
        assert d.call("status")["errors"] == 0
        d.call("stop")
    finally:
        lab.run(r, "ipset", "destroy", "rv-new-v4", check=False)
        lab.ip(r, "route", "flush", "table", "366", check=False)


ECHO_PROBE = """
import json, subprocess, sys
from resolver.net import links, netlink, routes
table, protocol, routes_to_add = int(sys.argv[1]), int(sys.argv[2]), json.loads(sys.argv[3])
sock = netlink.open_socket(netlink.NETLINK_ROUTE, groups=links.GROUPS)
try:
    for args in routes_to_add:
        subprocess.run(["ip", *args], check=True)
    seen, buf = [], bytearray(1 << 16)
    while (size := netlink.recv(sock, buf, lambda: None)) is not None:
        for kind, _flags, _seq, start, end in netlink.iter_messages(buf, size):
            if kind == routes.RTM_NEWROUTE:
                r = routes.parse_route(buf, start, end)
                mine = routes.added_to(buf, start, end, table, protocol)
                seen.append([r.dst, r.table, r.protocol, mine])
    print(json.dumps(seen))
finally:
    for args in routes_to_add:
        subprocess.run(["ip", *["del" if a == "add" else a for a in args]], check=False)
"""


def test_our_own_route_additions_are_told_apart_from_the_header(router: Router) -> None:
    """The monitor drops the echo of each route we add without parsing it (routes.added_to: the
    protocol byte and the first attribute, RTA_TABLE). Checked against the kernel's own
    RTM_NEWROUTE messages, IPv4 and IPv6: ours, another protocol in our table, and our protocol
    in the main table and in a table whose number fits the header's byte."""
    import json

    gw = {4: BREAKOUT_GW4, 6: "2001:db8:b::1"}
    cases = []  # (dst, table, protocol)
    for fam, dst in ((4, "203.0.113.{}"), (6, "2001:db8:77::{}")):
        for n, (table, proto) in enumerate(
            ((TABLE, PROTOCOL), (TABLE, 4), ("main", PROTOCOL), (200, PROTOCOL)), start=1
        ):
            cases.append((fam, dst.format(70 + n), table, proto))
    add = [
        [f"-{fam}", "route", "add", dst, "via", gw[fam], "dev", WAN_IF,
         "table", str(table), "proto", str(proto)]
        for fam, dst, table, proto in cases
    ]  # fmt: skip
    lab = router.lab
    out = lab.python(lab.router, "-c", ECHO_PROBE, str(TABLE), str(PROTOCOL), json.dumps(add))
    seen = {dst: (table, proto, mine) for dst, table, proto, mine in json.loads(out.stdout)}
    assert len(seen) == len(cases), out.stdout
    for _fam, dst, table, proto in cases:
        number = 254 if table == "main" else table
        assert seen[dst][:2] == (number, proto), dst  # parse_route read the same message
        assert seen[dst][2] is (table == TABLE and proto == PROTOCOL), dst
