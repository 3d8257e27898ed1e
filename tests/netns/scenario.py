"""The end-to-end scenario shared by tests/netns/test_e2e.py and the demo (tests/demo.py).

A zone of Microsoft 365-like names (CNAME chains, an answer too big for UDP, the LAN's own
addresses under a routed wildcard) served by the fake upstream in the router namespace,
resolverd's config for the lab, the daemon as a process in the router, and the client's
resolve-then-connect.

Split DNS (tests/netns/test_split_dns.py and the demo, in a ``Lab(split_dns=True)``): four
DNS servers answer the same names, each with addresses of its own, so an address in an answer
says which server gave it (`answered_by`):
- "local": the breakout resolver (the ISP's, close to the branch) on BREAKOUT_RESOLVER4 behind
  each breakout link, reached only through resolverd's host route in its table;
- "tunnel side": a DNS server on the same address behind the tunnel, where a query for the
  breakout resolver would land if it left by the router's default route;
- "head office": HEAD_OFFICE4 behind the tunnel, the forward zones corp.example (with chains
  into Microsoft 365 names) and 2.0.192.in-addr.arpa;
- "default": the default upstream in the router (the `Daemon`'s).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from typing import Any

from tests.netns.lab import (
    BREAKOUT2_GW4,
    BREAKOUT2_GW6,
    BREAKOUT_GW4,
    BREAKOUT_GW6,
    BREAKOUT_RESOLVER4,
    CLIENT4,
    HEAD_OFFICE4,
    PORT,
    PROBE4,
    PROBE6,
    REPO,
    ROUTER_LAN4,
    ROUTER_LAN6,
    SERVICE4,
    SERVICE6,
    SPLIT4,
    SPLIT6,
    WAN1_IF,
    WAN_IF,
    Lab,
)

TABLE, PRIORITY, PROTOCOL = 365, 1000, 245

BIG = SERVICE4[2:42]  # 40 A records: more than 512 bytes, so the UDP answer is truncated
ZONE: dict[str, list[dict[str, Any]]] = {
    "portal.office.com": [
        {"type": "A", "value": SERVICE4[0], "ttl": 60},
        {"type": "AAAA", "value": SERVICE6[0], "ttl": 60},
    ],
    # A chain from a name outside the policy into *.office365.com (row 1).
    "mail.contoso.test": [{"type": "CNAME", "value": "outlook.office365.com", "ttl": 300}],
    "outlook.office365.com": [{"type": "CNAME", "value": "outlook.ha.office365.com", "ttl": 300}],
    "outlook.ha.office365.com": [
        {"type": "A", "value": SERVICE4[1], "ttl": 30},
        {"type": "AAAA", "value": SERVICE6[1], "ttl": 30},
    ],
    "big.office365.com": [{"type": "A", "value": a, "ttl": 60} for a in BIG],
    "www.example.test": [
        {"type": "A", "value": SERVICE4[45], "ttl": 60},
        {"type": "AAAA", "value": SERVICE6[45], "ttl": 60},
    ],
    "short.office365.com": [{"type": "A", "value": SERVICE4[46], "ttl": 1}],
    "kill.office365.com": [{"type": "A", "value": SERVICE4[47], "ttl": 300}],
    "flush.office365.com": [{"type": "A", "value": SERVICE4[48], "ttl": 300}],
    # An answer that hands out the LAN's own addresses under a routed wildcard.
    "lan.office365.com": [
        {"type": "A", "value": CLIENT4, "ttl": 60},
        {"type": "A", "value": ROUTER_LAN4, "ttl": 60},
    ],
}


# -- split DNS -----------------------------------------------------------------------------------

HEAD_OFFICE_ZONES = ("corp.example", "2.0.192.in-addr.arpa")
SPLIT_AT = {"local": 0, "tunnel side": 10, "head office": 20, "default": 30}  # into SPLIT4/6
# Microsoft 365 names every split-DNS server answers, each with its own addresses.
SPLIT_M365 = (
    "teams.office365.com",
    "outlook.office365.com",
    *(f"down{n}.office365.com" for n in range(1, 6)),
)
INTRANET = "intranet.corp.example"  # head office's (the default upstream has its own idea)
CHAIN = ("autodiscover.corp.example", "outlook.office365.com")  # head office: a CNAME into M365
DO_CHAIN = ("mail.corp.example", "teams.office365.com")  # the same, for the DO bit
PTR_NAME = "53.2.0.192.in-addr.arpa"
CANARY = "use-application-dns.net"  # every server has an address for it


def split_address(who: str, index: int, family: int = 4) -> str:
    """The address `who` hands out for the name at `index` (SPLIT_M365, then 7: INTRANET,
    9: CANARY)."""
    return (SPLIT4 if family == 4 else SPLIT6)[SPLIT_AT[who] + index]


def split_records(who: str) -> dict[str, list[dict[str, Any]]]:
    """The zone of split-DNS server `who` (a key of SPLIT_AT)."""

    def addresses(index: int) -> list[dict[str, Any]]:
        return [
            {"type": "A", "value": split_address(who, index), "ttl": 300},
            {"type": "AAAA", "value": split_address(who, index, 6), "ttl": 300},
        ]

    out = {name: addresses(i) for i, name in enumerate(SPLIT_M365)}
    out[INTRANET], out[CANARY] = addresses(7), addresses(9)
    if who == "head office":
        for name, target in (CHAIN, DO_CHAIN):
            out[name] = [{"type": "CNAME", "value": target, "ttl": 300}]
        out[PTR_NAME] = [{"type": "PTR", "value": "ns.corp.example", "ttl": 300}]
    elif who == "default":
        out[PTR_NAME] = [{"type": "PTR", "value": "ptr.default.example.test", "ttl": 300}]
    return out


def answered_by(address: str) -> str:
    """Which split-DNS server hands out `address`."""
    for who, at in SPLIT_AT.items():
        if address in SPLIT4[at : at + 10] or address in SPLIT6[at : at + 10]:
            return who
    return f"none ({address})"


def start_split_servers(lab: Lab, tmp: str) -> dict[str, subprocess.Popen[str]]:
    """The split-DNS servers but the default upstream (the `Daemon`'s: give it
    `split_records("default")`), each a tests.fakeupstream process: "local" on
    BREAKOUT_RESOLVER4 behind wan0 (the scenario's ZONE too, as the ISP's resolver answers
    every name), "local2" behind wan1 (the same records, with two links), and behind the
    tunnel "tunnel side" on BREAKOUT_RESOLVER4 and "head office" on HEAD_OFFICE4. Returns the
    processes by name, each listening already."""
    local = {**ZONE, **split_records("local")}
    plan = [("local", lab.breakout, BREAKOUT_RESOLVER4, local)]
    if lab.breakout2:
        plan.append(("local2", lab.breakout2, BREAKOUT_RESOLVER4, local))
    plan += [
        ("tunnel side", lab.tunnel, BREAKOUT_RESOLVER4, split_records("tunnel side")),
        ("head office", lab.tunnel, HEAD_OFFICE4, split_records("head office")),
    ]
    procs: dict[str, subprocess.Popen[str]] = {}
    for who, ns, address, records in plan:
        slug = who.replace(" ", "-")
        zone = os.path.join(tmp, f"split-{slug}.yaml")
        with open(zone, "w") as fh:
            json.dump({"records": records}, fh)
        procs[who] = proc = lab.spawn(
            ns, sys.executable, "-m", "tests.fakeupstream", "--listen", f"{address}:53",
            "--zone", zone, stderr=open(os.path.join(tmp, f"split-{slug}.log"), "w"),  # noqa: SIM115
        )  # fmt: skip
    for who, proc in procs.items():
        assert proc.stdout is not None
        line = proc.stdout.readline()
        if not line.startswith("fake upstream listening"):
            raise RuntimeError(f"split-DNS server {who} did not start: {line!r}")
    return procs


def query(
    lab: Lab, name: str, qtype: str = "A", server: str = ROUTER_LAN4, do: bool = False
) -> dict[str, Any]:
    """Ask `server` from the client (tests.netns.agents query): {rcode, answer: [[owner, type,
    value, ttl], ...], edns, do, ad, truncated}."""
    args = ["-m", "tests.netns.agents", "query", server, name, qtype] + (["do"] if do else [])
    result: dict[str, Any] = json.loads(lab.python(lab.client, *args).stdout)
    return result


def config(
    tmp: str, policy: str = "builtin: microsoft365", hold: tuple[int, int] = (2, 0),
    links: int = 1, split_dns: bool = False,
) -> str:  # fmt: skip
    """resolverd's config for the lab; `hold` is (min_hold, grace): short for the tests.
    `links=2` (for a `Lab(links=2)`): both breakout links, wan0 preferred, with health probes
    to PROBE4/PROBE6 every half second (down after 2 failed rounds, up after 2 good ones).
    `split_dns` (for a `Lab(split_dns=True)`): head office's zones and the breakout resolver
    (see `start_split_servers`)."""
    if links == 1:
        link_keys = f'interface: {WAN_IF}\n  gateway4: {BREAKOUT_GW4}\n  gateway6: "{BREAKOUT_GW6}"'
    else:
        link_keys = f"""links:
    - {{interface: {WAN_IF}, gateway4: {BREAKOUT_GW4}, gateway6: "{BREAKOUT_GW6}"}}
    - {{interface: {WAN1_IF}, gateway4: {BREAKOUT2_GW4}, gateway6: "{BREAKOUT2_GW6}"}}
  health:
    targets: ["{PROBE4}:{PORT}", "[{PROBE6}]:{PORT}"]
    interval: 0.5
    timeout: 0.4
    failures: 2
    successes: 2"""
    zones = ""
    if split_dns:
        link_keys += f'\n  resolvers: ["{BREAKOUT_RESOLVER4}"]'
        zones = "forward_zones:\n" + "".join(
            f'  {zone}: ["{HEAD_OFFICE4}"]\n' for zone in HEAD_OFFICE_ZONES
        )
    return f"""
