"""Breakout timing with a fake kernel: what waits on real timers (ack_timeout, the refresh
delay, a loop that stands still) or lets them run. Moved from tests/unit/test_breakout_holds.py:
the unit tier neither sleeps nor waits on real timers (tests/unit/test_tier_rules.py)."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Awaitable, Callable
from typing import Any

import pytest

from resolver.hooks import wait as settled
from resolver.net.breakout import Breakout
from resolver.net.links import KIND_ADDR, KIND_LINK, Addr, Link
from tests.unit.breakout_fakes import (
    WAN,
    FakeKernel,
    answer,
    run,
    started,
    tagged,
)

pytestmark = pytest.mark.integration


def test_slow_kernel_releases_the_answer_after_ack_timeout(tmp_path: Any) -> None:
    async def body() -> None:
        k = FakeKernel()
        b, k, _ = await started(tmp_path, kernel=k, ack_timeout=0.02)
        k.defer = True
        loop = asyncio.get_running_loop()
        t0 = loop.time()
        wait = b.on_answer(tagged("outlook.office.com", "203.0.113.10"), 60)
        assert wait is not None
        await settled(wait)
        assert 0.015 <= loop.time() - t0 < 0.5
        assert b.counters["ack_timeouts"] == 1
        assert b.status()["routes_v4"] == 0  # not acknowledged yet
        k.settle_all()
        assert b.status()["routes_v4"] == 1
        assert b.on_answer(tagged("outlook.office.com", "203.0.113.10"), 60) is None
        await b.stop()

    run(body)


LOOPS = ("asyncio", "uvloop")


def run_on(kind: str, body: Callable[[], Awaitable[None]]) -> None:
    """`body` on asyncio's own loop or on uvloop (the daemon's when installed): they order due
    timers and callbacks queued from other threads differently."""
    factory = asyncio.new_event_loop
    if kind == "uvloop":
        factory = pytest.importorskip("uvloop").new_event_loop
    with asyncio.Runner(loop_factory=factory) as runner:
        runner.run(body())  # type: ignore[arg-type]


async def stand_still(b: Breakout, k: FakeKernel, ack_after: float | None) -> Awaitable[None]:
    """An answer's batch sent, then the whole loop stopped for 60 ms (three ack_timeouts of
    20 ms, as a long garbage-collection pass does), the kernel's ack queued by another thread
    `ack_after` seconds into it (None: no ack). Returns what the answer waits on."""
    k.defer = True
    loop = asyncio.get_running_loop()
    wait = b.on_answer(tagged("outlook.office.com", "203.0.113.10"), 60)
    assert wait is not None
    await asyncio.sleep(0)  # the flush, called soon, sends the batch
    assert k.ops("add_routes")
    ack = None
    if ack_after is not None:
        ack = threading.Timer(ack_after, loop.call_soon_threadsafe, (k.settle_all,))
        ack.start()
    time.sleep(0.06)  # the loop stands still
    if ack is not None:
        ack.join()
    return settled(wait)


@pytest.mark.parametrize("loop_kind", LOOPS)
@pytest.mark.parametrize(("ack_after", "timeouts"), [(0.01, 0), (None, 1)], ids=["ack", "no-ack"])
def test_a_stall_past_ack_timeout_waits_for_an_ack_already_queued_and_no_longer(
    tmp_path: Any, loop_kind: str, ack_after: float | None, timeouts: int
) -> None:
    """An ack queued while the process stood still is no timeout; without one, the answer is
    released once, one grace after the stall."""

    async def body() -> None:
        b, k, _ = await started(tmp_path, ack_timeout=0.02)
        loop = asyncio.get_running_loop()
        t0 = loop.time()
        await (await stand_still(b, k, ack_after))
        assert loop.time() - t0 < 0.06 + 0.02 + 0.1  # the stall, one grace, some slack
        assert b.counters["ack_timeouts"] == timeouts
        assert b.status()["routes_v4"] == 1 - timeouts
        k.settle_all()  # a late ack still counts
        assert b.status()["routes_v4"] == 1
        await b.stop()

    run_on(loop_kind, body)


def test_set_refresh_only_when_meaningful_and_batched(tmp_path: Any) -> None:
    async def body() -> None:
        b, k, clock = await started(tmp_path, min_hold=100, grace=0)
        await answer(b, tagged("x.office.com", "203.0.113.1", "203.0.113.2"), 60)
        k.calls.clear()
        clock.now += 10  # 90 s left on the entries, a new hold of 100 s: not worth it
        assert b.on_answer(tagged("x.office.com", "203.0.113.1", "203.0.113.2"), 60) is None
        await asyncio.sleep(0.6)
        assert k.ops("add_entries") == []
        clock.now += 50  # 40 s left < half of 100 s
        assert b.on_answer(tagged("x.office.com", "203.0.113.1", "203.0.113.2"), 60) is None
        assert k.ops("add_entries") == []  # not on the reply path
        await asyncio.sleep(0.6)
        (refresh,) = k.ops("add_entries")
        assert sorted(t for _, _, t in refresh) == [100, 100]
        assert b.counters["refreshed"] == 2
        await b.stop()

    run(body)


def test_link_down_withdraws_and_link_up_restores(tmp_path: Any) -> None:
    async def body() -> None:
        b, k, _ = await started(tmp_path)
        await answer(b, tagged("x.office.com", "203.0.113.1", "2001:db8:365::1"), 60)
        assert b.status()["link_up"] is True
        b.parts.links.on_event(KIND_LINK, True, Link(WAN, "wan0", False))
        await asyncio.sleep(0)
        assert b.status()["link_up"] is False
        assert k.routes == {}
        assert (b.status()["routes_v4"], b.status()["routes_v6"]) == (0, 0)
        # While down, answers go out at once; the holds stay.
        assert b.on_answer(tagged("x.office.com", "203.0.113.1", "203.0.113.5"), 60) is None
        assert len(b.holds) == 3
        b.parts.links.on_event(KIND_LINK, True, Link(WAN, "wan0", True))
        await asyncio.sleep(0.01)
        assert b.status()["link_up"] is True
        for a in ("203.0.113.1", "203.0.113.5", "2001:db8:365::1"):
            assert k.has_route(a)
        await b.stop()

    run(body)


def test_losing_the_address_withdraws_that_family(tmp_path: Any) -> None:
    async def body() -> None:
        b, k, _ = await started(tmp_path)
        await answer(b, tagged("x.office.com", "203.0.113.1", "2001:db8:365::1"), 60)
        b.parts.links.on_event(KIND_ADDR, False, [Addr(WAN, 4, "192.0.2.2", "192.0.2.0/25", False)])
        await asyncio.sleep(0)
        assert not k.has_route("203.0.113.1") and k.has_route("2001:db8:365::1")
        assert b.status()["ready_v4"] is False and b.status()["link_up"] is True
        b.parts.links.on_event(KIND_ADDR, True, [Addr(WAN, 4, "192.0.2.2", "192.0.2.0/25", False)])
        await asyncio.sleep(0.01)
        assert k.has_route("203.0.113.1")
        await b.stop()

    run(body)
