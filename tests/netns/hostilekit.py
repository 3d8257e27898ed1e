"""The attacker's lab for tests/netns/test_hostile.py, on a ``Lab(split_dns=True)``.

    client --lan0-- router: resolverd (ROUTER_LAN4/6:53) -> Unbound (127.0.0.1:5300)
                            |                                 stub attacker.test -> HOSTILE4
                            |                                 stub office365.com -> BENIGN4
                            +- forward zone direct.attacker.test -> HOSTILE4 (no Unbound)
                    --tun0-- tunnel server: HOSTILE4 (the attacker's authoritative server, crafted
                                            replies) and BENIGN4 (office365.com, as Microsoft's)
                    --wan0-- breakout server: BREAKOUT_RESOLVER4 (the ISP's resolver, for the
                                            splice: its own addresses for outlook.office365.com)

Both authoritative servers are tests.netns.hostile processes behind the tunnel (the internet,
as the router's default route sees it). Unbound is the real thing (/usr/sbin/unbound) with a
config in the test's temporary directory: no DNSSEC (iterator only, permissive, no trust
anchor), no qname minimisation (it would ask the wildcard for the intermediate names), stub
zones for the two lab zones. `Resolverd` is the real daemon in the router with this lab's
config (`config`): the shipped policy defaults (include_optional, client_share) are not set,
so the tests see them as they ship.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from typing import Any

from tests.netns.lab import (
    BREAKOUT_GW4,
    BREAKOUT_GW6,
    BREAKOUT_RESOLVER4,
    ROUTER_LAN4,
    ROUTER_LAN6,
    WAN_IF,
    Lab,
    LabError,
)
from tests.netns.scenario import PRIORITY, PROTOCOL, TABLE, Ctl

HOSTILE4 = "203.0.113.251"  # the attacker's authoritative server (attacker.test)
BENIGN4 = "203.0.113.252"  # office365.com's authoritative server, behaving
UNBOUND4, UNBOUND_PORT = "127.0.0.1", 5300  # in the router
ZONE = "attacker.test"
DIRECT = "direct.attacker.test"  # resolverd's forward zone, straight at HOSTILE4
SETS = {4: "m365-v4", 6: "m365-v6"}
UNBOUND_BIN = shutil.which("unbound", path=os.environ.get("PATH", "") + ":/usr/sbin:/sbin")


# -- the servers ---------------------------------------------------------------------------------


def start_authority(lab: Lab, tmp: str, name: str, address: str, script: dict[str, Any]) -> None:
    """A tests.netns.hostile server on `address` (owned by the tunnel server) for `script`."""
    lab.batch(lab.tunnel, [f"addr add {address}/32 dev lo"])
    path = os.path.join(tmp, f"{name}.json")
    with open(path, "w") as fh:
        json.dump(script, fh)
    proc = lab.spawn(
        lab.tunnel, sys.executable, "-m", "tests.netns.hostile", "serve", address, path,
        stderr=open(os.path.join(tmp, f"{name}.log"), "w"),  # noqa: SIM115
    )  # fmt: skip
    assert proc.stdout is not None
    line = proc.stdout.readline().strip()
    if line != "ready":
        raise LabError(f"authoritative server {name} did not start: {line!r}")


def start_breakout_resolver(lab: Lab, tmp: str, records: dict[str, Any]) -> None:
    """The ISP's resolver on BREAKOUT_RESOLVER4 behind wan0 (tests.fakeupstream)."""
    path = os.path.join(tmp, "isp-zone.json")
    with open(path, "w") as fh:
        json.dump({"records": records}, fh)
    proc = lab.spawn(
        lab.breakout, sys.executable, "-m", "tests.fakeupstream", "--listen",
        f"{BREAKOUT_RESOLVER4}:53", "--zone", path,
        stderr=open(os.path.join(tmp, "isp.log"), "w"),  # noqa: SIM115
    )  # fmt: skip
    assert proc.stdout is not None
    line = proc.stdout.readline()
    if not line.startswith("fake upstream listening"):
        raise LabError(f"the breakout resolver did not start: {line!r}")


