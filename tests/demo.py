"""`make demo`: the whole job in a namespace lab, then everything removed again.

    client --lan0-- router (resolverd) --wan0-- "breakout" server  (the local internet link)
                                       --tun0-- "tunnel" server    (the tunnel, default route)

Both servers own the same addresses and answer a TCP connection with their own name, so each
connection shows which link it took. The client resolves through resolverd and connects at
once: Microsoft 365 names must reach "breakout" on their first connection, other names
"tunnel". Exit status 0 when every expectation held, 1 otherwise; the lab is removed either way.
"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
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
from tests.netns.scenario import TABLE, Daemon, fetch

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
    daemon = Daemon(lab, tmp, hold=(300, 30))  # the defaults a router would run with
    try:
        daemon.start()
        show(f"resolverd listens on {ROUTER_LAN4}:53 and [{ROUTER_LAN6}]:53, breakout link wan0")

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
    finally:
        step("Stopping resolverd (SIGTERM keeps the routes) and cleaning up (resolverd --cleanup)")
        daemon.stop()
        done = lab.python(
            lab.router, "-m", "resolver.daemon", "--cleanup", "--config", daemon.cfg, check=False
        )
        show(done.stdout or done.stderr)
        left = lab.table(TABLE) + lab.table(TABLE, 6)
        show(f"table {TABLE} after cleanup: {left or 'empty'}")
        if left:
            failures.append(f"table {TABLE} not empty after --cleanup")
    return failures


def main() -> int:
    if os.geteuid() != 0:
        print("make demo builds network namespaces: run it as root", file=sys.stderr)
        return 1
    try:
        with scratch() as tmp, Lab("demo") as lab:
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
    print("\nDemo OK: Microsoft 365 names left through the breakout link from their first packet.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
