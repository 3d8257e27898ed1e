"""DNS benchmark: resolverd against dnsmasq, both forwarding to the same fast local upstream.

    make bench        # = pytest tests/bench -m bench -s

The upstream is a dnsmasq serving a hosts file with many names (a C server, so the miss path
measures resolverd, not the upstream). resolverd runs as `python -m resolver.daemon` (uvloop
when installed); if that does not come up, the stand-alone DNS core in tests/bench/dns/runner.py
is used and the report says so. Figures:

- cached-hit qps of both (dnsperf, same query file, same options, same run) and their ratio;
  the test asserts resolverd >= 0.75 x dnsmasq;
- miss-path qps (every name asked once);
- latency resolverd adds: a sequential client (plain sockets, prebuilt queries) times the same
  kind of query direct to the upstream and through resolverd (hits and misses), p50 and p99,
  with client, upstream and resolverd on one CPU (cross-core wake-ups cost ~60 us here).

Results are printed and written to tests/bench/results/dns.json.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import socket
import statistics
import struct
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

pytestmark = pytest.mark.bench

ROOT = Path(__file__).resolve().parents[2]
RESULTS = ROOT / "tests" / "bench" / "results"
TARGET_RATIO = 0.75
HIT_NAMES = 200
MISS_NAMES = 40_000  # per server
LATENCY_SAMPLES = 3_000
DNSPERF_OPTS = ["-c", "4", "-T", "1", "-l", "10", "-q", "200"]
UPSTREAM = ["--local-ttl=3600", "--cache-size=0"]  # answers from its hosts file, TTL 1 h
# As the brief suggests. Not --dns-forward-max: raised to 10000 it made dnsmasq 3x slower here.
FORWARDER = ["--cache-size=10000"]
# dnsperf (and the upstream) on one CPU, the server under test on another, when there are two:
# like a router's core of its own, and far less noisy on a shared 2-core VM.
_CPUS = sorted(os.sched_getaffinity(0))
CLIENT_CPUS = {_CPUS[0]}
SERVER_CPUS = {_CPUS[1]} if len(_CPUS) > 1 else {_CPUS[0]}
ROUNDS = 3  # hit runs per server, alternating; the best of each counts (the machine is shared)


def _free_port() -> int:
    """A port free for both UDP and TCP on 127.0.0.1."""
    for _ in range(100):
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
            udp.bind(("127.0.0.1", 0))
            port = int(udp.getsockname()[1])
            with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as tcp:
                try:
                    tcp.bind(("127.0.0.1", port))
                except OSError:
                    continue
                return port
    raise RuntimeError("no free port")


def _query(qid: int, name: str) -> bytes:
    qname = b"".join(bytes((len(p),)) + p.encode() for p in name.split(".")) + b"\0"
    return struct.pack("!HHHHHH", qid, 0x0100, 1, 0, 0, 0) + qname + b"\0\x01\0\x01"


def _ask(port: int, name: str, timeout: float = 1.0) -> bytes | None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.settimeout(timeout)
        sock.connect(("127.0.0.1", port))
        sock.send(_query(0x4242, name))
        try:
            return sock.recv(4096)
        except (TimeoutError, ConnectionRefusedError):
            return None


def _wait_answers(port: int, name: str, proc: subprocess.Popen[bytes], what: str) -> None:
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{what} exited with {proc.returncode}")
        reply = _ask(port, name, 0.3)
        if reply is not None and reply[3] & 0x0F == 0 and reply[7] > 0:
            return
        time.sleep(0.1)
    raise RuntimeError(f"{what} did not answer on port {port}")


class World:
    """The processes of one benchmark run."""

    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.procs: list[subprocess.Popen[bytes]] = []
        self.upstream = _free_port()
        self.dnsmasq = _free_port()
        self.resolverd = _free_port()
        self.runner = ""
        self.pinned: list[subprocess.Popen[bytes]] = []  # upstream and resolverd

    def spawn(
        self, argv: list[str], log: str, cpus: set[int], **kw: Any
    ) -> subprocess.Popen[bytes]:
        out = open(self.tmp / log, "wb")  # noqa: SIM115 - closed with the process
        proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, **kw)
        os.sched_setaffinity(proc.pid, cpus)
        self.procs.append(proc)
        return proc

    def start(self) -> None:
        hosts = self.tmp / "hosts"
        with hosts.open("w") as fh:
            for i in range(HIT_NAMES + 2 * MISS_NAMES + LATENCY_SAMPLES * 2):
                fh.write(f"198.51.{100 + i // 60000}.{i % 250 + 1} h{i}.bench.test\n")
        dnsmasq = shutil.which("dnsmasq") or "dnsmasq"
        common = ["--no-daemon", "--no-resolv", "--no-hosts", "--user=root", "--bind-interfaces"]
        common += ["--listen-address=127.0.0.1", "--log-facility=-"]
        up = self.spawn(
            [dnsmasq, *common, f"--port={self.upstream}", f"--addn-hosts={hosts}", *UPSTREAM],
            "upstream.log",
            CLIENT_CPUS,
        )
        _wait_answers(self.upstream, "h0.bench.test", up, "upstream dnsmasq")
        self.pinned.append(up)
        fw = self.spawn(
            [
                dnsmasq,
                *common,
                f"--port={self.dnsmasq}",
                f"--server=127.0.0.1#{self.upstream}",
                *FORWARDER,
            ],
            "dnsmasq.log",
            SERVER_CPUS,
        )
        _wait_answers(self.dnsmasq, "h0.bench.test", fw, "dnsmasq")
        self._start_resolverd()

    def _start_resolverd(self) -> None:
        config = self.tmp / "resolverd.yaml"
        (self.tmp / "state").mkdir(exist_ok=True)
        config.write_text(
            f'listen: ["127.0.0.1:{self.resolverd}"]\n'
            f'upstreams: ["127.0.0.1:{self.upstream}"]\n'
            "ratelimit: {qps: 0}\n"
            "forward: {max_pending: 8192}\n"
            f"state_dir: {self.tmp / 'state'}\n"
            f"control: {{socket: {self.tmp / 'control.sock'}}}\n"
            "log_level: warning\n"
        )
        env = {**os.environ, "PYTHONPATH": str(ROOT)}
        attempts = [
            ("resolver.daemon", [sys.executable, "-m", "resolver.daemon", "--config", str(config)]),
            ("tests.bench.dns.runner", [sys.executable, "-m", "tests.bench.dns.runner"]),
        ]
        attempts[1][1].extend(["--config", str(config)])
        errors = []
        for name, argv in attempts:
            proc = self.spawn(argv, f"{name}.log", SERVER_CPUS, cwd=ROOT, env=env)
            try:
                _wait_answers(self.resolverd, "h0.bench.test", proc, name)
            except RuntimeError as err:
                errors.append(f"{name}: {err}")
                proc.terminate()
                proc.wait(5)
                continue
            self.runner = name
            self.pinned.append(proc)
            return
        raise RuntimeError("resolverd did not start: " + "; ".join(errors))

    def stop(self) -> None:
        for proc in reversed(self.procs):
            if proc.poll() is None:
                proc.terminate()
        for proc in self.procs:
            try:
                proc.wait(5)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)


def dnsperf(port: int, queries: Path, *extra: str) -> dict[str, float]:
    argv = ["dnsperf", "-s", "127.0.0.1", "-p", str(port), "-d", str(queries), *extra]
    out = subprocess.run(
        argv,
        capture_output=True,
        text=True,
        timeout=300,
        check=True,
        preexec_fn=lambda: os.sched_setaffinity(0, CLIENT_CPUS),
    ).stdout
    found = {
        "qps": re.search(r"Queries per second:\s+([\d.]+)", out),
        "completed": re.search(r"Queries completed:\s+(\d+)", out),
        "lost": re.search(r"Queries lost:\s+(\d+)", out),
        "latency": re.search(r"Average Latency \(s\):\s+([\d.]+)", out),
    }
    if found["qps"] is None:
        raise RuntimeError("unexpected dnsperf output:\n" + out)
    return {k: float(m.group(1)) if m else 0.0 for k, m in found.items()}


def _sequential(port: int, names: list[str]) -> list[float]:
    """Round-trip times in microseconds, one query at a time."""
    out = []
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.settimeout(2.0)
        sock.connect(("127.0.0.1", port))
        for i, name in enumerate(names):
            data = _query(i & 0xFFFF, name)
            started = time.perf_counter_ns()
            sock.send(data)
            reply = sock.recv(4096)
            out.append((time.perf_counter_ns() - started) / 1000.0)
            assert reply[:2] == data[:2]
    return out


@contextlib.contextmanager
def _one_cpu(pids: list[int]) -> Iterator[None]:
    """Run `pids` (0 = this process) on the first CPU we may use, then restore."""
    saved = {pid: os.sched_getaffinity(pid) for pid in pids}
    cpu = min(saved[0])
    for pid in pids:
        os.sched_setaffinity(pid, {cpu})
    try:
        yield
    finally:
        for pid, cpus in saved.items():
            with contextlib.suppress(ProcessLookupError):
                os.sched_setaffinity(pid, cpus)


def _pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


@pytest.fixture(scope="module")
def world() -> Iterator[World]:
    for tool in ("dnsperf", "dnsmasq"):
        if shutil.which(tool) is None:
            pytest.skip(f"{tool} is not installed (make sysdeps)")
    with tempfile.TemporaryDirectory(prefix="resolverd-bench-") as tmp:
        w = World(Path(tmp))
        try:
            w.start()
            yield w
        finally:
            w.stop()


def test_dns_bench(world: World) -> None:
    tmp = world.tmp
    hit_file = tmp / "hit.txt"
    hit_file.write_text("".join(f"h{i}.bench.test A\n" for i in range(HIT_NAMES)))
    base = HIT_NAMES
    miss_files = {}
    for server in ("dnsmasq", "resolverd"):
        path = tmp / f"miss-{server}.txt"
        path.write_text("".join(f"h{base + i}.bench.test A\n" for i in range(MISS_NAMES)))
        miss_files[server] = path
        base += MISS_NAMES
    ports = {"dnsmasq": world.dnsmasq, "resolverd": world.resolverd}

    # warm both caches with the hit names
    for port in ports.values():
        dnsperf(port, hit_file, "-n", "1", "-c", "1", "-q", "20")

    hits: dict[str, list[dict[str, float]]] = {"dnsmasq": [], "resolverd": []}
    for _ in range(ROUNDS):
        for server, port in ports.items():
            hits[server].append(dnsperf(port, hit_file, *DNSPERF_OPTS))
    best = {server: max(r["qps"] for r in runs) for server, runs in hits.items()}
    ratio = best["resolverd"] / best["dnsmasq"]
    paired = [r["qps"] / d["qps"] for r, d in zip(hits["resolverd"], hits["dnsmasq"], strict=True)]

    misses = {
        server: dnsperf(port, miss_files[server], "-n", "1", "-c", "4", "-T", "1", "-q", "200")
        for server, port in ports.items()
    }

    # latency: sequential, the same names direct and through resolverd. Client, upstream and
    # resolverd share one CPU meanwhile: a wake-up across cores costs about 60 us on these VMs
    # and, landing at random, would swamp what resolverd itself adds.
    lat_base = base
    lat_names = [f"h{lat_base + i}.bench.test" for i in range(LATENCY_SAMPLES)]
    warm = [f"h{i % HIT_NAMES}.bench.test" for i in range(LATENCY_SAMPLES)]
    with _one_cpu([0, *(p.pid for p in world.pinned)]):
        _sequential(world.upstream, lat_names[:200])  # warm the client side
        direct = _sequential(world.upstream, lat_names)
        via_miss = _sequential(world.resolverd, lat_names)  # first time: misses
        via_hit = _sequential(world.resolverd, warm)
        direct_hit = _sequential(world.upstream, warm)

    latency = {
        "direct_p50_us": _pct(direct, 0.5),
        "direct_p99_us": _pct(direct, 0.99),
        "miss_p50_us": _pct(via_miss, 0.5),
        "miss_p99_us": _pct(via_miss, 0.99),
        "hit_p50_us": _pct(via_hit, 0.5),
        "hit_p99_us": _pct(via_hit, 0.99),
        "direct_same_names_p50_us": _pct(direct_hit, 0.5),
        "added_miss_p50_us": _pct(via_miss, 0.5) - _pct(direct, 0.5),
        "added_miss_p99_us": _pct(via_miss, 0.99) - _pct(direct, 0.99),
        "added_hit_p50_us": _pct(via_hit, 0.5) - _pct(direct_hit, 0.5),
        "added_hit_p99_us": _pct(via_hit, 0.99) - _pct(direct_hit, 0.99),
        "mean_miss_us": statistics.fmean(via_miss),
    }
    report: dict[str, Any] = {
        "resolverd_started_as": world.runner,
        "dnsperf_options": " ".join(DNSPERF_OPTS),
        "hit_qps": best,
        "hit_runs": hits,
        "ratio": ratio,
        "paired_ratios": paired,
        "target_ratio": TARGET_RATIO,
        "miss": misses,
        "latency_us": {k: round(v, 1) for k, v in latency.items()},
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "dns.json").write_text(json.dumps(report, indent=2) + "\n")
    print()
    print(f"resolverd started as: {world.runner}")
    print(f"cached hits, dnsperf {' '.join(DNSPERF_OPTS)} (best of {ROUNDS}):")
    print(f"  dnsmasq    {best['dnsmasq']:>10.0f} qps")
    print(
        f"  resolverd  {best['resolverd']:>10.0f} qps   ratio {ratio:.2f} (target {TARGET_RATIO})"
    )
    print(f"misses, {MISS_NAMES} unique names each, dnsperf -n 1 -c 4 -q 200:")
    for server, r in misses.items():
        print(f"  {server:<10} {r['qps']:>10.0f} qps   lost {r['lost']:.0f}")
    print(f"(dnsperf on CPU {sorted(CLIENT_CPUS)}, servers on CPU {sorted(SERVER_CPUS)})")
    rows = [
        ("direct to upstream", "direct"),
        ("through resolverd, miss", "miss"),
        ("through resolverd, hit", "hit"),
        ("added by resolverd, miss", "added_miss"),
    ]
    print("sequential latency (us), one CPU        p50       p99")
    for label, key in rows:
        print(f"  {label:<32} {latency[key + '_p50_us']:>8.0f}  {latency[key + '_p99_us']:>8.0f}")
    assert misses["resolverd"]["lost"] <= MISS_NAMES * 0.01
    assert ratio >= TARGET_RATIO, f"resolverd {ratio:.2f}x dnsmasq on cached hits"
