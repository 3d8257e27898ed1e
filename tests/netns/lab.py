"""A namespace lab: a branch router with a breakout link, a tunnel, a LAN client, two servers.

    client (C) --lan0-- router (R) --wan0-- breakout server (B)   "the local internet link"
                                   --tun0-- tunnel server (T)     "the tunnel to head office"
                                  [--wan1-- breakout server (B2)  "a second internet link"]

The router's default route (v4 and v6) goes through the tunnel. B and T both own the same
service addresses (SERVICE4/SERVICE6, on their loopback) and each runs an identity server on
PORT that answers "breakout" or "tunnel": a test connects and learns which path the connection
took. ``Lab(links=2)`` adds a second breakout link, wan1, to a server B2 that owns the same
service addresses and answers "breakout2"; with it, the breakout servers (and the tunnel
server) also own PROBE4/PROBE6, a health-probe target, B and B2 own BREAKOUT_RESOLVER4 (a
breakout resolver's address), and `blackhole` drops the probe target's packets inside one
server. ``Lab(split_dns=True)`` (with one link or two) is the lab of split DNS: every server
also owns BREAKOUT_RESOLVER4, the tunnel server included (the same address on the wrong path,
so a DNS server there can answer differently and show which path a query took), the tunnel
server alone owns HEAD_OFFICE4 (head office's DNS server, reached only through the tunnel),
and every server owns SPLIT4/SPLIT6, addresses for the split-DNS servers to hand out.
``Lab(nat="snat")`` (or ``"masquerade"``) translates the sources of what leaves the breakout
links (nftables table `inet lab_nat` in the router, v4 and v6): `snat` to the link's own
address, as tests/netns/natlab.py does; with no `nat` (the default) nothing is translated.
Everything is built in namespaces with names unique to this run (``r365t-<pid>-<n>-``)
and removed on exit, failure included: the processes in the namespaces are killed first.

    with Lab() as lab:
        lab.run(lab.router, "ip", "route")
        assert lab.connect("203.0.113.10") == "tunnel"

Run ``python -m tests.netns.lab`` (root) to build the lab and print it, or ``--keep`` to keep
it until Enter is pressed (``--split-dns`` for the split-DNS addresses).
"""

from __future__ import annotations

import itertools
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager, suppress
from typing import Any, TextIO

from tests.nslab import NamespaceLab

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

# Addressing (documentation ranges only).
WAN_NET4, ROUTER_WAN4, BREAKOUT_GW4 = "192.0.2.0/25", "192.0.2.2", "192.0.2.1"
WAN_NET6, ROUTER_WAN6, BREAKOUT_GW6 = "2001:db8:b::/64", "2001:db8:b::2", "2001:db8:b::1"
TUN_NET4, ROUTER_TUN4, TUNNEL_GW4 = "198.51.100.0/25", "198.51.100.2", "198.51.100.1"
TUN_NET6, ROUTER_TUN6, TUNNEL_GW6 = "2001:db8:a::/64", "2001:db8:a::2", "2001:db8:a::1"
LAN_NET4, ROUTER_LAN4, CLIENT4 = "192.0.2.128/25", "192.0.2.129", "192.0.2.130"
LAN_NET6, ROUTER_LAN6, CLIENT6 = "2001:db8:c::/64", "2001:db8:c::1", "2001:db8:c::2"
SERVICE4 = tuple(f"203.0.113.{i}" for i in range(10, 60))
SERVICE6 = tuple(f"2001:db8:365::{i:x}" for i in range(0x10, 0x40))
PORT = 8080
WAN_IF, TUN_IF, LAN_IF = "wan0", "tun0", "lan0"
# The second breakout link (Lab(links=2) only).
WAN1_IF = "wan1"
WAN1_NET4, ROUTER_WAN1_4, BREAKOUT2_GW4 = "198.51.100.128/25", "198.51.100.130", "198.51.100.129"
WAN1_NET6, ROUTER_WAN1_6, BREAKOUT2_GW6 = "2001:db8:d::/64", "2001:db8:d::2", "2001:db8:d::1"
PROBE4, PROBE6 = "203.0.113.200", "2001:db8:365::200"  # owned by B, B2 and T (links=2)
BREAKOUT_RESOLVER4 = "203.0.113.153"  # owned by B and B2 only (links=2), and T (split_dns)
# Split DNS (Lab(split_dns=True) only).
HEAD_OFFICE4 = "203.0.113.250"  # head office's DNS server: owned by T only
SPLIT4 = tuple(f"203.0.113.{i}" for i in range(60, 100))  # owned by every server
SPLIT6 = tuple(f"2001:db8:365::{i:x}" for i in range(0x40, 0x68))

_counter = itertools.count(1)


