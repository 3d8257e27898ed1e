"""What the DNS benchmarks, the soak and the profiler share: a namespace lab, the processes in
it, query files, dnsperf, and the daemon's external interface (config file, resolverctl).

Nothing here imports the daemon: resolverd runs as ``python -m resolver.daemon --config FILE``
(or under tests/bench/profiling.py's wrapper), is found ready through ``resolverctl status``,
and is inspected through ``resolverctl``, /proc and the kernel (``ip``, ``ipset``). So this
keeps working while the internals change.

The lab (root; everything in namespaces unique to this run, removed on exit, failure included;
the processes inside a namespace are killed before it is deleted)::

    client (C) eth0 --- lan0 router (R) wan0 --- eth0 upstream (U)
    192.0.2.130/25       192.0.2.129/25  192.0.2.2/25    192.0.2.1/25
    (+ .131-.146 for     2001:db8:c::1   2001:db8:b::2   2001:db8:b::1
     extra clients)

R runs resolverd (kernel mode: routes through wan0 via 192.0.2.1 / 2001:db8:b::1, table 365,
ipsets m365-v4/m365-v6) and the dnsmasq it is compared with (ipsets dm-v4/dm-v6 for the same
domains). U runs the upstream: a dnsmasq answering from a generated hosts file, shared by
both forwarders. dnsperf runs in C, as a LAN client would.
"""

from __future__ import annotations

import ipaddress
import json
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

from tests.nslab import NamespaceLab

ROOT = Path(__file__).resolve().parents[2]
RESULTS = ROOT / "tests" / "bench" / "results"

# Addressing: documentation ranges only. Answers use 203.0.113.0/24, 198.51.100.0/24 and
# 2001:db8:1::/48, none of them connected in the lab (so resolverd may route them).
CLIENT4, ROUTER_LAN4, LAN_NET4 = "192.0.2.130", "192.0.2.129", "192.0.2.128/25"
CLIENT6, ROUTER_LAN6, LAN_NET6 = "2001:db8:c::2", "2001:db8:c::1", "2001:db8:c::/64"
ROUTER_WAN4, UPSTREAM4 = "192.0.2.2", "192.0.2.1"
ROUTER_WAN6, UPSTREAM6 = "2001:db8:b::2", "2001:db8:b::1"
EXTRA_CLIENTS = tuple(f"192.0.2.{i}" for i in range(131, 147))  # 16 more LAN clients
RESOLVERD_PORT = 53
DNSMASQ_PORT = 5300
IPSETS = ("m365-v4", "m365-v6")  # resolverd's (it creates them)
DM_IPSETS = ("dm-v4", "dm-v6")  # dnsmasq's (created here: dnsmasq does not create sets)
TABLE, PROTO = 365, 245

# Names. Tagged ones sit under the built-in policy's wildcards of required rows, routed at the
# shipped defaults (checked with `resolverctl explain` before measuring); dnsmasq's --ipset
# covers the same domains.
TAGGED_SUFFIXES = ("office365.com", "manage.office.com", "aria.microsoft.com", "onmicrosoft.com")
DNSMASQ_IPSET_DOMAINS = TAGGED_SUFFIXES
UNTAGGED_SUFFIXES = ("example.com", "example.net", "example.org", "bench.example")


class BenchError(RuntimeError):
    """The harness could not do its job (a tool is missing, a process did not come up)."""


def require_tools(*tools: str) -> None:
    """Fail (never skip) when the benchmark cannot run here."""
    problems = [f"{t} is not installed (run `make sysdeps` as root)" for t in tools if not which(t)]
    if os.geteuid() != 0:
        problems.append("the benchmarks build network namespaces: run them as root")
    if problems:
        raise BenchError("; ".join(problems))


def which(tool: str) -> str | None:
    return shutil.which(tool) or shutil.which(tool, path="/usr/sbin:/sbin:/usr/bin:/bin")


def resolverctl_argv() -> list[str]:
    script = Path(sys.executable).parent / "resolverctl"
    return [str(script)] if script.exists() else [sys.executable, "-m", "resolver.ctl.main"]


def now_utc() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


