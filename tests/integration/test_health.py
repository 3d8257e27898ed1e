"""Breakout health: the Verdict state machine, Paths.choose, the Prober on loopback sockets,
and the breakout's failover driven by scripted probe rounds (fake kernel, no root).

The Prober sets SO_MARK and SO_BINDTODEVICE on every probe socket. Setting a mark needs
CAP_NET_ADMIN, so a probe with mark 0 sets none (resolverd's marks are never 0), and binding to
`lo` needs no privilege (Linux 5.7 and later): these tests probe loopback listeners through
`lo` that way, as any user, without touching the host's routes. The probe tables and rules
themselves, and that a probe cannot take the tunnel, are proven in tests/netns/test_failover.py.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import socket
import time
from collections.abc import Iterator
from typing import Any

import pytest

from resolver.config import HealthConfig, LinkConfig, Mode
from resolver.hooks import wait as settled
from resolver.net import health
from resolver.net.breakout import Breakout
from resolver.net.health import Probe, Prober, Verdict
from resolver.net.linkchoice import LinkChoice, health_thresholds
from resolver.net.links import KIND_ROUTE, Addr, Link, NetView
from resolver.net.routes import NextHop, Route
from tests.unit.breakout_fakes import (
    MATCHER,
    POLICY,
    WAN,
    Clock,
    FakeKernel,
    answer,
    make_breakout,
    make_cfg,
    make_view,
    run,
    tagged,
)

pytestmark = pytest.mark.integration

WAN1 = 6
GW4, GW6 = "192.0.2.1", "2001:db8:b::1"
GW4_1, GW6_1 = "198.51.100.129", "2001:db8:d::1"
LINKS = (LinkConfig("wan0", GW4, GW6), LinkConfig("wan1", GW4_1, GW6_1))
WAN1_ADDRS = [
    Addr(WAN1, 4, "198.51.100.130", "198.51.100.128/25", False),
    Addr(WAN1, 6, "2001:db8:d::2", "2001:db8:d::/64", False),
]


# -- Verdict --------------------------------------------------------------------------------------


def rounds(v: Verdict, outcomes: str) -> list[bool | None]:
    """Feed "g"ood and "b"ad rounds; the verdict after each."""
    out = []
    for c in outcomes:
        v.round(c == "g", 1.0 if c == "g" else None)
        out.append(v.healthy)
    return out


def test_the_first_round_decides_either_way() -> None:
    up, down = Verdict(3, 2), Verdict(3, 2)
    assert up.healthy is None and down.healthy is None
    assert up.round(True, 2.5) is True and up.healthy is True and up.rtt_ms == 2.5
    assert down.round(False) is True and down.healthy is False and down.rtt_ms is None


def test_down_after_failures_in_a_row_and_up_after_successes() -> None:
    v = Verdict(failures=3, successes=2)
    assert rounds(v, "gbb") == [True, True, True]
    assert v.round(False) is True and v.healthy is False  # the third failed round in a row
    assert v.round(True) is False and v.healthy is False  # one good round is not enough
    assert v.round(True) is True and v.healthy is True
    assert v.round(True) is False  # no change: nothing to report


def test_a_good_round_resets_the_failures_and_a_bad_one_the_successes() -> None:
    v = Verdict(failures=2, successes=2)
    # Flapping: never two in a row, so the verdict never leaves its first state.
    assert rounds(v, "gbgbgbgb") == [True] * 8
    w = Verdict(failures=2, successes=2)
    assert rounds(w, "bgbgbgbg") == [False] * 8
    # Flips happen no faster than the thresholds allow.
    x = Verdict(failures=2, successes=3)
    assert rounds(x, "gbbggbggg") == [True, True, False, False, False, False, False, False, True]


def test_the_rtt_is_the_last_good_rounds() -> None:
    v = Verdict(2, 2)
    v.round(True, 3.0)
    v.round(True, 1.5)
    assert v.rtt_ms == 1.5
    v.round(False)
    assert v.rtt_ms is None  # no answer now: no current RTT


# -- Paths ----------------------------------------------------------------------------------------


def two_links_view() -> NetView:
    view = make_view()
    view.apply_link(True, Link(WAN1, "wan1", True))
    view.apply_addr(True, WAN1_ADDRS)
    return view


def test_paths_choose_the_first_usable_link_in_order_of_preference() -> None:
    paths = LinkChoice(LINKS, (2, 2))
    paths.follow(two_links_view())
    assert paths.choose() == {}  # no verdict yet: nothing usable, nothing changed
    assert paths.ready() == {4: False, 6: False}
    wan0, wan1 = paths.links
    for state in (wan1, wan0):
        assert state.verdict is not None
        state.verdict.round(True, 1.0)
    assert paths.choose() == {4: (None, wan0), 6: (None, wan0)}
    assert paths.next_hops() == {4: NextHop(WAN, GW4), 6: NextHop(WAN, GW6)}
    assert paths.choose() == {}  # asked again: no change


def test_paths_choose_per_family() -> None:
    view = two_links_view()
    paths = LinkChoice(LINKS, None)  # no health checks: link state alone decides
    paths.follow(view)
    wan0, wan1 = paths.links
    assert wan0.healthy is None and wan0.usable(4)
    paths.choose()
    view.apply_addr(False, [Addr(WAN, 6, "2001:db8:b::2", "2001:db8:b::/64", False)])
    paths.follow(view)
    assert paths.choose() == {6: (wan0, wan1)}  # IPv4 stays on wan0
    assert paths.next_hops() == {4: NextHop(WAN, GW4), 6: NextHop(WAN1, GW6_1)}
    assert (paths.describe(4), paths.describe(6)) == ("wan0", "wan1")


def test_an_unhealthy_link_moves_both_families_and_all_down_is_none() -> None:
    paths = LinkChoice(LINKS, (1, 1))
    paths.follow(two_links_view())
    wan0, wan1 = paths.links
    assert wan0.verdict is not None and wan1.verdict is not None
    wan0.verdict.round(True)
    wan1.verdict.round(True)
    paths.choose()
    wan0.verdict.round(False)
    assert paths.choose() == {4: (wan0, wan1), 6: (wan0, wan1)}
    wan1.verdict.round(False)
    assert paths.choose() == {4: (wan1, None), 6: (wan1, None)}
    assert paths.next_hops() == {4: None, 6: None} and paths.ready() == {4: False, 6: False}
    assert paths.describe(4) == "none"
    wan0.verdict.round(True)
    assert paths.choose() == {4: (None, wan0), 6: (None, wan0)}


def test_the_quick_questions_agree_with_ready() -> None:
    """`ready_for` (every tagged address) and `any_ready` (every miss) say what `ready()`
    says, with one family usable and the other not, both, and neither."""
    view = make_view()  # wan0 only
    paths = LinkChoice(LINKS, None)
    paths.follow(view)
    seen = []
    for step in ("as made", "IPv6 address gone", "link gone"):
        if step == "IPv6 address gone":
            view.apply_addr(False, [Addr(WAN, 6, "2001:db8:b::2", "2001:db8:b::/64", False)])
        elif step == "link gone":
            view.apply_link(False, Link(WAN, "wan0", True))
        paths.follow(view)
        paths.choose()
        ready = paths.ready()
        assert {family: paths.ready_for(family) for family in (4, 6)} == ready
        assert paths.any_ready() == any(ready.values())
        seen.append(ready)
    assert seen == [{4: True, 6: True}, {4: True, 6: False}, {4: False, 6: False}]


def test_a_new_interface_index_or_gateway_counts_as_a_move() -> None:
    view = two_links_view()
    paths = LinkChoice(LINKS, None)
    paths.follow(view)
    paths.choose()
    wan0 = paths.links[0]
    # wan0 comes back as a new link (a PPP session re-dialled): same name, new index.
    view.apply_link(False, Link(WAN, "wan0", True))
    view.apply_link(True, Link(9, "wan0", True))
    view.apply_addr(True, [Addr(9, 4, "192.0.2.2", "192.0.2.0/25", False),
                           Addr(9, 6, "2001:db8:b::2", "2001:db8:b::/64", False)])  # fmt: skip
    paths.follow(view)
    assert paths.choose() == {4: (wan0, wan0), 6: (wan0, wan0)}
    assert paths.next_hops()[4] == NextHop(9, GW4)
    # A new gateway for the same link (a reload): its routes must be re-installed too.
    moved = LinkChoice((LinkConfig("wan0", "192.0.2.3", GW6), LINKS[1]), None)
    moved.last = dict(paths.last)
    moved.follow(view)
    assert set(moved.choose()) == {4}


def test_status_of_a_link() -> None:
    paths = LinkChoice(LINKS, (2, 2))
    paths.follow(two_links_view())
    wan0 = paths.links[0]
    assert wan0.status()["healthy"] is None  # not probed yet
    assert wan0.verdict is not None
    wan0.verdict.round(True, 4.0)
    assert wan0.status() == {
        "interface": "wan0", "link_up": True, "healthy": True, "ready_v4": True,
        "ready_v6": True, "probe_rtt_ms": 4.0,
    }  # fmt: skip
    unprobed = LinkChoice(LINKS, None)
    unprobed.follow(two_links_view())
    assert unprobed.links[1].status()["healthy"] is None


def test_dry_run_has_no_verdicts() -> None:
    h = HealthConfig(targets=(("192.0.2.99", 443),))
    assert health_thresholds(make_cfg(health=h), True) == (3, 2)
    assert health_thresholds(make_cfg(health=h), False) is None  # no probes (dry-run)
    assert health_thresholds(make_cfg(), True) is None


# -- Prober on loopback ---------------------------------------------------------------------------

LO = Probe("lo", 0, frozenset({4, 6}))


@contextlib.contextmanager
def listener(backlog: int = 16) -> Iterator[socket.socket]:
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(backlog)
    try:
        yield sock
    finally:
        sock.close()


def refused_port() -> int:
    """A loopback port nobody listens on (bound, not listening: a SYN gets a reset)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


