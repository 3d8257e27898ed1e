"""`make demo`: the whole job in a namespace lab, then everything removed again.

    client --lan0-- router (resolverd) --wan0-- "breakout" server  (the local internet link)
                                       --wan1-- "breakout2" server (a second internet link)
                                       --tun0-- "tunnel" server    (the tunnel, default route)

The servers own the same addresses and answer a TCP connection with their own name, so each
connection shows which link it took. The client resolves through resolverd and connects at
once: Microsoft 365 names must reach "breakout" on their first connection, other names
"tunnel". Then the upstream behind wan0 dies (its server drops the health probes' target, the
link stays up): the routes must move to wan1 and the next connection reach "breakout2"; when
it comes back, they move back. Exit status 0 when every expectation held, 1 otherwise; the
lab is removed either way.
"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager

from tests.netns.lab import (
    CLIENT4,
    ROUTER_LAN4,
    ROUTER_LAN6,
    SERVICE4,
    Lab,
    LabError,
)
from tests.netns.scenario import PROTOCOL, TABLE, Daemon, config, fetch

PROBE_TABLES = (TABLE + 1, TABLE + 2)
SWITCH_S = 0.5 * 2 + 2.0  # health interval x failures + 2 s: the longest a move may take

# (name, type, the link its first connection must take)
QUERIES = (
    ("outlook.office.com", "A", "breakout"),
    ("outlook.office.com", "AAAA", "breakout"),
    ("mail.contoso.test", "A", "breakout"),  # CNAME -> outlook.office365.com -> ...ha...
    ("big.office365.com", "A", "breakout"),  # 40 addresses: truncated over UDP, then TCP
    ("www.example.test", "A", "tunnel"),
    ("www.example.test", "AAAA", "tunnel"),
    ("lan.blob.core.windows.net", "A", None),  # the client's own address: never routed
)


def step(title: str) -> None:
    print(f"\n=== {title}", flush=True)


def show(text: str, limit: int = 40) -> None:
    lines = text.rstrip().splitlines()
    if len(lines) > limit:
        lines = [*lines[: limit - 1], f"... ({len(lines) - limit + 1} more lines)"]
    print("".join(f"    {line}\n" for line in lines), end="", flush=True)


@contextmanager
def scratch() -> Iterator[str]:
    path = tempfile.mkdtemp(prefix="resolverd-demo-")
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def run(lab: Lab, tmp: str) -> list[str]:
    """The demo's steps; returns the expectations that did not hold."""
    failures: list[str] = []
    step("Before resolverd: the router sends everything through the tunnel")
    show(lab.ip(lab.router, "route"))
    identity = lab.connect(SERVICE4[0])
    show(f"client -> {SERVICE4[0]}:8080 answered by: {identity}")
    if identity != "tunnel":
        failures.append(f"before resolverd, {SERVICE4[0]} was reached via {identity}")

    step("Starting the upstream resolver and resolverd in the router")
    # The defaults a router would run with; two breakout links, health probes every 0.5 s.
    daemon = Daemon(lab, tmp, text=config(tmp, hold=(300, 30), links=2))
    try:
        daemon.start()
        show(f"resolverd listens on {ROUTER_LAN4}:53 and [{ROUTER_LAN6}]:53, breakout links "
             "wan0 (preferred) and wan1")  # fmt: skip

        step("The client resolves through resolverd and connects at once")
        for name, qtype, expected in QUERIES:
            server = ROUTER_LAN6 if qtype == "AAAA" else ROUTER_LAN4
            res = fetch(lab, name, qtype, server)
            addresses = res["addresses"]
            first = addresses[0] if addresses else "-"
            more = f" (+{len(addresses) - 1})" if len(addresses) > 1 else ""
            via = "TC, then TCP" if res["truncated"] else "UDP"
            took = res["identity"] if expected is not None else "not connected"
            shown = f"{first}{more}"
            show(f"{name:27} {qtype:4} -> {shown:24} {via:12} first connection: {took}")
            if expected is not None and res["identity"] != expected:
                failures.append(f"{name} {qtype}: expected {expected}, got {res['identity']}")
            if expected is None and CLIENT4 in daemon.routes():
                failures.append(f"{CLIENT4} (the client itself) was routed")

        step("resolverctl status")
        show(daemon.ctl("status").stdout, limit=80)
        step("resolverctl routes")
        show(daemon.ctl("routes").stdout, limit=12)
        step(f"The router's table {TABLE} (proto 245 marks resolverd's routes) and its rules")
        show(lab.ip(lab.router, "-4", "route", "show", "table", str(TABLE)), limit=12)
        show(lab.ip(lab.router, "-6", "route", "show", "table", str(TABLE)))
        show(lab.ip(lab.router, "rule"))
        step("The ipsets a firewall can match on")
        show(lab.run(lab.router, "ipset", "list", "m365-v4").stdout, limit=12)
        step("resolverctl explain")
        show(daemon.ctl("explain", "outlook.office.com", "www.example.test").stdout)
        failover(lab, daemon, failures)
    finally:
        step("Stopping resolverd (SIGTERM keeps the routes) and cleaning up (resolverd --cleanup)")
        daemon.stop()
        done = lab.python(
            lab.router, "-m", "resolver.daemon", "--cleanup", "--config", daemon.cfg, check=False
        )
        show(done.stdout or done.stderr)
        for table in (TABLE, *PROBE_TABLES):
            left = lab.table(table) + lab.table(table, 6)
            show(f"table {table} after cleanup: {left or 'empty'}")
            if left:
                failures.append(f"table {table} not empty after --cleanup")
        rules = [r for r in lab.ip(lab.router, "rule").splitlines() if f"proto {PROTOCOL}" in r]
        show(f"ip rules of resolverd after cleanup: {rules or 'none'}")
        if rules:
            failures.append(f"ip rules left after --cleanup: {rules}")
    return failures