def code_version() -> dict[str, Any]:
    """The commit measured, and the daemon's files that differ from it (others edit the tree
    while benchmarks run)."""

    def git(*args: str) -> str:
        res = subprocess.run(["git", "-C", str(ROOT), *args], capture_output=True, text=True)
        return res.stdout.strip() if res.returncode == 0 else ""

    commit = git("rev-parse", "HEAD")
    if not commit:  # an exported tree (git archive) may carry its commit in .commit
        marker = ROOT / ".commit"
        commit = marker.read_text().strip() if marker.exists() else "unknown"
    dirty = git("status", "--porcelain", "--", "resolver", "policy").splitlines()
    return {"commit": commit, "uncommitted": dirty}


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(ROOT) + (os.pathsep + env["PYTHONPATH"] if "PYTHONPATH" in env else "")
    env["PYTHONDONTWRITEBYTECODE"] = "1"
    return env


# -- the lab ------------------------------------------------------------------------------------

_STALE = re.compile(r"^r365bench-(\d+)-")


class Lab(NamespaceLab):
    """Three namespaces, their links, and every process started in them."""

    def __init__(self, tmp: Path, tag: str = "b") -> None:
        self.tmp = tmp
        self.prefix = f"r365bench-{os.getpid()}-{tag}-"
        self.client, self.router, self.upstream = (self.prefix + s for s in "cru")
        self.procs: list[tuple[subprocess.Popen[bytes], TextIO]] = []
        self._created: list[str] = []

    # running things
    def run(
        self, ns: str, *cmd: str, check: bool = True, timeout: float = 60, input: str | None = None
    ) -> subprocess.CompletedProcess[str]:
        res = subprocess.run(
            ["ip", "netns", "exec", ns, *cmd],
            capture_output=True, text=True, timeout=timeout, input=input, cwd=ROOT, env=_env(),
        )  # fmt: skip
        if check and res.returncode != 0:
            raise BenchError(f"[{ns}] {' '.join(cmd)}: exit {res.returncode}: {res.stderr.strip()}")
        return res

    def ip(self, ns: str, *args: str) -> str:
        res = subprocess.run(["ip", "-n", ns, *args], capture_output=True, text=True, timeout=60)
        if res.returncode != 0:
            raise BenchError(f"[{ns}] ip {' '.join(args)}: {res.stderr.strip()}")
        return res.stdout

    def spawn(self, ns: str, argv: Sequence[str], log: str) -> subprocess.Popen[bytes]:
        """Start argv in ns (``ip netns exec`` execs it: the pid is the program's own)."""
        out = (self.tmp / log).open("w")
        proc = subprocess.Popen(
            ["ip", "netns", "exec", ns, *argv],
            stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, cwd=ROOT, env=_env(),
        )  # fmt: skip
        self.procs.append((proc, out))
        return proc

    def log_tail(self, log: str, lines: int = 15) -> str:
        path = self.tmp / log
        if not path.exists():
            return "(no log)"
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])

    # building
    def _build(self) -> None:
        if os.geteuid() != 0:
            raise BenchError("the benchmark lab needs root (ip netns add)")
        _remove_stale_namespaces()
        for ns in (self.client, self.router, self.upstream):
            subprocess.run(["ip", "netns", "add", ns], check=True, capture_output=True)
            self._created.append(ns)
            # Before any link exists: no duplicate address detection, no reverse-path drops.
            self.run(
                ns, "sysctl", "-qw", "net.ipv6.conf.all.accept_dad=0",
                "net.ipv6.conf.default.accept_dad=0", "net.ipv4.conf.all.rp_filter=0",
                "net.ipv4.conf.default.rp_filter=0",
            )  # fmt: skip
            self.ip(ns, "link", "set", "lo", "up")
        c, r, u = self.client, self.router, self.upstream
        self.run(r, "sysctl", "-qw", "net.ipv4.ip_forward=1", "net.ipv6.conf.all.forwarding=1")
        self.ip(r, "link", "add", "lan0", "type", "veth", "peer", "name", "eth0", "netns", c)
        self.ip(r, "link", "add", "wan0", "type", "veth", "peer", "name", "eth0", "netns", u)
        for ns, ifname, a4, a6 in (
            (r, "lan0", f"{ROUTER_LAN4}/25", f"{ROUTER_LAN6}/64"),
            (r, "wan0", f"{ROUTER_WAN4}/25", f"{ROUTER_WAN6}/64"),
            (c, "eth0", f"{CLIENT4}/25", f"{CLIENT6}/64"),
            (u, "eth0", f"{UPSTREAM4}/25", f"{UPSTREAM6}/64"),
        ):
            self.ip(ns, "addr", "add", a4, "dev", ifname)
            self.ip(ns, "-6", "addr", "add", a6, "dev", ifname, "nodad")
            self.ip(ns, "link", "set", ifname, "up")
        for extra in EXTRA_CLIENTS:
            self.ip(c, "addr", "add", f"{extra}/25", "dev", "eth0")
        self.ip(r, "route", "add", "default", "via", UPSTREAM4)
        self.ip(r, "-6", "route", "add", "default", "via", UPSTREAM6)
        self.ip(c, "route", "add", "default", "via", ROUTER_LAN4)
        self.ip(c, "-6", "route", "add", "default", "via", ROUTER_LAN6)
        self.ip(u, "route", "add", LAN_NET4, "via", ROUTER_WAN4)
        self.ip(u, "-6", "route", "add", LAN_NET6, "via", ROUTER_WAN6)
        for name in DM_IPSETS:
            family = "inet6" if name.endswith("6") else "inet"
            self.run(r, "ipset", "create", name, "hash:ip", "family", family, "maxelem", "1000000")
        self.warm()

    def warm(self) -> None:
        """A packet each way on both links, until the neighbour entries exist (DESIGN's pitfall:
        the first packet must not wait for neighbour discovery)."""
        pairs = {
            self.client: (ROUTER_LAN4, ROUTER_LAN6),
            self.router: (CLIENT4, CLIENT6, UPSTREAM4, UPSTREAM6),
            self.upstream: (ROUTER_WAN4, ROUTER_WAN6),
        }
        poke = (
            "import socket,sys\n"
            "for a in sys.argv[1:]:\n"
            "    f=socket.AF_INET6 if ':' in a else socket.AF_INET\n"
            "    with socket.socket(f,socket.SOCK_DGRAM) as s: s.sendto(b'x',(a,9))\n"
        )
        for ns, hosts in pairs.items():
            for _ in range(20):
                self.run(ns, sys.executable, "-c", poke, *hosts)
                time.sleep(0.05)
                neigh = self.ip(ns, "neigh", "show") + self.ip(ns, "-6", "neigh", "show")
                ok = all(
                    re.search(rf"^{re.escape(h)} .*lladdr", neigh, re.M) is not None for h in hosts
                )
                if ok:
                    break
            else:
                raise BenchError(f"[{ns}] neighbours of {hosts} not resolved")

    def stop_process(self, proc: subprocess.Popen[bytes], timeout: float = 10) -> int | None:
        """SIGTERM, then SIGKILL after `timeout`."""
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)
        return proc.returncode

    def close(self) -> None:
        for proc, _ in self.procs:
            if proc.poll() is None:
                proc.terminate()
        for proc, out in self.procs:
            try:
                proc.wait(5)
            except subprocess.TimeoutExpired:
                proc.kill()
                with suppress(subprocess.TimeoutExpired):
                    proc.wait(5)
            out.close()
        for ns in self._created:
            _kill_ns_processes(ns)
        for ns in reversed(self._created):
            subprocess.run(["ip", "netns", "del", ns], capture_output=True)
        self._created.clear()


