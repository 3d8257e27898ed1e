"""Route programming benchmarks, in a namespace of their own (root; `make bench`).

Prints, from one run on the same kernel:
- host routes programmed per second by resolverd's netlink.Channel (batched sendmsg),
  next to `ip -batch` and pyroute2's AsyncIPRoute.route("replace");
- the latency on_answer adds on the miss path for answers with 1, 2 and 8 new addresses
  (from the call to the awaitable's completion: the queue flush, the routes, the ipset
  entries and their acks), p50 and p99; and the cost of a cache hit;
- what the hold journal costs there: the same miss path with and without it (a Breakout with no
  state directory keeps no journal), and the cost of recording one new hold.

The measuring half runs inside the namespace: ``python -m tests.bench.test_routes_bench
--inside``; the test builds the namespace, runs it, prints the figures and removes it.
"""

from __future__ import annotations

import asyncio
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from typing import Any

import pytest

from resolver.hooks import wait as settled
from tests.bench import harness as h

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
N_ROUTES = 20_000
N_PYROUTE2 = 2_000
N_ANSWERS = 400


def _addr(i: int) -> bytes:
    return (0xC6120000 + i).to_bytes(4, "big")  # 198.18.0.0/15 (benchmarking range) as bytes


def _text(i: int) -> str:
    return socket.inet_ntoa(_addr(i))


async def _channel_rate() -> float:
    from resolver.net import netlink
    from resolver.net.routes import NextHop, RouteEncoder

    loop = asyncio.get_running_loop()
    ch = netlink.Channel(netlink.NETLINK_ROUTE)
    ch.attach(loop)
    enc = RouteEncoder(1001, 245, {4: NextHop(socket.if_nametoindex("wan0"), "192.0.2.1")})
    done: asyncio.Future[list[int]] = loop.create_future()
    t0 = time.perf_counter()
    ch.submit([enc.add(4, _addr(i), 32) for i in range(N_ROUTES)], done.set_result)
    errors = await done
    dt = time.perf_counter() - t0
    assert not any(errors), "route programming failed"
    ch.close()
    return N_ROUTES / dt


def _ip_batch_rate() -> float:
    lines = "".join(f"route add {_text(i)}/32 via 192.0.2.1 table 1002\n" for i in range(N_ROUTES))
    t0 = time.perf_counter()
    subprocess.run(["ip", "-batch", "-"], input=lines, text=True, check=True)
    return N_ROUTES / (time.perf_counter() - t0)


def _pyroute2_rate() -> float:
    from pyroute2 import AsyncIPRoute

    async def run() -> float:
        async with AsyncIPRoute() as ipr:
            idx = socket.if_nametoindex("wan0")
            t0 = time.perf_counter()
            for i in range(N_PYROUTE2):
                await ipr.route(
                    "replace", dst=f"{_text(i)}/32", gateway="192.0.2.1", oif=idx, table=1003
                )
            return N_PYROUTE2 / (time.perf_counter() - t0)

    loop = asyncio.SelectorEventLoop()
    try:
        return loop.run_until_complete(run())
    finally:
        loop.close()


