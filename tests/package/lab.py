"""The package tests' helpers: two builds of the .deb, and a namespace to install it in.

`build_debs` builds the package as `make deb` does, and repacks it as a newer Debian revision
to upgrade to (the real version is never bumped). `PackageLab` is one
network namespace with a veth pair (wan0, with a documentation-range address, and its peer);
everything that may touch routes, rules or sets runs inside it: the daemon, and apt-get,
whose prerm runs ``resolverd --cleanup`` on removal. On close it kills its processes, purges
the package if it is still there (inside the namespace), removes what a failed purge left,
the system user if this lab created it, and the namespace.

While a lab exists, /usr/sbin/policy-rc.d denies the service actions of maintainer scripts
(deb-systemd-invoke reads it): on a machine booted with systemd the postinst would otherwise
start resolverd through PID 1, in the host's namespace, with the lab's config. Whatever the
machine had there is put back on close. `daemons_outside` lists any resolverd that runs
outside the namespace anyway.
"""

from __future__ import annotations

import itertools
import json
import os
import pwd
import shutil
import signal
import subprocess
import sys
import time
from contextlib import suppress
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tests.nslab import NamespaceLab

REPO = Path(__file__).resolve().parents[2]
PACKAGE = "resolverd"
USER = "resolverd"
CONF = Path("/etc/resolverd/resolverd.yaml")
PRISTINE = Path("/usr/share/resolverd/resolverd.yaml")
UNIT = Path("/usr/lib/systemd/system/resolverd.service")
WANTS = Path("/etc/systemd/system/multi-user.target.wants/resolverd.service")
SOCKET = "/run/resolverd/control.sock"
# What the package, the unit (StateDirectory=, RuntimeDirectory=) or the postinst create.
CREATED = ("/etc/resolverd", "/var/lib/resolverd", "/run/resolverd", "/opt/venvs/resolverd")

# The namespace: wan0 is the breakout link, its gateway an on-link address nobody answers.
WAN_IF, WAN_PEER, WAN_ADDR, WAN_GW = "wan0", "wan0p", "203.0.113.2/24", "203.0.113.1"
TABLE, PROTOCOL, IPSET4 = 365, 245, "rsvpkg-v4"
UPSTREAM = "127.0.0.1:5300"
NAME, ADDRESS = "outlook.office365.com", "198.51.100.10"

# The edit an administrator makes to /etc/resolverd/resolverd.yaml, for this namespace. The
# table, rule priority and route protocol stay at their defaults (365, 1000, 245).
TEST_CONFIG = f"""\
# Edited by tests/package for its namespace.
listen: ["127.0.0.1:53"]
upstreams: ["{UPSTREAM}"]
allow: ["127.0.0.0/8"]
breakout:
  mode: kernel
  interface: {WAN_IF}
  gateway4: {WAN_GW}
  ipset4: {IPSET4}
"""
ZONE = f"records:\n  {NAME}:\n    - {{type: A, value: {ADDRESS}, ttl: 60}}\n"

POLICY_RC = Path("/usr/sbin/policy-rc.d")
DENY_SERVICES = """#!/bin/sh
# Written by resolverd's tests/package while a test runs: no service starts or stops.
exit 101
"""

APT_ENV = {
    "DEBIAN_FRONTEND": "noninteractive",
    "LC_ALL": "C.UTF-8",
    "PYTHONDONTWRITEBYTECODE": "1",
}
APT = ("apt-get", "-y", "-q", "-o", "Dpkg::Use-Pty=0", "-o", "DPkg::Lock::Timeout=300")

_counter = itertools.count(1)


class LabError(RuntimeError):
    pass


def run(
    *cmd: str, check: bool = True, timeout: float = 120, **kw: Any
) -> subprocess.CompletedProcess[str]:
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=False, **kw)
    if check and res.returncode != 0:
        raise LabError(f"{' '.join(cmd)} exited {res.returncode}:\n{res.stdout}{res.stderr}")
    return res


def package_state() -> tuple[str, str]:
    """(dpkg status, version): ("not-installed", "") when dpkg does not know the package."""
    res = run("dpkg-query", "-W", "-f=${db:Status-Status} ${Version}", PACKAGE, check=False)
    if res.returncode != 0:
        return ("not-installed", "")
    status, _, version = res.stdout.partition(" ")
    return (status, version)