def failover(lab: Lab, daemon: Daemon, failures: list[str]) -> None:
    """The upstream behind wan0 dies and comes back; the routes follow."""
    held = SERVICE4[0]  # outlook.office.com's address, held since the first step
    step("Health: each link is probed through itself (probe tables and rules of resolverd)")
    show(lab.ip(lab.router, "rule"))
    for table in PROBE_TABLES:
        show(f"table {table}:")
        show(lab.ip(lab.router, "route", "show", "table", str(table)))
    step("Failover: the upstream behind wan0 dies (its server drops the probes), wan0 stays up")
    lab.blackhole(lab.breakout, True)
    took = wait_route(lab, held, "wan1", 10.0)
    if took is None:
        failures.append("the routes did not move to wan1 after the primary died")
    else:
        show(f"routes moved to wan1 after {took:.2f} s (health: 0.5 s interval, 2 failures)")
        if took > SWITCH_S:
            failures.append(f"the move to wan1 took {took:.2f} s (more than {SWITCH_S} s)")
    show(lab.ip(lab.router, "-4", "route", "show", "table", str(TABLE)), limit=12)
    res = fetch(lab, "outlook.office.com")
    show(f"outlook.office.com A -> {res.get('address')}   first connection: {res['identity']}")
    if res["identity"] != "breakout2":
        failures.append(f"after the failover, expected breakout2, got {res['identity']}")
    show("\n".join(line for line in daemon.ctl("status").stdout.splitlines()
                   if line.strip().startswith(("Active", "Link wan", "Failovers"))))  # fmt: skip
    moved = [line for line in daemon.log().splitlines() if "moving" in line]
    show("\n".join(moved) or "(no move logged)")
    step("Failback: the upstream behind wan0 is back")
    lab.blackhole(lab.breakout, False)
    took = wait_route(lab, held, "wan0", 10.0)
    if took is None:
        failures.append("the routes did not move back to wan0")
    else:
        show(f"routes moved back to wan0 after {took:.2f} s (2 good probe rounds)")
    identity = lab.connect(held)
    show(f"client -> {held}:8080 answered by: {identity}")
    if identity != "breakout":
        failures.append(f"after the failback, expected breakout, got {identity}")


def wait_route(lab: Lab, address: str, dev: str, timeout: float) -> float | None:
    """Seconds until table TABLE routes `address` through `dev`, or None."""
    started = time.monotonic()
    while time.monotonic() - started < timeout:
        out = lab.ip(lab.router, "route", "show", "table", str(TABLE), address, check=False)
        if f" dev {dev} " in f" {out} ":
            return time.monotonic() - started
        time.sleep(0.02)
    return None


def main() -> int:
    if os.geteuid() != 0:
        print("make demo builds network namespaces: run it as root", file=sys.stderr)
        return 1
    try:
        with scratch() as tmp, Lab("demo", links=2) as lab:
            step("Lab: namespaces " + " ".join(lab.namespaces))
            failures = run(lab, tmp)
    except (LabError, RuntimeError, OSError) as err:
        print(f"\ndemo failed: {err}", file=sys.stderr)
        return 1
    finally:
        print("\n=== Lab removed (namespaces, processes, temporary files)")
    if failures:
        print("\nDEMO FAILED:\n  " + "\n  ".join(failures), file=sys.stderr)
        return 1
    print(
        "\nDemo OK: Microsoft 365 names left through the breakout link from their first packet,"
        "\nand followed the healthy link when the primary's upstream died."
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
