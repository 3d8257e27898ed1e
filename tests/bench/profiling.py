"""Where resolverd's miss path spends its time, and where its memory goes.

    make profile                     # = python -m tests.bench.profiling (root)

Runs the real daemon (``resolver.daemon.main``, at the shipped config of harness.py) in the
benchmark lab, three times:

1. under cProfile (``python -m tests.bench.profiling cprofile OUT --config FILE``: the wrapper
   calls main() and writes the stats when it returns, i.e. after SIGTERM), with the miss-path
   load of test_dns_bench: one dnsperf client (-c 4) asking unique names, half of them tagged
   with an AAAA address of their own (a route and an ipset entry each). Printed: the top 25
   functions by cumulative and by own time, and own time summed per package;
2. plain, sampled by py-spy (when it is installed in the venv) under the same load: cProfile
   inflates code made of many small calls, a sampler does not. Printed: the top 25 by own
   (leaf) samples and by inclusive samples;
3. under tracemalloc (``tracemalloc OUT --config FILE``; SIGUSR2 writes a snapshot), loaded
   with 60,000 cached names and 30,000 routes. Printed: the top 25 allocation sites by size,
   the traced memory per package and per owning resolver file/line, and RSS against what
   tracemalloc sees (and against the plain daemon's RSS after the same load, from run 2);
4. under tracemalloc again, the soak's kind of load (bounded names, short upstream TTL, so the
   state stops growing after the first cycle) at GROWTH_QPS, with snapshots after a warm-up
   and GROWTH_S (120 s; PROFILE_GROWTH_S overrides, 0 skips) later: the lines whose memory
   grows while the cache and the holds do not. This is what `make soak`'s RSS slope points at.

Between runs ``resolverd --cleanup`` removes what the previous one left in the kernel. Every
table goes to tests/bench/results/profile-*.txt (and the raw .pstats / py-spy / snapshot files
next to them). The load is slower under the profilers: read the shares, not the rates.
"""

from __future__ import annotations

import cProfile
import io
import os
import pstats
import signal
import subprocess
import sys
import tempfile
import time
import tracemalloc
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from tests.bench import harness as h

TOP = 25
RUNS = 2
NAMES_PER_RUN = 30_000  # half tagged: 2 runs = 60,000 names and 30,000 routes
MISS_OPTS = ("-n", "1", "-c", "4", "-l", "300")
TRACE_FRAMES = 8
GROWTH_S = 120.0  # between the two growth snapshots; PROFILE_GROWTH_S=0 skips the phase
GROWTH_WARMUP_S = 45.0
GROWTH_QPS = 1_500  # slow enough for the daemon under tracemalloc
GROWTH_TTL = 5
GROWTH_COLD = 5_000  # tagged and as many untagged


# -- the wrappers: run inside the router namespace in place of `-m resolver.daemon` ------------


def _wrap_cprofile(out: str, argv: list[str]) -> int:
    from resolver.daemon import main

    prof = cProfile.Profile()
    try:
        code: int = prof.runcall(main, argv)
    finally:
        prof.dump_stats(out)
    return code


def _wrap_tracemalloc(out: str, argv: list[str]) -> int:
    tracemalloc.start(TRACE_FRAMES)

    taken = [0]

    def snapshot(signum: int, frame: object) -> None:
        """Each SIGUSR2 writes OUT.1, OUT.2, ... (and OUT.N.overhead, written last)."""
        taken[0] += 1
        path = f"{out}.{taken[0]}"
        tracemalloc.take_snapshot().dump(path + ".tmp")
        Path(path + ".tmp").rename(path)
        Path(path + ".overhead").write_text(str(tracemalloc.get_tracemalloc_memory()))

    signal.signal(signal.SIGUSR2, snapshot)
    from resolver.daemon import main

    return main(argv)


# -- the driver ---------------------------------------------------------------------------------