@contextlib.contextmanager
def black_hole() -> Iterator[tuple[str, int]]:
    """A loopback listener whose accept queue is full: Linux drops the next SYNs, so a connect
    neither completes nor is refused until it times out."""
    held: list[socket.socket] = []
    with listener(backlog=0) as sock:
        address = sock.getsockname()
        for _ in range(8):  # fill the queue: later connects stay in SYN-SENT
            c = socket.socket()
            c.setblocking(False)
            with contextlib.suppress(BlockingIOError):
                c.connect(address)
            held.append(c)
        time.sleep(0.05)
        try:
            yield address
        finally:
            for c in held:
                c.close()


def prober(*targets: tuple[str, int], timeout: float = 0.3, **kw: Any) -> Prober:
    p = Prober(targets, 0.2, timeout, lambda i, good, rtt: None, **kw)
    p.probes = [LO]
    return p


def test_a_listening_port_is_a_good_probe_with_its_rtt() -> None:
    with listener() as sock:
        good, rtt = asyncio.run(prober(sock.getsockname()).probe(LO))
    assert good is True and rtt is not None and 0 <= rtt < 300


def test_a_refused_port_is_good_the_reset_came_back_through_the_link() -> None:
    good, rtt = asyncio.run(prober(("127.0.0.1", refused_port())).probe(LO))
    assert good is True and rtt is not None


