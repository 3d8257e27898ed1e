"""A small NAT lab for conntrack and counter tests: a client, a router that translates sources
on two breakout links, and a server behind each link.

    client (C) --lan0-- router (R) --wan0-- server S0    "the first internet link"
                                   --wan1-- server S1    "the second one"

S0 and S1 both own the service addresses (SERVICE4/SERVICE6, on their loopback), as one
service reached through two ISPs would be, and each knows only its own link's network: no
route back to the LAN, nor to the other link's addresses. So a flow works only when its
packets leave the link they were NATed on: a packet that leaves wan1 with wan0's address
(a stale conntrack entry after a route moved) reaches S1, whose answer has nowhere to go. The
router translates the source (nftables, table `inet lab_nat`) on wan0 and wan1, v4 and v6:
`masquerade`, or `snat` to the link's address (``NatLab(nat="snat")``), and routes the service
addresses by host routes in its main table (`route`).

The two differ when a route moves: for a masqueraded flow the kernel itself notices that the
packet now leaves another interface than the one it was masqueraded on, drops that packet and
kills the entry (nf_nat's "oif changed" check), so the next retransmission is NATed afresh; an
SNAT entry has no such check and keeps its old source until someone deletes it.

Everything is in namespaces named ``r365n-<pid>-<n>-`` and removed on exit, failure included.
"""

from __future__ import annotations

import itertools
import os
import signal
import subprocess
import sys
from collections.abc import Sequence
from contextlib import suppress
from typing import Any, TextIO

from tests.netns.lab import LabError
from tests.nslab import NamespaceLab

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

LAN_NET4, ROUTER_LAN4, CLIENT4 = "192.0.2.128/25", "192.0.2.129", "192.0.2.130"
LAN_NET6, ROUTER_LAN6, CLIENT6 = "2001:db8:c::/64", "2001:db8:c::1", "2001:db8:c::2"
WAN = {  # link: (router v4, server v4, router v6, server v6), /25 and /64
    "wan0": ("192.0.2.2", "192.0.2.1", "2001:db8:b::2", "2001:db8:b::1"),
    "wan1": ("198.51.100.130", "198.51.100.129", "2001:db8:d::2", "2001:db8:d::1"),
}
SERVICE4 = tuple(f"203.0.113.{i}" for i in range(10, 20))
SERVICE6 = tuple(f"2001:db8:365::{i:x}" for i in range(0x10, 0x20))
PORT = 8081  # the echo server on S0 and S1

_counter = itertools.count(1)


def nat_ruleset(nat: str) -> str:
    """The router's source NAT on wan0 and wan1: "masquerade", or "snat" to each link's own
    address (what a router with static addresses is often given)."""
    if nat == "masquerade":
        rules = ['oifname { "wan0", "wan1" } masquerade']
    else:
        rules = [
            f'oifname "{link}" snat {fam} to {WAN[link][i]}'
            for link in WAN
            for fam, i in (("ip", 0), ("ip6", 2))
        ]
    body = "\n    ".join(rules)
    return (
        "table inet lab_nat {\n"
        "  chain post { type nat hook postrouting priority srcnat; policy accept;\n"
        f"    {body}\n  }}\n}}\n"
    )