class Unbound:
    """Unbound in the router namespace on UNBOUND4:UNBOUND_PORT, stub zones to the lab's
    authoritative servers; `stop` kills it (the lab would too)."""

    def __init__(self, lab: Lab, tmp: str) -> None:
        if UNBOUND_BIN is None:
            raise LabError("unbound is not installed: run make sysdeps (Debian package unbound)")
        self.lab = lab
        self.dir = os.path.join(tmp, "unbound")
        os.makedirs(self.dir, exist_ok=True)
        self.conf = os.path.join(self.dir, "unbound.conf")
        self.log_path = os.path.join(self.dir, "unbound.log")
        with open(self.conf, "w") as fh:
            fh.write(f"""server:
    interface: {UNBOUND4}
    port: {UNBOUND_PORT}
    access-control: 127.0.0.0/8 allow
    do-ip6: no
    do-daemonize: no
    chroot: ""
    username: ""
    directory: "{self.dir}"
    pidfile: "{self.dir}/unbound.pid"
    use-syslog: no
    logfile: ""
    verbosity: 1
    num-threads: 1
    so-reuseport: no
    outgoing-range: 64
    do-not-query-localhost: no
    module-config: "iterator"
    val-permissive-mode: yes
    qname-minimisation: no
    minimal-responses: no
    prefetch: no
    local-zone: "test." nodefault

stub-zone:
    name: "{ZONE}"
    stub-addr: {HOSTILE4}
stub-zone:
    name: "office365.com"
    stub-addr: {BENIGN4}
""")
        check = subprocess.run(
            [UNBOUND_BIN + "-checkconf", self.conf], capture_output=True, text=True, timeout=20
        )
        if check.returncode != 0:
            raise LabError(f"unbound-checkconf: {check.stdout}{check.stderr}")
        self.proc = lab.spawn(
            lab.router, UNBOUND_BIN, "-d", "-c", self.conf, stdout=subprocess.DEVNULL,
            stderr=open(self.log_path, "w"),  # noqa: SIM115
        )  # fmt: skip
        deadline = time.monotonic() + 10
        while "start of service" not in self.log():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise LabError(f"unbound did not start:\n{self.log()}")
            time.sleep(0.05)

    def log(self) -> str:
        with open(self.log_path, errors="replace") as fh:
            return fh.read()

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(timeout=5)


# -- the daemon ----------------------------------------------------------------------------------


def config(tmp: str, resolvers: bool = False, max_entries: int | None = None) -> str:
    """resolverd's config for this lab: Unbound as the default upstream, the forward zone
    DIRECT straight at the hostile server, the breakout link wan0 with ipsets, holds of 300 s.
    `resolvers`: BREAKOUT_RESOLVER4 as the breakout resolver (chains into policy names are
    finished there: the splice)."""
    extra = f'\n  resolvers: ["{BREAKOUT_RESOLVER4}"]' if resolvers else ""
    if max_entries is not None:
        extra += f"\n  max_entries: {max_entries}"
    return f"""
listen: ["{ROUTER_LAN4}:53", "[{ROUTER_LAN6}]:53"]
upstreams: ["{UNBOUND4}:{UNBOUND_PORT}"]
forward_zones:
  {DIRECT}: ["{HOSTILE4}"]
allow: ["192.0.2.128/25", "2001:db8:c::/64", "127.0.0.0/8"]
state_dir: {tmp}/state
control: {{socket: {tmp}/control.sock}}
breakout:
  mode: kernel
  interface: {WAN_IF}
  gateway4: {BREAKOUT_GW4}
  gateway6: "{BREAKOUT_GW6}"
  table: {TABLE}
  rule_priority: {PRIORITY}
  route_protocol: {PROTOCOL}
  ipset4: {SETS[4]}
  ipset6: {SETS[6]}
  min_hold: 300
  grace: 0{extra}
policy:
  builtin: microsoft365
"""


