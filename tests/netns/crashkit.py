"""Helpers for the crash and fault tests (test_crash.py, test_repair.py, test_state_dir.py).

`Resolverd` is the real daemon in the lab's router namespace with a config of the test's own
(table, port, sets, holds; its state directory optionally on a tmpfs of its own, mounted in a
private mount namespace that dies with it). `Upstream` is the fake upstream serving a zone of
fresh Microsoft 365 names (`zone`). `anyip` makes the breakout and tunnel servers own whole
prefixes, so that a connection to any address of a pool shows which path it took. `agent`
starts one of the programs of crashagents.py in a namespace and `Lines` reads its JSON lines
as they come; `ask` resolves names from the client.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

from tests.netns.lab import (
    BREAKOUT_GW4,
    BREAKOUT_GW6,
    ROUTER_LAN4,
    WAN_IF,
    Lab,
)
from tests.netns.scenario import Ctl

UPSTREAM_PORT = 5300
HOLD_MARGIN = 0.3  # seconds before a hold's end that the prober stops expecting its route


# -- the zone and the servers' address pools ---------------------------------------------------


def v4_name(label: str, i: int) -> str:
    return f"v4-{i}.{label}.crash.office365.com"


def v6_name(label: str, i: int) -> str:
    return f"v6-{i}.{label}.crash.office365.com"


def zone(label: str, v4: Sequence[str], v6_prefix: str, n6: int, ttl: int = 1) -> dict[str, Any]:
    """Fresh names for LABEL: v4-I (one A from `v4`) and v6-I (one AAAA, `v6_prefix` + I+1)."""
    out: dict[str, Any] = {}
    for i, address in enumerate(v4):
        out[v4_name(label, i)] = [{"type": "A", "value": address, "ttl": ttl}]
    for i in range(n6):
        out[v6_name(label, i)] = [{"type": "AAAA", "value": f"{v6_prefix}{i + 1:x}", "ttl": ttl}]
    return out


def anyip(lab: Lab, prefixes: Sequence[str]) -> None:
    """The breakout and the tunnel server both own every address of `prefixes` (local routes
    on their loopback): each answers a connection to any of them with its identity."""
    for ns in (lab.breakout, lab.tunnel):
        for prefix in prefixes:
            family = "-6" if ":" in prefix else "-4"
            lab.ip(ns, family, "route", "replace", "local", prefix, "dev", "lo")


class Upstream:
    """The fake upstream in the router namespace, serving `records`."""

    def __init__(self, lab: Lab, tmp: str, records: dict[str, Any]) -> None:
        path = os.path.join(tmp, "crash-zone.json")
        with open(path, "w") as fh:
            json.dump({"records": records}, fh)  # JSON is YAML
        self.proc = lab.spawn(
            lab.router, sys.executable, "-m", "tests.fakeupstream", "--listen",
            f"127.0.0.1:{UPSTREAM_PORT}", "--zone", path,
        )  # fmt: skip
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if "listening" not in line:
            raise RuntimeError(f"fake upstream did not start: {line!r}")


# -- the daemon ----------------------------------------------------------------------------------


class Resolverd(Ctl):
    """resolverd in the lab's router namespace, with a config of its own (see the module doc).

    `tmpfs` (e.g. "size=256k" or "ro,size=256k"): the state directory is a tmpfs mounted in a
    private mount namespace of the daemon's own, made at each start; the test reaches it at
    `state_path()` (through /proc/PID/root) and remounts it with `remount_state`.
    """

    def __init__(
        self, lab: Lab, tmp: str, name: str, *, port: int = 53, table: int = 365,
        priority: int = 1000, protocol: int = 245, ipsets: bool = True,
        hold: tuple[int, int] = (3, 0), ack_timeout: float = 1.0, tmpfs: str | None = None,
    ) -> None:  # fmt: skip
        self.lab, self.name, self.port = lab, name, port
        self.table, self.protocol = table, protocol
        self.dir = os.path.join(tmp, name)
        os.makedirs(self.dir, exist_ok=True)
        self.state_dir = os.path.join(self.dir, "state")
        os.makedirs(self.state_dir, exist_ok=True)
        self.socket = os.path.join(self.dir, "control.sock")
        self.cfg = os.path.join(self.dir, "resolverd.yaml")
        self.ipset4 = f"crash-{name}-v4" if ipsets else None
        self.ipset6 = f"crash-{name}-v6" if ipsets else None
        self.tmpfs = tmpfs
        self.proc: subprocess.Popen[str] | None = None
        self.starts = 0
        sets = f"ipset4: {self.ipset4}\n  ipset6: {self.ipset6}\n  " if ipsets else ""
        with open(self.cfg, "w") as fh:
            fh.write(f"""
listen: ["{ROUTER_LAN4}:{port}"]
upstreams: ["127.0.0.1:{UPSTREAM_PORT}"]
allow: ["192.0.2.128/25", "2001:db8:c::/64", "127.0.0.0/8"]
state_dir: {self.state_dir}
control: {{socket: {self.socket}}}
breakout:
  mode: kernel
  interface: {WAN_IF}
  gateway4: {BREAKOUT_GW4}
  gateway6: "{BREAKOUT_GW6}"
  table: {table}
  rule_priority: {priority}
  route_protocol: {protocol}
  {sets}min_hold: {hold[0]}
  grace: {hold[1]}
  ack_timeout: {ack_timeout}
