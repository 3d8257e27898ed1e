"""Repairs alone (the `owners` fixture of tests/owners.py): the sweep removes lapsed holds and
puts back missing routes, the audit puts back rules and sets, a resettle removes what nothing
holds."""

from __future__ import annotations

import asyncio
import logging

import pytest

from resolver.net.links import KIND_RULE
from tests.owners import Owners, packed

pytestmark = pytest.mark.unit


async def installed(owners: Owners, address: str, ttl: float = 60) -> None:
    owners.installs.enqueue(owners.hold(address, ttl))
    await asyncio.sleep(0)
    assert owners.kernel.has_route(address)


async def test_the_sweep_removes_lapsed_holds_and_their_routes(owners: Owners) -> None:
    await installed(owners, "203.0.113.1", ttl=10)
    await installed(owners, "203.0.113.2", ttl=100)
    assert owners.repairs.sweep() == 0
    owners.clock.now += 50
    assert owners.repairs.sweep() == 1
    assert not owners.kernel.has_route("203.0.113.1") and owners.kernel.has_route("203.0.113.2")
    assert [h.address for h in owners.ledger] == ["203.0.113.2"]


async def test_a_route_someone_deleted_is_put_back_by_the_sweep_logged_once(
    owners: Owners, caplog: pytest.LogCaptureFixture
) -> None:
    await installed(owners, "203.0.113.1")
    with caplog.at_level(logging.WARNING, "resolver.net.repairs"):
        for _ in range(2):
            del owners.kernel.routes[(4, packed("203.0.113.1"), 32)]
            h = owners.ledger.get(packed("203.0.113.1"))
            assert h is not None
            owners.ledger.lost(h)  # what LinkWatch does with its RTM_DELROUTE
            owners.repairs.sweep()
            await asyncio.sleep(0)
            assert owners.kernel.has_route("203.0.113.1")
    assert owners.ledger.counters["repaired"] == 2
    assert len([m for m in caplog.messages if "putting back" in m]) == 1


async def test_an_inactive_breakout_does_not_put_routes_back(owners: Owners) -> None:
    await installed(owners, "203.0.113.1")
    owners.repairs.active = False  # stopping, or not started yet
    h = owners.ledger.get(packed("203.0.113.1"))
    assert h is not None
    del owners.kernel.routes[(4, h.packed, 32)]
    owners.ledger.lost(h)
    owners.repairs.sweep()
    await asyncio.sleep(0)
    assert not owners.kernel.has_route("203.0.113.1")


async def test_the_audit_puts_missing_rules_back(owners: Owners) -> None:
    rules = set(owners.kernel.rules_present)
    assert rules
    owners.kernel.rules_present.clear()
    await owners.repairs.audit()
    assert owners.kernel.rules_present == rules


async def test_a_deleted_rule_starts_an_audit_at_once(owners: Owners) -> None:
    rules = set(owners.kernel.rules_present)
    owners.kernel.rules_present.clear()
    owners.links.on_event(KIND_RULE, False, object())
    for _ in range(3):
        await asyncio.sleep(0)
    assert owners.kernel.rules_present == rules


async def test_a_destroyed_set_is_created_again_and_refilled(owners: Owners) -> None:
    await installed(owners, "203.0.113.1")
    owners.kernel.entries.clear()
    owners.kernel.sets_missing = ["m365-v4"]
    created = owners.kernel.sets_created
    await owners.repairs.audit()
    assert owners.kernel.sets_created == created + 1
    owners.installs.flush_refresh()  # what the refresh timer calls
    assert (4, packed("203.0.113.1")) in owners.kernel.entries


async def test_after_a_flush_the_next_install_puts_the_rules_back_first(owners: Owners) -> None:
    owners.kernel.rules_present.clear()
    owners.installs.rules_ok = False
    owners.installs.enqueue(owners.hold("203.0.113.1"))
    for _ in range(3):
        await asyncio.sleep(0)
    assert owners.kernel.rules_present and owners.installs.rules_ok
    assert owners.kernel.has_route("203.0.113.1")


async def test_resettle_removes_our_routes_that_nothing_holds(owners: Owners) -> None:
    await installed(owners, "203.0.113.1")
    owners.kernel.routes[(4, packed("203.0.113.50"), 32)] = True  # a removal that never happened
    await owners.repairs.resettle()
    assert not owners.kernel.has_route("203.0.113.50") and owners.kernel.has_route("203.0.113.1")


async def test_resettle_marks_what_the_kernel_lost(owners: Owners) -> None:
    await installed(owners, "203.0.113.1")
    owners.kernel.routes.clear()
    await owners.repairs.resettle()
    owners.repairs.sweep()
    await asyncio.sleep(0)
    assert owners.kernel.has_route("203.0.113.1")