class NatLab(NamespaceLab):
    def __init__(self, tag: str = "", nat: str = "masquerade", echo: bool = True) -> None:
        if nat not in ("masquerade", "snat"):
            raise LabError(f"nat is masquerade or snat, not {nat}")
        self.nat = nat
        self.prefix = f"r365n-{os.getpid()}-{next(_counter)}{'-' + tag if tag else ''}-"
        self.client, self.router = self.prefix + "c", self.prefix + "r"
        self.servers = {"wan0": self.prefix + "s0", "wan1": self.prefix + "s1"}
        self.namespaces = (self.client, self.router, *self.servers.values())
        self.echo = echo
        self.procs: list[subprocess.Popen[str]] = []
        self._created: list[str] = []

    # -- running things ---------------------------------------------------------------------

    def run(
        self, ns: str, *cmd: str, check: bool = True, timeout: float = 30, input: str | None = None
    ) -> subprocess.CompletedProcess[str]:
        res = subprocess.run(
            ["ip", "netns", "exec", ns, *cmd], capture_output=True, text=True,
            timeout=timeout, cwd=REPO, input=input, env=_env(),
        )  # fmt: skip
        if check and res.returncode != 0:
            raise LabError(f"[{ns}] {' '.join(cmd)}: exit {res.returncode}: {res.stderr.strip()}")
        return res

    def ip(self, ns: str, *args: str, check: bool = True) -> str:
        res = subprocess.run(["ip", "-n", ns, *args], capture_output=True, text=True, timeout=30)
        if check and res.returncode != 0:
            raise LabError(f"[{ns}] ip {' '.join(args)}: {res.stderr.strip()}")
        return res.stdout

    def batch(self, ns: str, commands: Sequence[str]) -> None:
        res = subprocess.run(
            ["ip", "-n", ns, "-batch", "-"], input="\n".join(commands) + "\n",
            capture_output=True, text=True, timeout=60,
        )  # fmt: skip
        if res.returncode != 0:
            raise LabError(f"[{ns}] ip -batch: {res.stderr.strip()}")

    def spawn(
        self, ns: str, *cmd: str, stdin: int | None = subprocess.DEVNULL,
        stdout: int | TextIO | None = subprocess.PIPE, stderr: int | TextIO | None = None,
    ) -> subprocess.Popen[str]:  # fmt: skip
        proc = subprocess.Popen(
            ["ip", "netns", "exec", ns, *cmd], stdin=stdin, stdout=stdout, stderr=stderr,
            text=True, cwd=REPO, env=_env(),
        )  # fmt: skip
        self.procs.append(proc)
        return proc

    def agent(self, ns: str, *args: str, **kw: Any) -> subprocess.Popen[str]:
        return self.spawn(ns, sys.executable, "-m", "tests.netns.ctagents", *args, **kw)

    def route(self, address: str, link: str) -> None:
        """Send `address` (v4 or v6) through `link` (replacing its route: no gap)."""
        fam = "-6" if ":" in address else "-4"
        gw = WAN[link][3 if fam == "-6" else 1]
        self.ip(self.router, fam, "route", "replace", address, "via", gw, "dev", link)

    def nft(self, ns: str, ruleset: str) -> None:
        self.run(ns, "nft", "-f", "-", input=ruleset)

    # -- building ---------------------------------------------------------------------------

    def _build(self) -> None:
        if os.geteuid() != 0:
            raise LabError("the namespace lab needs root (ip netns add)")
        for ns in self.namespaces:
            subprocess.run(["ip", "netns", "add", ns], check=True, capture_output=True)
            self._created.append(ns)
            self.run(
                ns, "sysctl", "-qw", "net.ipv6.conf.all.accept_dad=0",
                "net.ipv6.conf.default.accept_dad=0", "net.ipv4.conf.all.rp_filter=0",
                "net.ipv4.conf.default.rp_filter=0",
            )  # fmt: skip
            self.ip(ns, "link", "set", "lo", "up")
        r, c = self.router, self.client
        self.run(r, "sysctl", "-qw", "net.ipv4.ip_forward=1", "net.ipv6.conf.all.forwarding=1")
        self.ip(r, "link", "add", "lan0", "type", "veth", "peer", "name", "eth0", "netns", c)
        plan = [(r, "lan0", ROUTER_LAN4, ROUTER_LAN6), (c, "eth0", CLIENT4, CLIENT6)]
        for link, (r4, s4, r6, s6) in WAN.items():
            peer = self.servers[link]
            self.ip(r, "link", "add", link, "type", "veth", "peer", "name", "eth0", "netns", peer)
            plan += [(r, link, r4, r6), (peer, "eth0", s4, s6)]
        for ns, ifname, a4, a6 in plan:
            self.ip(ns, "addr", "add", f"{a4}/25", "dev", ifname)
            self.ip(ns, "-6", "addr", "add", f"{a6}/64", "dev", ifname, "nodad")
            self.ip(ns, "link", "set", ifname, "up")
        self.ip(c, "route", "add", "default", "via", ROUTER_LAN4)
        self.ip(c, "-6", "route", "add", "default", "via", ROUTER_LAN6)
        for ns in self.servers.values():
            batch = [f"addr add {a}/32 dev lo" for a in SERVICE4]
            batch += [f"addr add {a}/128 dev lo nodad" for a in SERVICE6]
            self.batch(ns, batch)
        self.nft(r, nat_ruleset(self.nat))
        for address in SERVICE4 + SERVICE6:
            self.route(address, "wan0")
        if self.echo:
            for ns in self.servers.values():
                proc = self.agent(ns, "echo", str(PORT))
                assert proc.stdout is not None
                line = proc.stdout.readline().strip()
                if line != "ready":
                    raise LabError(f"echo server in {ns} did not start: {line!r}")
        self.warm()

    def warm(self) -> None:
        """A round trip on every link, so first packets find their neighbours."""
        targets = {
            self.client: [ROUTER_LAN4, ROUTER_LAN6],
            self.router: [CLIENT4, CLIENT6] + [h for w in WAN.values() for h in (w[1], w[3])],
        }
        for link, ns in self.servers.items():
            targets[ns] = [WAN[link][0], WAN[link][2]]
        for ns, hosts in targets.items():
            res = self.run(ns, sys.executable, "-m", "tests.netns.agents", "reach", *hosts,
                           check=False)  # fmt: skip
            if res.returncode != 0:
                raise LabError(f"[{ns}] {res.stderr.strip()}")

    def close(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                proc.kill()
        for proc in self.procs:
            with suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=5)
        for ns in self._created:
            res = subprocess.run(["ip", "netns", "pids", ns], capture_output=True, text=True)
            for pid in res.stdout.split():
                with suppress(ProcessLookupError, ValueError):
                    os.kill(int(pid), signal.SIGKILL)
        for ns in reversed(self._created):
            subprocess.run(["ip", "netns", "del", ns], capture_output=True)
        self._created.clear()


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = REPO + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    env["PYTHONDONTWRITEBYTECODE"] = "1"
    return env


def leftovers() -> list[str]:
    out = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    mine = f"r365n-{os.getpid()}-"
    return [line.split()[0] for line in out.splitlines() if line.startswith(mine)]