class Resolverd(Ctl):
    """resolverd in the lab's router with `config`'s config, its files in `tmp`."""

    def __init__(self, lab: Lab, tmp: str, **cfg: Any) -> None:
        self.lab, self.tmp = lab, tmp
        os.makedirs(tmp, exist_ok=True)
        self.cfg = os.path.join(tmp, "resolverd.yaml")
        self.socket = os.path.join(tmp, "control.sock")
        self.journal = os.path.join(tmp, "state", "holds.journal")
        self.proc: subprocess.Popen[str] | None = None
        self.starts = 0
        with open(self.cfg, "w") as fh:
            fh.write(config(tmp, **cfg))

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid  # `ip netns exec` execs: this is resolverd

    def start(self) -> None:
        self.starts += 1
        log = open(os.path.join(self.tmp, f"resolverd{self.starts}.log"), "w")  # noqa: SIM115
        self.proc = self.lab.spawn(
            self.lab.router, sys.executable, "-m", "resolver.daemon", "--config", self.cfg,
            stdout=subprocess.DEVNULL, stderr=log,
        )  # fmt: skip
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"resolverd exited {self.proc.returncode}:\n{self.log()}")
            if os.path.exists(self.socket) and self.ctl("status", check=False).returncode == 0:
                return
            time.sleep(0.05)
        raise RuntimeError(f"resolverd did not come up:\n{self.log()}")

    def kill(self) -> None:
        assert self.proc is not None
        os.kill(self.pid, signal.SIGKILL)
        self.proc.wait(timeout=5)
        if os.path.exists(self.socket):
            os.unlink(self.socket)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=5)

    def log(self) -> str:
        out = []
        for i in range(1, self.starts + 1):
            with open(os.path.join(self.tmp, f"resolverd{i}.log"), errors="replace") as fh:
                out.append(fh.read()[-4000:])
        return "\n".join(out)

    def counters(self) -> dict[str, Any]:
        """status --json's breakout, with its `counters` merged in."""
        breakout = self.status()
        return {**breakout.get("counters", {}), **breakout}

    def rss_bytes(self) -> int:
        with open(f"/proc/{self.pid}/status") as fh:
            for line in fh:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
        raise RuntimeError("no VmRSS")

    def journal_lines(self) -> list[bytes]:
        with open(self.journal, "rb") as fh:
            return fh.read().split(b"\n")


def reset_router(lab: Lab) -> None:
    """What a daemon of this lab leaves behind after it stopped: its table, rules and sets."""
    r = lab.router
    for fam in ("-4", "-6"):
        lab.ip(r, fam, "route", "flush", "table", str(TABLE), check=False)
        for _ in range(5):
            cmd = ["ip", "-n", r, fam, "rule", "del", "pref", str(PRIORITY)]
            if subprocess.run(cmd, capture_output=True).returncode != 0:
                break
    for name in SETS.values():
        lab.run(r, "ipset", "destroy", name, check=False)


# -- what the client and the kernel see --------------------------------------------------------


def ask(lab: Lab, queries: list[dict[str, Any]], ns: str | None = None) -> list[dict[str, Any]]:
    """Ask each query ({server, name, qtype, do, port?}) from the client (or `ns`), in order."""
    res = lab.python(
        lab.client if ns is None else ns, "-m", "tests.netns.hostile", "ask",
        input=json.dumps(queries), timeout=120,
    )  # fmt: skip
    out: list[dict[str, Any]] = json.loads(res.stdout)
    return out


def q(name: str, qtype: str = "A", do: bool = False, server: str = ROUTER_LAN4) -> dict[str, Any]:
    return {"server": server, "name": name, "qtype": qtype, "do": do}


def routed(lab: Lab) -> set[str]:
    """Every host route of ours in the breakout table, as addresses."""
    out: set[str] = set()
    for fam in (4, 6):
        text = lab.ip(lab.router, f"-{fam}", "route", "show", "table", str(TABLE), "proto",
                      str(PROTOCOL), check=False)  # fmt: skip
        out |= {line.split()[0].split("/")[0] for line in text.splitlines() if line.strip()}
    return out


def in_sets(lab: Lab) -> set[str]:
    """Every entry of the two ipsets."""
    out: set[str] = set()
    for name in SETS.values():
        res = lab.run(lab.router, "ipset", "list", name, check=False)
        if res.returncode == 0:
            lines = res.stdout.split("Members:\n", 1)[-1].splitlines()
            out |= {line.split()[0] for line in lines if line.strip()}
    return out


def addresses(reply: dict[str, Any], section: str = "answer") -> list[str]:
    return [v for _o, t, v, _ttl in reply.get(section, []) if t in ("A", "AAAA")]


def memory_high(repo: str) -> int:
    """MemoryHigh= of systemd/resolverd.service, in bytes; RuntimeError when it is not set."""
    path = os.path.join(repo, "systemd", "resolverd.service")
    with open(path) as fh:
        found = re.findall(r"^MemoryHigh=(\d+)([KMGT]?)\s*$", fh.read(), re.MULTILINE)
    if not found:
        raise RuntimeError(f"{path} sets no MemoryHigh= (in bytes, K, M, G or T)")
    value, unit = found[-1]
    scale: int = 1024 ** " KMGT".index(unit or " ")
    return int(value) * scale