def _kill_ns_processes(ns: str) -> None:
    res = subprocess.run(["ip", "netns", "pids", ns], capture_output=True, text=True)
    for pid in res.stdout.split():
        with suppress(ProcessLookupError, ValueError):
            os.kill(int(pid), signal.SIGKILL)


@contextmanager
def wan_namespace(prefix: str, what: str) -> Iterator[str]:
    """A namespace of its own with wan0 (192.0.2.2/24, 2001:db8:f::2/64) up on a veth pair, for
    the benchmarks that program its kernel directly; removed, with its processes, whatever
    happens. `what` names the benchmark in the error when not run as root."""
    if os.geteuid() != 0:
        raise BenchError(f"the {what} benchmark builds a network namespace: run it as root")
    ns = f"{prefix}-{os.getpid()}"
    subprocess.run(["ip", "netns", "add", ns], check=True)
    try:
        subprocess.run(
            ["ip", "netns", "exec", ns, "sysctl", "-qw", "net.ipv6.conf.all.accept_dad=0",
             "net.ipv6.conf.default.accept_dad=0"], check=True,
        )  # fmt: skip
        for cmd in (
            "link set lo up",
            "link add wan0 type veth peer name peer0",
            "addr add 192.0.2.2/24 dev wan0",
            "addr add 2001:db8:f::2/64 dev wan0",
            "link set wan0 up",
            "link set peer0 up",
        ):
            subprocess.run(["ip", "-n", ns, *cmd.split()], check=True)
        yield ns
    finally:
        _kill_ns_processes(ns)
        subprocess.run(["ip", "netns", "del", ns], capture_output=True)


