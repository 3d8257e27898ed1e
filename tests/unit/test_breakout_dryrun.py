"""mode: dry-run: every decision recorded with its reason, nothing sent to the kernel."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from resolver.net.dryrun import DryRunKernel
from tests.unit.breakout_fakes import (
    MATCHER,
    POLICY,
    Clock,
    answer,
    make_breakout,
    make_cfg,
    tagged,
)

pytestmark = pytest.mark.unit


def test_dry_run_records_decisions_and_touches_no_kernel(tmp_path: Any) -> None:
    async def body() -> None:
        clock = Clock()
        b = make_breakout(tmp_path, make_cfg(mode="dry-run", min_hold=100, grace=0), clock=clock)
        await b.start()
        assert isinstance(b.kernel, DryRunKernel)
        await answer(b, tagged("x.office.com", "203.0.113.1", "10.0.0.1"), 60)
        clock.now += 60  # 40 s left < half of a new 100 s hold
        assert b.on_answer(tagged("x.office.com", "203.0.113.1"), 60) is None
        clock.now += 200
        assert b.sweep() == 1
        s = b.status()
        assert s["mode"] == "dry-run"
        actions = [(d["action"], d["address"]) for d in s["dry_run_decisions"]]
        assert actions == [
            ("install", "203.0.113.1"),
            ("skip", "10.0.0.1"),
            ("refresh", "203.0.113.1"),
            ("remove", "203.0.113.1"),
        ]
        reasons = {d["action"]: d["reason"] for d in s["dry_run_decisions"]}
        assert reasons["skip"] == "never_route 10.0.0.0/8"
        assert reasons["remove"] == "hold expired"
        assert b.counters["installed"] == 1 and b.counters["skipped"] == 1
        await b.stop()
        assert not (tmp_path / "breakout-state.json").exists()  # dry-run keeps no state

    asyncio.run(body())


def test_dry_run_decision_list_is_bounded(tmp_path: Any) -> None:
    async def body() -> None:
        b = make_breakout(tmp_path, make_cfg(mode="dry-run"))
        await b.start()
        for i in range(700):
            b.on_answer(tagged("x.office.com", f"2001:db8:365::{i:x}"), 60)
        await asyncio.sleep(0)  # the batch "goes in"
        s = b.status()
        assert len(s["dry_run_decisions"]) == 500
        assert s["dry_run_decisions_total"] == 700
        assert s["routes_v6"] == 700  # what it would route
        await b.stop()

    asyncio.run(body())


def test_dry_run_flush_and_mode_change(tmp_path: Any) -> None:
    from resolver.net.errors import BreakoutError

    async def body() -> None:
        b = make_breakout(tmp_path, make_cfg(mode="dry-run"))
        await b.start()
        await answer(b, tagged("x.office.com", "203.0.113.1"), 60)
        assert (await b.flush())["routes"] == 1
        assert b.routes() == []
        assert b.status()["dry_run_decisions"][-1]["reason"] == "flush"
        with pytest.raises(BreakoutError, match="needs a restart"):
            await b.reconfigure(make_cfg(mode="kernel"), MATCHER, POLICY)
        await b.stop()

    asyncio.run(body())


def test_mode_off_is_inert(tmp_path: Any) -> None:
    async def body() -> None:
        b = make_breakout(tmp_path, make_cfg(mode="off"))
        await b.start()
        assert b.on_answer(tagged("x.office.com", "203.0.113.1"), 60) is None
        assert b.routes() == []
        await b.stop()

    asyncio.run(body())
