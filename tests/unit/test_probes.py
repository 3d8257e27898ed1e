"""Probes alone (the `health_owners` fixture of tests/owners.py: two links, wan0 preferred, each
link's probes answered from a table instead of the network): the probe tables and rules, the
verdicts that move the routes, and the rounds paused by a flush and gated until the rules are
back."""

from __future__ import annotations

import asyncio

import pytest

from resolver.net.routes import NextHop, Route
from tests.owners import WAN1, Owners
from tests.unit.breakout_fakes import WAN

pytestmark = pytest.mark.unit


async def rounds(owners: Owners, n: int) -> None:
    prober = owners.probes.prober
    assert prober is not None
    for _ in range(n):
        await prober.round()
    for _ in range(3):  # the routes the verdict moved are flushed
        await asyncio.sleep(0)


async def test_each_link_gets_a_probe_table_and_a_marked_rule(health_owners: Owners) -> None:
    table = health_owners.cfg.probe_table
    probes = health_owners.kernel.probes
    assert probes[(table, 4)] == NextHop(WAN, "192.0.2.1")
    assert probes[(table + 1, 4)] == NextHop(WAN1, "198.51.100.1")
    assert probes[(table + 1, 6)] == NextHop(WAN1, "2001:db8:d::1")
    marked = {(t, mark) for _prio, t, mark in health_owners.kernel.rules_present if mark}
    fwmark = health_owners.cfg.health.fwmark if health_owners.cfg.health else 0
    assert marked == {(table, fwmark), (table + 1, fwmark + 1)}


async def test_a_link_that_stops_answering_loses_the_routes_to_the_next(
    health_owners: Owners,
) -> None:
    o = health_owners
    o.installs.enqueue(o.hold("203.0.113.1"))
    await asyncio.sleep(0)
    assert o.kernel.paths[4] == NextHop(WAN, "192.0.2.1") and o.kernel.has_route("203.0.113.1")
    changes = o.verdict_changes  # the first round's: each link healthy
    o.answers["wan0"] = False
    await rounds(o, 1)  # one failed round of two needed: no change yet
    assert o.verdict_changes == changes and o.kernel.paths[4] == NextHop(WAN, "192.0.2.1")
    await rounds(o, 1)
    assert o.verdict_changes == changes + 1
    assert o.kernel.paths[4] == NextHop(WAN1, "198.51.100.1")
    assert o.ledger.counters["failovers"] == 1 and o.kernel.has_route("203.0.113.1")
    o.answers["wan0"] = True
    await rounds(o, 2)  # two good rounds: wan0 is preferred again
    assert o.kernel.paths[4] == NextHop(WAN, "192.0.2.1")


async def test_after_a_pause_the_rounds_wait_for_the_rules_then_the_tables_come_back(
    health_owners: Owners,
) -> None:
    o = health_owners
    o.probes.pause()  # a flush is about to remove the probe tables and rules
    o.kernel.probes.clear()
    o.installs.rules_ok = False  # the flush removed our rules
    assert not await o.probes.gate()
    assert o.kernel.probes == {}  # left alone while paused
    o.installs.rules_ok = True  # an install put the rules back
    assert await o.probes.gate()
    assert o.kernel.probes[(o.cfg.probe_table, 4)] == NextHop(WAN, "192.0.2.1")


async def test_with_no_usable_link_the_rounds_resume_at_once(health_owners: Owners) -> None:
    o = health_owners
    o.answers.update(wan0=False, wan1=False)
    await rounds(o, 2)
    assert o.links.ready() == {4: False, 6: False}
    o.probes.pause()
    o.installs.rules_ok = False  # nothing will be installed to put them back
    assert await o.probes.gate()


async def test_a_probe_route_someone_deleted_is_to_be_put_back_one_of_ours_is_not(
    health_owners: Owners,
) -> None:
    o = health_owners
    table = o.cfg.probe_table
    gone = Route(4, "0.0.0.0", 0, table, o.cfg.route_protocol, 0, 1, WAN, "192.0.2.1")
    assert o.probes.route_gone(gone)
    assert not o.probes.route_gone(gone)  # told once
    o.probes.pause()  # our own removal (flush, reload)
    assert not o.probes.route_gone(gone)


async def test_a_kernel_side_that_cannot_probe_has_no_health_checks() -> None:
    from resolver.net.dryrun import DryRunKernel
    from tests.owners import HEALTH, TWO_LINKS, make_owners, two_links_view
    from tests.unit.breakout_fakes import make_cfg

    cfg = make_cfg(links=TWO_LINKS, health=HEALTH)
    o = make_owners(cfg, kernel=DryRunKernel(cfg), view=two_links_view())
    await o.start()
    try:
        assert o.probes.prober is None and o.probes.health is None
        assert o.links.ready() == {4: True, 6: True}  # by link state alone
    finally:
        o.close()