def test_no_answer_is_a_bad_probe_bounded_by_the_timeout() -> None:
    with black_hole() as address:
        started = time.monotonic()
        good, rtt = asyncio.run(prober(address, timeout=0.3).probe(LO))
        elapsed = time.monotonic() - started
    assert good is False and rtt is None
    assert 0.25 <= elapsed < 2.0  # generous: a loaded machine


def test_one_answering_target_is_enough_and_wrong_families_are_not_probed() -> None:
    with black_hole() as dead, listener() as alive:
        good, _rtt = asyncio.run(prober(dead, alive.getsockname()).probe(LO))
    assert good is True
    v4_only = Probe("lo", 0, frozenset({4}))
    assert asyncio.run(prober(("::1", 9)).probe(v4_only)) == (False, None)
    assert asyncio.run(prober(("127.0.0.1", 9)).probe(Probe("lo", 0, frozenset()))) == (
        False,
        None,
    )


def test_a_missing_interface_is_a_bad_probe() -> None:
    gone = Probe("nosuchif0", 0, frozenset({4}))
    with listener() as sock:
        assert asyncio.run(prober(sock.getsockname()).probe(gone)) == (False, None)


def test_rounds_never_overlap_and_keep_the_interval() -> None:
    """Each round's connects time out after 0.15 s; the interval is 0.1 s: a round that
    overruns delays the next, which starts only after it ended (no pile-up)."""
    spans: list[tuple[float, float]] = []
    open_sockets = {"now": 0, "max": 0}

    class Timed(Prober):
        async def round(self) -> None:
            start = time.monotonic()
            await super().round()
            spans.append((start, time.monotonic()))

        async def _connect(self, probe: Probe, target: tuple[str, int]) -> float | None:
            open_sockets["now"] += 1
            open_sockets["max"] = max(open_sockets["max"], open_sockets["now"])
            try:
                return await super()._connect(probe, target)
            finally:
                open_sockets["now"] -= 1

    async def body(address: tuple[str, int]) -> None:
        p = Timed((address, address), 0.1, 0.15, lambda i, good, rtt: None)
        p.probes = [LO, LO]
        task = asyncio.ensure_future(p.run())
        await asyncio.sleep(0.9)
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task

    with black_hole() as address:
        asyncio.run(body(address))
    assert len(spans) >= 3
    for (_s1, end), (start, _e2) in itertools.pairwise(spans):
        assert start >= end - 0.001
    assert open_sockets["max"] <= 4  # 2 links x 2 targets: one round's worth at most

    fast: list[float] = []

    async def quick() -> None:
        p = Prober((("127.0.0.1", refused_port()),), 0.2, 0.1,
                   lambda i, good, rtt: fast.append(time.monotonic()))  # fmt: skip
        p.probes = [LO]
        task = asyncio.ensure_future(p.run())
        await asyncio.sleep(0.75)
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task

    asyncio.run(quick())
    assert 3 <= len(fast) <= 5
    assert all(b - a >= 0.15 for a, b in itertools.pairwise(fast))