# --- the two builds -------------------------------------------------------------------------


@dataclass(frozen=True)
class Debs:
    v1: Path
    v2: Path
    v1_version: str
    v2_version: str


def copy_tree(dst: Path) -> None:
    """The files git tracks or would track, as `make deb` stages them."""
    res = run(
        "git", "-C", str(REPO), "ls-files", "-z", "--cached", "--others", "--exclude-standard"
    )
    for rel in filter(None, res.stdout.split("\0")):
        src = REPO / rel
        if not src.exists() and not src.is_symlink():
            continue  # deleted in the work tree
        target = dst / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(src, target, follow_symlinks=False)


def newer_revision(deb: Path, version: str, out: Path) -> Path:
    """`deb` as a newer Debian revision: the same files, conffiles and maintainer scripts,
    repacked with `version` in its control file (dpkg-deb -R, then -b). That is what an
    upgrade looks at; building the tree a second time would only compile it again."""
    tree = out / "tree"
    run("dpkg-deb", "-R", str(deb), str(tree))
    control = tree / "DEBIAN" / "control"
    lines = control.read_text().splitlines()
    assert any(line.startswith("Version: ") for line in lines), lines
    lines = [f"Version: {version}" if x.startswith("Version: ") else x for x in lines]
    control.write_text("\n".join(lines) + "\n")
    arch = run("dpkg-deb", "-f", str(deb), "Architecture").stdout.strip()
    target = out / f"{PACKAGE}_{version}_{arch}.deb"
    run("dpkg-deb", "-b", str(tree), str(target))
    shutil.rmtree(tree)
    return target


def build_debs(tmp: Path) -> Debs:
    """Build the package as `make deb` does, and a newer revision of it to upgrade to."""
    v1_dir, v2_dir = tmp / "v1", tmp / "v2"
    v1_version = run("dpkg-parsechangelog", "-SVersion", cwd=REPO).stdout.strip()
    v2_version = f"{v1_version}+test2"
    env = {**os.environ, "LC_ALL": "C.UTF-8"}
    log = tmp / "build-v1.log"
    with log.open("w") as fh:  # make deb itself (lintian included), into a temporary DIST
        code = subprocess.run(
            ["make", "-C", str(REPO), "--no-print-directory", "deb", f"DIST={v1_dir}"],
            stdout=fh, stderr=subprocess.STDOUT, env=env, timeout=900, check=False,
        ).returncode  # fmt: skip
    if code != 0:
        raise LabError(f"building the package failed ({code}):\n{log.read_text()[-6000:]}")
    v1 = _one_deb(v1_dir)
    v2_dir.mkdir()
    v2 = newer_revision(v1, v2_version, v2_dir)
    return Debs(v1=v1, v2=v2, v1_version=v1_version, v2_version=v2_version)


def _one_deb(directory: Path) -> Path:
    debs = sorted(directory.glob("resolverd_*.deb"))
    if len(debs) != 1:
        raise LabError(f"expected one resolverd_*.deb in {directory}, found {debs}")
    return debs[0]


