"""Soak: resolverd at its shipped defaults, kernel mode, in the namespace lab, at half its
measured maximum rate for five minutes.

    make soak                    # = pytest tests/bench/test_soak.py -m soak -s (root)
    make soak SOAK_SECONDS=60    # a shorter trial
    make soak SOAK_QPS=5000      # take the rate from here instead of measuring the maximum

Steps, all in one run:
1. the lab of harness.py; the upstream answers with a short TTL (SOAK_TTL, 10 s), so names
   asked less often than that are misses again: the load is a steady mix of cached and
   uncached, tagged (routes and ipset entries) and untagged names over a bounded set of names;
2. a short dnsperf burst (one client, ``-c 4``, unlimited, 10 s) over the same kind of mix
   (with cold names of its own) measures the maximum rate; the soak runs at half of it
   (``-Q``), one client, for SOAK_SECONDS. Its first cycle over the cold names (about 30 s)
   installs a route and an ipset entry for each tagged one; after that every tagged miss
   refreshes a hold (holds last max(TTL, min_hold 300) + grace 30 s, so none lapses within
   five minutes) and the state stays bounded: the cache and the holds stop growing;
3. RSS is sampled every SAMPLE_S seconds; after the warm-up (the first 60 s, or a third of a
   shorter soak) a least-squares line is fitted and its slope must stay under
   SLOPE_LIMIT_KB_MIN (512 KB/min, i.e. 2 MB over the 4 measured minutes, about 1% of the
   RSS; for scale, 100 bytes kept per miss at 1,000 misses/s would be about 6 MB/min;
   SOAK_SLOPE_KB_MIN overrides it);
4. no query may be lost;
5. at the end the routes and set entries in the kernel equal the holds: the addresses of
   `resolverctl routes --json`, of `ip route show table 365 proto 245` (host routes, without
   the policy's own prefixes) and of `ipset save` are the same sets.

Figures are printed and written to tests/bench/results/soak.json.
"""

from __future__ import annotations

import os
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

import pytest

from tests.bench import harness as h

pytestmark = pytest.mark.soak

SOAK_SECONDS = float(os.environ.get("SOAK_SECONDS") or 300)
SOAK_QPS = float(os.environ.get("SOAK_QPS") or 0)
SOAK_TTL = 10
SAMPLE_S = 2.0
SLOPE_LIMIT_KB_MIN = float(os.environ.get("SOAK_SLOPE_KB_MIN") or 512)
HOT = 100  # tagged and as many untagged, asked all the time: cache hits
COLD_MAX = 20_000  # tagged (new AAAA address each) and as many untagged, asked once per cycle
BURST_OPTS = ("-c", "4", "-l", "10")
BURST_COLD = 5_000  # tagged and as many untagged, for the burst only


def test_soak() -> None:
    try:
        h.require_tools("dnsperf", "dnsmasq", "dig", "ipset")
    except h.BenchError as err:
        pytest.fail(str(err), pytrace=False)
    with tempfile.TemporaryDirectory(prefix="resolverd-soak-") as tmpdir:
        tmp = Path(tmpdir)
        try:
            with h.Lab(tmp, "soak") as lab:
                _soak(tmp, lab)
        except h.BenchError as err:
            pytest.fail(str(err), pytrace=False)