def _package(filename: str) -> str:
    """A short owner for a source file: resolver.dns, pyroute2, asyncio, ..."""
    f = filename.replace("\\", "/")
    if f.startswith(("resolver/", "policy/", "tests/")):  # py-spy's relative names
        f = "/" + f
    for mark in ("/resolver/", "/policy/", "/tests/"):
        if mark in f:
            rest = f.split(mark, 1)[1].split("/")
            sub = rest[0] if len(rest) > 1 else rest[0].removesuffix(".py")
            return f"{mark.strip('/')}.{sub}" if mark != "/policy/" else "policy"
    if "site-packages/" in f:
        return f.split("site-packages/", 1)[1].split("/")[0].removesuffix(".py")
    if f.startswith("<frozen") or "importlib" in f:
        return "import machinery"
    if f.startswith("~") or f == "":
        return "builtins (C)"
    parts = f.split("/")
    if "asyncio" in parts:
        return "asyncio"
    return "stdlib:" + parts[-1].removesuffix(".py")


def _short(filename: str) -> str:
    for mark in ("/work/main/", str(h.ROOT) + "/", "site-packages/", "lib/python3."):
        if mark in filename:
            return filename.split(mark, 1)[1]
    return filename


def cprofile_tables(path: Path) -> tuple[str, dict[str, Any]]:
    stats = pstats.Stats(str(path))
    raw: dict[Any, Any] = stats.stats  # type: ignore[attr-defined]
    total = sum(v[2] for v in raw.values())
    rows = []
    for (fname, line, func), (_cc, nc, tt, ct, _callers) in raw.items():
        rows.append((f"{_short(fname)}:{line}({func})", nc, tt, ct, _package(fname)))
    out = io.StringIO()
    for key, label in ((3, "cumulative"), (2, "own (tottime)")):
        out.write(f"top {TOP} by {label} time; total own time {total:.2f} s\n")
        out.write(f"  {'calls':>9} {'own s':>8} {'own %':>6} {'cum s':>8}  function\n")
        for name, nc, tt, ct, _ in sorted(rows, key=lambda r: -float(r[key]))[:TOP]:
            out.write(f"  {nc:>9} {tt:>8.3f} {100 * tt / total:>5.1f}% {ct:>8.3f}  {name}\n")
        out.write("\n")
    per_pkg: Counter[str] = Counter()
    for row in rows:
        per_pkg[row[4]] += row[2]
    out.write("own time per package\n")
    for pkg, tt in per_pkg.most_common(20):
        out.write(f"  {tt:>8.3f} s {100 * tt / total:>5.1f}%  {pkg}\n")
    summary = {"total_own_s": total, "per_package_s": dict(per_pkg.most_common(20))}
    return out.getvalue(), summary


def pyspy_tables(path: Path) -> tuple[str, dict[str, Any]]:
    """From py-spy's raw (collapsed) output: leaf samples and inclusive samples per frame."""
    own: Counter[str] = Counter()
    incl: Counter[str] = Counter()
    pkg_own: Counter[str] = Counter()
    total = 0
    for line in path.read_text().splitlines():
        stack, _, count_s = line.rpartition(" ")
        if not stack or not count_s.isdigit():
            continue
        count = int(count_s)
        frames = [f for f in stack.split(";") if f]
        frames = [f for f in frames if not f.startswith("process ") and not f.startswith("thread ")]
        if not frames:
            continue
        total += count
        leaf = _pyspy_frame(frames[-1])
        own[leaf] += count
        pkg_own[_pyspy_pkg(frames[-1])] += count
        for f in set(map(_pyspy_frame, frames)):
            incl[f] += count
    out = io.StringIO()
    for counter, label in ((own, "own (leaf)"), (incl, "inclusive")):
        out.write(f"py-spy: top {TOP} by {label} samples; {total} samples\n")
        for frame, n in counter.most_common(TOP):
            out.write(f"  {n:>7} {100 * n / max(total, 1):>5.1f}%  {frame}\n")
        out.write("\n")
    out.write("py-spy: own samples per package\n")
    for pkg, n in pkg_own.most_common(15):
        out.write(f"  {n:>7} {100 * n / max(total, 1):>5.1f}%  {pkg}\n")
    return out.getvalue(), {"samples": total, "per_package": dict(pkg_own.most_common(15))}


def _pyspy_frame(frame: str) -> str:
    # "function (path/to/file.py:123)"
    func, _, rest = frame.partition(" (")
    return f"{_short(rest.rstrip(')'))} {func}" if rest else frame


def _pyspy_pkg(frame: str) -> str:
    _, _, rest = frame.partition(" (")
    return _package(rest.rsplit(":", 1)[0]) if rest else "native"