async def _on_answer_latency(state_dir: str) -> dict[str, Any]:
    from policy.matcher import Matcher
    from policy.model import Policy, Rule
    from resolver.config import BreakoutConfig, LinkConfig, Mode
    from resolver.hooks import Tagged, pack_addresses
    from resolver.net.breakout import Breakout

    rule = Rule(row=1, purpose="bench", required=True, patterns=("*.office.com",))
    matcher = Matcher([rule])
    cfg = BreakoutConfig(
        mode=Mode.KERNEL, interface="wan0", gateway4="192.0.2.1", table=365, ipset4="bench-v4",
        links=(LinkConfig("wan0", "192.0.2.1", None),),  # what the config loader derives
        ipset6="bench-v6", max_entries=1_000_000, never_route=(),  # 198.18/15 is special
    )  # fmt: skip
    b = Breakout(cfg, state_dir, matcher, Policy((rule,)))
    await b.start()
    match = matcher.match("x.office.com")
    out: dict[str, Any] = {}
    base = 100_000
    for n in (1, 2, 8):
        samples = []
        for k in range(N_ANSWERS):
            addrs = pack_addresses(_text(base + j) for j in range(n))
            base += n
            t = Tagged("x.office.com", "x.office.com", match, addrs)  # type: ignore[arg-type]
            t0 = time.perf_counter()
            wait = b.on_answer(t, 300)
            assert wait is not None
            await settled(wait)
            samples.append(time.perf_counter() - t0)
            if k % 50 == 0:
                await asyncio.sleep(0)
        samples.sort()
        out[f"miss_{n}"] = {
            "p50_us": round(samples[len(samples) // 2] * 1e6, 1),
            "p99_us": round(samples[int(len(samples) * 0.99)] * 1e6, 1),
        }
    hit = Tagged("x.office.com", "x.office.com", match, pack_addresses([_text(100_000)]))  # type: ignore[arg-type]
    t0 = time.perf_counter()
    for _ in range(100_000):
        assert b.on_answer(hit, 300) is None
    out["hit_us"] = round((time.perf_counter() - t0) / 100_000 * 1e6, 2)
    out["errors"] = b.counters["netlink_errors"]
    out["ack_timeouts"] = b.counters["ack_timeouts"]
    await b.flush()
    await b.stop()
    return out


def _journal_note_us(state_dir: str, n: int = 20_000) -> float:
    """Mean cost of recording one new hold in the journal (`Journal.note`: one write(2))."""
    from resolver.net.holds import Hold
    from resolver.net.journal import Journal

    j = Journal(state_dir, 365, 245, time.monotonic, time.time)
    holds = [Hold(_addr(i), "x.office.com", time.monotonic() + 330, 1) for i in range(n)]
    t0 = time.perf_counter()
    for hold in holds:
        j.note([hold])
    took = time.perf_counter() - t0
    j.close()
    return round(took / n * 1e6, 2)


async def _journal_cost(state_dir: str) -> dict[str, Any]:
    """on_answer on the miss path with the journal and without it, side by side: two breakouts
    (tables 365 and 366; the second has no state directory, so keeps no journal) answer in
    turn, so that both see the same load on the machine. Plus the cost of recording one new
    hold (`Journal.note`: formatting and one write(2))."""
    from policy.matcher import Matcher
    from policy.model import Policy, Rule
    from resolver.config import BreakoutConfig, LinkConfig, Mode
    from resolver.hooks import Tagged, pack_addresses
    from resolver.net.breakout import Breakout

    rule = Rule(row=1, purpose="bench", required=True, patterns=("*.office.com",))
    matcher = Matcher([rule])
    match = matcher.match("x.office.com")
    sides: dict[str, Breakout] = {}
    for side, table, where in (("journal", 365, state_dir), ("none", 366, "")):
        cfg = BreakoutConfig(
            mode=Mode.KERNEL, interface="wan0", gateway4="192.0.2.1", table=table,
            rule_priority=1000 + table, ipset4=f"bench-{table}", ipset6=f"bench6-{table}",
            links=(LinkConfig("wan0", "192.0.2.1", None),), max_entries=1_000_000,
            never_route=(),
        )  # fmt: skip
        sides[side] = Breakout(cfg, where, matcher, Policy((rule,)))
        await sides[side].start()
    samples: dict[str, dict[int, list[float]]] = {side: {1: [], 2: [], 8: []} for side in sides}
    base = 200_000
    for n in (1, 2, 8):
        for k in range(2 * N_ANSWERS):
            side = ("journal", "none")[k % 2]
            addrs = pack_addresses(_text(base + j) for j in range(n))
            base += n
            t = Tagged("x.office.com", "x.office.com", match, addrs)  # type: ignore[arg-type]
            t0 = time.perf_counter()
            wait = sides[side].on_answer(t, 300)
            assert wait is not None
            await settled(wait)
            samples[side][n].append(time.perf_counter() - t0)
            if k % 50 == 0:
                await asyncio.sleep(0)
    out: dict[str, Any] = {"note_us": _journal_note_us(os.path.join(state_dir, "note"))}
    for side, b in sides.items():
        out[side] = {}
        for n, values in samples[side].items():
            values.sort()
            out[side][f"miss_{n}"] = {
                "p50_us": round(values[len(values) // 2] * 1e6, 1),
                "p99_us": round(values[int(len(values) * 0.99)] * 1e6, 1),
            }
        await b.flush()
        await b.stop()
    return out


def inside() -> dict[str, Any]:
    figures: dict[str, Any] = {}
    figures["channel_routes_per_s"] = round(asyncio.run(_channel_rate()))
    figures["ip_batch_routes_per_s"] = round(_ip_batch_rate())
    figures["pyroute2_replace_per_s"] = round(_pyroute2_rate())
    with tempfile.TemporaryDirectory(prefix="r365-bench-") as state_dir:
        figures["on_answer"] = asyncio.run(_on_answer_latency(state_dir))
    with tempfile.TemporaryDirectory(prefix="r365-bench-") as state_dir:
        figures["journal_cost"] = asyncio.run(_journal_cost(state_dir))
    return figures


@pytest.fixture
def bench_ns() -> Iterator[str]:
    try:
        with h.wan_namespace("r365b", "route") as ns:
            yield ns
    except h.BenchError as err:
        pytest.fail(str(err), pytrace=False)


@pytest.mark.bench
def test_route_programming_and_on_answer_latency(bench_ns: str) -> None:
    env = {**os.environ, "PYTHONPATH": REPO}
    res = subprocess.run(
        ["ip", "netns", "exec", bench_ns, sys.executable, "-m", "tests.bench.test_routes_bench",
         "--inside"],
        capture_output=True, text=True, cwd=REPO, env=env, timeout=300,
    )  # fmt: skip
    assert res.returncode == 0, res.stderr
    figures = json.loads(res.stdout.splitlines()[-1])
    a = figures["on_answer"]
    print()
    print(f"routes/s  resolverd Channel (batched): {figures['channel_routes_per_s']:>9,}")
    print(f"routes/s  ip -batch                  : {figures['ip_batch_routes_per_s']:>9,}")
    print(f"routes/s  pyroute2 route('replace')  : {figures['pyroute2_replace_per_s']:>9,}")
    for n in (1, 2, 8):
        m = a[f"miss_{n}"]
        print(
            f"on_answer miss, {n} new address(es): p50 {m['p50_us']:>7} us  p99 {m['p99_us']:>7} us"
        )
    print(f"on_answer cache hit: {a['hit_us']} us")
    cost = figures["journal_cost"]
    print(f"hold journal: one new hold recorded in {cost['note_us']} us (Journal.note, write(2))")
    for n in (1, 2, 8):
        j, none = cost["journal"][f"miss_{n}"], cost["none"][f"miss_{n}"]
        print(
            f"on_answer miss, {n} new: with the journal p50 {j['p50_us']:>7} us p99 "
            f"{j['p99_us']:>7} us; without p50 {none['p50_us']:>7} us p99 {none['p99_us']:>7} us"
        )
    assert a["errors"] == 0 and a["ack_timeouts"] == 0
    assert figures["channel_routes_per_s"] > figures["pyroute2_replace_per_s"]


if __name__ == "__main__":
    if sys.argv[1:] == ["--inside"]:
        print(json.dumps(inside()))