def test_a_closed_gate_skips_the_round_and_a_failing_round_does_not_end_the_rounds(
    caplog: pytest.LogCaptureFixture,
) -> None:
    outcomes: list[bool] = []
    gate = {"open": False}
    asked: list[float] = []

    async def may_run() -> bool:
        asked.append(time.monotonic())
        return gate["open"]

    def outcome(index: int, good: bool, rtt: float | None) -> None:
        outcomes.append(good)
        if len(outcomes) == 1:
            raise RuntimeError("a bug in the outcome")

    async def body() -> None:
        p = Prober((("127.0.0.1", refused_port()),), 0.2, 0.1, outcome, gate=may_run)
        p.probes = [LO]
        task = asyncio.ensure_future(p.run())
        await asyncio.sleep(0.3)
        assert outcomes == [] and len(asked) >= 1  # held back: counts neither way
        gate["open"] = True
        await asyncio.sleep(0.6)
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task

    with caplog.at_level(logging.ERROR, logger="resolver.net.health"):
        asyncio.run(body())
    assert len(outcomes) >= 2  # the round after the failing one ran
    assert "health probe round failed" in caplog.text


# -- the breakout with scripted probe rounds ------------------------------------------------------


class Script:
    """What each link's probes answer ({interface: good}) and what the rp_filter sysctls say
    ({"all" or interface: value}, "0" when not listed): the breakout's PathChecks."""

    def __init__(self) -> None:
        self.good = {"wan0": True, "wan1": True}
        self.rp_filter: dict[str, str] = {}
        self.calls = 0
        self.checks = health.PathChecks(probe=self.probe, read_sysctl=self.read_sysctl)

    async def probe(self, probe: Probe) -> tuple[bool, float | None]:
        self.calls += 1
        good = self.good.get(probe.interface, False) and bool(probe.families)
        return good, (1.0 if good else None)

    def read_sysctl(self, path: str) -> str:
        return self.rp_filter.get(path.split("/")[-2], "0") + "\n"