def _owner(tb: tracemalloc.Traceback, whole_file: bool = False) -> str:
    """The most recent resolver/policy frame of an allocation (a Traceback runs oldest to most
    recent): whose data it is, when the allocating line is a generic helper."""
    for f in reversed(list(tb)):
        if "/resolver/" in f.filename or "/policy/" in f.filename:
            return _short(f.filename) if whole_file else f"{_short(f.filename)}:{f.lineno}"
    return "(no resolver frame: imports, libraries)"


def tracemalloc_tables(
    path: Path, rss: dict[str, int], overhead: int, plain: dict[str, Any]
) -> tuple[str, Any]:
    snap = tracemalloc.Snapshot.load(str(path))
    stats = snap.statistics("lineno")
    total = sum(s.size for s in stats)
    out = io.StringIO()
    out.write(
        f"tracemalloc: {total / 2**20:.1f} MiB traced in {sum(s.count for s in stats):,} blocks\n"
    )
    out.write(f"top {TOP} allocation sites by size\n")
    for s in stats[:TOP]:
        frame = s.traceback[0]
        out.write(
            f"  {s.size / 2**20:>7.2f} MiB {100 * s.size / total:>5.1f}% {s.count:>9,} blocks  "
            f"{_short(frame.filename)}:{frame.lineno}\n"
        )
    per_pkg: Counter[str] = Counter()
    for s in stats:
        per_pkg[_package(s.traceback[0].filename)] += s.size
    out.write("\ntraced memory per package (allocating line's file)\n")
    for pkg, size in per_pkg.most_common(15):
        out.write(f"  {size / 2**20:>7.2f} MiB {100 * size / total:>5.1f}%  {pkg}\n")
    owner: Counter[str] = Counter()
    owner_file: Counter[str] = Counter()
    for tb_stat in snap.statistics("traceback"):
        owner[_owner(tb_stat.traceback)] += tb_stat.size
        owner_file[_owner(tb_stat.traceback, whole_file=True)] += tb_stat.size
    out.write("\ntraced memory per resolver file owning it (most recent resolver frame)\n")
    for key, size in owner_file.most_common(12):
        out.write(f"  {size / 2**20:>7.2f} MiB {100 * size / total:>5.1f}%  {key}\n")
    out.write(f"\ntop {TOP} resolver/policy lines owning traced memory\n")
    for key, size in owner.most_common(TOP):
        out.write(f"  {size / 2**20:>7.2f} MiB {100 * size / total:>5.1f}%  {key}\n")
    rss_kb = rss.get("VmRSS", 0)
    out.write(
        f"\nunder tracemalloc: RSS {rss_kb / 1024:.1f} MiB = traced {total / 2**20:.1f} MiB + "
        f"tracemalloc's own {overhead / 2**20:.1f} MiB + the rest "
        f"{(rss_kb * 1024 - total - overhead) / 2**20:.1f} MiB\n"
    )
    if plain:
        idle, loaded = plain["idle_kb"] / 1024, plain["loaded_kb"] / 1024
        imports = owner_file.get("(no resolver frame: imports, libraries)", 0) / 2**20
        data = total / 2**20 - imports
        out.write(
            f"plain daemon (no tracemalloc), same load: RSS idle {idle:.1f} MiB, loaded "
            f"{loaded:.1f} MiB (+{loaded - idle:.1f} MiB for {plain['names']:,} names and "
            f"{plain['routes']:,} routes). Traced data owned by resolver/policy code: "
            f"{data:.1f} MiB (~{data * 2**20 / max(plain['names'], 1):.0f} B per cached name "
            f"if it were all cache); the growth beyond it, {loaded - idle - data:.1f} MiB, is "
            "allocator slack and memory tracemalloc does not see (C allocations).\n"
        )
    summary = {
        "traced_mib": total / 2**20,
        "tracemalloc_overhead_mib": overhead / 2**20,
        "rss_under_tracemalloc": rss,
        "plain": plain,
        "per_package_mib": {k: v / 2**20 for k, v in per_pkg.most_common(15)},
        "per_owner_file_mib": {k: v / 2**20 for k, v in owner_file.most_common(12)},
        "top_owner_lines_mib": {k: v / 2**20 for k, v in owner.most_common(TOP)},
    }
    return out.getvalue(), summary


