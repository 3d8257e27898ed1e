"""LinkWatch alone, fed netlink events by hand (the `owners` fixture of tests/owners.py): which
link carries the routes, what a link or address going does to them, connected networks,
routes someone else deleted or put in our table."""

from __future__ import annotations

import asyncio

import pytest

from resolver.net.links import KIND_ADDR, KIND_LINK, KIND_ROUTE, Addr, Link
from resolver.net.routes import Route
from tests.owners import Owners, packed
from tests.unit.breakout_fakes import WAN

pytestmark = pytest.mark.unit

V4, V6 = "203.0.113.1", "2001:db8:365::1"


async def installed(owners: Owners, *addresses: str) -> None:
    for address in addresses:
        owners.installs.enqueue(owners.hold(address))
    await asyncio.sleep(0)
    assert all(owners.kernel.has_route(a) for a in addresses)


async def test_both_families_go_through_the_configured_link(owners: Owners) -> None:
    assert owners.links.ready() == {4: True, 6: True}
    assert owners.kernel.paths[4] is not None and owners.kernel.paths[4].oif == WAN
    assert owners.kernel.paths[4].gateway == "192.0.2.1"
    assert owners.kernel.paths[6] is not None and owners.kernel.paths[6].gateway == "2001:db8:b::1"


async def test_a_link_going_down_withdraws_its_routes_and_coming_up_restores_them(
    owners: Owners,
) -> None:
    await installed(owners, V4, V6)
    epoch = owners.ledger.epoch.value
    owners.links.on_event(KIND_LINK, True, Link(WAN, "wan0", False))
    await asyncio.sleep(0)
    assert owners.links.ready() == {4: False, 6: False}
    assert owners.kernel.routes == {} and len(owners.ledger) == 2  # the holds stay
    assert owners.ledger.counters["withdrawn"] == 2 and owners.ledger.counters["failovers"] == 1
    assert owners.ledger.epoch.value != epoch
    owners.links.on_event(KIND_LINK, True, Link(WAN, "wan0", True))
    for _ in range(3):  # the reassess, then the flush of the routes it queued
        await asyncio.sleep(0)
    assert owners.kernel.has_route(V4) and owners.kernel.has_route(V6)
    assert owners.ledger.counters["restored"] == 2 and owners.ledger.counters["failovers"] == 2


async def test_losing_an_address_withdraws_only_that_family(owners: Owners) -> None:
    await installed(owners, V4, V6)
    owners.links.on_event(KIND_ADDR, False, [Addr(WAN, 4, "192.0.2.2", "192.0.2.0/25", False)])
    await asyncio.sleep(0)
    assert owners.links.ready() == {4: False, 6: True}
    assert not owners.kernel.has_route(V4) and owners.kernel.has_route(V6)


async def test_a_network_that_becomes_connected_is_never_routed(owners: Owners) -> None:
    await installed(owners, "198.51.100.77")
    assert owners.links.skip_reason(packed("198.51.100.77")) is None
    owners.links.on_event(KIND_ADDR, True, [Addr(5, 4, "198.51.100.1", "198.51.100.0/24", False)])
    await asyncio.sleep(0)
    assert len(owners.ledger) == 0 and not owners.kernel.has_route("198.51.100.77")
    assert owners.links.skip_reason(packed("198.51.100.77")) is not None
    assert "198.51.100.0/24" in owners.links.report()["connected_networks"]


async def test_a_route_someone_else_deleted_is_lost_and_our_own_deletion_is_not(
    owners: Owners,
) -> None:
    await installed(owners, V4, "203.0.113.2")
    ours = owners.ledger.get(packed("203.0.113.2"))
    assert ours is not None
    owners.installs.remove([ours], "test")  # our deletion: its echo comes back
    owners.links.on_event(KIND_ROUTE, False, Route(4, "203.0.113.2", 32, 365, 245, 0, 1, WAN, None))
    assert owners.ledger.counters["route_lost"] == 0
    epoch = owners.ledger.epoch.value
    owners.links.on_event(KIND_ROUTE, False, Route(4, V4, 32, 365, 245, 0, 1, WAN, None))
    h = owners.ledger.get(packed(V4))
    assert h is not None and not h.installed and h in owners.ledger.missing
    assert owners.ledger.counters["route_lost"] == 1 and owners.ledger.epoch.value != epoch


async def test_someone_elses_host_route_in_our_table_keeps_the_address_unrouted(
    owners: Owners,
) -> None:
    foreign = Route(4, "203.0.113.9", 32, 365, 4, 0, 1, WAN, None)  # protocol 4: static, not ours
    owners.links.on_event(KIND_ROUTE, True, foreign)
    reason = owners.links.cached_skip_reason(packed("203.0.113.9"))
    assert reason is not None and "does not own" in reason
    owners.links.on_event(KIND_ROUTE, False, foreign)
    assert owners.links.cached_skip_reason(packed("203.0.113.9")) is None


async def test_resync_believes_the_kernel(owners: Owners) -> None:
    await installed(owners, V4, V6)
    del owners.kernel.routes[(4, packed(V4), 32)]  # gone while events were lost
    await owners.links.resync()
    h = owners.ledger.get(packed(V4))
    assert h is not None and not h.installed and set(owners.ledger.missing) == {h}