def _remove_stale_namespaces() -> None:
    """Namespaces of earlier runs whose process is gone (a SIGKILLed benchmark)."""
    out = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    for line in out.splitlines():
        ns = line.split()[0] if line.split() else ""
        m = _STALE.match(ns)
        if m is None or Path(f"/proc/{m.group(1)}").exists():
            continue
        _kill_ns_processes(ns)
        subprocess.run(["ip", "netns", "del", ns], capture_output=True)


# -- names and the upstream's hosts file ------------------------------------------------------


@dataclass
class Names:
    """Query names with the address the upstream gives each; written to one hosts file."""

    hosts: list[tuple[str, str]] = field(default_factory=list)
    _v6: int = 0

    def tagged_v6(self, prefix: str, count: int) -> list[str]:
        """`count` tagged names, each with an AAAA address of its own (a new route each)."""
        return self._add(prefix, count, TAGGED_SUFFIXES, "AAAA", lambda _i: self._next_v6())

    def tagged_v4(self, prefix: str, count: int) -> list[str]:
        """Tagged names with A answers in 203.0.113.0/24 (shared: at most 250 addresses)."""
        return self._add(prefix, count, TAGGED_SUFFIXES, "A", lambda i: f"203.0.113.{i % 250 + 1}")

    def untagged(self, prefix: str, count: int) -> list[str]:
        return self._add(
            prefix, count, UNTAGGED_SUFFIXES, "A", lambda i: f"198.51.100.{i % 250 + 1}"
        )

    def _next_v6(self) -> str:
        self._v6 += 1
        return f"2001:db8:1:{self._v6 >> 16:x}::{self._v6 & 0xFFFF:x}"

    def _add(
        self, prefix: str, count: int, suffixes: Sequence[str], qtype: str,
        address: Callable[[int], str],
    ) -> list[str]:  # fmt: skip
        """`count` names `prefix<i>.<suffix>` into the hosts file; the dnsperf lines asking them."""
        out = []
        for i in range(count):
            name = f"{prefix}{i}.{suffixes[i % len(suffixes)]}"
            self.hosts.append((address(i), name))
            out.append(f"{name} {qtype}")
        return out

    def write(self, path: Path) -> None:
        with path.open("w") as fh:
            fh.writelines(f"{addr} {name}\n" for addr, name in self.hosts)


def interleave(a: Sequence[str], b: Sequence[str]) -> list[str]:
    out: list[str] = []
    for x, y in zip(a, b, strict=True):
        out += (x, y)
    return out