listen: ["{ROUTER_LAN4}:53", "[{ROUTER_LAN6}]:53"]
upstreams: ["127.0.0.1:5300"]
{zones}allow: ["192.0.2.128/25", "2001:db8:c::/64", "127.0.0.0/8"]
state_dir: {tmp}/state
control: {{socket: {tmp}/control.sock}}
breakout:
  mode: kernel
  {link_keys}
  table: {TABLE}
  rule_priority: {PRIORITY}
  route_protocol: {PROTOCOL}
  ipset4: m365-v4
  ipset6: m365-v6
  min_hold: {hold[0]}
  grace: {hold[1]}
policy:
  {policy}
"""


class Ctl:
    """resolverctl against a daemon of the lab, from the test process (the socket is a path in
    the shared filesystem); `log()` goes into the error of a failed command."""

    socket: str

    def log(self) -> str:
        raise NotImplementedError

    def ctl(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        res = subprocess.run(
            [sys.executable, "-m", "resolver.ctl.main", "--socket", self.socket, *args],
            capture_output=True, text=True, timeout=20,
            env={**os.environ, "PYTHONPATH": REPO},
        )  # fmt: skip
        if check and res.returncode != 0:
            raise RuntimeError(f"resolverctl {' '.join(args)}: {res.stderr}\n{self.log()}")
        return res

    def json(self, *args: str) -> Any:
        return json.loads(self.ctl(*args, "--json").stdout)

    def status(self) -> dict[str, Any]:
        result: dict[str, Any] = self.json("status")["breakout"]
        return result

    def routes(self) -> dict[str, dict[str, Any]]:
        return {r["address"]: r for r in self.json("routes")}


class Daemon(Ctl):
    """resolverd and the fake upstream in the router namespace. `text` replaces the config
    (its control socket must be `tmp`/control.sock); `records` are added to the upstream's
    zone."""

    def __init__(
        self, lab: Lab, tmp: str, hold: tuple[int, int] = (2, 0), text: str | None = None,
        records: dict[str, list[dict[str, Any]]] | None = None,
    ) -> None:  # fmt: skip
        self.lab = lab
        self.tmp = tmp
        self.cfg = os.path.join(tmp, "resolverd.yaml")
        self.socket = os.path.join(tmp, "control.sock")
        self.proc: subprocess.Popen[str] | None = None
        self.starts = 0
        zone = os.path.join(tmp, "zone.yaml")
        with open(zone, "w") as fh:
            json.dump({"records": {**ZONE, **(records or {})}}, fh)  # JSON is YAML
        with open(self.cfg, "w") as fh:
            fh.write(config(tmp, hold=hold) if text is None else text)
        self.upstream = lab.spawn(
            lab.router, sys.executable, "-m", "tests.fakeupstream", "--listen", "127.0.0.1:5300",
            "--zone", zone, stdout=subprocess.DEVNULL,
            stderr=open(os.path.join(tmp, "upstream.log"), "w"),  # noqa: SIM115
        )  # fmt: skip

    def start(self) -> None:
        self.starts += 1
        log = open(os.path.join(self.tmp, f"resolverd{self.starts}.log"), "w")  # noqa: SIM115
        self.proc = self.lab.spawn(
            self.lab.router, sys.executable, "-m", "resolver.daemon", "--config", self.cfg,
            stdout=subprocess.DEVNULL, stderr=log,
        )  # fmt: skip
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"resolverd exited {self.proc.returncode}:\n{self.log()}")
            if os.path.exists(self.socket) and self.ctl("status", check=False).returncode == 0:
                return
            time.sleep(0.1)
        raise RuntimeError(f"resolverd did not come up:\n{self.log()}")

    def kill(self) -> None:
        assert self.proc is not None
        os.kill(self.proc.pid, signal.SIGKILL)  # `ip netns exec` execs: this is resolverd
        self.proc.wait(timeout=5)
        if os.path.exists(self.socket):
            os.unlink(self.socket)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            self.proc.wait(timeout=10)

    def log(self) -> str:
        out = []
        for i in range(1, self.starts + 1):
            with open(os.path.join(self.tmp, f"resolverd{i}.log")) as fh:
                out.append(fh.read()[-4000:])
        return "\n".join(out)


def fetch(lab: Lab, name: str, qtype: str = "A", server: str = ROUTER_LAN4) -> dict[str, Any]:
    """Resolve `name` from the client, then connect to the first address at once."""
    res = lab.python(
        lab.client, "-m", "tests.netns.agents", "resolve-connect", server, name, qtype, str(PORT)
    )
    result: dict[str, Any] = json.loads(res.stdout)
    return result
