"""Installs alone, over the fake kernel (the `owners` fixture of tests/owners.py): what goes to
the kernel in one batch, when an answer's batch is released, what a refusal or a silent kernel
leaves behind, removals and refreshes."""

from __future__ import annotations

import asyncio
import logging

import pytest

from tests.owners import Owners, make_owners
from tests.unit.breakout_fakes import make_cfg

pytestmark = pytest.mark.unit


async def test_holds_enqueued_in_one_iteration_go_to_the_kernel_in_one_batch(
    owners: Owners,
) -> None:
    holds = [owners.hold(a) for a in ("203.0.113.1", "203.0.113.2", "2001:db8:365::1")]
    batches = {id(owners.installs.enqueue(h)) for h in holds}
    assert len(batches) == 1 and owners.kernel.ops("add_routes") == []  # not before the flush
    await asyncio.sleep(0)
    (routes,) = owners.kernel.ops("add_routes")
    (entries,) = owners.kernel.ops("add_entries")
    assert len(routes) == len(entries) == 3
    assert all(owners.kernel.has_route(h.address) for h in holds)
    assert all(h.installed for h in holds) and owners.ledger.counters["installed"] == 3


async def test_a_batch_is_released_when_the_kernel_settles_not_before(owners: Owners) -> None:
    owners.kernel.defer = True
    h = owners.hold("203.0.113.1")
    batch = owners.installs.enqueue(h)
    await asyncio.sleep(0)
    assert not batch.done and not h.installed
    owners.kernel.settle_all()
    assert batch.done and not batch.timed_out and h.installed


async def test_a_silent_kernel_releases_the_batch_after_ack_timeout(owners: Owners) -> None:
    owners.kernel.defer = True
    owners.installs.ack_timeout = 0.0  # the timer is due at the next turn of the loop
    h = owners.hold("203.0.113.1")
    batch = owners.installs.enqueue(h)
    batch.waiters += 1  # an answer waits on it
    for _ in range(5):  # the flush, then the ack timer, each a turn of the loop or two
        await asyncio.sleep(0)
    assert (batch.done, batch.timed_out, h.installed) == (True, True, False)
    assert owners.ledger.counters["ack_timeouts"] == 1
    owners.kernel.settle_all()  # the late ack still counts
    assert h.installed


async def test_a_refused_route_is_counted_logged_and_left_for_the_sweep(
    owners: Owners, caplog: pytest.LogCaptureFixture
) -> None:
    good, bad = owners.hold("203.0.113.1"), owners.hold("203.0.113.2")
    owners.kernel.fail[bad.packed] = 1  # EPERM
    with caplog.at_level(logging.WARNING):
        batch = owners.installs.enqueue(good)
        owners.installs.enqueue(bad)
        await asyncio.sleep(0)
    assert batch.done and good.installed and not bad.installed
    assert set(owners.ledger.missing) == {bad}
    assert owners.ledger.counters["netlink_errors"] >= 1
    assert any("203.0.113.2" in m for m in caplog.messages)


async def test_remove_deletes_routes_and_entries_and_forgets_the_holds(owners: Owners) -> None:
    h = owners.hold("203.0.113.1")
    owners.installs.enqueue(h)
    await asyncio.sleep(0)
    epoch = owners.ledger.epoch.value
    owners.installs.remove([h], "hold expired")
    assert not owners.kernel.has_route("203.0.113.1")
    assert owners.kernel.entries == {} and len(owners.ledger) == 0
    assert owners.ledger.counters["removed"] == 1 and owners.ledger.epoch.value != epoch
    assert ("remove", "203.0.113.1", "hold expired") in owners.kernel.notes


async def test_own_deletions_are_told_from_someone_elses(owners: Owners) -> None:
    h = owners.hold("203.0.113.1")
    owners.installs.enqueue(h)
    await asyncio.sleep(0)
    owners.installs.remove([h], "test")
    assert owners.installs.own_delete("203.0.113.1/32")  # the echo of our own deletion
    assert not owners.installs.own_delete("203.0.113.1/32")  # a second one is not ours


async def test_refreshes_are_collected_and_sent_together(owners: Owners) -> None:
    holds = [owners.hold(a) for a in ("203.0.113.1", "203.0.113.2")]
    for h in holds:
        owners.installs.enqueue(h)
    await asyncio.sleep(0)
    owners.kernel.calls.clear()
    for h in holds:
        h.expires += 500
        owners.installs.queue_refresh(h)
    assert owners.kernel.ops("add_entries") == []  # off the reply path
    owners.installs.flush_refresh()  # what the REFRESH_DELAY timer calls
    (refresh,) = owners.kernel.ops("add_entries")
    assert len(refresh) == 2 and owners.ledger.counters["refreshed"] == 2
    assert all(h.set_expires == h.expires for h in holds)


async def test_without_sets_only_routes_go_and_nothing_needs_refreshing() -> None:
    from tests.unit.breakout_fakes import FakeKernel

    built = make_owners(make_cfg(), kernel=FakeKernel(has_sets=False))
    await built.start()
    try:
        h = built.hold("203.0.113.1")
        batch = built.installs.enqueue(h)
        await asyncio.sleep(0)
        assert batch.done and h.installed and built.kernel.ops("add_entries") == []
        built.installs.queue_refresh(h)
        assert built.kernel.ops("add_entries") == [] and built.ledger.counters["refreshed"] == 1
    finally:
        built.close()


async def test_a_hold_forgotten_before_the_flush_is_not_sent(owners: Owners) -> None:
    h = owners.hold("203.0.113.1")
    batch = owners.installs.enqueue(h)
    owners.ledger.forget([h])
    await asyncio.sleep(0)
    assert batch.done and owners.kernel.ops("add_routes") == []