@pytest.fixture
def script() -> Script:
    return Script()


def health_cfg(**kw: Any) -> Any:
    h = HealthConfig(
        targets=(("203.0.113.200", 443),), interval=3600, failures=2, successes=2, timeout=1
    )
    return make_cfg(links=kw.pop("links", LINKS), health=h, **kw)


async def started(tmp_path: Any, script: Script, **kw: Any) -> tuple[Breakout, FakeKernel]:
    kernel = FakeKernel()
    clock = Clock()
    b = make_breakout(
        tmp_path, health_cfg(**kw), kernel=kernel, clock=clock, view=two_links_view(),
        checks=script.checks,
    )  # fmt: skip
    await b.start()
    return b, kernel


async def probe_rounds(b: Breakout, n: int) -> None:
    assert b.parts.probes.prober is not None
    for _ in range(n):
        await b.parts.probes.prober.round()
    await asyncio.sleep(0.01)  # the batches go in


def test_start_learns_the_links_before_installing_anything(tmp_path: Any, script: Script) -> None:
    async def body() -> None:
        script.good["wan0"] = False
        b, k = await started(tmp_path, script)
        assert script.calls == 2  # one round, both links, before reconcile
        assert k.paths == {4: NextHop(WAN1, GW4_1), 6: NextHop(WAN1, GW6_1)}
        assert b.status()["active"] == "wan1" and b.counters["failovers"] == 0
        tables = {(366, 4), (366, 6), (367, 4), (367, 6)}
        assert set(k.probes) == tables and k.probes[(367, 4)] == NextHop(WAN1, GW4_1)
        assert k.probes[(366, 4)] == NextHop(WAN, GW4)  # probed whatever its health
        assert {(999, 366, 0x73650000), (999, 367, 0x73650001), (1000, 365, None)} <= (
            k.rules_present
        )
        await b.stop()

    run(body)


def test_failover_failback_and_all_down(
    tmp_path: Any, script: Script, caplog: pytest.LogCaptureFixture
) -> None:
    async def body() -> None:
        b, k = await started(tmp_path, script)
        await answer(b, tagged("x.office.com", "203.0.113.1", "2001:db8:365::1"), 60)
        assert k.paths[4] == NextHop(WAN, GW4) and b.ready
        k.calls.clear()
        epoch = b.epoch.value
        script.good["wan0"] = False
        await probe_rounds(b, 1)
        assert b.status()["active"] == "wan0"  # one failed round: not yet
        with caplog.at_level(logging.WARNING, logger="resolver.net.failover"):
            await probe_rounds(b, 1)
        assert b.status()["active"] == "wan1" and b.epoch.value > epoch
        assert k.paths == {4: NextHop(WAN1, GW4_1), 6: NextHop(WAN1, GW6_1)}
        assert k.ops("del_routes") == []  # replaced in place: no gap
        held = {(4, socket.inet_pton(socket.AF_INET, "203.0.113.1"), 32),
                (6, socket.inet_pton(socket.AF_INET6, "2001:db8:365::1"), 128)}  # fmt: skip
        assert held in [set(batch) for batch in k.ops("add_routes")]  # both holds, one batch
        moves = [r.getMessage() for r in caplog.records if "moving" in r.getMessage()]
        assert len(moves) == 1 and "IPv4 and IPv6" in moves[0] and "wan0: unhealthy" in moves[0]
        assert b.counters["failovers"] == 1
        links = {s["interface"]: s for s in b.status()["links"]}
        assert links["wan0"]["healthy"] is False and links["wan1"]["healthy"] is True

        script.good["wan1"] = False
        await probe_rounds(b, 2)
        s = b.status()
        assert s["active"] is None and not b.ready and k.routes == {}
        assert len(b.holds) == 2 and (s["routes_v4"], s["routes_v6"]) == (0, 0)  # holds kept
        assert b.counters["failovers"] == 2
        assert b.on_answer(tagged("x.office.com", "203.0.113.1"), 60) is None  # no wait

        script.good.update(wan0=True, wan1=True)
        await probe_rounds(b, 1)
        assert b.status()["active"] is None  # one good round is not enough
        await probe_rounds(b, 1)
        assert b.status()["active"] == "wan0" and b.ready
        assert k.has_route("203.0.113.1") and k.has_route("2001:db8:365::1")
        assert k.paths[4] == NextHop(WAN, GW4) and b.counters["failovers"] == 3
        await b.stop()

    run(body)


