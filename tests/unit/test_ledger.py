"""Ledger alone: holds coming and going, the caps, the expiry order, kernel-state transitions
and the epoch (the `ledger` fixture of tests/owners.py: 10 holds at most, 3 per client)."""

from __future__ import annotations

import logging

import pytest

from resolver.net.ledger import Ledger
from tests.owners import packed

pytestmark = pytest.mark.unit

BATCH = object()  # stands for an installs.InstallBatch: the ledger only compares it


def add(ledger: Ledger, address: str, expires: float, client: bytes | None = None) -> bool:
    return ledger.add(packed(address), "x.office.com", expires, 1, client) is not None


def test_a_new_hold_is_held_and_missing_until_its_route_is_sent() -> None:
    ledger = Ledger(10)
    h = ledger.add(packed("203.0.113.1"), "x.office.com", 100.0, 1)
    assert h is not None and ledger.get(packed("203.0.113.1")) is h and len(ledger) == 1
    assert set(ledger.missing) == {h} and ledger.names == 1
    ledger.sending(h, BATCH)
    assert set(ledger.missing) == set()
    ledger.installed(h, BATCH)
    assert h.installed and h.batch is None and ledger.counters["installed"] == 1


def test_a_refused_route_is_missing_again_for_the_sweep() -> None:
    ledger = Ledger(10)
    h = ledger.add(packed("203.0.113.1"), "x.office.com", 100.0, 1)
    assert h is not None
    ledger.sending(h, BATCH)
    ledger.failed(h, BATCH)
    assert not h.installed and set(ledger.missing) == {h}
    assert ledger.counters["installed"] == 0


def test_an_ack_for_a_forgotten_hold_changes_nothing() -> None:
    ledger = Ledger(10)
    h = ledger.add(packed("203.0.113.1"), "x.office.com", 100.0, 1)
    assert h is not None
    ledger.sending(h, BATCH)
    assert ledger.forget([h]) == 1 and ledger.counters["removed"] == 1
    ledger.installed(h, BATCH)
    assert ledger.counters["installed"] == 0 and len(ledger) == 0 and not ledger.current(h)


def test_max_entries_caps_new_holds_and_warns_once(
    ledger: Ledger, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING, "resolver.net.ledger"):
        added = [add(ledger, f"203.0.113.{i}", 100.0) for i in range(1, 13)]
    assert added == [True] * 10 + [False, False]
    assert ledger.counters["capped"] == 2
    assert len([m for m in caplog.messages if "max_entries (10) reached" in m]) == 1


def test_a_client_holds_at_most_its_share_and_gets_it_back_as_its_holds_go(
    ledger: Ledger,
) -> None:
    alice, bob = b"\x0a\x00\x00\x01", b"\x0a\x00\x00\x02"
    assert [add(ledger, f"203.0.113.{i}", 100.0, alice) for i in range(1, 5)] == [
        True, True, True, False,
    ]  # fmt: skip
    assert ledger.counters["client_capped"] == 1
    assert add(ledger, "203.0.113.9", 100.0, bob)  # another client has its own share
    assert add(ledger, "203.0.113.10", 100.0)  # nobody's holds are not capped per client
    first = ledger.get(packed("203.0.113.1"))
    assert first is not None
    ledger.forget([first])
    assert add(ledger, "203.0.113.4", 100.0, alice)


def test_lapsed_holds_come_due_in_expiry_order_and_only_once() -> None:
    ledger = Ledger(10)
    for address, expires in (("203.0.113.3", 30.0), ("203.0.113.1", 10.0), ("203.0.113.2", 20.0)):
        add(ledger, address, expires)
    assert ledger.lapsed(5.0) == []
    due = ledger.lapsed(25.0)
    assert [h.address for h in due] == ["203.0.113.1", "203.0.113.2"]
    ledger.forget(due)
    assert [h.address for h in ledger.lapsed(100.0)] == ["203.0.113.3"]


def test_a_hold_extended_before_it_comes_due_is_not_lapsed() -> None:
    ledger = Ledger(10)
    h = ledger.add(packed("203.0.113.1"), "a.office.com", 10.0, 1)
    assert h is not None
    ledger.extend(h, "b.office.com", 1, 50.0)
    assert ledger.names == 2
    assert ledger.lapsed(20.0) == []  # back in the heap at 50; a.office.com pruned
    assert ledger.names == 1
    assert ledger.lapsed(60.0) == [h]


def test_a_replaced_hold_does_not_come_due_for_the_old_one() -> None:
    ledger = Ledger(10)
    old = ledger.add(packed("203.0.113.1"), "x.office.com", 10.0, 1)
    assert old is not None
    ledger.forget([old])
    new = ledger.add(packed("203.0.113.1"), "x.office.com", 50.0, 1)
    assert ledger.lapsed(20.0) == [] and ledger.lapsed(60.0) == [new]


