"""The kernel drops the echoes of our own new routes before they reach the link monitor.

In a namespace of its own, an agent listens to the route groups on two netlink sockets, one
plain and one with `echofilter` attached for table 365 and protocol 245, adds and deletes
routes with `ip route` (ours, another protocol's in our table, our protocol in another table,
the main table's), and reports what each socket received. Then a real `links.Monitor` follows
a change of its (table, protocol), as a reload makes, and the test looks at what reaches its
socket.

    python -m tests.netns.test_route_echoes agent NETNS   (run inside NETNS)
"""

from __future__ import annotations

import asyncio
import json
import os
import socket
import subprocess
import sys
from typing import Any

import pytest

from tests.netns.lab import REPO
from tests.nslab import NamespaceLab, inside

TABLE, OTHER_TABLE, PROTOCOL = 365, 366, 245
OURS4, OURS6 = "203.0.113.10", "2001:db8:365::10"
STATIC_IN_OURS, OURS_ELSEWHERE, MAIN_NET = "203.0.113.11", "203.0.113.12", "198.51.100.0/24"
AFTER_RELOAD_OLD, AFTER_RELOAD_NEW = "203.0.113.20", "203.0.113.21"

pytestmark = pytest.mark.netns


class EchoLab(NamespaceLab):
    def __init__(self) -> None:
        self.ns = f"r365e-{os.getpid()}"
        self._made = False

    def _build(self) -> None:
        subprocess.run(["ip", "netns", "add", self.ns], check=True, capture_output=True)
        self._made = True
        subprocess.run(["ip", "-n", self.ns, "link", "set", "lo", "up"], check=True)

    def agent(self) -> dict[str, Any]:
        res = subprocess.run(
            ["ip", "netns", "exec", self.ns, sys.executable, "-m", "tests.netns.test_route_echoes",
             "agent", self.ns],
            capture_output=True, text=True, timeout=60, cwd=REPO,
            env=dict(os.environ, PYTHONPATH=REPO),
        )  # fmt: skip
        assert res.returncode == 0, res.stderr
        result: dict[str, Any] = json.loads(res.stdout)
        return result

    def close(self) -> None:
        if self._made:
            subprocess.run(["ip", "netns", "del", self.ns], capture_output=True)
            self._made = False


def test_our_new_routes_never_reach_the_monitor_and_everything_else_does() -> None:
    with EchoLab() as lab:
        seen = lab.agent()
    ours = [("new", 4, OURS4, TABLE, PROTOCOL), ("new", 6, OURS6, TABLE, PROTOCOL)]
    others = [
        ("new", 4, STATIC_IN_OURS, TABLE, 4),  # proto static: someone else's, in our table
        ("new", 4, OURS_ELSEWHERE, OTHER_TABLE, PROTOCOL),
        ("new", 4, MAIN_NET.split("/")[0], 254, 3),  # proto boot, the main table
        ("del", 4, OURS4, TABLE, PROTOCOL),  # a delete of ours: the link watch needs it
    ]
    assert sorted(map(tuple, seen["plain"])) == sorted(ours + others)
    assert sorted(map(tuple, seen["filtered"])) == sorted(others)
    # The kernel drops exactly what the monitor's own check (routes.added_to) drops.
    assert sorted(map(tuple, seen["added_to"])) == sorted(ours)
    # After a reload moved our routes to another table, the monitor filters that one.
    assert seen["monitor_after_reload"] == [["new", 4, AFTER_RELOAD_OLD, TABLE, PROTOCOL]]


# -- the agent, inside the namespace ---------------------------------------------------------


def _drain(sock: socket.socket) -> list[bytes]:
    """Every message queued on `sock`, each as its own bytes."""
    from resolver.net import netlink

    buf, out = bytearray(1 << 16), []
    while (size := netlink.recv(sock, buf, lambda: None)) is not None:
        for _kind, _flags, _seq, start, end in netlink.iter_messages(buf, size):
            out.append(bytes(buf[start - 16 : end]))  # with its header
    return out


def _route_rows(messages: list[bytes]) -> list[tuple[str, int, str, int, int]]:
    from resolver.net import routes

    rows = []
    for msg in messages:
        kind = int.from_bytes(msg[4:6], sys.byteorder)
        if kind not in (routes.RTM_NEWROUTE, routes.RTM_DELROUTE):
            continue
        r = routes.parse_route(msg, 16)
        assert r is not None
        what = "new" if kind == routes.RTM_NEWROUTE else "del"
        rows.append((what, r.family, r.dst, r.table, r.protocol))
    return rows


def _ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True, timeout=10)


def agent() -> dict[str, Any]:
    from resolver.net import echofilter, links, netlink, routes

    plain = netlink.open_socket(netlink.NETLINK_ROUTE, groups=links.GROUPS)
    filtered = netlink.open_socket(netlink.NETLINK_ROUTE, groups=links.GROUPS)
    echofilter.attach(filtered, TABLE, PROTOCOL)
    _ip("route", "add", f"{OURS4}/32", "dev", "lo", "table", str(TABLE), "proto", str(PROTOCOL))
    _ip("-6", "route", "add", f"{OURS6}/128", "dev", "lo", "table", str(TABLE),
        "proto", str(PROTOCOL))  # fmt: skip
    _ip("route", "add", f"{STATIC_IN_OURS}/32", "dev", "lo", "table", str(TABLE), "proto", "static")
    _ip("route", "add", f"{OURS_ELSEWHERE}/32", "dev", "lo", "table", str(OTHER_TABLE),
        "proto", str(PROTOCOL))  # fmt: skip
    _ip("route", "add", MAIN_NET, "dev", "lo")
    _ip("route", "del", f"{OURS4}/32", "table", str(TABLE))
    everything = _drain(plain)
    dropped_here = [
        m for m in everything
        if int.from_bytes(m[4:6], sys.byteorder) == routes.RTM_NEWROUTE
        and routes.added_to(m, 16, len(m), TABLE, PROTOCOL)
    ]  # fmt: skip
    result: dict[str, Any] = {
        "plain": _route_rows(everything),
        "filtered": _route_rows(_drain(filtered)),
        "added_to": sorted(_route_rows(dropped_here)),
    }

    own = [(TABLE, PROTOCOL)]
    monitor = links.Monitor(lambda kind, new, obj: None, lambda: None, own_routes=lambda: own[0])
    loop = asyncio.new_event_loop()
    try:
        monitor.start(loop)
        own[0] = (OTHER_TABLE, PROTOCOL)  # a reload
        monitor.read()  # the next wake-up: the filter follows
        _ip("route", "add", f"{AFTER_RELOAD_OLD}/32", "dev", "lo", "table", str(TABLE),
            "proto", str(PROTOCOL))  # fmt: skip
        _ip("route", "add", f"{AFTER_RELOAD_NEW}/32", "dev", "lo", "table", str(OTHER_TABLE),
            "proto", str(PROTOCOL))  # fmt: skip
        result["monitor_after_reload"] = _route_rows(_drain(monitor.sock))
    finally:
        monitor.close()
        loop.close()
    return result


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "agent":
        if not inside(sys.argv[2]):
            sys.exit(f"not inside network namespace {sys.argv[2]}: refusing")
        print(json.dumps(agent()))
    else:
        sys.exit(__doc__)