@dataclass(frozen=True)
class Daemon:
    proc: subprocess.Popen[bytes]
    log: Path

    def output(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""


# --- the namespace --------------------------------------------------------------------------


class PackageLab(NamespaceLab):
    """One namespace to install, run and purge the package in."""

    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.ns = f"rsvpkg-{os.getpid()}-{next(_counter)}"
        self.procs: list[subprocess.Popen[bytes]] = []
        self._ns_created = False
        self._daemons = 0
        self.user_existed = _user_exists()
        self._policy_rc: tuple[bytes, int] | None = None  # the machine's own, put back on close
        self._denying = False

    def _build(self) -> None:
        self._deny_services()
        run("ip", "netns", "add", self.ns)
        self._ns_created = True
        self.ip("link", "set", "lo", "up")
        self.ip("link", "add", WAN_IF, "type", "veth", "peer", "name", WAN_PEER)
        self.ip("addr", "add", WAN_ADDR, "dev", WAN_IF)
        self.ip("link", "set", WAN_IF, "up")
        self.ip("link", "set", WAN_PEER, "up")

    def _deny_services(self) -> None:
        if POLICY_RC.exists() and POLICY_RC.read_text(errors="replace") != DENY_SERVICES:
            self._policy_rc = POLICY_RC.read_bytes(), POLICY_RC.stat().st_mode
        self._denying = True
        POLICY_RC.write_text(DENY_SERVICES)
        POLICY_RC.chmod(0o755)

    def _allow_services(self) -> None:
        if not self._denying:
            return
        if self._policy_rc is None:
            POLICY_RC.unlink(missing_ok=True)
        else:
            POLICY_RC.write_bytes(self._policy_rc[0])
            POLICY_RC.chmod(self._policy_rc[1])
        self._denying = False

    def daemons_outside(self) -> list[int]:
        """The pids of resolverd processes outside the lab's namespace (a service start by
        a maintainer script would be one)."""
        st = os.stat(f"/run/netns/{self.ns}")
        lab = st.st_dev, st.st_ino
        found = []
        for proc in Path("/proc").iterdir():
            if not proc.name.isdigit():
                continue
            try:
                if b"/usr/bin/resolverd" not in (proc / "cmdline").read_bytes().split(b"\0"):
                    continue
                net = os.stat(proc / "ns" / "net")
            except (FileNotFoundError, ProcessLookupError):  # it exited meanwhile
                continue
            if (net.st_dev, net.st_ino) != lab:
                found.append(int(proc.name))
        return found

    # -- running things in the namespace

    def run(
        self, *cmd: str, check: bool = True, timeout: float = 120, **kw: Any
    ) -> subprocess.CompletedProcess[str]:
        return run("ip", "netns", "exec", self.ns, *cmd, check=check, timeout=timeout, **kw)

    def ip(self, *args: str, check: bool = True) -> str:
        return run("ip", "-n", self.ns, *args, check=check).stdout

    def apt(self, *args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
        """apt-get inside the namespace: a removal's `resolverd --cleanup` acts on it only."""
        env = {**os.environ, **APT_ENV}
        return self.run(*APT, *args, check=False, timeout=timeout, env=env)

    def apt_ok(self, *args: str) -> str:
        res = self.apt(*args)
        out = res.stdout + res.stderr
        if res.returncode != 0:
            raise LabError(f"apt-get {' '.join(args)} exited {res.returncode}:\n{out}")
        return out

    def spawn(self, *cmd: str, log: str, **kw: Any) -> subprocess.Popen[bytes]:
        with open(self.tmp / log, "wb") as fh:
            proc = subprocess.Popen(
                ["ip", "netns", "exec", self.ns, *cmd],
                stdin=subprocess.DEVNULL, stdout=fh, stderr=subprocess.STDOUT, **kw,
            )  # fmt: skip
        self.procs.append(proc)
        return proc

    def log(self, name: str) -> str:
        path = self.tmp / name
        return path.read_text(errors="replace") if path.exists() else ""

    # -- the kernel state resolverd owns

    def owned_routes(self) -> list[str]:
        """Every route in resolverd's table, v4 and v6 (the test adds none of its own)."""
        lines = []
        for family in ("-4", "-6"):
            out = self.ip(family, "route", "show", "table", str(TABLE), check=False)
            lines += [line.strip() for line in out.splitlines() if line.strip()]
        return lines

    def owned_rules(self) -> list[str]:
        lines = []
        for family in ("-4", "-6"):
            out = self.ip(family, "rule", "show")
            lines += [line.strip() for line in out.splitlines() if f"lookup {TABLE}" in line]
        return lines

    def set_members(self, name: str = IPSET4) -> list[str]:
        out = self.run("ipset", "list", name).stdout
        members = out.split("Members:", 1)[1] if "Members:" in out else ""
        return [line.split()[0] for line in members.splitlines() if line.strip()]

    # -- the fake upstream and the daemon

    def start_upstream(self) -> None:
        zone = self.tmp / "zone.yaml"
        zone.write_text(ZONE)
        env = {**os.environ, "PYTHONPATH": str(REPO), "PYTHONDONTWRITEBYTECODE": "1"}
        proc = self.spawn(
            sys.executable, "-m", "tests.fakeupstream", "--listen", UPSTREAM, "--zone", str(zone),
            log="upstream.log", cwd=REPO, env=env,
        )  # fmt: skip
        host, port = UPSTREAM.split(":")
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise LabError(f"the fake upstream exited:\n{self.log('upstream.log')}")
            if self.dig(NAME, server=host, port=port) == [ADDRESS]:
                return
            time.sleep(0.2)
        raise LabError(f"the fake upstream does not answer:\n{self.log('upstream.log')}")

    def dig(self, name: str, server: str = "127.0.0.1", port: str = "53") -> list[str]:
        res = self.run(
            "dig", "+short", "+time=2", "+tries=1", "-p", port, f"@{server}", name, "A",
            check=False, timeout=30,
        )  # fmt: skip
        return res.stdout.split() if res.returncode == 0 else []

    def start_daemon(self) -> Daemon:
        """/usr/bin/resolverd as user resolverd with the unit's two capabilities only, after
        creating what the unit's StateDirectory= and RuntimeDirectory= would."""
        entry = pwd.getpwnam(USER)
        for path in ("/var/lib/resolverd", "/run/resolverd"):
            os.makedirs(path, mode=0o750, exist_ok=True)
            os.chown(path, entry.pw_uid, entry.pw_gid)
            os.chmod(path, 0o750)
        caps = "+net_admin,+net_bind_service"
        self._daemons += 1
        log = f"daemon{self._daemons}.log"
        proc = self.spawn(
            "setpriv", f"--reuid={USER}", f"--regid={USER}", "--init-groups",
            f"--inh-caps={caps}", f"--ambient-caps={caps}",
            "/usr/bin/resolverd", "--config", str(CONF),
            log=log,
        )  # fmt: skip
        daemon = Daemon(proc, self.tmp / log)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise LabError(f"resolverd exited {proc.returncode}:\n{daemon.output()}")
            if self.ctl("status", check=False).returncode == 0:
                return daemon
            time.sleep(0.2)
        raise LabError(f"resolverd did not come up:\n{daemon.output()}")

    def ctl(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        return run("/usr/bin/resolverctl", "--socket", SOCKET, *args, check=check, timeout=30)

    def status(self) -> dict[str, Any]:
        data: dict[str, Any] = json.loads(self.ctl("status", "--json").stdout)
        return data

    def stop(self, daemon: Daemon) -> int:
        daemon.proc.send_signal(signal.SIGTERM)
        try:
            return daemon.proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            daemon.proc.kill()
            daemon.proc.wait(timeout=5)
            raise LabError(f"resolverd did not stop on SIGTERM:\n{daemon.output()}") from None

    # -- cleaning up, failures included

    def close(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                proc.kill()
            with suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=5)
        if self._ns_created:
            self._kill_ns_processes()
        try:
            self._purge()
        finally:
            if self._ns_created:
                self._kill_ns_processes()
                run("ip", "netns", "del", self.ns, check=False)
                self._ns_created = False
            if not self.user_existed and _user_exists():
                run("userdel", USER, check=False)
                run("groupdel", USER, check=False)
            self._allow_services()

    def _kill_ns_processes(self) -> None:
        res = run("ip", "netns", "pids", self.ns, check=False)
        for pid in res.stdout.split():
            with suppress(ProcessLookupError, ValueError):
                os.kill(int(pid), signal.SIGKILL)

    def _purge(self) -> None:
        """Purge the package if a test left it installed; remove what a failed purge left."""
        # Without the namespace no removal may run: its prerm would act on the host.
        if package_state()[0] != "not-installed" and self._ns_created:
            res = self.apt("purge", PACKAGE)
            if res.returncode != 0:
                env = {**os.environ, **APT_ENV}
                self.run("dpkg", "--purge", "--force-all", PACKAGE, check=False, env=env)
        if package_state()[0] == "not-installed":
            for path in CREATED:
                shutil.rmtree(path, ignore_errors=True)
            with suppress(FileNotFoundError):
                WANTS.unlink()
            for path in ("/etc/resolverd/resolverd.yaml", "/etc/resolverd"):
                run("dpkg-statoverride", "--quiet", "--remove", path, check=False)


def _user_exists() -> bool:
    try:
        pwd.getpwnam(USER)
    except KeyError:
        return False
    return True