def wait_for(check: Callable[[], bool], timeout: float = 5.0, step: float = 0.05) -> bool:
    """Poll `check` until it holds or `timeout` seconds pass; its last verdict."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return True
        time.sleep(step)
    return check()


class LabError(RuntimeError):
    pass


class Lab(NamespaceLab):
    """The namespaces, their processes, and helpers to run things inside them."""

    def __init__(
        self, tag: str = "", links: int = 1, split_dns: bool = False, nat: str | None = None
    ) -> None:
        if links not in (1, 2):
            raise LabError(f"a lab has 1 or 2 breakout links, not {links}")
        if nat not in (None, "snat", "masquerade"):
            raise LabError(f"nat is snat, masquerade or None, not {nat}")
        self.split_dns = split_dns
        self.nat = nat
        self.prefix = f"r365t-{os.getpid()}-{next(_counter)}{'-' + tag if tag else ''}-"
        self.router = self.prefix + "r"
        self.client = self.prefix + "c"
        self.breakout = self.prefix + "b"
        self.tunnel = self.prefix + "t"
        self.links = links
        self.breakout2 = self.prefix + "b2" if links == 2 else ""
        self.namespaces: tuple[str, ...] = (self.router, self.client, self.breakout, self.tunnel)
        if links == 2:
            self.namespaces += (self.breakout2,)
        self.procs: list[subprocess.Popen[str]] = []
        self._created: list[str] = []

    # -- running things ---------------------------------------------------------------------

    def run(
        self, ns: str, *cmd: str, check: bool = True, timeout: float = 20, input: str | None = None
    ) -> subprocess.CompletedProcess[str]:
        """Run `cmd` in namespace `ns` and wait for it."""
        res = subprocess.run(
            ["ip", "netns", "exec", ns, *cmd],
            capture_output=True, text=True, timeout=timeout, cwd=REPO, input=input,
            env=_env(),
        )  # fmt: skip
        if check and res.returncode != 0:
            raise LabError(f"[{ns}] {' '.join(cmd)}: exit {res.returncode}: {res.stderr.strip()}")
        return res

    def ip(self, ns: str, *args: str, check: bool = True) -> str:
        res = subprocess.run(["ip", "-n", ns, *args], capture_output=True, text=True, timeout=20)
        if check and res.returncode != 0:
            raise LabError(f"[{ns}] ip {' '.join(args)}: {res.stderr.strip()}")
        return res.stdout

    def batch(self, ns: str, commands: Sequence[str]) -> None:
        """Run many `ip` commands in one process (`ip -batch`)."""
        res = subprocess.run(
            ["ip", "-n", ns, "-batch", "-"], input="\n".join(commands) + "\n",
            capture_output=True, text=True, timeout=60,
        )  # fmt: skip
        if res.returncode != 0:
            raise LabError(f"[{ns}] ip -batch: {res.stderr.strip()}")

    def spawn(
        self, ns: str, *cmd: str, stdout: int | TextIO | None = subprocess.PIPE,
        stderr: int | TextIO | None = None, stdin: int | None = subprocess.DEVNULL,
    ) -> subprocess.Popen[str]:  # fmt: skip
        """Start `cmd` in `ns`; it is killed when the lab is torn down."""
        proc = subprocess.Popen(
            ["ip", "netns", "exec", ns, *cmd],
            stdout=stdout, stderr=stderr, stdin=stdin, text=True, cwd=REPO, env=_env(),
        )  # fmt: skip
        self.procs.append(proc)
        return proc

    def python(self, ns: str, *args: str, **kw: Any) -> subprocess.CompletedProcess[str]:
        return self.run(ns, sys.executable, *args, **kw)

    def connect(self, host: str, port: int = PORT, timeout: float = 2.0) -> str:
        """Connect from the client to host:port; the identity of the server that answered."""
        res = self.python(
            self.client, "-m", "tests.netns.agents", "connect", host, str(port), str(timeout),
            check=False,
        )  # fmt: skip
        return res.stdout.strip() or f"error: {res.stderr.strip()}"

    def table(self, table: int | str, family: int = 4) -> list[str]:
        """The routes of `table` in the router, one line each."""
        out = self.ip(self.router, f"-{family}", "route", "show", "table", str(table), check=False)
        return [line for line in out.splitlines() if line.strip()]

    # -- building ---------------------------------------------------------------------------

    def _build(self) -> None:
        if os.geteuid() != 0:
            raise LabError("the namespace lab needs root (ip netns add)")
        for ns in self.namespaces:
            subprocess.run(["ip", "netns", "add", ns], check=True, capture_output=True)
            self._created.append(ns)
            # Before any link exists: no duplicate address detection, no reverse-path drops.
            self.run(
                ns, "sysctl", "-qw", "net.ipv6.conf.all.accept_dad=0",
                "net.ipv6.conf.default.accept_dad=0", "net.ipv4.conf.all.rp_filter=0",
                "net.ipv4.conf.default.rp_filter=0",
                # Static addresses survive a link flap (as ifupdown/networkd would re-add
                # them); without this the kernel drops IPv6 addresses when a link goes down.
                "net.ipv6.conf.all.keep_addr_on_down=1",
                "net.ipv6.conf.default.keep_addr_on_down=1",
            )  # fmt: skip
            self.ip(ns, "link", "set", "lo", "up")
            if self.breakout2 and ns not in (self.router, self.client):
                # A server answers ARP only for its link's own address, as an ISP's gateway
                # does: a packet for an internet address must be sent to the gateway.
                self.run(ns, "sysctl", "-qw", "net.ipv4.conf.all.arp_ignore=1")
        r, c, b, t, b2 = self.router, self.client, self.breakout, self.tunnel, self.breakout2
        self.run(r, "sysctl", "-qw", "net.ipv4.ip_forward=1", "net.ipv6.conf.all.forwarding=1")
        peers = [(WAN_IF, b), (TUN_IF, t), (LAN_IF, c)] + ([(WAN1_IF, b2)] if b2 else [])
        for ifname, peer in peers:
            self.ip(r, "link", "add", ifname, "type", "veth", "peer", "name", "eth0", "netns", peer)
        plan = [
            (r, WAN_IF, f"{ROUTER_WAN4}/25", f"{ROUTER_WAN6}/64"),
            (r, TUN_IF, f"{ROUTER_TUN4}/25", f"{ROUTER_TUN6}/64"),
            (r, LAN_IF, f"{ROUTER_LAN4}/25", f"{ROUTER_LAN6}/64"),
            (b, "eth0", f"{BREAKOUT_GW4}/25", f"{BREAKOUT_GW6}/64"),
            (t, "eth0", f"{TUNNEL_GW4}/25", f"{TUNNEL_GW6}/64"),
            (c, "eth0", f"{CLIENT4}/25", f"{CLIENT6}/64"),
        ]
        if b2:
            plan += [
                (r, WAN1_IF, f"{ROUTER_WAN1_4}/25", f"{ROUTER_WAN1_6}/64"),
                (b2, "eth0", f"{BREAKOUT2_GW4}/25", f"{BREAKOUT2_GW6}/64"),
            ]
        for ns, ifname, a4, a6 in plan:
            self.ip(ns, "addr", "add", a4, "dev", ifname)
            self.ip(ns, "-6", "addr", "add", a6, "dev", ifname, "nodad")
            self.ip(ns, "link", "set", ifname, "up")
        if self.nat is not None:
            self.run(r, "nft", "-f", "-", input=self.nat_ruleset())
        # The router: everything through the tunnel unless told otherwise.
        self.ip(r, "route", "add", "default", "via", TUNNEL_GW4)
        self.ip(r, "-6", "route", "add", "default", "via", TUNNEL_GW6)
        self.ip(c, "route", "add", "default", "via", ROUTER_LAN4)
        self.ip(c, "-6", "route", "add", "default", "via", ROUTER_LAN6)
        servers = [(b, "breakout"), (t, "tunnel")] + ([(b2, "breakout2")] if b2 else [])
        for ns, _name in servers:
            self.server_routes(ns)
            batch = [f"addr add {a}/32 dev lo" for a in SERVICE4]
            batch += [f"addr add {a}/128 dev lo nodad" for a in SERVICE6]
            if b2:  # the probe target everywhere (a probe that leaked would still succeed)
                batch += [f"addr add {PROBE4}/32 dev lo", f"addr add {PROBE6}/128 dev lo nodad"]
            if (b2 and ns != t) or self.split_dns:
                batch.append(f"addr add {BREAKOUT_RESOLVER4}/32 dev lo")
            if self.split_dns:
                batch += [f"addr add {a}/32 dev lo" for a in SPLIT4]
                batch += [f"addr add {a}/128 dev lo nodad" for a in SPLIT6]
                if ns == t:
                    batch.append(f"addr add {HEAD_OFFICE4}/32 dev lo")
            self.batch(ns, batch)
        for ns, name in servers:
            proc = self.spawn(
                ns, sys.executable, "-m", "tests.netns.agents", "serve", name, str(PORT)
            )
            assert proc.stdout is not None
            line = proc.stdout.readline().strip()
            if line != "ready":
                raise LabError(f"identity server {name} did not start: {line!r}")
        self.warm()

    def nat_ruleset(self) -> str:
        """The router's source NAT on its breakout links (``nat``), table `inet lab_nat`."""
        links = [(WAN_IF, ROUTER_WAN4, ROUTER_WAN6)]
        if self.breakout2:
            links.append((WAN1_IF, ROUTER_WAN1_4, ROUTER_WAN1_6))
        if self.nat == "masquerade":
            names = ", ".join(f'"{ifname}"' for ifname, _, _ in links)
            rules = [f"oifname {{ {names} }} masquerade"]
        else:
            rules = [
                f'oifname "{ifname}" snat {fam} to {address}'
                for ifname, a4, a6 in links
                for fam, address in (("ip", a4), ("ip6", a6))
            ]
        body = "\n    ".join(rules)
        return (
            "table inet lab_nat {\n"
            "  chain post { type nat hook postrouting priority srcnat; policy accept;\n"
            f"    {body}\n  }}\n}}\n"
        )

    def server_routes(self, ns: str) -> None:
        """A server's routes back to the LAN (the kernel drops them when its link goes down)."""
        gw4, gw6 = {
            self.breakout: (ROUTER_WAN4, ROUTER_WAN6),
            self.breakout2: (ROUTER_WAN1_4, ROUTER_WAN1_6),
        }.get(ns, (ROUTER_TUN4, ROUTER_TUN6))
        self.ip(ns, "route", "replace", LAN_NET4, "via", gw4)
        self.ip(ns, "-6", "route", "replace", LAN_NET6, "via", gw6)

    def set_link(self, ns: str, ifname: str, up: bool) -> None:
        """Take a link down or up; a server's routes are put back when its link returns."""
        self.ip(ns, "link", "set", ifname, "up" if up else "down")
        if up and ns in (self.breakout, self.tunnel, self.breakout2):
            self.server_routes(ns)

    def blackhole(self, ns: str, on: bool) -> None:
        """Drop (or stop dropping) every packet for PROBE4/PROBE6 inside server `ns`, with an
        nftables table of the lab's in that namespace: the server's link stays up, the upstream
        behind it looks dead to a health probe."""
        self.run(ns, "nft", "delete", "table", "inet", "lab_blackhole", check=False)
        if on:
            self.run(ns, "nft", "-f", "-", input=(
                "table inet lab_blackhole {\n"
                "  chain input { type filter hook input priority 0; policy accept;\n"
                f"    ip daddr {PROBE4} drop\n    ip6 daddr {PROBE6} drop\n  }}\n}}\n"
            ))  # fmt: skip

    def warm(self) -> None:
        """A round trip each way on every link, so first packets find their neighbours."""
        targets: dict[str, tuple[str, ...]] = {
            self.client: (ROUTER_LAN4, ROUTER_LAN6),
            self.router: (CLIENT4, CLIENT6, BREAKOUT_GW4, BREAKOUT_GW6, TUNNEL_GW4, TUNNEL_GW6),
            self.breakout: (ROUTER_WAN4, ROUTER_WAN6),
            self.tunnel: (ROUTER_TUN4, ROUTER_TUN6),
        }
        if self.breakout2:
            targets[self.router] += (BREAKOUT2_GW4, BREAKOUT2_GW6)
            targets[self.breakout2] = (ROUTER_WAN1_4, ROUTER_WAN1_6)
        for ns, hosts in targets.items():
            res = self.python(ns, "-m", "tests.netns.agents", "reach", *hosts, check=False)
            if res.returncode != 0:
                raise LabError(f"[{ns}] {res.stderr.strip()}")

    def kill_ns_processes(self, ns: str) -> None:
        """Kill every process in `ns` (all were started by this lab or by a test in it)."""
        res = subprocess.run(["ip", "netns", "pids", ns], capture_output=True, text=True)
        for pid in res.stdout.split():
            with suppress(ProcessLookupError, ValueError):
                os.kill(int(pid), signal.SIGKILL)

    def close(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                proc.kill()
        for proc in self.procs:
            with suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=5)
        for ns in self._created:
            self.kill_ns_processes(ns)
        for ns in reversed(self._created):
            subprocess.run(["ip", "netns", "del", ns], capture_output=True)
        self._created.clear()


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = REPO + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    env["PYTHONDONTWRITEBYTECODE"] = "1"
    return env


@contextmanager
def lab(
    tag: str = "", links: int = 1, split_dns: bool = False, nat: str | None = None
) -> Iterator[Lab]:
    with Lab(tag, links, split_dns, nat) as built:
        yield built


def leftovers() -> list[str]:
    """Namespaces of this process's labs still present (should be none)."""
    out = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    mine = f"r365t-{os.getpid()}-"
    return [line.split()[0] for line in out.splitlines() if line.startswith(mine)]


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    with Lab("demo", split_dns="--split-dns" in args) as built:
        print("namespaces:", " ".join(built.namespaces))
        print(built.ip(built.router, "addr"))
        print("connect 203.0.113.10 ->", built.connect(SERVICE4[0]))
        if "--keep" in args:
            input("lab is up; press Enter to remove it ")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