def test_a_route_in_flight_during_a_move_is_sent_again_through_the_new_link(
    tmp_path: Any, script: Script
) -> None:
    async def body() -> None:
        b, k = await started(tmp_path, script)
        k.calls.clear()
        k.defer = True  # the kernel has not acknowledged the install when the move comes
        wait = b.on_answer(tagged("x.office.com", "203.0.113.7"), 60)
        assert wait is not None
        await asyncio.sleep(0)
        item = (4, socket.inet_pton(socket.AF_INET, "203.0.113.7"), 32)
        assert [item in batch for batch in k.ops("add_routes")] == [True]
        script.good["wan0"] = False
        await probe_rounds(b, 2)
        assert k.paths[4] == NextHop(WAN1, GW4_1)
        k.defer = False
        k.settle_all()
        await settled(wait)
        await asyncio.sleep(0.01)
        # Sent once through wan0 (that batch carried the old path), then again through wan1.
        assert sum(item in batch for batch in k.ops("add_routes")) == 2
        await b.stop()

    run(body)


def test_after_a_flush_probes_wait_for_the_rules_then_the_tables_come_back(
    tmp_path: Any, script: Script
) -> None:
    async def body() -> None:
        b, k = await started(tmp_path, script)
        assert b.parts.probes.prober is not None
        counts = await b.flush()
        assert counts["rules"] == 3 and k.rules_present == set()
        assert not b.parts.probes.live and b.parts.probes.hops == {}
        assert await b.parts.probes.gate() is False  # paused: links usable, rules gone
        assert b.status()["active"] == "wan0"  # the verdicts stay meanwhile
        k.probes.clear()
        await answer(b, tagged("x.office.com", "203.0.113.1"), 60)  # the rules come back
        assert (1000, 365, None) in k.rules_present
        assert await b.parts.probes.gate() is True
        assert set(k.probes) == {(366, 4), (366, 6), (367, 4), (367, 6)}
        assert (999, 367, 0x73650001) in k.rules_present
        await b.stop()

    run(body)


def test_a_flush_while_no_link_is_usable_does_not_stop_the_probes(
    tmp_path: Any, script: Script
) -> None:
    async def body() -> None:
        script.good.update(wan0=False, wan1=False)
        b, k = await started(tmp_path, script)
        assert not b.ready
        await b.flush()
        assert await b.parts.probes.gate() is True  # nothing would ever install: probe on
        assert (999, 366, 0x73650000) in k.rules_present
        script.good["wan1"] = True
        await probe_rounds(b, 2)
        assert b.status()["active"] == "wan1"
        await b.stop()

    run(body)


