"""The crossing between the event loop and a netlink Channel's writer thread, measured (root;
`make bench`).

A real `netlink.Channel` programs host routes (NLM_F_REPLACE over a pool of documentation
addresses: 198.51.100.0/24, 203.0.113.0/24, 2001:db8:1::/116) in a namespace the test builds
and removes. Two loads, each repeated REPEATS times on a fresh loop (the machine is shared:
ranges are printed, not single figures):

- `batches`: the loop submits one batch of BATCH routes per iteration while fewer than INFLIGHT
  are in flight, N_BATCHES in all, and does nothing else. Figures: the loop thread's CPU per
  batch (time.thread_time on the loop), the process's CPU per batch, each batch's latency
  (submit to settled, p50/p99) and the lateness of a 1 ms timer (p50/p99);
- `busy`: the same batches while a callback chain keeps the loop busy (BURN_US of Python per
  iteration, as a loop full of answers would): the interpreter lock is contended, the writer
  thread needs it back after each blocking call. Figures: batches settled per second, their
  latency and the timer's lateness.

Both loads also count voluntary context switches per batch, of the loop thread and of the
writer (/proc/thread-self/status): in the busy load the loop only blocks when the writer holds
the interpreter lock, so the loop's count is the contention it feels.

The measuring half runs inside the namespace: ``python -m tests.bench.test_handoff_bench
--inside [asyncio|uvloop]``.
"""

from __future__ import annotations

import asyncio
import json
import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from tests.bench import harness as h

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
N_BATCHES = 4000
BATCH = 8
INFLIGHT = 32
BUSY_SECONDS = 2.0
BURN_US = 500
TICK = 0.001
REPEATS = 5
TABLE = 1001


def _pool() -> list[tuple[int, bytes]]:
    v4 = [socket.inet_pton(socket.AF_INET, f"{net}.{i}") for net in ("198.51.100", "203.0.113")
          for i in range(1, 255)]  # fmt: skip
    v6 = [socket.inet_pton(socket.AF_INET6, f"2001:db8:1::{i:x}") for i in range(1, 4096)]
    return [(4, p) for p in v4] + [(6, p) for p in v6]


def _switches(tid: int | None = None) -> int:
    """Voluntary context switches of a thread of this process (the caller when `tid` is None)."""
    path = "/proc/thread-self/status" if tid is None else f"/proc/self/task/{tid}/status"
    with open(path) as f:
        for line in f:
            if line.startswith("voluntary_ctxt_switches:"):
                return int(line.split()[1])
    return 0


def _pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else 0.0


