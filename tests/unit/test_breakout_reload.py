"""Breakout.reconfigure with fake kernels: all or nothing, and nothing left behind."""

from __future__ import annotations

import errno
import socket
from typing import Any

import pytest

from policy.matcher import Matcher
from policy.model import Policy
from resolver.net.accounting import Accounting
from resolver.net.accountingapi import NullAccounting
from resolver.net.breakout import Breakout
from resolver.net.errors import BreakoutError
from resolver.net.netlink import NetlinkSocketError
from tests.unit.breakout_fakes import (
    MATCHER,
    POLICY,
    RULES,
    Clock,
    FakeKernel,
    answer,
    make_breakout,
    make_cfg,
    run,
    tagged,
)

pytestmark = pytest.mark.unit

HOSTS = ("203.0.113.1", "2001:db8:365::1")
ROW14 = (4, socket.inet_pton(socket.AF_INET, "13.67.59.89"), 32)


async def started(
    tmp_path: Any, old: FakeKernel, new: FakeKernel | None = None, clock: Clock | None = None,
    **cfg: Any,
) -> Breakout:  # fmt: skip
    """A breakout on `old` whose reloads get `new` (the same fake when None: one kernel)."""
    clock = clock or Clock()
    b = make_breakout(tmp_path, make_cfg(**cfg), kernel=old, new_kernel=new, clock=clock)
    await b.start()
    await answer(b, tagged("x.office.com", *HOSTS), 60)
    assert all(old.has_route(a) for a in HOSTS) and old.routes.get(ROW14)
    return b


def test_a_reload_onto_a_link_that_is_not_there_leaves_no_route_behind(tmp_path: Any) -> None:
    async def body() -> None:
        k, clock = FakeKernel(), Clock()
        b = await started(tmp_path, k, clock=clock, min_hold=10, grace=0)
        await b.reconfigure(make_cfg(interface="nosuch0", min_hold=10, grace=0), MATCHER, POLICY)
        assert b.status()["link_up"] is False
        assert k.routes == {}  # withdrawn: routes via wan0 would stay in the table for good
        assert len(b.holds) == 2  # the holds stay: the routes follow the link
        clock.now += 61  # the hold: max(60, 10) + 0
        assert b.sweep() == 2 and b.holds == {} and k.routes == {}
        # Back to a usable link: the policy's prefixes come back.
        await b.reconfigure(make_cfg(min_hold=10, grace=0), MATCHER, POLICY)
        assert k.routes.get(ROW14) and b.status()["cidr_routes"] == 2
        await b.stop()

    run(body)


def test_a_reload_that_drops_one_family_withdraws_only_that_family(tmp_path: Any) -> None:
    async def body() -> None:
        k = FakeKernel()
        b = await started(tmp_path, k)
        # A global IPv6 gateway on a link with no global IPv6 address: IPv6 is not usable.
        b.parts.links.view.addrs = {
            a for a in b.parts.links.view.addrs if not (a.family == 6 and a.index == 2)
        }
        await b.reconfigure(make_cfg(gateway6="2001:db8:f::1"), MATCHER, POLICY)
        assert k.has_route("203.0.113.1") and not k.has_route("2001:db8:365::1")
        assert (b.status()["ready_v4"], b.status()["ready_v6"]) == (True, False)
        await b.stop()

    run(body)


def test_a_reload_with_a_new_hop_and_policy_removes_the_prefixes_that_went(
    tmp_path: Any,
) -> None:
    async def body() -> None:
        k = FakeKernel()
        b = await started(tmp_path, k)
        rules = RULES[:2]  # row 14 and its prefixes are gone
        await b.reconfigure(make_cfg(gateway4="192.0.2.3"), Matcher(rules), Policy(rules=rules))
        assert ROW14 not in k.routes and b.status()["cidr_routes"] == 0
        assert all(k.has_route(a) for a in HOSTS)
        await b.stop()

    run(body)