def _cleanup(lab: h.Lab, config: Path) -> Path:
    """`resolverd --cleanup` after a phase; and a config with a state directory of its own for
    the next one, so that it starts from nothing even when the cleanup failed (its reconcile
    then removes the routes nothing holds)."""
    res = lab.run(
        lab.router, sys.executable, "-m", "resolver.daemon", "--cleanup", "--config", str(config),
        check=False, timeout=300,
    )  # fmt: skip
    if res.returncode != 0:
        err = res.stderr.strip().splitlines()
        print(f"warning: resolverd --cleanup failed: {err[-1] if err else res.returncode}")
    _phase[0] += 1
    sub = config.parent.parent / f"phase{_phase[0]}"
    sub.mkdir(exist_ok=True)
    return h.shipped_config(sub)


_phase = [0]


def _first_config(tmp: Path) -> Path:
    sub = tmp / "phase0"
    sub.mkdir(exist_ok=True)
    return h.shipped_config(sub)


def _load(lab: h.Lab, files: Sequence[Path]) -> list[dict[str, Any]]:
    return [h.dnsperf(lab, h.ROUTER_LAN4, h.RESOLVERD_PORT, f, *MISS_OPTS) for f in files]


def _snapshot(lab: h.Lab, d: h.Resolverd, base: Path, n: int) -> tuple[Path, int]:
    """Ask the tracemalloc wrapper for snapshot n; its path and tracemalloc's own memory."""
    d.proc.send_signal(signal.SIGUSR2)
    path, overhead = Path(f"{base}.{n}"), Path(f"{base}.{n}.overhead")
    for _ in range(900):
        if path.exists() and overhead.exists():
            return path, int(overhead.read_text())
        if d.proc.poll() is not None:
            break
        time.sleep(0.2)
    raise h.BenchError("no tracemalloc snapshot written:\n" + lab.log_tail(d.log))