def test_a_probe_route_someone_deleted_is_put_back(tmp_path: Any, script: Script) -> None:
    async def body() -> None:
        b, k = await started(tmp_path, script)
        k.probes.clear()
        gone = Route(4, "0.0.0.0", 0, 367, 245, 0, 1, WAN1, GW4_1)
        b.parts.links.on_event(KIND_ROUTE, False, gone)
        await asyncio.sleep(0.01)
        assert k.probes == {(367, 4): NextHop(WAN1, GW4_1)}
        await b.stop()

    run(body)


def test_a_reload_that_reorders_the_links_moves_in_place(tmp_path: Any, script: Script) -> None:
    async def body() -> None:
        b, k = await started(tmp_path, script)
        await answer(b, tagged("x.office.com", "203.0.113.1"), 60)
        k.calls.clear()
        await b.reconfigure(health_cfg(links=LINKS[::-1]), MATCHER, POLICY)
        assert b.status()["active"] == "wan1" and k.paths[4] == NextHop(WAN1, GW4_1)
        assert [i for batch in k.ops("del_routes") for i in batch] == []  # no gap
        assert k.has_route("203.0.113.1")
        assert [s["healthy"] for s in b.status()["links"]] == [True, True]  # verdicts kept
        # The first probe table and mark now belong to wan1.
        assert k.probes[(366, 4)] == NextHop(WAN1, GW4_1)
        await b.reconfigure(health_cfg(links=LINKS[:1]), MATCHER, POLICY)  # wan1 removed
        assert b.status()["active"] == "wan0" and k.paths[4] == NextHop(WAN, GW4)
        assert (999, 367, 0x73650001) not in k.rules_present
        await b.stop()

    run(body)


def test_a_reload_that_adds_a_link_or_changes_the_health_checks_leaves_no_gap(
    tmp_path: Any, script: Script
) -> None:
    async def body() -> None:
        b, k = await started(tmp_path, script, links=LINKS[:1])
        await answer(b, tagged("x.office.com", "203.0.113.1"), 60)
        k.calls.clear()
        await b.reconfigure(health_cfg(), MATCHER, POLICY)  # wan1 added, behind wan0
        assert b.status()["active"] == "wan0" and b.counters["failovers"] == 0
        assert k.probes[(367, 4)] == NextHop(WAN1, GW4_1)
        assert [s["healthy"] for s in b.status()["links"]] == [True, True]
        h = HealthConfig(
            targets=(("203.0.113.201", 443),), interval=3600, failures=1, successes=1, timeout=1
        )
        await b.reconfigure(make_cfg(links=LINKS, health=h), MATCHER, POLICY)
        assert b.status()["active"] == "wan0" and b.counters["failovers"] == 0
        assert [i for batch in k.ops("del_routes") for i in batch] == []  # nothing withdrawn
        assert k.has_route("203.0.113.1") and k.paths[4] == NextHop(WAN, GW4)
        assert k.probes[(366, 4)] == NextHop(WAN, GW4)
        await b.stop()

    run(body)


def test_strict_reverse_path_filtering_is_reported(
    tmp_path: Any, script: Script, caplog: pytest.LogCaptureFixture
) -> None:
    script.rp_filter.update({"all": "0", "wan0": "1", "wan1": "2"})

    async def body() -> None:
        with caplog.at_level(logging.WARNING, logger="resolver.net.health"):
            b, _k = await started(tmp_path, script)
        await b.stop()

    run(body)
    warned = [r.getMessage() for r in caplog.records if "rp_filter" in r.getMessage()]
    assert len(warned) == 1 and "breakout link wan0: strict" in warned[0]
    assert "net.ipv4.conf.wan0.rp_filter=2" in warned[0]


def test_dry_run_with_health_uses_link_state(tmp_path: Any) -> None:
    async def body() -> None:
        b = make_breakout(tmp_path, health_cfg(mode="dry-run"), view=two_links_view())
        assert b.cfg.mode is Mode.DRY_RUN
        await b.start()
        assert b.parts.probes.prober is None and b.ready and b.status()["active"] == "wan0"
        await b.stop()

    run(body)