def test_holds_due_at_the_same_time_need_no_tie_breaker() -> None:
    """The heap holds the holds, by due time: equal ones compare by address, and an old hold
    of the same address due at the same time compares equal, not as an error."""
    ledger = Ledger(10)
    old = ledger.add(packed("203.0.113.2"), "x.office.com", 10.0, 1)
    assert old is not None
    ledger.forget([old])
    for address in ("203.0.113.3", "203.0.113.2", "203.0.113.1"):
        add(ledger, address, 10.0)
    due = ledger.lapsed(10.0)
    assert [h.address for h in due] == ["203.0.113.1", "203.0.113.2", "203.0.113.3"]
    assert old not in due


def test_a_lost_route_moves_the_epoch_and_is_missing_again() -> None:
    ledger = Ledger(10)
    h = ledger.add(packed("203.0.113.1"), "x.office.com", 100.0, 1)
    assert h is not None
    ledger.sending(h, BATCH)
    ledger.installed(h, BATCH)
    before = ledger.epoch.value
    ledger.lost(h)
    assert ledger.epoch.value != before and ledger.counters["route_lost"] == 1
    assert set(ledger.missing) == {h} and not h.installed
    moved = ledger.epoch.value
    ledger.lost(h)  # not installed any more: neither counted nor moved again
    assert ledger.epoch.value == moved and ledger.counters["route_lost"] == 1


def test_moved_moves_the_epoch_and_withdrawn_holds_stay_but_are_missing() -> None:
    ledger = Ledger(10)
    holds = [ledger.add(packed(f"203.0.113.{i}"), "x.office.com", 100.0, 1) for i in (1, 2)]
    for h in holds:
        assert h is not None
        ledger.sending(h, BATCH)
        ledger.installed(h, BATCH)
    before = ledger.epoch.value
    ledger.moved()
    assert ledger.epoch.value != before
    ledger.withdrawn(h for h in holds if h is not None)
    assert len(ledger) == 2 and set(ledger.missing) == set(holds)
    assert not any(h.installed for h in holds if h is not None)


def test_must_reinstall_makes_every_hold_missing_and_without_set_entries() -> None:
    ledger = Ledger(10)
    h = ledger.add(packed("2001:db8:365::1"), "x.office.com", 100.0, 1)
    assert h is not None
    ledger.sending(h, BATCH)
    ledger.installed(h, BATCH)
    h.set_expires = 100.0
    assert ledger.must_reinstall() == [h]
    assert set(ledger.missing) == {h} and not h.installed and h.set_expires == 0.0


def test_clear_forgets_everything_and_counts_it_removed(ledger: Ledger) -> None:
    for i in range(1, 4):
        add(ledger, f"203.0.113.{i}", 100.0, b"client")
    assert len(ledger.clear()) == 3
    assert len(ledger) == 0 and ledger.names == 0 and ledger.lapsed(1000.0) == []
    assert ledger.counters["removed"] == 3
    assert add(ledger, "203.0.113.9", 100.0, b"client")  # the client's share is back


def test_family_and_adopt() -> None:
    ledger = Ledger(10)
    add(ledger, "203.0.113.1", 100.0)
    add(ledger, "2001:db8:365::1", 100.0)
    assert [h.address for h in ledger.family(4)] == ["203.0.113.1"]
    assert [h.address for h in ledger.family(6)] == ["2001:db8:365::1"]
    other = Ledger(10)
    h = other.add(packed("203.0.113.1"), "y.office.com", 200.0, 2)
    assert h is not None
    ledger.adopt([h])  # replaces the hold of the same address
    assert len(ledger) == 2 and ledger.get(packed("203.0.113.1")) is h
    assert [x.address for x in ledger.lapsed(150.0)] == ["2001:db8:365::1"]


def test_tally_counts_installed_routes_and_live_set_entries_per_family() -> None:
    ledger = Ledger(10)
    for address in ("203.0.113.1", "203.0.113.2", "2001:db8:365::1", "2001:db8:365::2"):
        add(ledger, address, 100.0)
    a, b = (ledger.get(packed(x)) for x in ("203.0.113.1", "2001:db8:365::2"))
    assert a is not None and b is not None
    ledger.sending(a, BATCH)
    ledger.installed(a, BATCH)
    a.set_expires, b.set_expires = 50.0, 60.0
    assert ledger.tally(55.0) == (1, 0, 0, 1)  # (routes v4, v6, set entries v4, v6)
    assert ledger.tally(40.0) == (1, 0, 1, 1)