def _growth(
    lab: h.Lab,
    config: Path,
    wrapper: list[str],
    tmp: Path,
    hot: list[str],
    cold: list[str],
    seconds: float,
) -> dict[str, Any]:
    """Where memory grows while the state does not: the soak's kind of load (hot names cached,
    cold names expiring every GROWTH_TTL and asked again) at GROWTH_QPS, snapshots after the
    warm-up and `seconds` later, compared line by line."""
    base = h.RESULTS / "profile-growth.tracemalloc"
    d = h.start_resolverd(
        lab, config, wrapper=[*wrapper[1:], "tracemalloc", str(base)], log="growth.log"
    )
    lines, mix = h.mix(hot, cold, GROWTH_TTL, qps=GROWTH_QPS)
    qfile = h.write_queries(tmp / "growth.txt", lines)
    total_s = GROWTH_WARMUP_S + seconds + 5
    argv = h.dnsperf_argv(
        h.ROUTER_LAN4, h.RESOLVERD_PORT, qfile, "-c", "4", "-Q", str(GROWTH_QPS), "-l",
        f"{total_s:.0f}",
    )  # fmt: skip
    proc = subprocess.Popen(
        ["ip", "netns", "exec", lab.client, *argv], stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    try:
        time.sleep(GROWTH_WARMUP_S)
        s1 = d.status()
        rss1 = h.rss_kb(d.pid)
        p1, o1 = _snapshot(lab, d, base, 1)
        time.sleep(seconds)
        s2 = d.status()
        rss2 = h.rss_kb(d.pid)
        p2, o2 = _snapshot(lab, d, base, 2)
        out = proc.communicate(timeout=total_s + 120)[0]
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(5)
    lab.stop_process(d.proc, timeout=60)
    perf = h.parse_dnsperf(out)
    snap1, snap2 = tracemalloc.Snapshot.load(str(p1)), tracemalloc.Snapshot.load(str(p2))
    t1 = sum(st.size for st in snap1.statistics("filename"))
    t2 = sum(st.size for st in snap2.statistics("filename"))
    diffs = snap2.compare_to(snap1, "lineno")
    owners: Counter[str] = Counter()
    for st in snap2.statistics("traceback"):
        owners[_owner(st.traceback)] += st.size
    for st in snap1.statistics("traceback"):
        owners[_owner(st.traceback)] -= st.size
    minutes = seconds / 60
    buf = io.StringIO()
    buf.write(
        f"growth under a steady load ({GROWTH_QPS} qps, upstream TTL {GROWTH_TTL} s, mix {mix}),"
        f" snapshots {GROWTH_WARMUP_S:.0f} s and {GROWTH_WARMUP_S + seconds:.0f} s in:\n"
        f"  cache entries {s1['cache']['entries']:,} -> {s2['cache']['entries']:,}, holds "
        f"{s1['breakout'].get('holds')} -> {s2['breakout'].get('holds')}, queries "
        f"{s2['queries']['total'] - s1['queries']['total']:,} between them\n"
        f"  traced {t1 / 2**20:.2f} -> {t2 / 2**20:.2f} MiB "
        f"({(t2 - t1) / 1024 / minutes:+.0f} KB/min); RSS {rss1 / 1024:.1f} -> "
        f"{rss2 / 1024:.1f} MiB ({(rss2 - rss1) / minutes:+.0f} KB/min, tracemalloc's own "
        f"{o1 / 2**20:.1f} -> {o2 / 2**20:.1f} MiB); dnsperf lost {perf['lost']:.0f}\n"
    )
    buf.write("  top 15 lines by growth (size, blocks)\n")
    for diff in diffs[:15]:
        fr = diff.traceback[-1]
        buf.write(
            f"    {diff.size_diff / 1024:>+9.1f} KB {diff.count_diff:>+8,}  "
            f"{_short(fr.filename)}:{fr.lineno}\n"
        )
    buf.write("  top 10 owning resolver lines by growth\n")
    for key, size in owners.most_common(10):
        buf.write(f"    {size / 1024:>+9.1f} KB  {key}\n")
    text = buf.getvalue()
    (h.RESULTS / "profile-growth.txt").write_text(text)
    print(text)
    return {
        "mix": mix,
        "seconds": seconds,
        "traced_kb_per_min": (t2 - t1) / 1024 / minutes,
        "rss_kb_per_min": (rss2 - rss1) / minutes,
        "cache_entries": [s1["cache"]["entries"], s2["cache"]["entries"]],
        "holds": [s1["breakout"].get("holds"), s2["breakout"].get("holds")],
        "top_growth_lines_kb": {
            f"{_short(d.traceback[-1].filename)}:{d.traceback[-1].lineno}": d.size_diff / 1024
            for d in diffs[:15]
        },
        "top_growth_owners_kb": {k: v / 1024 for k, v in owners.most_common(10)},
        "lost": perf["lost"],
    }


def run(tmp: Path, growth_s: float = 0) -> dict[str, Any]:
    h.require_tools("dnsperf", "dnsmasq", "dig", "ipset")
    names = h.Names()
    runs: dict[str, list[Path]] = {}
    for phase in ("cp", "sp", "tm"):
        runs[phase] = []
        for r in range(RUNS):
            t = names.tagged_v6(f"{phase}{r}", NAMES_PER_RUN // 2)
            u = names.untagged(f"{phase}{r}", NAMES_PER_RUN // 2)
            runs[phase].append(h.write_queries(tmp / f"{phase}{r}.txt", h.interleave(t, u)))
    growth_hot = h.interleave(names.tagged_v4("gh", 100), names.untagged("gh", 100))
    growth_cold = h.interleave(
        names.tagged_v6("gc", GROWTH_COLD), names.untagged("gc", GROWTH_COLD)
    )
    names.write(tmp / "hosts")
    results = h.RESULTS
    results.mkdir(parents=True, exist_ok=True)
    report: dict[str, Any] = {"taken_at": h.now_utc(), "code": h.code_version()}
    with h.Lab(tmp, "prof") as lab:
        upstream = h.start_upstream(lab, tmp / "hosts")
        config = _first_config(tmp)
        wrapper = [sys.executable, "-m", "tests.bench.profiling"]

        # 1. cProfile under the miss load
        pstats_path = results / "profile-miss.pstats"
        pstats_path.unlink(missing_ok=True)
        d = h.start_resolverd(
            lab, config, wrapper=[*wrapper[1:], "cprofile", str(pstats_path)], log="cprofile.log"
        )
        perf = _load(lab, runs["cp"])
        lab.stop_process(d.proc, timeout=60)
        for _ in range(50):
            if pstats_path.exists():
                break
            time.sleep(0.2)
        text, summary = cprofile_tables(pstats_path)
        report["cprofile"] = {"load": perf, **summary}
        head = (
            "cProfile, miss path: "
            + ", ".join(f"{p['qps']:,.0f} qps lost {p['lost']:.0f}" for p in perf)
            + " (under the profiler)\n"
        )
        (results / "profile-cprofile.txt").write_text(head + text)
        print("\n" + head + text)
        config = _cleanup(lab, config)

        # 2. py-spy, sampling the plain daemon under the same load
        pyspy = Path(sys.executable).parent / "py-spy"
        if pyspy.exists():
            d = h.start_resolverd(lab, config, log="pyspy-daemon.log")
            time.sleep(1)
            idle_kb = h.rss_kb(d.pid)
            raw = results / "profile-miss.pyspy.txt"
            sampler = subprocess.Popen(
                [str(pyspy), "record", "--pid", str(d.pid), "--format", "raw", "--rate", "250",
                 "--nonblocking", "--full-filenames", "--output", str(raw)],
                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
            )  # fmt: skip
            time.sleep(1)
            perf = _load(lab, runs["sp"])
            sampler.send_signal(signal.SIGINT)
            sampler.communicate(timeout=60)
            st = d.status()
            time.sleep(1)
            plain = {
                "idle_kb": idle_kb,
                "loaded_kb": h.rss_kb(d.pid),
                "names": st["cache"]["entries"],
                "routes": st["breakout"]["routes_v4"] + st["breakout"]["routes_v6"],
            }
            lab.stop_process(d.proc, timeout=60)
            if raw.exists():
                text, summary = pyspy_tables(raw)
                head = (
                    "py-spy, miss path: "
                    + ", ".join(f"{p['qps']:,.0f} qps lost {p['lost']:.0f}" for p in perf)
                    + "\n"
                )
                report["pyspy"] = {"load": perf, **summary}
                (results / "profile-pyspy.txt").write_text(head + text)
                print(head + text)
            else:
                report["pyspy"] = {"error": "py-spy wrote nothing"}
            config = _cleanup(lab, config)
        else:
            report["pyspy"] = {"skipped": "py-spy is not installed in the venv"}
            plain = {}
            print("py-spy is not installed in the venv: sampling profile skipped")

        # 3. tracemalloc after 60,000 names and 30,000 routes
        snap_path = results / "profile-memory.tracemalloc"
        for old in results.glob("profile-*.tracemalloc.*"):
            old.unlink()
        d = h.start_resolverd(
            lab, config, wrapper=[*wrapper[1:], "tracemalloc", str(snap_path)], log="tm.log"
        )
        perf = _load(lab, runs["tm"])
        status = d.status()
        time.sleep(1)
        rss = h.memory_kb(d.pid)
        snap, overhead = _snapshot(lab, d, snap_path, 1)
        text, summary = tracemalloc_tables(snap, rss, overhead, plain)
        b = status["breakout"]
        head = (
            f"tracemalloc after {status['cache']['entries']:,} cached names and "
            f"{b['routes_v4'] + b['routes_v6']:,} routes ({TRACE_FRAMES} frames)\n"
        )
        report["tracemalloc"] = {"load": perf, **summary}
        (results / "profile-memory.txt").write_text(head + text)
        print(head + text)
        lab.stop_process(d.proc, timeout=60)
        config = _cleanup(lab, config)

        # 4. growth: two snapshots GROWTH_S apart under a steady, bounded load
        if growth_s > 0:
            lab.stop_process(upstream)
            upstream = h.start_upstream(lab, tmp / "hosts", ttl=GROWTH_TTL)
            report["growth"] = _growth(lab, config, wrapper, tmp, growth_hot, growth_cold, growth_s)
            config = _cleanup(lab, config)
    report["finished_at"] = h.now_utc()
    h.save_results("profile.json", report)
    return report


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if len(args) >= 2 and args[0] in ("cprofile", "tracemalloc"):
        wrap = _wrap_cprofile if args[0] == "cprofile" else _wrap_tracemalloc
        return wrap(args[1], args[2:])
    with tempfile.TemporaryDirectory(prefix="resolverd-profile-") as tmp:
        try:
            run(Path(tmp), float(os.environ.get("PROFILE_GROWTH_S") or GROWTH_S))
        except h.BenchError as err:
            print(f"profile failed: {err}", file=sys.stderr)
            return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
