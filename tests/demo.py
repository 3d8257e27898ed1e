"""`make demo`: the whole job in a namespace lab, then everything removed again.

    client --lan0-- router (resolverd) --wan0-- "breakout" server  (the local internet link)
                                       --wan1-- "breakout2" server (a second internet link)
                                       --tun0-- "tunnel" server    (the tunnel, default route)

The servers own the same addresses and answer a TCP connection with their own name, so each
connection shows which link it took. The client resolves through resolverd and connects at
once: Microsoft 365 names must reach "breakout" on their first connection, other names
"tunnel". Split DNS: head office's DNS server (zone corp.example) sits behind the tunnel, the
ISP's resolver (the breakout resolver) behind each breakout link, and the tunnel server owns
the ISP resolver's address too, with other answers: a corporate name must be answered by head
office, a Microsoft 365 name by the breakout resolver (through resolverd's route via wan0),
and head office's CNAME into Microsoft 365 must be finished by the breakout resolver. Then the
upstream behind wan0 dies (its server drops the health probes' target, the link stays up):
the routes must move to wan1 and the next connection reach "breakout2"; when it comes back,
they move back. Exit status 0 when every expectation held, 1 otherwise; the lab is removed
either way.
"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from tests.netns.lab import (
    BREAKOUT_RESOLVER4,
    CLIENT4,
    HEAD_OFFICE4,
    ROUTER_LAN4,
    ROUTER_LAN6,
    SERVICE4,
    Lab,
    LabError,
)
from tests.netns.scenario import (
    CHAIN,
    INTRANET,
    PROTOCOL,
    SPLIT_M365,
    TABLE,
    Daemon,
    answered_by,
    config,
    fetch,
    query,
    split_records,
    start_split_servers,
)

PROBE_TABLES = (TABLE + 1, TABLE + 2)
SWITCH_S = 0.5 * 2 + 2.0  # health interval x failures + 2 s: the longest a move may take

# (name, type, the link its first connection must take)
QUERIES = (
    ("portal.office.com", "A", "breakout"),
    ("portal.office.com", "AAAA", "breakout"),
    ("mail.contoso.test", "A", "breakout"),  # CNAME -> outlook.office365.com -> ...ha...
    ("big.office365.com", "A", "breakout"),  # 40 addresses: truncated over UDP, then TCP
    ("www.example.test", "A", "tunnel"),
    ("www.example.test", "AAAA", "tunnel"),
    ("lan.office365.com", "A", None),  # the client's own address: never routed
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
    start_split_servers(lab, tmp)
    res = query(lab, SPLIT_M365[0], server=BREAKOUT_RESOLVER4)
    who = sources(res)
    show(f"client asks {BREAKOUT_RESOLVER4} (the ISP's resolver) for {SPLIT_M365[0]}: "
         f"{answer_text(res)}, from {WHO.get(who, who)} (via the tunnel)")  # fmt: skip
    if who != "tunnel side":
        failures.append(f"before resolverd, {BREAKOUT_RESOLVER4} was answered by {who}")

    step("Starting the upstream resolver and resolverd in the router")
    # The defaults a router would run with; two breakout links, health probes every 0.5 s;
    # head office's zones and the ISP's resolver (split DNS).
    text = config(tmp, hold=(300, 30), links=2, split_dns=True)
    daemon = Daemon(lab, tmp, text=text, records=split_records("default"))
    try:
        daemon.start()
        show(f"resolverd listens on {ROUTER_LAN4}:53 and [{ROUTER_LAN6}]:53, breakout links "
             "wan0 (preferred) and wan1")  # fmt: skip
        show(f"upstreams: 127.0.0.1:5300 (default), {HEAD_OFFICE4} (head office: corp.example "
             f"and a reverse zone), {BREAKOUT_RESOLVER4} (the ISP's: Microsoft 365)")  # fmt: skip

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
        split_dns(lab, failures)
        traffic(lab, daemon, failures)

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
        show(daemon.ctl("explain", "portal.office.com", "www.example.test").stdout)
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


# The split-DNS servers (scenario.SPLIT_AT), as the demo names them.
WHO = {
    "local": "the ISP's resolver",
    "tunnel side": "the tunnel side",
    "head office": "head office",
    "default": "the default upstream",
}


SENT = (2000, 972)  # datagrams, payload bytes: 1,000 bytes each with the UDP and IPv4 headers


def traffic(lab: Lab, daemon: Daemon, failures: list[str]) -> None:
    """Bytes to a held address through the breakout link, as the kernel counted them."""
    count, size = SENT
    step(f"The client sends {count} datagrams of {size + 28} bytes to {SERVICE4[0]}")
    script = (
        "import socket; s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\n"
        f"for _ in range({count}): s.sendto(bytes({size}), ({SERVICE4[0]!r}, 9))"
    )
    lab.python(lab.client, "-c", script)
    time.sleep(0.2)  # the last ones are forwarded
    status = daemon.status()
    counted = sum(t["bytes"] for t in status.get("traffic", []) if t["link"] == "wan0")
    lines = [line for line in daemon.ctl("status").stdout.splitlines()]
    start = next((i for i, line in enumerate(lines) if line.startswith("Breakout traffic")), None)
    show("\n".join(lines[start : start + 8]) if start is not None else "(no traffic block)")
    show(f"sent {count * (size + 28):,} bytes; counted through wan0: {counted:,}")
    if not count * (size + 28) <= counted <= count * (size + 28) * 1.05 + 100_000:
        failures.append(f"breakout bytes counted {counted}, sent {count * (size + 28)}")


def sources(res: dict[str, Any]) -> str:
    """Which split-DNS server handed out the addresses of a `query` or `fetch` result."""
    found = res.get("addresses") or [r[2] for r in res.get("answer", ()) if r[1] in ("A", "AAAA")]
    return ", ".join(sorted({answered_by(a) for a in found})) or "no"


def answer_text(res: dict[str, Any]) -> str:
    return ", ".join(f"{rtype} {value}" for _owner, rtype, value, _ttl in res["answer"]) or "-"


def split_dns(lab: Lab, failures: list[str]) -> None:
    """Head office's names from head office, Microsoft 365 names from the ISP's resolver
    through wan0, and head office's chains into Microsoft 365 finished by the ISP's resolver."""
    step("Split DNS: head office (through the tunnel), the ISP's resolver (through wan0)")
    out = lab.ip(lab.router, "route", "show", "table", str(TABLE), BREAKOUT_RESOLVER4).strip()
    show(f"resolverd's route to the ISP's resolver, table {TABLE}: {out or 'none'}")
    if " dev wan0 " not in f" {out} ":
        failures.append(f"no route to the ISP's resolver {BREAKOUT_RESOLVER4} through wan0")
    for name, expected, path in (
        (INTRANET, "head office", "tunnel"),
        (SPLIT_M365[0], "local", "breakout"),
    ):
        res = fetch(lab, name)
        who = sources(res)
        first = res["addresses"][0] if res["addresses"] else "-"
        shown = WHO.get(who, who)
        show(f"{name:27} A    -> {first:15} from {shown:20} first connection: {res['identity']}")
        if (who, res["identity"]) != (expected, path):
            failures.append(f"{name}: expected {expected} and {path}, got {who} and "
                            f"{res['identity']}")  # fmt: skip
    name, target = CHAIN
    office = query(lab, target, server=HEAD_OFFICE4)
    res = query(lab, name)
    got = [(owner, rtype, value) for owner, rtype, value, _ttl in res["answer"]]
    local = [value for owner, rtype, value in got if rtype == "A"]
    identity = lab.connect(local[0]) if local else "not connected"
    show(f"{name:27} A    -> {answer_text(res)}")
    show(f"{'':27}         finished by {WHO.get(sources(res), sources(res))} (head office "
         f"had {answer_text(office)}); connection: {identity}")  # fmt: skip
    if got[:1] != [(name, "CNAME", target)] or sources(res) != "local" or identity != "breakout":
        failures.append(f"{name}: the chain was not finished by the ISP's resolver: {got}, "
                        f"{identity}")  # fmt: skip


def failover(lab: Lab, daemon: Daemon, failures: list[str]) -> None:
    """The upstream behind wan0 dies and comes back; the routes follow."""
    held = SERVICE4[0]  # portal.office.com's address, held since the first step
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
    res = fetch(lab, "portal.office.com")
    show(f"portal.office.com A -> {res.get('address')}   first connection: {res['identity']}")
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
        with scratch() as tmp, Lab("demo", links=2, split_dns=True) as lab:
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
        "\nand followed the healthy link when the primary's upstream died; head office answered"
        "\nits zones, the ISP's resolver the Microsoft 365 names and head office's chains."
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