class _Run:
    """One load on one loop: batches of route replaces through a Channel, a 1 ms timer."""

    def __init__(self, busy: bool) -> None:
        from resolver.net import netlink
        from resolver.net.routes import NextHop, RouteEncoder

        self.loop = asyncio.get_running_loop()
        self.ch = netlink.Channel(netlink.NETLINK_ROUTE)
        self.ch.attach(self.loop)
        oif = socket.if_nametoindex("wan0")
        enc = RouteEncoder(
            TABLE, 245, {4: NextHop(oif, "192.0.2.1"), 6: NextHop(oif, "2001:db8:f::1")}
        )
        pool = _pool()
        # Every batch's messages packed up front: the figures are the crossing, not the encoder.
        self.messages = [
            [enc.add(f, p, 32 if f == 4 else 128) for f, p in
             (pool[(k * BATCH + j) % len(pool)] for j in range(BATCH))]
            for k in range(len(pool) // BATCH)
        ]  # fmt: skip
        self.busy = busy
        self.sent = 0
        self.settled = 0
        self.inflight = 0
        self.errors = 0
        self.latency: list[float] = []
        self.lateness: list[float] = []
        self.stopping = False
        self.producing = False
        self.done: asyncio.Future[None] = self.loop.create_future()
        self.limit = N_BATCHES

    def _tick(self, when: float) -> None:
        # perf_counter, not loop.time(): uvloop's clock counts whole milliseconds.
        now = time.perf_counter()
        self.lateness.append(now - when)
        if not self.stopping:
            self.loop.call_later(TICK, self._tick, time.perf_counter() + TICK)

    def _produce(self) -> None:
        self.producing = False
        if self.stopping or self.sent >= self.limit or self.inflight >= INFLIGHT:
            return
        batch = self.messages[self.sent % len(self.messages)]
        self.sent += 1
        self.inflight += 1
        self.ch.submit(batch, self._settled_at(time.perf_counter()))
        self._more()

    def _more(self) -> None:
        if not self.producing:
            self.producing = True
            self.loop.call_soon(self._produce)

    def _settled_at(self, t0: float) -> Callable[[list[int]], None]:
        def settled(errors: list[int]) -> None:
            self.latency.append(time.perf_counter() - t0)
            self.inflight -= 1
            self.settled += 1
            self.errors += sum(1 for e in errors if e)
            if self.settled >= self.limit and not self.done.done():
                self.done.set_result(None)
            else:
                self._more()

        return settled

    def _burn(self) -> None:
        end = time.perf_counter() + BURN_US / 1e6
        while time.perf_counter() < end:
            pass
        if not self.stopping:
            self.loop.call_soon(self._burn)

    async def measure(self) -> dict[str, Any]:
        # Warm up: the pool's routes exist, so that every later message is a replace.
        for batch in self.messages:
            fut: asyncio.Future[list[int]] = self.loop.create_future()
            self.ch.submit(batch, fut.set_result)
            await fut
        if self.busy:
            self.limit = 1 << 30
            self.loop.call_soon(self._burn)
        writer = next(t for t in threading.enumerate() if t.name.startswith("netlink-"))
        assert writer.native_id is not None
        sw0, wsw0 = _switches(), _switches(writer.native_id)
        t0, cpu0, proc0 = time.perf_counter(), time.thread_time(), time.process_time()
        self.loop.call_later(TICK, self._tick, time.perf_counter() + TICK)
        self._more()
        if self.busy:
            await asyncio.sleep(BUSY_SECONDS)
        else:
            await self.done
        wall = time.perf_counter() - t0
        cpu, proc = time.thread_time() - cpu0, time.process_time() - proc0
        sw, wsw = _switches() - sw0, _switches(writer.native_id) - wsw0
        self.stopping = True
        while self.inflight:
            await asyncio.sleep(0.01)
        self.ch.close()
        n = max(self.settled, 1)
        return {
            "batches": self.settled,
            "errors": self.errors,
            "batches_per_s": round(self.settled / wall),
            "loop_cpu_us_per_batch": round(cpu / n * 1e6, 1),
            "process_cpu_us_per_batch": round(proc / n * 1e6, 1),
            "latency_p50_us": round(_pct(self.latency, 0.5) * 1e6, 1),
            "latency_p99_us": round(_pct(self.latency, 0.99) * 1e6, 1),
            "timer_late_p50_us": round(_pct(self.lateness, 0.5) * 1e6, 1),
            "timer_late_p99_us": round(_pct(self.lateness, 0.99) * 1e6, 1),
            "loop_switches_per_batch": round(sw / n, 3),
            "writer_switches_per_batch": round(wsw / n, 3),
        }


def _new_loop(kind: str) -> asyncio.AbstractEventLoop:
    if kind == "uvloop":
        import uvloop

        return uvloop.new_event_loop()
    return asyncio.new_event_loop()


def inside(kind: str) -> dict[str, Any]:
    out: dict[str, Any] = {"loop": kind, "switch_interval_s": sys.getswitchinterval()}
    for load in ("batches", "busy"):
        runs = []
        for _ in range(REPEATS):
            loop = _new_loop(kind)
            try:

                async def one(busy: bool = load == "busy") -> dict[str, Any]:
                    return await _Run(busy).measure()

                runs.append(loop.run_until_complete(one()))
            finally:
                loop.close()
        out[load] = runs
    return out


@pytest.fixture
def bench_ns() -> Iterator[str]:
    try:
        with h.wan_namespace("r365h", "handoff") as ns:
            yield ns
    except h.BenchError as err:
        pytest.fail(str(err), pytrace=False)


BATCH_FIGURES = (
    "loop_cpu_us_per_batch", "process_cpu_us_per_batch", "batches_per_s", "latency_p50_us",
    "latency_p99_us", "timer_late_p50_us", "timer_late_p99_us", "loop_switches_per_batch",
    "writer_switches_per_batch",
)  # fmt: skip


def _span(runs: list[dict[str, Any]], key: str) -> str:
    values = sorted(r[key] for r in runs)
    return f"{values[0]}-{values[-1]} (median {values[len(values) // 2]})"


@pytest.mark.bench
@pytest.mark.parametrize("kind", ["asyncio", "uvloop"])
def test_loop_to_writer_thread_handoff(bench_ns: str, kind: str) -> None:
    env = {**os.environ, "PYTHONPATH": REPO}
    res = subprocess.run(
        ["ip", "netns", "exec", bench_ns, sys.executable, "-m", "tests.bench.test_handoff_bench",
         "--inside", kind],
        capture_output=True, text=True, cwd=REPO, env=env, timeout=600,
    )  # fmt: skip
    assert res.returncode == 0, res.stderr
    figures = json.loads(res.stdout.splitlines()[-1])
    print(f"\n{kind}: {REPEATS} runs each, ranges min-max")
    b, busy = figures["batches"], figures["busy"]
    print(f"  batches ({N_BATCHES} x {BATCH} routes, {INFLIGHT} in flight):")
    for key in BATCH_FIGURES:
        print(f"    {key:<26} {_span(b, key)}")
    print(f"  busy loop ({BURN_US} us of Python per iteration, {BUSY_SECONDS} s):")
    for key in BATCH_FIGURES[2:]:
        print(f"    {key:<26} {_span(busy, key)}")
    assert all(r["errors"] == 0 for r in b + busy)


if __name__ == "__main__":
    if sys.argv[1:2] == ["--inside"]:
        print(json.dumps(inside(sys.argv[2] if len(sys.argv) > 2 else "asyncio")))
