"""Fixtures for the namespace tests: root or a loud failure, one lab per module, clean router.

These tests change routes, rules, sets and links, but only inside namespaces they build
(tests/netns/lab.py) and remove, failures included.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from typing import Any

import pytest

from tests.netns import lab as lab_mod
from tests.netns.driver import DriverProcess
from tests.netns.lab import BREAKOUT_GW4, BREAKOUT_GW6, WAN_IF, Lab
from tests.netns.scenario import PRIORITY, PROTOCOL, TABLE

TOOLS = ("ip", "ipset", "nft")


@pytest.fixture(scope="session", autouse=True)
def _root_and_tools() -> None:
    if os.geteuid() != 0:
        pytest.fail(
            "tests/netns build network namespaces and need root: run them as root "
            "(sudo make test-netns); they never touch the host's own network state",
            pytrace=False,
        )
    missing = [t for t in TOOLS if shutil.which(t) is None]
    if missing:
        pytest.fail(f"tests/netns need {', '.join(missing)}: run make sysdeps", pytrace=False)


@pytest.fixture(scope="module")
def lab() -> Iterator[Lab]:
    with Lab() as built:
        yield built


def breakout_cfg(**kw: Any) -> dict[str, Any]:
    cfg: dict[str, Any] = {
        "mode": "kernel", "interface": WAN_IF, "gateway4": BREAKOUT_GW4, "gateway6": BREAKOUT_GW6,
        "table": TABLE, "rule_priority": PRIORITY, "route_protocol": PROTOCOL,
        "ipset4": "m365-v4", "ipset6": "m365-v6", "min_hold": 300, "grace": 30,
    }  # fmt: skip
    cfg.update(kw)
    return cfg


class Router:
    """The lab's router as a test uses it: start drivers, read its tables, reset it."""

    def __init__(self, lab: Lab, tmp: str) -> None:
        self.lab = lab
        self.tmp = tmp
        self.state_dir = os.path.join(tmp, "state")
        self.drivers: list[DriverProcess] = []
        self._logs = 0

    def driver(self, *, user: str | None = None) -> DriverProcess:
        self._logs += 1
        log = open(os.path.join(self.tmp, f"driver{self._logs}.log"), "w")  # noqa: SIM115
        cmd = [sys.executable, "-m", "tests.netns.driver"]
        if user is not None:
            cmd = ["setpriv", f"--reuid={user}", f"--regid={user}", "--clear-groups", *cmd]
        proc = self.lab.spawn(
            self.lab.router, *cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=log
        )
        d = DriverProcess(proc)
        self.drivers.append(d)
        return d

    def start(
        self, policy: str | None = None, sweep_interval: float = 1.0, **cfg: Any
    ) -> DriverProcess:  # fmt: skip
        d = self.driver()
        d.call(
            "start", breakout=breakout_cfg(**cfg), state_dir=self.state_dir, policy=policy,
            sweep_interval=sweep_interval,
        )  # fmt: skip
        return d

    def table(self, family: int = 4) -> list[str]:
        return self.lab.table(TABLE, family)

    def hosts(self, family: int = 4) -> set[str]:
        """Destinations in the breakout table."""
        return {line.split()[0] for line in self.table(family)}

    def rules(self, family: int = 4) -> list[str]:
        out = self.lab.ip(self.lab.router, f"-{family}", "rule", "show")
        return [line for line in out.splitlines() if f"lookup {TABLE}" in line]

    def ipset(self, name: str) -> str:
        return self.lab.run(self.lab.router, "ipset", "list", name, check=False).stdout

    def log(self) -> str:
        out = []
        for i in range(1, self._logs + 1):
            with open(os.path.join(self.tmp, f"driver{i}.log")) as fh:
                out.append(fh.read())
        return "\n".join(out)

    def reset(self) -> None:
        for d in self.drivers:
            if d.proc.poll() is None:
                d.kill()
        lab, r = self.lab, self.lab.router
        self.lab.kill_ns_processes(r)
        for fam in ("-4", "-6"):
            lab.ip(r, fam, "route", "flush", "table", str(TABLE), check=False)
            for _ in range(5):  # every rule at our priority, however many a test left
                cmd = ["ip", "-n", r, fam, "rule", "del", "pref", str(PRIORITY)]
                if subprocess.run(cmd, capture_output=True).returncode != 0:
                    break
        for name in ("m365-v4", "m365-v6"):
            lab.run(r, "ipset", "destroy", name, check=False)
        lab.run(r, "nft", "flush", "ruleset", check=False)
        lab.ip(r, "link", "set", WAN_IF, "up", check=False)


@pytest.fixture
def router(lab: Lab, tmp_path: Any) -> Iterator[Router]:
    rt = Router(lab, str(tmp_path))
    rt.reset()
    try:
        yield rt
    finally:
        rt.reset()


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    left = lab_mod.leftovers()
    if left:  # a bug in teardown: say so, and still remove them
        print(f"\nnetns: removing leftover namespaces {left}", file=sys.stderr)
        for ns in left:
            subprocess.run(["ip", "netns", "del", ns], capture_output=True)