policy:
  builtin: microsoft365
  include_optional: true  # row 14's prefixes: the config's routes must survive a crash too
""")

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid  # `ip netns exec`, unshare and sh all exec: this is resolverd

    def log_path(self, start: int) -> str:
        return os.path.join(self.dir, f"resolverd{start}.log")

    def start(self) -> float:
        """Start it and wait until its control socket answers; the seconds that took."""
        self.starts += 1
        t0 = time.monotonic()
        log = open(self.log_path(self.starts), "w")  # noqa: SIM115
        cmd = [sys.executable, "-m", "resolver.daemon", "--config", self.cfg]
        if self.tmpfs is not None:
            script = 'mount -t tmpfs -o "$1" tmpfs "$2" && shift 2 && exec "$@"'
            cmd = ["unshare", "-m", "--propagation", "private", "sh", "-c", script, "sh",
                   self.tmpfs, self.state_dir, *cmd]  # fmt: skip
        self.proc = self.lab.spawn(
            self.lab.router, *cmd, stdout=subprocess.DEVNULL, stderr=log
        )  # fmt: skip
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"resolverd exited {self.proc.returncode}:\n{self.log()}")
            if os.path.exists(self.socket) and self.ctl("status", check=False).returncode == 0:
                return time.monotonic() - t0
            time.sleep(0.05)
        raise RuntimeError(f"resolverd did not come up:\n{self.log()}")

    def kill(self) -> float:
        """SIGKILL; returns the moment it was sent (time.monotonic())."""
        assert self.proc is not None
        at = time.monotonic()
        os.kill(self.proc.pid, signal.SIGKILL)
        self.proc.wait(timeout=5)
        if os.path.exists(self.socket):
            os.unlink(self.socket)
        return at

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            self.proc.wait(timeout=10)

    def state_path(self, name: str = "") -> str:
        """A path in the state directory as the daemon sees it (its tmpfs, if it has one)."""
        base = f"/proc/{self.pid}/root{self.state_dir}" if self.tmpfs else self.state_dir
        return os.path.join(base, name) if name else base

    def remount_state(self, options: str) -> None:
        subprocess.run(
            ["nsenter", "-t", str(self.pid), "-m", "mount", "-o", f"remount,{options}",
             self.state_dir], check=True, capture_output=True, timeout=10,
        )  # fmt: skip

    def log(self, start: int | None = None) -> str:
        starts = range(1, self.starts + 1) if start is None else (start,)
        out = []
        for i in starts:
            with open(self.log_path(i)) as fh:
                out.append(fh.read())
        return "\n".join(out)

    # the kernel's side of it
    def hosts(self, family: int) -> set[str]:
        """Host routes of ours in its table."""
        out = self.lab.ip(self.lab.router, f"-{family}", "route", "show", "table",
                          str(self.table), "proto", str(self.protocol), check=False)  # fmt: skip
        plen = "/32" if family == 4 else "/128"
        return {line.split()[0].removesuffix(plen) for line in out.splitlines() if line.strip()}

    def set_entries(self, family: int) -> set[str]:
        name = self.ipset4 if family == 4 else self.ipset6
        if name is None:
            return set()
        res = self.lab.run(self.lab.router, "ipset", "list", name, check=False)
        lines = res.stdout.split("Members:\n", 1)[-1].splitlines() if res.returncode == 0 else []
        return {line.split()[0] for line in lines if line.strip()}


# -- reading agents ------------------------------------------------------------------------------


class Lines:
    """The JSON lines an agent prints, collected by a thread as they come."""

    def __init__(self, proc: subprocess.Popen[str]) -> None:
        self.proc = proc
        self.items: list[dict[str, Any]] = []
        self._cond = threading.Condition()
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            if not line.startswith("{"):
                continue
            item = json.loads(line)
            with self._cond:
                self.items.append(item)
                self._cond.notify_all()
        with self._cond:
            self._cond.notify_all()

    def wait(self, pred: Callable[[dict[str, Any]], bool], after: int = 0,
             timeout: float = 10.0) -> dict[str, Any] | None:  # fmt: skip
        """The first item from index `after` on that `pred` accepts, waiting for it."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                for item in self.items[after:]:
                    if pred(item):
                        return item
                after = len(self.items)
                left = deadline - time.monotonic()
                if left <= 0 or (self.proc.poll() is not None and not self._thread.is_alive()):
                    return None
                self._cond.wait(left)

    def finish(self, timeout: float = 10.0) -> list[dict[str, Any]]:
        """Close the agent's stdin (it stops), wait for its last lines."""
        if self.proc.stdin is not None:
            self.proc.stdin.close()
        self.proc.wait(timeout=timeout)
        self._thread.join(timeout)
        return list(self.items)


def ask(lab: Lab, port: int, names: Sequence[str], qtype: str = "A") -> set[str]:
    """Resolve `names` from the client (the daemon on ROUTER_LAN4:`port`): every address."""
    res = lab.python(lab.client, "-m", "tests.netns.crashagents", "ask", ROUTER_LAN4, str(port),
                     qtype, *names)  # fmt: skip
    answers: dict[str, list[str]] = json.loads(res.stdout)
    return {a for addresses in answers.values() for a in addresses}


def agent(lab: Lab, ns: str, *args: str) -> Lines:
    proc = lab.spawn(ns, sys.executable, "-m", "tests.netns.crashagents", *args,
                     stdin=subprocess.PIPE)  # fmt: skip
    return Lines(proc)