def mix(
    hot: Sequence[str], cold: Sequence[str], ttl: float, qps: float = 0, share: float = 0
) -> tuple[list[str], dict[str, Any]]:
    """A query file for a steady load at `qps` over a bounded set of names: every k-th line the
    next cold name, the other lines the hot names in turn. With the upstream's TTL `ttl`, a cold
    name comes back after about three TTLs (a miss each time, refreshing its hold), a hot name
    within one (a hit). The cold share is at most 1/4, less when the cold names would run out;
    `share` fixes it instead (then every cold name is used)."""
    if share <= 0:
        share = min(0.25, len(cold) / (3 * ttl * max(qps, 1.0)))
    k = max(2, round(1 / share))
    n_cold = len(cold) if qps <= 0 else max(200, min(len(cold), round(3 * ttl * qps / k)))
    lines: list[str] = []
    hot_i = 0
    for i in range(n_cold * k):
        if i % k == k - 1:
            lines.append(cold[i // k])
        else:
            lines.append(hot[hot_i % len(hot)])
            hot_i += 1
    info = {
        "cold_names": n_cold,
        "hot_names": len(hot),
        "cold_share": round(1 / k, 4),
        "file_lines": len(lines),
        "cold_cycle_s": round(n_cold * k / qps, 1) if qps > 0 else None,
    }
    return lines, info


def write_queries(path: Path, lines: Iterable[str]) -> Path:
    with path.open("w") as fh:
        fh.writelines(line + "\n" for line in lines)
    return path


def check_tags(config: Path, tagged: Sequence[str], untagged: Sequence[str]) -> None:
    """`resolverctl explain` must match every tagged name and none of the untagged ones."""
    names = [q.split()[0] for q in (*tagged, *untagged)]
    res = subprocess.run(
        [*resolverctl_argv(), "explain", "--config", str(config), "--json", *names],
        capture_output=True, text=True, timeout=120, env=_env(),
    )  # fmt: skip
    if res.returncode != 0:
        raise BenchError(f"resolverctl explain failed: {res.stderr.strip()}")
    found = {e["name"]: e["match"] for e in json.loads(res.stdout)}
    wrong = [n for n in names[: len(tagged)] if found.get(n) is None]
    wrong += [n for n in names[len(tagged) :] if found.get(n) is not None]
    if wrong:
        raise BenchError(f"the policy does not tag these names as intended: {wrong[:10]}")


# -- processes ----------------------------------------------------------------------------------


def dnsmasq_common() -> list[str]:
    return [
        which("dnsmasq") or "dnsmasq", "--no-daemon", "--conf-file=/dev/null", "--no-resolv",
        "--no-hosts", "--user=root", "--bind-interfaces",
    ]  # fmt: skip


def start_upstream(lab: Lab, hosts: Path, ttl: int = 3600) -> subprocess.Popen[bytes]:
    """A dnsmasq answering every name from `hosts` with TTL `ttl` (a C server: fast)."""
    argv = [
        *dnsmasq_common(), f"--listen-address={UPSTREAM4}", "--port=53",
        f"--addn-hosts={hosts}", f"--local-ttl={ttl}", "--cache-size=0",
        "--dns-forward-max=10000",
    ]  # fmt: skip
    proc = lab.spawn(lab.upstream, argv, "upstream.log")
    wait_dns(lab, lab.upstream, UPSTREAM4, 53, proc, "upstream dnsmasq", "upstream.log")
    return proc


def start_dnsmasq(lab: Lab) -> subprocess.Popen[bytes]:
    """The forwarder resolverd is compared with: same upstream, cache as large as resolverd's
    default (100,000), the same domains fed into ipsets (it installs no routes)."""
    domains = "/".join(DNSMASQ_IPSET_DOMAINS)
    argv = [
        *dnsmasq_common(), f"--listen-address={ROUTER_LAN4}", f"--port={DNSMASQ_PORT}",
        f"--server={UPSTREAM4}", "--cache-size=100000", f"--ipset=/{domains}/{','.join(DM_IPSETS)}",
    ]  # fmt: skip
    proc = lab.spawn(lab.router, argv, "dnsmasq.log")
    wait_dns(lab, lab.client, ROUTER_LAN4, DNSMASQ_PORT, proc, "dnsmasq", "dnsmasq.log")
    return proc


def wait_dns(
    lab: Lab, ns: str, server: str, port: int, proc: subprocess.Popen[bytes], what: str, log: str
) -> None:
    """Until a DNS query from `ns` gets an answer (any rcode)."""
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise BenchError(f"{what} exited with {proc.returncode}:\n{lab.log_tail(log)}")
        res = lab.run(
            ns, "dig", f"@{server}", "-p", str(port), "+tries=1", "+time=1", "localhost.invalid",
            check=False,
        )  # fmt: skip
        if "status:" in res.stdout:
            return
        time.sleep(0.2)
    raise BenchError(f"{what} did not answer on {server}#{port}:\n{lab.log_tail(log)}")


def shipped_config(tmp: Path, kernel: bool = True) -> Path:
    """Only what a user must set for their site; everything else at its default (no
    ratelimit, cache, forward or tcp section)."""
    (tmp / "state").mkdir(exist_ok=True)
    text = (
        f'listen: ["127.0.0.1:{RESOLVERD_PORT}", "{ROUTER_LAN4}:{RESOLVERD_PORT}"]\n'
        f'upstreams: ["{UPSTREAM4}:53"]\n'
        f'allow: ["127.0.0.0/8", "::1/128", "{LAN_NET4}", "{LAN_NET6}"]\n'
        f"state_dir: {tmp / 'state'}\n"
        f"control:\n  socket: {tmp / 'control.sock'}\n"
    )
    if kernel:
        text += (
            "breakout:\n"
            "  interface: wan0\n"
            f"  gateway4: {UPSTREAM4}\n"
            f'  gateway6: "{UPSTREAM6}"\n'
            f"  ipset4: {IPSETS[0]}\n"
            f"  ipset6: {IPSETS[1]}\n"
        )
    path = tmp / "resolverd.yaml"
    path.write_text(text)
    return path


@dataclass
class Resolverd:
    proc: subprocess.Popen[bytes]
    config: Path
    socket: Path
    log: str

    @property
    def pid(self) -> int:
        return self.proc.pid

    def ctl(self, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [*resolverctl_argv(), "--socket", str(self.socket), *args],
            capture_output=True, text=True, timeout=timeout, env=_env(),
        )  # fmt: skip

    def status(self) -> dict[str, Any]:
        res = self.ctl("status", "--json")
        if res.returncode != 0:
            raise BenchError(f"resolverctl status: exit {res.returncode}: {res.stderr.strip()}")
        out: dict[str, Any] = json.loads(res.stdout)
        return out

    def routes(self) -> tuple[list[dict[str, Any]], float]:
        """`resolverctl routes --json` and its wall time in seconds."""
        t0 = time.perf_counter()
        res = self.ctl("routes", "--json")
        wall = time.perf_counter() - t0
        if res.returncode != 0:
            raise BenchError(f"resolverctl routes: exit {res.returncode}: {res.stderr.strip()}")
        routes: list[dict[str, Any]] = json.loads(res.stdout)
        return routes, wall


def start_resolverd(
    lab: Lab, config: Path, wrapper: Sequence[str] = (), log: str = "resolverd.log"
) -> Resolverd:
    """``python -m resolver.daemon --config FILE`` in the router (or the same main() under a
    profiling wrapper); ready once `resolverctl status` answers and a DNS query from the client
    gets an answer."""
    argv = [sys.executable, *(wrapper or ("-m", "resolver.daemon")), "--config", str(config)]
    proc = lab.spawn(lab.router, argv, log)
    sock = Path(re.findall(r"socket: (\S+)", config.read_text())[0])
    daemon = Resolverd(proc, config, sock, log)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise BenchError(f"resolverd exited with {proc.returncode}:\n{lab.log_tail(log)}")
        if sock.exists() and daemon.ctl("status", "--json", timeout=10).returncode == 0:
            wait_dns(lab, lab.client, ROUTER_LAN4, RESOLVERD_PORT, proc, "resolverd", log)
            return daemon
        time.sleep(0.2)
    raise BenchError(f"resolverd did not come up within 60 s:\n{lab.log_tail(log)}")


# -- dnsperf ------------------------------------------------------------------------------------

_FIELDS = {
    "sent": r"Queries sent:\s+(\d+)",
    "completed": r"Queries completed:\s+(\d+)",
    "lost": r"Queries lost:\s+(\d+)",
    "qps": r"Queries per second:\s+([\d.]+)",
    "runtime_s": r"Run time \(s\):\s+([\d.]+)",
    "avg_latency_ms": r"Average Latency \(s\):\s+([\d.]+)",
}


def dnsperf_argv(server: str, port: int, queries: Path, *opts: str) -> list[str]:
    return ["dnsperf", "-s", server, "-p", str(port), "-d", str(queries), *opts]


def parse_dnsperf(out: str) -> dict[str, float]:
    found = {k: re.search(p, out) for k, p in _FIELDS.items()}
    if found["qps"] is None or found["lost"] is None:
        raise BenchError("unexpected dnsperf output:\n" + out[-2000:])
    res = {k: float(m.group(1)) if m else 0.0 for k, m in found.items()}
    res["avg_latency_ms"] *= 1000
    return res


def dnsperf(lab: Lab, server: str, port: int, queries: Path, *opts: str) -> dict[str, Any]:
    """One dnsperf run from the client namespace; its figures and the command line."""
    argv = dnsperf_argv(server, port, queries, *opts)
    res = lab.run(lab.client, *argv, timeout=900)
    figures: dict[str, Any] = parse_dnsperf(res.stdout)
    figures["command"] = "ip netns exec CLIENT " + " ".join(argv)
    return figures


def dnsperf_many(
    lab: Lab, server: str, port: int, files: Sequence[Path], *opts: str
) -> list[dict[str, float]]:
    """One dnsperf per file in parallel, each from its own LAN address (EXTRA_CLIENTS)."""
    procs = []
    for path, source in zip(files, EXTRA_CLIENTS, strict=False):
        argv = ["ip", "netns", "exec", lab.client, *dnsperf_argv(server, port, path, *opts)]
        procs.append(
            subprocess.Popen(
                [*argv, "-a", source], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
            )
        )
    return [parse_dnsperf(p.communicate(timeout=900)[0]) for p in procs]


def split(lines: Sequence[str], parts: int, tmp: Path, stem: str) -> list[Path]:
    return [
        write_queries(tmp / f"{stem}-{i}.txt", lines[i::parts])
        for i in range(parts)
        if lines[i::parts]
    ]


# -- memory and the kernel's view ---------------------------------------------------------------


def rss_kb(pid: int) -> int:
    """Resident set size of `pid` in KiB (VmRSS)."""
    text = Path(f"/proc/{pid}/status").read_text()
    m = re.search(r"^VmRSS:\s+(\d+) kB", text, re.M)
    if m is None:
        raise BenchError(f"no VmRSS for {pid}")
    return int(m.group(1))


CLK_TCK = os.sysconf("SC_CLK_TCK")


def cpu_ticks(pid: int) -> tuple[int, int]:
    """A process's user and system CPU time so far, in clock ticks (/proc/PID/stat)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return int(fields[11]), int(fields[12])


def memory_kb(pid: int) -> dict[str, int]:
    """VmRSS, VmHWM and the anonymous/file split (smaps_rollup), in KiB."""
    out: dict[str, int] = {}
    status = Path(f"/proc/{pid}/status").read_text()
    for key in ("VmRSS", "VmHWM", "RssAnon", "RssFile"):
        m = re.search(rf"^{key}:\s+(\d+) kB", status, re.M)
        if m:
            out[key] = int(m.group(1))
    return out


def smaps_breakdown(pid: int) -> dict[str, int]:
    """Resident KiB by kind of mapping, to tell which allocator holds the memory:
    ``brk heap`` is glibc malloc's main arena (objects over 512 bytes allocated by the main
    thread land here); an anonymous mapping followed by the inaccessible rest of a 64 MiB
    reservation is one of glibc's per-thread arenas (malloc from other threads); ``other
    anon`` is CPython's pymalloc arenas (1 MiB mmaps, merged by the kernel when adjacent),
    large mallocs (mmap) and thread stacks; ``file`` is code and libraries. And the number of
    threads."""
    maps: list[list[Any]] = []  # [start, end, perms, name, rss_kb]
    for line in Path(f"/proc/{pid}/smaps").read_text().splitlines():
        head = line.split()
        if re.match(r"^[0-9a-f]+-[0-9a-f]+ ", line):
            lo, hi = (int(x, 16) for x in head[0].split("-"))
            maps.append([lo, hi, head[1], head[5] if len(head) > 5 else "", 0])
        elif head and head[0] == "Rss:" and maps:
            maps[-1][4] = int(head[1])
    out = {"brk heap": 0, "glibc thread arenas": 0, "other anon": 0, "file": 0, "stack": 0}
    for i, (lo, hi, _perms, name, rss) in enumerate(maps):
        nxt = maps[i + 1] if i + 1 < len(maps) else None
        arena = (
            name == ""
            and nxt is not None
            and nxt[0] == hi
            and nxt[2].startswith("---")
            and nxt[3] == ""
            and nxt[1] - lo == 64 * 2**20
        )
        if name == "[heap]":
            out["brk heap"] += rss
        elif name == "[stack]":
            out["stack"] += rss
        elif name.startswith("/"):
            out["file"] += rss
        elif arena:
            out["glibc thread arenas"] += rss
        else:
            out["other anon"] += rss
    out["threads"] = len(list(Path(f"/proc/{pid}/task").iterdir()))
    return out


def kernel_routes(lab: Lab) -> set[str]:
    """Addresses of the host routes carrying resolverd's protocol in its table."""
    out: set[str] = set()
    for fam in ("-4", "-6"):
        text = lab.ip(lab.router, fam, "route", "show", "table", str(TABLE), "proto", str(PROTO))
        for line in text.splitlines():
            if not line.strip():
                continue
            net = ipaddress.ip_network(line.split()[0], strict=False)
            if net.prefixlen == net.max_prefixlen:
                out.add(str(net.network_address))
    return out


def ipset_members(lab: Lab, name: str) -> set[str]:
    res = lab.run(lab.router, "ipset", "save", name)
    return {
        str(ipaddress.ip_address(parts[2]))
        for parts in (line.split() for line in res.stdout.splitlines())
        if len(parts) >= 3 and parts[0] == "add"
    }


def ipset_count(lab: Lab, name: str) -> int:
    res = lab.run(lab.router, "ipset", "list", name, "-t")
    m = re.search(r"Number of entries:\s+(\d+)", res.stdout)
    return int(m.group(1)) if m else -1


def policy_prefix_hosts(config: Path) -> set[str]:
    """The policy's own /32 and /128 prefixes (row 14), which resolverd installs as prefixes,
    not as holds: `resolverctl policy export --format yaml`."""
    res = subprocess.run(
        [*resolverctl_argv(), "policy", "export", "--format", "yaml", "--config", str(config)],
        capture_output=True, text=True, timeout=60, env=_env(),
    )  # fmt: skip
    if res.returncode != 0:
        raise BenchError(f"resolverctl policy export: {res.stderr.strip()}")
    out = set()
    for m in re.finditer(r"^\s*-\s*['\"]?([0-9a-fA-F:.]+/\d+)", res.stdout, re.M):
        net = ipaddress.ip_network(m.group(1), strict=False)
        if net.prefixlen == net.max_prefixlen:
            out.add(str(net.network_address))
    return out


def dnsmasq_cache_insertions(lab: Lab) -> int:
    res = lab.run(
        lab.client, "dig", f"@{ROUTER_LAN4}", "-p", str(DNSMASQ_PORT), "+short", "chaos", "txt",
        "insertions.bind", check=False,
    )  # fmt: skip
    m = re.search(r"(\d+)", res.stdout)
    return int(m.group(1)) if m else -1


# -- statistics ---------------------------------------------------------------------------------


def median(values: Iterable[float]) -> float:
    return float(statistics.median(list(values)))


def slope_per_min(samples: Sequence[tuple[float, float]]) -> float:
    """Least-squares slope of (seconds, value) samples, per minute."""
    if len(samples) < 2:
        return 0.0
    xs = [t for t, _ in samples]
    ys = [v for _, v in samples]
    mx, my = statistics.fmean(xs), statistics.fmean(ys)
    den = sum((x - mx) ** 2 for x in xs)
    return 0.0 if den == 0 else sum((x - mx) * (y - my) for x, y in samples) / den * 60.0


def save_results(name: str, data: dict[str, Any]) -> Path:
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / name
    path.write_text(json.dumps(data, indent=2, sort_keys=False) + "\n")
    return path
