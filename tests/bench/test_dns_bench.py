"""DNS benchmarks: resolverd at its SHIPPED defaults next to dnsmasq, same lab, same run, unpinned.

    make bench                                         # everything under tests/bench
    pytest tests/bench/test_dns_bench.py -m bench -s   # these four only (root)
    BENCH_PINNED=1 make bench                          # adds cached figures with pinned CPUs

resolverd runs as ``python -m resolver.daemon --config FILE`` in a namespace router (see
harness.py) with only the keys a site must set: listen, upstreams, allow, state_dir,
control.socket and breakout interface/gateways/ipsets (mode kernel by default). Everything else
is at its default: no ratelimit section (so the per-client limit applies), default cache and
forward settings. dnsmasq runs next to it with the same upstream, a 100,000-name cache (the
size of resolverd's default) and ``--ipset`` for the same Microsoft 365 domains, so it does
comparable set work; dnsmasq installs no routes. One dnsperf client (``-c 4``, dnsperf's
default of 100 queries outstanding and 5 s timeout) asks from the LAN namespace. No process is
pinned to a CPU. Each measurement runs RUNS times per server (CACHED_RUNS for cached answers,
whose 10 s runs of one server differ by up to 20% on this shared machine), alternating servers
(ABBA); every run and the medians are reported.

- test_cached_qps: names that are all cached, half under Microsoft 365 wildcards (checked with
  `resolverctl explain`), half untagged. Target (TARGETS, by build): resolverd >= 1.0 x
  dnsmasq compiled, >= 0.79 x interpreted.
- test_miss_path: unique names, half tagged with an AAAA address of their own (a new route and
  ipset entry each, installed before the reply), half untagged. Checked: every tagged address
  routed, no reply sent before its routes were acknowledged (`ack_timeouts` 0). Targets: no
  query lost; compiled >= 0.6 x dnsmasq and at most 1.6 x its CPU per miss (user + sys);
  interpreted >= 0.18 x.
- test_memory: RSS idle and after 60,000 cached names and 30,000 routes. Target <= 77 MiB.
  The miss runs leave both servers with those (2 x 30,000 names, half with a route); a fill
  phase then asks every name again from 16 LAN addresses, each under the default per-client
  limit, so that names a limit dropped are cached too. dnsmasq allocates its whole cache at
  start, so its RSS hardly moves.
- test_routes_json_time: `resolverctl routes --json` wall time with 30,000 routes: < 0.3 s.

Every test prints its figures before it asserts, with each server's CPU time per answered
query (user and system, from /proc: the ratio of two servers sharing two cores with dnsperf
follows these); results go to tests/bench/results/dns.json.
The machine is shared and noisy: treat the figures as a baseline, with their timestamp.
"""

from __future__ import annotations

import os
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from tests.bench import harness as h

pytestmark = pytest.mark.bench