def test_a_reload_that_fails_verification_changes_nothing(tmp_path: Any) -> None:
    async def body() -> None:
        old, new = FakeKernel(), FakeKernel()
        b = await started(tmp_path, old, new)
        before = (dict(old.routes), dict(old.entries), old.rules, b.cfg, b.routes())
        old.calls.clear()
        rules = RULES[:1]
        new.check_error = BreakoutError("nftables set inet filter nosuch does not exist")
        with pytest.raises(BreakoutError, match="does not exist"):
            await b.reconfigure(
                make_cfg(ipset4="rv-new-v4", nftset4="inet filter nosuch"),
                Matcher(rules), Policy(rules=rules),
            )  # fmt: skip
        assert new.closed and new.sets_created == 0
        # Reading the tables fails (a NetlinkSocketError): a BreakoutError, nothing changed.
        new.check_error = None
        old.dump_error = NetlinkSocketError(errno.EBUSY, "dump")
        with pytest.raises(BreakoutError, match="cannot read the routing tables"):
            await b.reconfigure(make_cfg(table=366), Matcher(rules), Policy(rules=rules))
        assert new.sets_created == 0 and new.rules == 0 and new.routes == {}
        assert old.calls == [] and b.matcher is MATCHER and b.policy is POLICY
        assert (dict(old.routes), dict(old.entries), old.rules, b.cfg, b.routes()) == before
        assert b.status()["errors"] == 0
        await b.stop()

    run(body)


def test_kernel_errors_after_the_point_of_no_return_are_counted_not_raised(
    tmp_path: Any,
) -> None:
    async def body() -> None:
        old, new = FakeKernel(), FakeKernel()
        b = await started(tmp_path, old, new)
        old.rules_error = BreakoutError("cannot remove the ip rules for table 365: EBUSY")
        new.rules_error = BreakoutError("cannot add the ip rule for table 366: EBUSY")
        await b.reconfigure(make_cfg(table=366), MATCHER, POLICY)  # does not raise
        # Removing the old rule, adding the new one, and the install batch's own retry.
        assert b.cfg.table == 366 and b.status()["errors"] == 3
        assert old.routes == {}  # the old table is emptied all the same
        assert all(new.has_route(a) for a in HOSTS) and new.sets_created == 1
        # The rule is retried with the next install.
        new.rules_error = None
        await answer(b, tagged("x.office.com", "203.0.113.7"), 60)
        assert new.rules == 1 and new.has_route("203.0.113.7")
        await b.stop()

    run(body)


def test_a_moved_table_loses_what_was_installed_after_verification(tmp_path: Any) -> None:
    async def body() -> None:
        old, new = FakeKernel(), FakeKernel()
        b = await started(tmp_path, old, new)
        old.dump_error = None
        real_dump = old.dump_routes

        async def dump_then_answer(table: int | None = None) -> list[Any]:
            routes = await real_dump(table)
            await answer(b, tagged("x.office.com", "203.0.113.8"), 60)  # in between
            return routes

        old.dump_routes = dump_then_answer  # type: ignore[method-assign]
        await b.reconfigure(make_cfg(table=366), MATCHER, POLICY)
        assert old.routes == {} and new.has_route("203.0.113.8")
        await b.stop()

    run(body)


class Counters(NullAccounting):
    """Accounting that counts when the config says so, and records what it is handed."""

    def __init__(self) -> None:
        self.counting = False
        self.items: list[tuple[int, bytes, int, int]] = []
        self.cfg: Any = None

    def configure(self, cfg: Any, classes: Any) -> None:
        self.cfg = cfg

    async def open(self, loop: Any) -> None:
        self.counting = bool(self.cfg.count_traffic)

    def count(self, items: Any) -> None:
        self.items.extend(items)


def test_a_reload_that_turns_counting_on_counts_what_is_already_held(tmp_path: Any) -> None:
    async def body() -> None:
        k, counters = FakeKernel(), Counters()
        b = make_breakout(tmp_path, kernel=k, accounting=counters)
        await b.start()
        await answer(b, tagged("x.office.com", *HOSTS), 60)
        assert counters.items == []  # counting off: nothing handed over
        await b.reconfigure(make_cfg(count_traffic=True), MATCHER, POLICY)
        assert counters.counting
        handed = {socket.inet_ntop(socket.AF_INET if f == 4 else socket.AF_INET6, p)
                  for f, p, _timeout, _row in counters.items}  # fmt: skip
        assert handed == set(HOSTS)
        await b.reconfigure(make_cfg(count_traffic=True), MATCHER, POLICY)
        assert len(counters.items) == 2  # already counting: not handed twice
        await b.stop()

    run(body)


def test_a_kernel_breakout_with_both_keys_off_can_be_turned_on_by_a_reload(
    tmp_path: Any,
) -> None:
    b = make_breakout(tmp_path)
    assert isinstance(b.parts.installs.accounting, Accounting)  # not the dry-run's null one
