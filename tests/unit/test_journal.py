"""The hold journal (resolver/net/journal.py): records and replay, the ahead-of-time rule, damage,
compaction, the legacy state file, and the journal across starts of the breakout. A full or
read-only state directory: test_journal_statedir.py.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import threading
from typing import Any

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from resolver.net import records
from resolver.net.breakout import Breakout
from resolver.net.journal import AHEAD
from resolver.net.reconcile import restore_holds
from resolver.net.records import UNACCOUNTED, load, parse
from resolver.net.routes import Route
from tests.unit.breakout_fakes import (
    MATCHER,
    WALL,
    WAN,
    Clock,
    FakeKernel,
    answer,
    make_breakout,
    run,
    tagged,
)
from tests.unit.journal_fakes import hold, journal_log, new_journal, on_disk, read

pytestmark = pytest.mark.unit

# -- records and replay ------------------------------------------------------------------------


def test_records_replay_add_extend_remove_and_flush(tmp_path: Any) -> None:
    clock = Clock(1000.0)
    j = new_journal(str(tmp_path), clock)
    a = hold("203.0.113.1", "x.office.com", 1330.0)
    b = hold("2001:db8:365::1", "y.office.com", 1100.0)
    j.note([a, b])
    with open(records.path_of(str(tmp_path)), "rb") as fh:
        assert fh.readline() == b"resolverd-holds 1 365 245\n"
    disk = on_disk(str(tmp_path))
    assert disk["203.0.113.1"].expires == 1330.0 + AHEAD + WALL
    assert disk["203.0.113.1"].names == {"x.office.com": 1330.0 + AHEAD + WALL}
    assert disk["2001:db8:365::1"].row == 1

    # A second name (a CNAME chain): one record per name, the hold lives as its longest name.
    a.extend("y.sharepoint.com", 2, 1400.0)
    j.note([a])
    saved = on_disk(str(tmp_path))["203.0.113.1"]
    assert saved.expires == 1400.0 + AHEAD + WALL and saved.row == 2
    assert set(saved.names) == {"x.office.com", "y.sharepoint.com"}

    j.removed([b])
    assert "2001:db8:365::1" in on_disk(str(tmp_path))  # buffered: written by the sweep
    j.write_buffered()
    assert set(on_disk(str(tmp_path))) == {"203.0.113.1"}
    j.flushed()
    assert on_disk(str(tmp_path)) == {}
    j.note([hold("203.0.113.2", "z.office.com", 1200.0)])  # life goes on after a flush
    assert set(on_disk(str(tmp_path))) == {"203.0.113.2"}
    j.close()


def test_extensions_are_written_only_when_due(tmp_path: Any) -> None:
    clock = Clock(1000.0)
    j = new_journal(str(tmp_path), clock)
    h = hold("203.0.113.1", "x.office.com", 1330.0)
    j.note([h])
    path = records.path_of(str(tmp_path))
    size = os.path.getsize(path)

    def extend_to(expires: float) -> None:  # what Breakout.on_answer does on a cache hit
        h.expires = expires
        if h.expires > h.noted - AHEAD / 2:
            j.extended(h)

    extend_to(1340.0)  # the journal says 1360: nothing to write, nothing due
    assert os.path.getsize(path) == size and j._due == {}
    extend_to(1350.0)  # within AHEAD / 2 of 1360: due again, for the sweep to write
    assert os.path.getsize(path) == size and list(j._due.values()) == [h]
    assert on_disk(str(tmp_path))["203.0.113.1"].expires == 1360.0 + WALL  # still >= 1350
    extend_to(1352.0)  # still due once: the sweep writes the latest expiry
    j.write_buffered()
    assert on_disk(str(tmp_path))["203.0.113.1"].expires == 1352.0 + AHEAD + WALL
    # An answer after a long pause overtakes what the journal says in one step: written at
    # once, before the reply could leave, not a second later.
    extend_to(1500.0)
    assert j._due == {}
    assert on_disk(str(tmp_path))["203.0.113.1"].expires == 1500.0 + AHEAD + WALL
    # Due, then a longer TTL within the same second: the file (1530) would be overtaken
    # before the sweep: written at once as well.
    extend_to(1520.0)
    assert list(j._due.values()) == [h]
    extend_to(1529.0)
    assert j._due == {} and on_disk(str(tmp_path))["203.0.113.1"].expires == 1559 + WALL
    j.close()


@settings(max_examples=100, deadline=None)
@example([(20.0, 1), (0.5, 50)])  # due, then a longer TTL before the sweep wrote it
@given(st.lists(st.tuples(st.floats(0.05, 45.0), st.integers(0, 400)), min_size=1, max_size=40))
def test_the_journal_never_says_less_than_the_truth(steps: list[tuple[float, int]]) -> None:
    """Answers at any pace with any TTL, the sweep writing the buffer every second: at every
    instant a kill could happen, the expiry on disk is at least the hold's true one, and at
    most AHEAD (+1 s of rounding) more."""
    import tempfile

    with tempfile.TemporaryDirectory() as state_dir:
        clock = Clock(1000.0)
        j = new_journal(state_dir, clock)
        min_hold, grace = 30, 5
        h = hold("203.0.113.1", "x.office.com", clock.now + min_hold + grace)
        j.note([h])
        last_sweep = clock.now
        for gap, ttl in steps:
            clock.now += gap
            while clock.now - last_sweep >= 1.0:  # the sweeper's ticks in between
                last_sweep += 1.0
                j.write_buffered()
            if h.expires <= clock.now:
                continue  # lapsed: the sweeper would have removed it
            expires = clock.now + max(ttl, min_hold) + grace
            if expires > h.expires:  # what Breakout.on_answer does
                h.expires = expires
                if h.expires > h.noted - AHEAD / 2:
                    j.extended(h)
            said = on_disk(state_dir)["203.0.113.1"].expires
            truth = h.expires + WALL
            assert truth <= said <= truth + AHEAD + 1.0
        j.close()


def test_a_last_line_cut_short_is_ignored_and_never_glued_to(tmp_path: Any) -> None:
    clock = Clock()
    j = new_journal(str(tmp_path), clock)
    j.note([hold("203.0.113.1", "x.office.com", 1330.0)])
    j.close()
    path = records.path_of(str(tmp_path))
    with open(path, "ab") as fh:
        fh.write(b"+ 203.0.113.2 17000")  # the write a kill interrupted
    with journal_log() as logs:
        loaded = load(str(tmp_path))
    assert loaded.ok and loaded.problems == [] and set(loaded.holds) == {"203.0.113.1"}
    assert any("cut short" in line for line in logs.lines(logging.INFO))
    # The next process appends: the partial record is dropped first, not continued.
    j2 = new_journal(str(tmp_path), clock)
    j2.note([hold("203.0.113.3", "z.office.com", 1330.0)])
    j2.close()
    assert set(on_disk(str(tmp_path))) == {"203.0.113.1", "203.0.113.3"}


def test_a_bad_line_in_the_middle_makes_the_journal_untrustworthy(tmp_path: Any) -> None:
    clock = Clock()
    j = new_journal(str(tmp_path), clock)
    j.note([hold("203.0.113.1", "x.office.com", 1330.0)])
    j._write(b"garbage here\n", 1)
    j.note([hold("203.0.113.2", "y.office.com", 1330.0)])
    j.close()
    path = records.path_of(str(tmp_path))
    loaded = load(str(tmp_path))
    assert not loaded.ok
    assert loaded.problems == [f"{path}:3: cannot read b'garbage here' (unknown record)"]
    assert set(loaded.holds) == {"203.0.113.1", "203.0.113.2"}  # the rest still replays
    bad_header = parse(b"something else\n+ 203.0.113.1 1 1 x\n", "j")
    assert not bad_header.ok and bad_header.problems == ["j:1: not a resolverd hold journal"]
    assert parse(b"").ok and parse(b"resolverd-ho").ok  # empty, or the header cut short


def test_a_name_with_spaces_round_trips(tmp_path: Any) -> None:
    """The holds kept for an unreadable journal carry a name with spaces (UNACCOUNTED); the
    journal written at that start must read back, or every later start distrusts it."""
    clock = Clock()
    j = new_journal(str(tmp_path), clock)
    j.note([hold("203.0.113.1", UNACCOUNTED, 1330.0, row=0)])
    j.close()
    assert on_disk(str(tmp_path))["203.0.113.1"].names == {UNACCOUNTED: 1330.0 + AHEAD + WALL}


# -- compaction --------------------------------------------------------------------------------


def test_compaction_keeps_the_live_holds_and_the_lines_written_meanwhile(tmp_path: Any) -> None:
    async def body() -> None:
        clock = Clock(1000.0)
        seen: list[set[str]] = []
        loop = asyncio.get_running_loop()
        noted = threading.Event()

        def while_prepared() -> None:
            # While the worker is still busy, the loop records more: a kill at this instant
            # must find them in the journal.
            loop.call_soon_threadsafe(note_late)
            assert noted.wait(5)
            seen.append(set(on_disk(str(tmp_path))))

        j = new_journal(str(tmp_path), clock, prepared=while_prepared)
        holds = [hold(f"203.0.113.{i}", "x.office.com", 1330.0) for i in range(1, 41)]
        for h in holds:  # 40 writes, then half of them removed
            j.note([h])
        j.removed(holds[20:])
        j.write_buffered()
        path = records.path_of(str(tmp_path))
        lines_before = len(read(path).splitlines())
        late = hold("203.0.113.100", "late.office.com", 1330.0)

        def note_late() -> None:
            j.note([late])
            j.removed([holds[0]])
            j.write_buffered()
            noted.set()

        assert await j.compact(holds[:20])
        assert "203.0.113.100" in seen[0] and "203.0.113.1" not in seen[0]
        after = on_disk(str(tmp_path))
        assert set(after) == {f"203.0.113.{i}" for i in range(2, 21)} | {"203.0.113.100"}
        lines_after = len(read(path).splitlines())
        assert lines_after < lines_before and not j.due(20)
        j.note([hold("203.0.113.101", "x.office.com", 1330.0)])  # appends to the new file
        assert "203.0.113.101" in on_disk(str(tmp_path))
        assert [n for n in os.listdir(tmp_path) if n.endswith(".tmp")] == []
        j.close()

    run(body)


def test_restarts_do_not_push_expiries_further_out(tmp_path: Any) -> None:
    """A start restores a hold at what the journal says (up to AHEAD beyond the truth) and
    compacts: the rewrite keeps that value instead of adding AHEAD again, so a crash loop
    cannot keep a hold alive forever."""

    async def body() -> None:
        clock = Clock(1000.0)
        j = new_journal(str(tmp_path), clock)
        j.note([hold("203.0.113.1", "x.office.com", 1100.0)])
        j.close()
        first = on_disk(str(tmp_path))["203.0.113.1"].expires
        assert first == 1100.0 + AHEAD + WALL
        for _restart in range(5):
            clock.now += 2.0
            saved = on_disk(str(tmp_path))
            restored = restore_holds(saved, MATCHER.match, lambda _p: None, clock.now,
                                     clock.now + WALL)  # fmt: skip
            j = new_journal(str(tmp_path), clock)
            assert await j.compact(list(restored.values()))
            j.close()
        assert on_disk(str(tmp_path))["203.0.113.1"].expires <= first + 5  # ceil: < 1 s each

    run(body)


def test_the_legacy_state_file_is_imported_once(tmp_path: Any) -> None:
    async def body() -> None:
        legacy = tmp_path / records.LEGACY_FILE
        saved = {"expires": WALL + 2000.0, "row": 3, "names": {"outlook.office.com": WALL + 2000.0}}
        doc = {"holds": {"203.0.113.1": saved}}
        legacy.write_text(json.dumps(doc))
        loaded = load(str(tmp_path))
        assert loaded.ok and loaded.found
        assert loaded.holds["203.0.113.1"].names == {"outlook.office.com": WALL + 2000.0}
        assert loaded.holds["203.0.113.1"].row == 3
        clock = Clock(1000.0)
        restored = restore_holds(loaded.holds, MATCHER.match, lambda _p: None, clock.now,
                                 clock.now + WALL)  # fmt: skip
        j = new_journal(str(tmp_path), clock)
        assert await j.compact(list(restored.values()))
        j.close()
        assert not legacy.exists()  # the journal takes over
        assert on_disk(str(tmp_path))["203.0.113.1"].expires == WALL + 2000.0
        # Nothing at all: fine; a legacy file that does not parse: not trusted.
        assert load(str(tmp_path / "none")) == records.Loaded({}, True, [], False)
        (tmp_path / "bad").mkdir()
        (tmp_path / "bad" / records.LEGACY_FILE).write_text("{not json")
        bad = load(str(tmp_path / "bad"))
        assert not bad.ok and "unreadable" in bad.problems[0]

    run(body)


# -- the journal across starts of the breakout -------------------------------------------------


async def _start(state_dir: str, k: FakeKernel, clock: Clock) -> Breakout:
    b = make_breakout(state_dir, kernel=k, clock=clock)
    await b.start()
    return b


async def _held_once(state_dir: str) -> tuple[Clock, FakeKernel, float]:
    """A breakout that answered x.office.com with 203.0.113.1 (held 330 s), then stopped; and
    the expiry its journal says for it."""
    clock, k = Clock(), FakeKernel()
    b = await _start(state_dir, k, clock)
    await answer(b, tagged("x.office.com", "203.0.113.1"), 60)
    await b.stop()
    return clock, k, on_disk(state_dir)["203.0.113.1"].expires


def test_a_restored_hold_answered_again_is_not_pushed_out(tmp_path: Any) -> None:
    """After a restart a hold is at what the journal says (up to AHEAD beyond the truth). An
    answer that does not extend it past that must not record it again: that would add AHEAD on
    top at every restart, and keep a route up to a minute longer per crash (found by
    tests/netns/test_crash.py)."""

    async def body() -> None:
        clock, k, said = await _held_once(str(tmp_path))
        assert said == clock.now + 330 + AHEAD + WALL
        for _crash in range(3):  # a crash loop: restart, an answer, killed again
            clock.now += 10
            b = await _start(str(tmp_path), k, clock)
            await answer(b, tagged("x.office.com", "203.0.113.1"), 60)
            b.sweep()
            await b.stop()
            assert on_disk(str(tmp_path))["203.0.113.1"].expires == said
        # An answer that does extend it past what the journal says is recorded, ahead again.
        clock.now += 100
        b = await _start(str(tmp_path), k, clock)
        await answer(b, tagged("x.office.com", "203.0.113.1"), 600)
        assert on_disk(str(tmp_path))["203.0.113.1"].expires == clock.now + 630 + AHEAD + WALL
        await b.stop()

    run(body)


def test_a_restored_hold_whose_route_was_missing_is_not_pushed_out(tmp_path: Any) -> None:
    """Killed after the journal recorded a hold and before its route went in: the restart
    restores the hold at what the journal says and installs its route. That install must
    not record the hold again, with AHEAD on top of what the journal said: each such crash
    would keep the route AHEAD longer (found by tests/netns/test_crash.py in CI)."""

    async def body() -> None:
        clock, k, said = await _held_once(str(tmp_path))
        for _crash in range(3):
            k.routes.clear()  # the route never went in: the kill came first
            clock.now += 10
            b = await _start(str(tmp_path), k, clock)
            assert k.has_route("203.0.113.1")  # the restart put it in
            b.sweep()
            await b.stop()
            assert on_disk(str(tmp_path))["203.0.113.1"].expires == said

    run(body)


def test_a_corrupt_journal_keeps_the_kernels_routes_across_two_starts(tmp_path: Any) -> None:
    async def body() -> None:
        clock, k = Clock(), FakeKernel()
        b = await _start(str(tmp_path), k, clock)
        await answer(b, tagged("x.office.com", "203.0.113.1"), 60)
        await b.stop()
        # A route of ours the journal does not know (its record was in the damaged part).
        k.extra_routes = [Route(4, "203.0.113.99", 32, 365, 245, 0, 1, WAN, "192.0.2.1")]
        with open(records.path_of(str(tmp_path)), "ab") as fh:
            fh.write(b"\x00\xffdamage\n+ 203.0.113.2 1 1 x.office.com\n")
        b2 = await _start(str(tmp_path), k, clock)
        problems = b2.status()["journal"]["problems"]
        assert len(problems) == 1 and ":3: cannot read" in problems[0]
        assert k.ops("del_routes") == []  # nothing of ours removed
        routes = {r["address"]: r for r in b2.routes()}
        assert set(routes) == {"203.0.113.1", "203.0.113.99"}
        assert routes["203.0.113.99"]["names"] == [UNACCOUNTED]
        assert routes["203.0.113.99"]["hold_s"] == 330  # one hold period
        k.extra_routes = []
        await b2.stop()
        # The next start reads the journal written at that start: trusted again, and the
        # unaccounted route still kept for the rest of its hold period.
        clock.now += 100
        b3 = await _start(str(tmp_path), k, clock)
        assert b3.status()["journal"]["problems"] == []
        routes = {r["address"]: r for r in b3.routes()}
        assert set(routes) == {"203.0.113.1", "203.0.113.99"}
        assert 230 <= routes["203.0.113.99"]["hold_s"] <= 230 + AHEAD + 1
        assert k.ops("del_routes") == []
        await b3.stop()

    run(body)