RUNS = 2  # per server and measurement; ABBA order
CACHED_RUNS = 4  # per server, for the cached figure
CACHED_TAGGED = 500
CACHED_UNTAGGED = 500
MISS_PER_RUN = 30_000  # half tagged (new AAAA address each), half untagged
MISS_WARMUP = 2_000
CACHED_OPTS = ("-c", "4", "-l", "10")
CACHED_WARMUP_OPTS = ("-c", "4", "-l", "3")
PRIME_OPTS = ("-n", "1", "-c", "1", "-Q", "500")  # under the default per-client limit
# The misses come from MISS_CLIENTS LAN addresses at once, MISS_OUTSTANDING queries in flight in
# all (as one dnsperf's default): a branch's new names come from many hosts, and one host that
# made 15,000 new routes in seconds would be over its share of the holds (breakout.client_share,
# an eighth of max_entries at the defaults), the flood that share is there to stop.
MISS_CLIENTS = 10
MISS_OUTSTANDING = 100
MISS_OPTS = ("-n", "1", "-c", "1", "-q", str(MISS_OUTSTANDING // MISS_CLIENTS), "-l", "120")
FILL_QPS_PER_CLIENT = "800"  # the fill phase: many LAN clients, each under the default limit


# Issue 20, item 7: the compiled build at least 1.0x dnsmasq cached (a median of 4 runs) and
# 0.6x on misses, at most 1.6x dnsmasq's CPU per miss (user + sys, the same run); the
# interpreted build no slower than main when the issue was filed (0.79x cached, 0.18x misses).
@dataclass(frozen=True)
class Targets:
    cached: float  # resolverd's cached qps over dnsmasq's, at least
    miss: float  # the same for misses, at least
    miss_cpu: float | None  # resolverd's CPU per miss over dnsmasq's, at most (None: no target)


TARGETS = {
    "compiled": Targets(cached=1.0, miss=0.6, miss_cpu=1.6),
    "interpreted": Targets(cached=0.79, miss=0.18, miss_cpu=None),
}
TARGET_RSS_MIB = 77  # issue 20, item 7: no higher than 77 after this bench (64 is the aim)
TARGET_ROUTES_S = 0.3
MEMORY_NAMES, MEMORY_ROUTES = 60_000, 30_000
PINNED = os.environ.get("BENCH_PINNED", "") not in ("", "0")
REPRO = "pytest tests/bench/test_dns_bench.py -m bench -s -k {}   # as root, from make venv"


@dataclass
class World:
    tmp: Path
    lab: h.Lab
    config: Path
    resolverd: h.Resolverd
    dnsmasq: subprocess.Popen[bytes]
    cached: Path
    miss: dict[tuple[str, int], Path]  # (server, run) -> unique names
    miss_warmup: dict[str, Path]
    idle: dict[str, dict[str, int]]
    report: dict[str, Any] = field(default_factory=dict)

    def port(self, server: str) -> int:
        return h.RESOLVERD_PORT if server == "resolverd" else h.DNSMASQ_PORT

    def pid(self, server: str) -> int:
        return self.resolverd.pid if server == "resolverd" else self.dnsmasq.pid

    def perf(self, server: str, queries: Path, *opts: str) -> dict[str, Any]:
        """One dnsperf run against `server`, with the server's CPU time per answered query
        (user and system, from /proc; system includes the kernel's delivery of its replies)."""
        before = h.cpu_ticks(self.pid(server))
        figures = h.dnsperf(self.lab, h.ROUTER_LAN4, self.port(server), queries, *opts)
        after = h.cpu_ticks(self.pid(server))
        done = figures.get("completed") or 1.0
        for kind, t0, t1 in zip(("user", "sys"), before, after, strict=True):
            figures[f"cpu_{kind}_us_per_query"] = round((t1 - t0) / h.CLK_TCK * 1e6 / done, 2)
        return figures

    def perf_many(self, server: str, queries: Path, clients: int, *opts: str) -> dict[str, Any]:
        """`queries` split over `clients` LAN addresses, one dnsperf each, at once: the rate is
        every query completed over the longest run time; CPU time per query as in `perf`."""
        files = h.split(queries.read_text().splitlines(), clients, self.tmp, queries.stem)
        before = h.cpu_ticks(self.pid(server))
        each = h.dnsperf_many(self.lab, h.ROUTER_LAN4, self.port(server), files, *opts)
        after = h.cpu_ticks(self.pid(server))
        figures: dict[str, Any] = {
            key: sum(r[key] for r in each) for key in ("sent", "completed", "lost")
        }
        figures["runtime_s"] = max(r["runtime_s"] for r in each)
        figures["qps"] = figures["completed"] / figures["runtime_s"]
        figures["command"] = (
            f"{len(files)} x ip netns exec CLIENT dnsperf -a LAN_ADDRESS -s {h.ROUTER_LAN4} "
            f"-d PART {' '.join(opts)}"
        )
        done = figures["completed"] or 1.0
        for kind, t0, t1 in zip(("user", "sys"), before, after, strict=True):
            figures[f"cpu_{kind}_us_per_query"] = round((t1 - t0) / h.CLK_TCK * 1e6 / done, 2)
        return figures

    def save(self, key: str, value: Any) -> None:
        self.report[key] = value
        self.report["finished_at"] = h.now_utc()
        self.report["loadavg_end"] = Path("/proc/loadavg").read_text().split()[:3]
        h.save_results("dns.json", self.report)


SERVERS = ("dnsmasq", "resolverd")


def abba(runs: int) -> list[tuple[int, str]]:
    """(run, server): dnsmasq, resolverd, resolverd, dnsmasq, ..."""
    out = []
    for run in range(runs):
        order = SERVERS if run % 2 == 0 else SERVERS[::-1]
        out += [(run, s) for s in order]
    return out


@pytest.fixture(scope="module")
def world() -> Iterator[World]:
    try:
        h.require_tools("dnsperf", "dnsmasq", "dig", "ipset")
    except h.BenchError as err:
        pytest.fail(str(err), pytrace=False)
    with tempfile.TemporaryDirectory(prefix="resolverd-bench-") as tmpdir:
        tmp = Path(tmpdir)
        names = h.Names()
        cached_t = names.tagged_v4("c", CACHED_TAGGED)
        cached_u = names.untagged("c", CACHED_UNTAGGED)
        miss: dict[tuple[str, int], Path] = {}
        warm: dict[str, Path] = {}
        for server in SERVERS:
            s = server[0]
            lines = h.interleave(
                names.tagged_v6(f"w{s}", MISS_WARMUP // 2),
                names.untagged(f"w{s}", MISS_WARMUP // 2),
            )
            warm[server] = h.write_queries(tmp / f"warm-{server}.txt", lines)
            for run in range(RUNS):
                t = names.tagged_v6(f"m{run}{s}", MISS_PER_RUN // 2)
                u = names.untagged(f"m{run}{s}", MISS_PER_RUN // 2)
                miss[server, run] = h.write_queries(
                    tmp / f"miss-{server}-{run}.txt", h.interleave(t, u)
                )
        names.write(tmp / "hosts")
        cached = h.write_queries(tmp / "cached.txt", h.interleave(cached_t, cached_u))
        try:
            with h.Lab(tmp, "dns") as lab:
                h.start_upstream(lab, tmp / "hosts")
                config = h.shipped_config(tmp)
                sample = [q for p in miss.values() for q in p.read_text().splitlines()[:16]]
                h.check_tags(
                    config,
                    [*cached_t, *(q for q in sample if "AAAA" in q)],
                    [*cached_u, *(q for q in sample if "AAAA" not in q)],
                )
                daemon = h.start_resolverd(lab, config)
                dnsmasq = h.start_dnsmasq(lab)
                time.sleep(2)
                idle = {"resolverd": h.memory_kb(daemon.pid), "dnsmasq": h.memory_kb(dnsmasq.pid)}
                w = World(tmp, lab, config, daemon, dnsmasq, cached, miss, warm, idle)
                w.report.update(
                    taken_at=h.now_utc(),
                    code=h.code_version(),
                    host={"cpus": os.cpu_count(), "loadavg_start": _loadavg()},
                    pinned=False,
                    build=daemon.status()["build"],
                    resolverd_config=config.read_text(),
                    dnsmasq_argv=" ".join(_cmdline(dnsmasq.pid)),
                    upstream="dnsmasq --addn-hosts (generated) --local-ttl=3600 in its own netns",
                )
                yield w
        except h.BenchError as err:
            pytest.fail(str(err), pytrace=False)


def _loadavg() -> list[str]:
    return Path("/proc/loadavg").read_text().split()[:3]


def _cmdline(pid: int) -> list[str]:
    return Path(f"/proc/{pid}/cmdline").read_text().rstrip("\0").split("\0")


def _row(label: str, runs: list[dict[str, Any]], med: float, extra: str = "") -> str:
    each = ", ".join(f"{r['qps']:,.0f}" for r in runs)
    user = h.median(r["cpu_user_us_per_query"] for r in runs)
    sys = h.median(r["cpu_sys_us_per_query"] for r in runs)
    cpu = f"   CPU/query {user:.1f} us user + {sys:.1f} us sys"
    return f"  {label:<10} median {med:>10,.0f} qps   runs [{each}]{cpu}{extra}"


def _lost(runs: list[dict[str, Any]]) -> str:
    return "   lost [" + ", ".join(f"{r['lost']:.0f}/{r['sent']:.0f}" for r in runs) + "]"


def test_cached_qps(world: World) -> None:
    w = world
    for server in SERVERS:  # every name fetched once, then a short warm-up run
        w.perf(server, w.cached, *PRIME_OPTS)
    for server in SERVERS:
        w.perf(server, w.cached, *CACHED_WARMUP_OPTS)
    status0 = w.resolverd.status()
    runs: dict[str, list[dict[str, Any]]] = {s: [] for s in SERVERS}
    for _, server in abba(CACHED_RUNS):
        runs[server].append(w.perf(server, w.cached, *CACHED_OPTS))
    status1 = w.resolverd.status()
    med = {s: h.median(r["qps"] for r in runs[s]) for s in SERVERS}
    ratio = med["resolverd"] / med["dnsmasq"]
    counters = _delta(status0, status1)
    target = TARGETS[world.report["build"]].cached
    figures: dict[str, Any] = {
        "names": f"{CACHED_TAGGED} tagged + {CACHED_UNTAGGED} untagged, all cached",
        "dnsperf_options": " ".join(CACHED_OPTS),
        "runs": runs,
        "median_qps": med,
        "ratio": ratio,
        "target": target,
        "resolverd_counters": counters,
        "reproduce": REPRO.format("cached"),
    }
    if PINNED:
        figures["pinned"] = _pinned_cached(w)
    w.save("cached", figures)
    print(f"\n[a] cached qps ({h.now_utc()}), {world.report['build']} build, one client: "
          f"dnsperf {' '.join(CACHED_OPTS)}")  # fmt: skip
    print(f"    {figures['names']}; unpinned; ABBA x{CACHED_RUNS}")
    for s in SERVERS:
        print(_row(s, runs[s], med[s], _lost(runs[s])))
    print(f"  ratio resolverd/dnsmasq {ratio:.3f}   (target >= {target})")
    print(f"  resolverd counters over the runs: {counters}")
    print(f"  dnsperf: {runs['resolverd'][0]['command']}")
    print(f"  reproduce: {figures['reproduce']}")
    if PINNED:
        p = figures["pinned"]
        print(f"  PINNED (servers on CPU 1, dnsperf on CPU 0): {p['median_qps']}")
        print(f"  PINNED ratio resolverd/dnsmasq {p['ratio']:.3f} (not the target figure)")
    assert ratio >= target, f"cached: resolverd {ratio:.3f} x dnsmasq (< {target})"


def _pinned_cached(w: World) -> dict[str, Any]:
    """The same cached runs with the servers on one CPU and dnsperf on the other (an extra,
    labelled figure; the targets apply to the unpinned ones)."""
    cpus = sorted(os.sched_getaffinity(0))
    if len(cpus) < 2:
        return {"skipped": "one CPU"}
    pids = [w.resolverd.pid, w.dnsmasq.pid]
    saved = {pid: os.sched_getaffinity(pid) for pid in pids}
    runs: dict[str, list[dict[str, Any]]] = {s: [] for s in SERVERS}
    try:
        for pid in pids:
            os.sched_setaffinity(pid, {cpus[1]})
        for _, server in abba(RUNS):
            port = w.port(server)
            argv = ["taskset", "-c", str(cpus[0]), "dnsperf", "-s", h.ROUTER_LAN4, "-p", str(port)]
            res = w.lab.run(w.lab.client, *argv, "-d", str(w.cached), *CACHED_OPTS, timeout=300)
            runs[server].append(h.parse_dnsperf(res.stdout))
    finally:
        for pid, mask in saved.items():
            os.sched_setaffinity(pid, mask)
    med = {s: h.median(r["qps"] for r in runs[s]) for s in SERVERS}
    return {"runs": runs, "median_qps": med, "ratio": med["resolverd"] / med["dnsmasq"]}


def _delta(before: dict[str, Any], after: dict[str, Any]) -> dict[str, int]:
    out = {}
    for sect, keys in (
        ("queries", ("total", "tagged", "ratelimited", "dropped", "pending_full", "servfail")),
        ("cache", ("hits", "misses")),
        ("breakout", ("ack_timeouts", "errors", "capped")),
    ):
        for key in keys:
            a, b = after.get(sect, {}).get(key), before.get(sect, {}).get(key)
            if isinstance(a, int) and isinstance(b, int):
                out[key] = a - b
    a_inst = after.get("breakout", {}).get("counters", {}).get("installed")
    b_inst = before.get("breakout", {}).get("counters", {}).get("installed")
    if isinstance(a_inst, int) and isinstance(b_inst, int):
        out["routes_installed"] = a_inst - b_inst
    return out


def test_miss_path(world: World) -> None:
    w = world
    for server in SERVERS:
        w.perf_many(server, w.miss_warmup[server], MISS_CLIENTS, *MISS_OPTS)
    runs: dict[str, list[dict[str, Any]]] = {s: [] for s in SERVERS}
    for run, server in abba(RUNS):
        if server == "resolverd":
            before = w.resolverd.status()
            res = w.perf_many(server, w.miss[server, run], MISS_CLIENTS, *MISS_OPTS)
            res["resolverd_counters"] = _delta(before, w.resolverd.status())
        else:
            before_set = h.ipset_count(w.lab, h.DM_IPSETS[1])
            res = w.perf_many(server, w.miss[server, run], MISS_CLIENTS, *MISS_OPTS)
            res["dnsmasq_ipset_v6_added"] = h.ipset_count(w.lab, h.DM_IPSETS[1]) - before_set
        runs[server].append(res)
    med = {s: h.median(r["qps"] for r in runs[s]) for s in SERVERS}
    lost = {s: sum(int(r["lost"]) for r in runs[s]) for s in SERVERS}
    ratio = med["resolverd"] / med["dnsmasq"]
    counted = [r["resolverd_counters"] for r in runs["resolverd"]]
    early = sum(c["ack_timeouts"] for c in counted)  # replies sent before their routes' ack
    routed = sum(c["routes_installed"] for c in counted)
    cpu = {s: h.median(r["cpu_user_us_per_query"] + r["cpu_sys_us_per_query"] for r in runs[s])
           for s in SERVERS}  # fmt: skip
    cpu_ratio = cpu["resolverd"] / cpu["dnsmasq"]
    target = TARGETS[world.report["build"]]
    figures = {
        "names": f"{MISS_PER_RUN} unique per run: half tagged (new AAAA address each), half not",
        "dnsperf_options": " ".join(MISS_OPTS),
        "runs": runs,
        "median_qps": med,
        "lost_total": lost,
        "replies_before_their_routes": early,
        "routes_installed": routed,
        "ratio": ratio,
        "cpu_us_per_miss": cpu,
        "cpu_ratio": cpu_ratio,
        "target": target.miss,
        "target_cpu_ratio": target.miss_cpu,
        "reproduce": REPRO.format("miss"),
        "note": "resolverd installs a route + ipset entry per new tagged address before the "
        "reply; dnsmasq adds the address to an ipset only (no routes)",
    }
    w.save("miss", figures)
    print(f"\n[b] miss path ({h.now_utc()}), {world.report['build']} build, {MISS_CLIENTS} "
          f"clients at once, each: dnsperf "
          f"{' '.join(MISS_OPTS)}")  # fmt: skip
    print(f"    {figures['names']}; unpinned; ABBA x{RUNS}")
    for s in SERVERS:
        print(_row(s, runs[s], med[s], _lost(runs[s])))
    for r in runs["resolverd"]:
        print(f"  resolverd counters: {r['resolverd_counters']}")
    added = [r["dnsmasq_ipset_v6_added"] for r in runs["dnsmasq"]]
    print(f"  dnsmasq ipset v6 entries added: {added}")
    tagged = RUNS * MISS_PER_RUN // 2
    print(f"  resolverd: {routed} of {tagged} tagged addresses routed, {early} replies sent "
          "before their routes were acknowledged (ack_timeouts)")  # fmt: skip
    print(f"  ratio resolverd/dnsmasq {ratio:.3f}   (target >= {target.miss}, no lost queries)")
    cpu_target = "none" if target.miss_cpu is None else f"<= {target.miss_cpu}"
    print(f"  CPU per miss, user + sys: resolverd {cpu['resolverd']:.1f} us, dnsmasq "
          f"{cpu['dnsmasq']:.1f} us: {cpu_ratio:.2f}x   (target {cpu_target})")  # fmt: skip
    print(f"  dnsperf: {runs['resolverd'][0]['command']}")
    print(f"  reproduce: {figures['reproduce']}")
    assert routed == tagged and early == 0, (
        f"miss path: {routed} of {tagged} routed, {early} replies before their routes"
    )
    assert ratio >= target.miss and lost["resolverd"] == 0, (
        f"miss path: resolverd {ratio:.3f} x dnsmasq (target {target.miss}), "
        f"{lost['resolverd']} queries lost"
    )
    assert target.miss_cpu is None or cpu_ratio <= target.miss_cpu, (
        f"miss path: resolverd's CPU per miss {cpu_ratio:.2f} x dnsmasq's (target {cpu_target})"
    )


def _fill(w: World) -> dict[str, Any]:
    """Ask every miss name (and the cached set) again from 16 LAN clients, each under the
    default per-client limit, until resolverd holds >= 60,000 names and >= 30,000 routes (the
    names dropped by the limit in test_miss_path were never cached). dnsmasq gets the same."""
    out: dict[str, Any] = {}
    for server in SERVERS:
        lines = w.cached.read_text().splitlines()
        for run in range(RUNS):
            lines += w.miss[server, run].read_text().splitlines()
        files = h.split(lines, len(h.EXTRA_CLIENTS), w.tmp, f"fill-{server}")
        passes = []
        for _ in range(4):
            t0 = time.monotonic()
            res = h.dnsperf_many(
                w.lab, h.ROUTER_LAN4, w.port(server), files, "-n", "1", "-c", "1",
                "-Q", FILL_QPS_PER_CLIENT,
            )  # fmt: skip
            passes.append(
                {"seconds": round(time.monotonic() - t0, 1), "lost": sum(r["lost"] for r in res)}
            )
            if server == "dnsmasq" or _filled(w.resolverd.status()):
                break
        out[server] = passes
    return out


def _filled(status: dict[str, Any]) -> bool:
    b = status["breakout"]
    return bool(
        status["cache"]["entries"] >= MEMORY_NAMES
        and b["routes_v4"] + b["routes_v6"] >= MEMORY_ROUTES
    )


def test_memory(world: World) -> None:
    w = world
    fill = _fill(w)
    time.sleep(2)
    loaded = {"resolverd": h.memory_kb(w.resolverd.pid), "dnsmasq": h.memory_kb(w.dnsmasq.pid)}
    st = w.resolverd.status()
    b = st["breakout"]
    state = {
        "resolverd_cache_entries": st["cache"]["entries"],
        "resolverd_routes": b["routes_v4"] + b["routes_v6"],
        "resolverd_ipset_entries": b["ipset_v4"] + b["ipset_v6"],
        "dnsmasq_cache_insertions": h.dnsmasq_cache_insertions(w.lab),
        "dnsmasq_ipset_entries": sum(h.ipset_count(w.lab, s) for s in h.DM_IPSETS),
    }
    rss = {s: {"idle_kb": w.idle[s]["VmRSS"], "loaded_kb": loaded[s]["VmRSS"]} for s in SERVERS}
    figures = {
        "idle": w.idle,
        "loaded": loaded,
        "rss": rss,
        "state": state,
        "fill": fill,
        "target_mib": TARGET_RSS_MIB,
        "reproduce": REPRO.format("memory"),
    }
    w.save("memory", figures)
    mib = {s: {k: v / 1024 for k, v in rss[s].items()} for s in SERVERS}
    print(f"\n[c] memory ({h.now_utc()}), VmRSS")
    for s in SERVERS:
        m, kb = mib[s], loaded[s]
        print(
            f"  {s:<10} idle {m['idle_kb']:6.1f} MiB   loaded {m['loaded_kb']:6.1f} MiB   "
            f"(anon {kb.get('RssAnon', 0) / 1024:.1f}, file {kb.get('RssFile', 0) / 1024:.1f}, "
            f"peak {kb.get('VmHWM', 0) / 1024:.1f})"
        )
    r, d = rss["resolverd"], rss["dnsmasq"]
    print(
        f"  ratio resolverd/dnsmasq idle {r['idle_kb'] / d['idle_kb']:.2f}, "
        f"loaded {r['loaded_kb'] / d['loaded_kb']:.2f}"
    )
    print(f"  state when measured: {state}")
    print(f"  fill passes: {fill}")
    print(f"  target: resolverd loaded <= {TARGET_RSS_MIB} MiB;  reproduce: {figures['reproduce']}")
    assert _filled(st), f"the fill did not reach {MEMORY_NAMES} names / {MEMORY_ROUTES} routes"
    assert mib["resolverd"]["loaded_kb"] <= TARGET_RSS_MIB, (
        f"resolverd RSS {mib['resolverd']['loaded_kb']:.1f} MiB > {TARGET_RSS_MIB} MiB"
    )


def test_routes_json_time(world: World) -> None:
    w = world
    if not _filled(w.resolverd.status()):
        _fill(w)
    walls, count = [], 0
    for _ in range(3):
        routes, wall = w.resolverd.routes()
        walls.append(wall)
        count = len(routes)
    med = h.median(walls)
    base = []  # the fixed cost of any resolverctl call (interpreter start, socket)
    for _ in range(3):
        t0 = time.perf_counter()
        w.resolverd.ctl("status", "--json")
        base.append(time.perf_counter() - t0)
    cmd = f"{' '.join(h.resolverctl_argv())} --socket SOCK routes --json"
    figures = {
        "routes": count,
        "wall_s": walls,
        "median_s": med,
        "target_s": TARGET_ROUTES_S,
        "status_json_wall_s": base,
        "command": cmd,
        "reproduce": REPRO.format("routes_json"),
        "dnsmasq": "no counterpart (dnsmasq keeps no routes); `ipset list` of its set is the "
        "closest",
    }
    t0 = time.perf_counter()
    h.ipset_members(w.lab, h.DM_IPSETS[1])
    figures["dnsmasq_ipset_save_s"] = time.perf_counter() - t0
    w.save("routes_json", figures)
    print(f"\n[d] resolverctl routes --json ({h.now_utc()}) with {count:,} routes")
    print(f"  wall {', '.join(f'{x:.3f}' for x in walls)} s   median {med:.3f} s")
    print(f"  (for scale, `resolverctl status --json`: median {h.median(base):.3f} s)")
    print(f"  (dnsmasq has no routes; `ipset save dm-v6`: {figures['dnsmasq_ipset_save_s']:.3f} s)")
    print(f"  command: {cmd}   target < {TARGET_ROUTES_S} s;  reproduce: {figures['reproduce']}")
    assert count >= MEMORY_ROUTES, f"only {count} routes"
    assert med < TARGET_ROUTES_S, f"routes --json took {med:.3f} s"