def _soak(tmp: Path, lab: h.Lab) -> None:
    names = h.Names()
    hot = h.interleave(names.tagged_v4("hot", HOT), names.untagged("hot", HOT))
    cold = h.interleave(names.tagged_v6("cold", COLD_MAX), names.untagged("cold", COLD_MAX))
    # The burst has cold names of its own, so the soak's first cycle installs new routes.
    bcold = h.interleave(names.tagged_v6("bc", BURST_COLD), names.untagged("bc", BURST_COLD))
    names.write(tmp / "hosts")
    h.start_upstream(lab, tmp / "hosts", ttl=SOAK_TTL)
    config = h.shipped_config(tmp)
    sample = hot + cold[:16] + bcold[:16]
    h.check_tags(config, [q for q in sample if _tagged(q)], [q for q in sample if not _tagged(q)])
    daemon = h.start_resolverd(lab, config)
    started = h.now_utc()

    # 1. the maximum rate over the mix, one client, unlimited
    burst_lines, _ = h.mix(hot, bcold, SOAK_TTL, share=0.25)
    burst_file = h.write_queries(tmp / "burst.txt", burst_lines)
    if SOAK_QPS > 0:
        burst: dict[str, Any] = {"qps": SOAK_QPS * 2, "from": "SOAK_QPS"}
    else:
        burst = h.dnsperf(lab, h.ROUTER_LAN4, h.RESOLVERD_PORT, burst_file, *BURST_OPTS)
    rate = max(1.0, burst["qps"] / 2)

    # 2. the soak
    lines, mix = h.mix(hot, cold, SOAK_TTL, qps=rate)
    soak_file = h.write_queries(tmp / "soak.txt", lines)
    opts = ("-c", "4", "-Q", f"{rate:.0f}", "-l", f"{SOAK_SECONDS:.0f}")
    argv = h.dnsperf_argv(h.ROUTER_LAN4, h.RESOLVERD_PORT, soak_file, *opts)
    status0 = daemon.status()
    samples: list[tuple[float, float]] = []
    t0 = time.monotonic()
    proc = subprocess.Popen(
        ["ip", "netns", "exec", lab.client, *argv],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    warmup = min(60.0, SOAK_SECONDS / 3)
    maps: dict[str, dict[str, int]] = {}
    try:
        while proc.poll() is None:
            t = time.monotonic() - t0
            samples.append((t, float(h.rss_kb(daemon.pid))))
            if t >= warmup and "after_warmup" not in maps:
                maps["after_warmup"] = h.smaps_breakdown(daemon.pid)
            time.sleep(SAMPLE_S)
        maps["end"] = h.smaps_breakdown(daemon.pid)
        out = proc.communicate(timeout=60)[0]
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(5)
    perf = h.parse_dnsperf(out)
    status1 = daemon.status()

    # 3. memory
    after = [(t, v) for t, v in samples if t >= warmup]
    slope = h.slope_per_min(after)
    # Not asserted, for reading the shape: a step shows as a flat second half.
    half = [(t, v) for t, v in after if t >= (warmup + SOAK_SECONDS) / 2]
    slope_half = h.slope_per_min(half)
    rss = [v for _, v in after] or [0.0]

    # 4. kernel == holds
    consistency = _consistency(lab, daemon, config)

    q0, q1 = status0["queries"], status1["queries"]
    c0, c1 = status0["cache"], status1["cache"]
    b1 = status1["breakout"]
    counters = {
        "queries": q1["total"] - q0["total"],
        "tagged": q1["tagged"] - q0["tagged"],
        "cache_hits": c1["hits"] - c0["hits"],
        "cache_misses": c1["misses"] - c0["misses"],
        "ratelimited": q1.get("ratelimited", 0) - q0.get("ratelimited", 0),
        "servfail": q1.get("servfail", 0) - q0.get("servfail", 0),
        "routes_installed": b1["counters"]["installed"]
        - status0["breakout"]["counters"]["installed"],
        "ack_timeouts": b1["ack_timeouts"] - status0["breakout"]["ack_timeouts"],
        "netlink_errors": b1["errors"] - status0["breakout"]["errors"],
        "holds_end": b1.get("holds"),
        "cache_entries_end": c1["entries"],
    }
    report = {
        "taken_at": started,
        "finished_at": h.now_utc(),
        "code": h.code_version(),
        "loadavg_end": Path("/proc/loadavg").read_text().split()[:3],
        "resolverd_config": config.read_text(),
        "upstream_ttl_s": SOAK_TTL,
        "max_rate": {k: v for k, v in burst.items()},
        "rate_qps": rate,
        "mix": mix,
        "dnsperf": {**perf, "command": "ip netns exec CLIENT " + " ".join(argv)},
        "counters": counters,
        "rss": {
            "samples_kb": samples,
            "warmup_s": warmup,
            "slope_kb_per_min": slope,
            "slope_second_half_kb_per_min": slope_half,
            "limit_kb_per_min": SLOPE_LIMIT_KB_MIN,
            "after_warmup_min_kb": min(rss),
            "after_warmup_max_kb": max(rss),
            "first_kb": samples[0][1] if samples else None,
            "last_kb": samples[-1][1] if samples else None,
            "mappings_kb": maps,
        },
        "consistency": consistency,
        "reproduce": f"make soak SOAK_SECONDS={SOAK_SECONDS:.0f}",
    }
    h.save_results("soak.json", report)
    print(
        f"\nsoak ({started} .. {report['finished_at']}), resolverd at shipped defaults, kernel mode"
    )
    lost = f" (lost {burst['lost']:.0f})" if "lost" in burst else f" ({burst.get('from')})"
    print(f"  max rate (burst, dnsperf {' '.join(BURST_OPTS)}): {burst['qps']:,.0f} qps{lost}")
    print(f"  soak: {rate:,.0f} qps for {SOAK_SECONDS:.0f} s; mix {mix}")
    print(f"  dnsperf: {report['dnsperf']['command']}")
    print(
        f"  sent {perf['sent']:,.0f}  completed {perf['completed']:,.0f}  lost {perf['lost']:,.0f}"
        f"  achieved {perf['qps']:,.0f} qps  avg latency {perf['avg_latency_ms']:.2f} ms"
    )
    print(f"  resolverd counters over the soak: {counters}")
    r = report["rss"]
    print(
        f"  RSS: first {r['first_kb']} KB, last {r['last_kb']} KB; after the {warmup:.0f} s "
        f"warm-up min {r['after_warmup_min_kb']:.0f} max {r['after_warmup_max_kb']:.0f} KB, "
        f"slope {slope:+.1f} KB/min over {len(after)} samples (limit {SLOPE_LIMIT_KB_MIN}; "
        f"second half alone {slope_half:+.1f} KB/min, not asserted)"
    )
    step = max(1, len(samples) // 25)
    print("  RSS MiB every ~" + f"{step * SAMPLE_S:.0f} s: " + " ".join(
        f"{v / 1024:.0f}" for _, v in samples[::step]
    ))  # fmt: skip
    if "after_warmup" in maps:
        a, e = maps["after_warmup"], maps["end"]
        print(
            "  resident KB by mapping, after warm-up -> end: "
            + ", ".join(f"{k} {a[k]} -> {e[k]}" for k in e)
        )
    print(f"  kernel vs holds: {_brief(consistency)}")
    print(f"  reproduce: {report['reproduce']}")
    problems = []
    if perf["lost"] != 0:
        problems.append(f"{perf['lost']:.0f} queries lost")
    if len(after) < 5:
        problems.append(f"only {len(after)} RSS samples after the warm-up")
    if slope > SLOPE_LIMIT_KB_MIN:
        problems.append(f"RSS grows {slope:.1f} KB/min (> {SLOPE_LIMIT_KB_MIN})")
    if not consistency["equal"]:
        problems.append(f"kernel and holds differ: {_brief(consistency)}")
    assert not problems, "; ".join(problems)


def _tagged(query: str) -> bool:
    name = query.split()[0]
    return name.endswith(h.TAGGED_SUFFIXES)


def _consistency(lab: h.Lab, daemon: h.Resolverd, config: Path) -> dict[str, Any]:
    """Holds vs table 365 (proto 245, host routes, policy prefixes left out) vs the ipsets.
    Tried up to three times: a sweep or a kernel set timeout between the reads would show as
    a difference that is not one."""
    prefixes = h.policy_prefix_hosts(config)
    result: dict[str, Any] = {}
    for attempt in range(3):
        routes, wall = daemon.routes()
        holds = {str(r["address"]) for r in routes}
        kernel = h.kernel_routes(lab) - prefixes
        sets = h.ipset_members(lab, h.IPSETS[0]) | h.ipset_members(lab, h.IPSETS[1])
        result = {
            "attempt": attempt + 1,
            "holds": len(holds),
            "not_installed": sum(1 for r in routes if r.get("installed") is False),
            "kernel_routes": len(kernel),
            "ipset_entries": len(sets),
            "policy_prefixes_left_out": sorted(prefixes),
            "holds_not_in_kernel": sorted(holds - kernel)[:20],
            "kernel_not_in_holds": sorted(kernel - holds)[:20],
            "holds_not_in_sets": sorted(holds - sets)[:20],
            "sets_not_in_holds": sorted(sets - holds)[:20],
            "routes_json_s": round(wall, 3),
            "equal": holds == kernel == sets,
        }
        if result["equal"]:
            break
        time.sleep(2)
    return result


def _brief(c: dict[str, Any]) -> str:
    return (
        f"{'EQUAL' if c['equal'] else 'DIFFERENT'}: holds {c['holds']}, kernel host routes "
        f"{c['kernel_routes']}, ipset entries {c['ipset_entries']} "
        f"(policy prefixes left out: {len(c['policy_prefixes_left_out'])}; "
        f"holds not installed: {c['not_installed']}; attempt {c['attempt']})"
        + (
            ""
            if c["equal"]
            else f"; holds-kernel {c['holds_not_in_kernel'][:5]}, kernel-holds "
            f"{c['kernel_not_in_holds'][:5]}, holds-sets {c['holds_not_in_sets'][:5]}, "
            f"sets-holds {c['sets_not_in_holds'][:5]}"
        )
    )
