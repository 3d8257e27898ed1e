"""End to end: resolverd in the lab's router, a fake upstream, a client that resolves and then
connects at once. The first connection of a Microsoft 365 name must reach the server behind the
breakout link; any other name the one behind the tunnel (asserted on the server that answered).
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Iterator

import pytest

from tests.netns.lab import CLIENT4, ROUTER_LAN4, ROUTER_LAN6, SERVICE4, Lab, wait_for
from tests.netns.scenario import BIG, TABLE, Daemon, config, fetch

pytestmark = pytest.mark.netns


@pytest.fixture(scope="module")
def daemon(lab: Lab, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Daemon]:
    d = Daemon(lab, str(tmp_path_factory.mktemp("e2e")))
    d.start()
    try:
        yield d
    finally:
        d.stop()
        lab.run(lab.router, sys.executable, "-m", "resolver.daemon", "--cleanup", "--config", d.cfg,
                check=False)  # fmt: skip


def test_first_connection_of_a_microsoft_365_name_takes_the_breakout(
    lab: Lab, daemon: Daemon
) -> None:
    assert fetch(lab, "portal.office.com")["identity"] == "breakout"
    assert fetch(lab, "portal.office.com", "AAAA", ROUTER_LAN6)["identity"] == "breakout"
    other = fetch(lab, "www.example.test")
    assert other["identity"] == "tunnel"
    assert fetch(lab, "www.example.test", "AAAA")["identity"] == "tunnel"
    s = daemon.status()
    # Row 14's prefixes are in an optional row: not loaded at the default (include_optional).
    assert s["link_up"] is True and s["cidr_routes"] == 0 and s["errors"] == 0
    assert s["routes_v4"] >= 1 and s["routes_v6"] >= 1 and s["ipset_v4"] >= 1
    r = daemon.routes()[SERVICE4[0]]
    assert r["family"] == 4 and r["names"] == ["portal.office.com"] and r["row"] > 0


def test_cname_chain_is_routed_under_the_name_that_matched(lab: Lab, daemon: Daemon) -> None:
    res = fetch(lab, "mail.contoso.test")
    assert res["address"] == SERVICE4[1] and res["identity"] == "breakout"
    assert fetch(lab, "mail.contoso.test", "AAAA")["identity"] == "breakout"
    # The hold is the policy name's: never the client's query name, which only led there.
    assert daemon.routes()[SERVICE4[1]]["names"] == ["outlook.office365.com"]


def test_an_answer_that_needs_tcp_is_routed_too(lab: Lab, daemon: Daemon) -> None:
    res = fetch(lab, "big.office365.com")
    assert res["truncated"] is True and len(res["addresses"]) == len(BIG)
    assert res["identity"] == "breakout"
    assert set(BIG) <= set(daemon.routes())


def test_the_lan_is_never_routed(lab: Lab, daemon: Daemon) -> None:
    before = daemon.status()["skipped"]
    res = fetch(lab, "lan.office365.com")
    assert CLIENT4 in res["addresses"]
    hosts = {line.split()[0] for line in lab.table(TABLE)}
    assert CLIENT4 not in hosts and ROUTER_LAN4 not in hosts
    assert daemon.status()["skipped"] >= before + 2
    assert fetch(lab, "www.example.test")["identity"] == "tunnel"  # the LAN still works


def test_expiry_and_a_cache_hit_after_a_manual_delete(lab: Lab, daemon: Daemon) -> None:
    a = SERVICE4[46]
    assert fetch(lab, "short.office365.com")["identity"] == "breakout"  # hold: max(1, 2) + 0 s
    assert wait_for(lambda: a not in daemon.routes(), 6)
    assert lab.connect(a) == "tunnel"
    # A cached answer after someone removed the route: the hit re-installs before replying.
    assert fetch(lab, "portal.office.com")["identity"] == "breakout"
    lab.ip(lab.router, "route", "del", f"{SERVICE4[0]}/32", "table", str(TABLE))
    assert fetch(lab, "portal.office.com")["identity"] == "breakout"


def test_sigkill_and_restart_keep_the_routes(lab: Lab, daemon: Daemon) -> None:
    a = SERVICE4[47]
    assert fetch(lab, "kill.office365.com")["identity"] == "breakout"
    time.sleep(1.5)  # a new hold reaches the state file within about a second
    daemon.kill()
    assert lab.connect(a) == "breakout"  # no daemon, the kernel keeps routing
    daemon.start()
    r = daemon.routes()[a]
    assert r["names"] == ["kill.office365.com"] and r["hold_s"] > 250
    assert daemon.status()["counters"]["adopted"] >= 1
    assert lab.connect(a) == "breakout"
    assert fetch(lab, "kill.office365.com")["identity"] == "breakout"


def test_flush_then_the_next_answer_routes_again(lab: Lab, daemon: Daemon) -> None:
    fetch(lab, "flush.office365.com")
    counts = daemon.json("flush")
    assert counts["routes"] >= 1 and counts["rules"] == 2  # no prefixes: row 14 is optional
    assert lab.table(TABLE) == [] and lab.table(TABLE, 6) == []
    rules = lab.ip(lab.router, "rule")
    assert f"lookup {TABLE}" not in rules
    s = daemon.status()
    assert (s["routes_v4"], s["routes_v6"], s["cidr_routes"]) == (0, 0, 0)
    assert lab.connect(SERVICE4[48]) == "tunnel"
    assert fetch(lab, "flush.office365.com")["identity"] == "breakout"


def test_reload_with_a_changed_policy(lab: Lab, daemon: Daemon) -> None:
    fetch(lab, "portal.office.com")
    fetch(lab, "mail.contoso.test")
    policy_file = os.path.join(daemon.tmp, "only-office.yaml")
    with open(policy_file, "w") as fh:
        fh.write(
            "rules:\n  - row: 1\n    purpose: Exchange\n    required: true\n"
            "    domains: [portal.office.com]\n"
        )
    with open(daemon.cfg, "w") as fh:
        fh.write(config(daemon.tmp, f"builtin: none\n  files: [{policy_file}]"))
    try:
        daemon.ctl("reload")
        routes = daemon.routes()
        assert SERVICE4[0] in routes and SERVICE4[1] not in routes
        assert lab.connect(SERVICE4[0]) == "breakout" and lab.connect(SERVICE4[1]) == "tunnel"
    finally:
        with open(daemon.cfg, "w") as fh:
            fh.write(config(daemon.tmp))
        daemon.ctl("reload")
    assert fetch(lab, "mail.contoso.test")["identity"] == "breakout"  # the policy is back


def test_link_down_falls_back_to_the_tunnel_and_up_restores(lab: Lab, daemon: Daemon) -> None:
    assert fetch(lab, "portal.office.com")["identity"] == "breakout"
    lab.set_link(lab.breakout, "eth0", False)
    try:
        assert wait_for(lambda: daemon.status()["link_up"] is False)
        assert fetch(lab, "portal.office.com")["identity"] == "tunnel"
    finally:
        lab.set_link(lab.breakout, "eth0", True)
    assert wait_for(lambda: daemon.status()["link_up"] is True)
    assert wait_for(lambda: SERVICE4[0] in {ln.split()[0] for ln in lab.table(TABLE)})
    lab.warm()
    assert fetch(lab, "portal.office.com")["identity"] == "breakout"
