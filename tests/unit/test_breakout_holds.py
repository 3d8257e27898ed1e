"""Breakout logic with a fake kernel and an injected clock: holds, batching, expiry, events."""

from __future__ import annotations

import asyncio
import logging
import socket
from typing import Any

import pytest

from resolver.hooks import wait as settled
from resolver.net.links import KIND_ADDR, KIND_LINK, KIND_ROUTE, Addr, Link
from resolver.net.routes import Route
from tests.unit.breakout_fakes import (
    LAN,
    MATCHER,
    POLICY,
    RULES,
    TUN,
    WAN,
    Clock,
    FakeKernel,
    answer,
    by_address,
    device_route,
    make_breakout,
    make_cfg,
    make_view,
    run,
    started,
    tagged,
)

pytestmark = pytest.mark.unit

CONTRACT = {
    "interface", "link_up", "table", "routes_v4", "routes_v6", "cidr_routes", "ipset_v4",
    "ipset_v6", "errors",
}  # fmt: skip


def test_new_addresses_are_installed_before_the_awaitable_completes(tmp_path: Any) -> None:
    async def body() -> None:
        b, k, _ = await started(tmp_path)
        wait = b.on_answer(tagged("outlook.office.com", "203.0.113.10", "2001:db8:365::10"), 60)
        assert wait is not None
        assert not k.has_route("203.0.113.10")  # queued, sent at the next loop iteration
        await settled(wait)
        assert k.has_route("203.0.113.10") and k.has_route("2001:db8:365::10")
        assert len(k.ops("add_routes")) == 1  # both addresses in one batch
        (entries,) = k.ops("add_entries")
        assert sorted(t for _, _, t in entries) == [330, 330]  # max(60, 300) + 30
        s = b.status()
        assert set(s) >= CONTRACT
        assert (s["routes_v4"], s["routes_v6"], s["ipset_v4"], s["ipset_v6"]) == (1, 1, 1, 1)
        assert b.counters["installed"] == 2
        await b.stop()

    run(body)


def test_cache_hit_returns_none_and_only_extends_the_hold(tmp_path: Any) -> None:
    async def body() -> None:
        b, k, clock = await started(tmp_path)
        wait = b.on_answer(tagged("outlook.office.com", "203.0.113.10"), 60)
        assert wait is not None
        await settled(wait)
        k.calls.clear()
        clock.now += 10
        assert b.on_answer(tagged("outlook.office.com", "203.0.113.10"), 1000) is None
        (r,) = b.routes()
        assert r["hold_s"] == 1030 and r["names"] == ["outlook.office.com"] and r["row"] == 1
        assert k.calls == []  # nothing on the reply path
        await b.stop()

    run(body)


def test_concurrent_answers_share_one_batch(tmp_path: Any) -> None:
    async def body() -> None:
        b, k, _ = await started(tmp_path)
        waits = [
            b.on_answer(tagged("a.office.com", "203.0.113.1", "203.0.113.2"), 60),
            b.on_answer(tagged("b.sharepoint.com", "203.0.113.3"), 60),
            b.on_answer(tagged("c.office.com", "203.0.113.2"), 60),  # joins the queued install
        ]
        await asyncio.gather(*[settled(w) for w in waits if w is not None])
        assert all(w is not None for w in waits)
        (batch,) = k.ops("add_routes")
        assert len(batch) == 3
        assert sorted(b.routes()[1]["names"]) == ["a.office.com", "c.office.com"]
        await b.stop()

    run(body)


def test_hold_is_max_of_ttl_and_min_hold_plus_grace(tmp_path: Any) -> None:
    async def body() -> None:
        b, _, _ = await started(tmp_path, min_hold=100, grace=5)
        await answer(b, tagged("x.office.com", "203.0.113.1"), 10)
        await answer(b, tagged("y.office.com", "203.0.113.2"), 500)
        holds = {r["address"]: r["hold_s"] for r in b.routes()}
        assert holds == {"203.0.113.1": 105, "203.0.113.2": 505}
        await b.stop()

    run(body)


def test_expiry_removes_routes_and_entries_in_one_batch(tmp_path: Any) -> None:
    async def body() -> None:
        b, k, clock = await started(tmp_path, min_hold=10, grace=0)
        await answer(b, tagged("x.office.com", "203.0.113.1", "203.0.113.2"), 5)
        await answer(b, tagged("y.office.com", "203.0.113.3"), 50)
        k.calls.clear()
        clock.now += 11
        assert b.sweep() == 2
        (dels,) = k.ops("del_routes")
        assert len(dels) == 2
        assert k.ops("del_entries") == []  # the set entries timed out in the kernel already
        assert [r["address"] for r in b.routes()] == ["203.0.113.3"]
        assert b.counters["removed"] == 2
        # The next answer for a removed address installs it again and waits.
        assert b.on_answer(tagged("x.office.com", "203.0.113.1"), 5) is not None
        await b.stop()

    run(body)


def test_shared_address_lives_as_long_as_its_longest_name(tmp_path: Any) -> None:
    async def body() -> None:
        b, _, clock = await started(tmp_path, min_hold=10, grace=0)
        await answer(b, tagged("a.office.com", "203.0.113.7"), 100)
        await answer(b, tagged("b.sharepoint.com", "203.0.113.7"), 10)
        (r,) = b.routes()
        assert r["names"] == ["a.office.com", "b.sharepoint.com"] and r["hold_s"] == 100
        assert r["row"] == 2  # the latest answer's row
        clock.now += 20
        assert b.sweep() == 0
        (r,) = b.routes()
        assert r["names"] == ["a.office.com"] and r["hold_s"] == 80
        clock.now += 81
        assert b.sweep() == 1
        await b.stop()

    run(body)


def test_cname_chain_records_the_matched_name_not_the_query_name(tmp_path: Any) -> None:
    """The query name only led to the policy name through a CNAME: it is anybody's to choose
    (a zone owner's wildcard), so the hold records the name that earned it, and only that."""

    async def body() -> None:
        b, _, _ = await started(tmp_path)
        t = tagged("x.office.com", "203.0.113.9", qname="mail.example.net")
        await answer(b, t, 60)
        assert b.routes()[0]["names"] == ["x.office.com"]
        await b.stop()

    run(body)


def test_max_entries_caps_logs_once_and_counts(
    tmp_path: Any, caplog: pytest.LogCaptureFixture
) -> None:
    async def body() -> None:
        b, _, _ = await started(tmp_path, max_entries=2)
        with caplog.at_level(logging.WARNING):
            for i in range(5):
                w = b.on_answer(tagged("x.office.com", f"203.0.113.{i + 1}"), 60)
                if w is not None:
                    await settled(w)
        assert len(b.holds) == 2
        assert b.counters["capped"] == 3
        assert sum("max_entries" in r.getMessage() for r in caplog.records) == 1
        await b.stop()

    run(body)


def test_never_route_and_connected_networks_are_skipped(tmp_path: Any) -> None:
    async def body() -> None:
        b, k, _ = await started(tmp_path)
        t = tagged(
            "x.blob.office.com",
            "192.0.2.130",  # a LAN client's address: connected network of lan0
            "192.0.2.2",  # the router's own WAN address
            "10.1.2.3",  # never_route (RFC 1918)
            "2001:db8:c::42",  # the LAN's IPv6 network
            "fe80::1",  # link-local
        )
        assert b.on_answer(t, 60) is None
        assert b.holds == {} and k.calls == []
        assert b.counters["skipped"] == 5
        assert b.on_answer(t, 60) is None  # cached reasons: still counted, still cheap
        assert b.counters["skipped"] == 10
        await b.stop()

    run(body)


def test_route_deleted_by_someone_else_is_reinstalled_by_the_next_answer(tmp_path: Any) -> None:
    async def body() -> None:
        b, k, _ = await started(tmp_path)
        await answer(b, tagged("x.office.com", "203.0.113.10"), 60)
        k.routes.clear()  # `ip route del` by hand
        gone = Route(4, "203.0.113.10", 32, 365, 245, 0, 1, WAN, None)
        b.parts.links.on_event(KIND_ROUTE, False, gone)
        assert b.counters["route_lost"] == 1
        wait = b.on_answer(tagged("x.office.com", "203.0.113.10"), 60)
        assert wait is not None  # a cache hit now waits for the re-install
        await settled(wait)
        assert k.has_route("203.0.113.10")
        await b.stop()

    run(body)


def test_own_deletions_are_not_mistaken_for_foreign_ones(tmp_path: Any) -> None:
    async def body() -> None:
        b, _, clock = await started(tmp_path, min_hold=10, grace=0)
        await answer(b, tagged("x.office.com", "203.0.113.10"), 5)
        clock.now += 11
        b.sweep()
        await answer(b, tagged("x.office.com", "203.0.113.10"), 5)
        # The monitor now reads the RTM_DELROUTE of the sweep's own deletion.
        gone = Route(4, "203.0.113.10", 32, 365, 245, 0, 1, WAN, None)
        b.parts.links.on_event(KIND_ROUTE, False, gone)
        assert by_address(b)["203.0.113.10"].installed
        assert b.counters["route_lost"] == 0
        await b.stop()

    run(body)


def test_a_network_that_becomes_connected_is_no_longer_routed(tmp_path: Any) -> None:
    async def body() -> None:
        b, k, _ = await started(tmp_path)
        await answer(b, tagged("x.office.com", "198.51.100.77"), 60)
        b.parts.links.on_event(
            KIND_ADDR, True, [Addr(5, 4, "198.51.100.1", "198.51.100.0/24", False)]
        )
        await asyncio.sleep(0)
        assert b.holds == {} and not k.has_route("198.51.100.77")
        assert b.on_answer(tagged("x.office.com", "198.51.100.77"), 60) is None
        await b.stop()

    run(body)


def test_a_full_tunnel_coming_up_does_not_stop_the_breakout(tmp_path: Any) -> None:
    async def body() -> None:
        b, k, _ = await started(tmp_path)
        await answer(b, tagged("x.office.com", "203.0.113.1", "2001:db8:365::1"), 60)
        for cidr in ("0.0.0.0/1", "128.0.0.0/1", "::/1", "8000::/1"):
            b.parts.links.on_event(KIND_ROUTE, True, device_route(cidr, TUN))
        await asyncio.sleep(0)
        assert len(b.holds) == 2 and k.has_route("203.0.113.1") and k.has_route("2001:db8:365::1")
        assert b.status()["cidr_routes"] == 2 and k.ops("del_routes") == []
        assert "0.0.0.0/1" not in b.status()["connected_networks"]
        await answer(b, tagged("y.office.com", "203.0.113.2", "2001:db8:365::2"), 60)
        assert k.has_route("203.0.113.2") and k.has_route("2001:db8:365::2")
        await b.stop()

    run(body)


def test_a_connected_network_takes_only_what_is_inside_and_gives_prefixes_back(
    tmp_path: Any,
) -> None:
    async def body() -> None:
        b, k, _ = await started(tmp_path)
        row14 = (4, socket.inet_pton(socket.AF_INET, "13.67.59.89"), 32)
        await answer(b, tagged("x.office.com", "203.0.113.1", "198.51.100.77", "13.67.59.5"), 60)
        # A LAN appears behind a device route: only what lies inside it goes.
        b.parts.links.on_event(KIND_ROUTE, True, device_route("198.51.100.0/24", TUN))
        await asyncio.sleep(0)
        assert sorted(by_address(b)) == ["13.67.59.5", "203.0.113.1"]
        assert not k.has_route("198.51.100.77") and k.has_route("203.0.113.1")
        assert b.status()["cidr_routes"] == 2
        # One over a policy prefix: the prefix is held back (and the host inside it goes)...
        b.parts.links.on_event(KIND_ROUTE, True, device_route("13.67.59.0/24", TUN))
        await asyncio.sleep(0)
        assert row14 not in k.routes and b.status()["cidr_routes"] == 1
        assert sorted(by_address(b)) == ["203.0.113.1"]
        # ...and comes back when the network goes, without a reload.
        b.parts.links.on_event(KIND_ROUTE, False, device_route("13.67.59.0/24", TUN))
        await asyncio.sleep(0)
        assert k.routes.get(row14) and b.status()["cidr_routes"] == 2
        # Taking the tunnel down deletes its IPv4 routes silently: the prefix comes back too.
        b.parts.links.on_event(KIND_ROUTE, True, device_route("13.67.59.0/24", TUN))
        await asyncio.sleep(0)
        assert row14 not in k.routes
        b.parts.links.on_event(KIND_LINK, True, Link(TUN, "tun0", False, admin_up=False))
        await asyncio.sleep(0)
        assert k.routes.get(row14) and b.status()["cidr_routes"] == 2
        assert "198.51.100.0/24" not in b.status()["connected_networks"]
        # After a flush the prefixes wait for a reload, whatever the networks do.
        b.parts.links.on_event(KIND_ROUTE, True, device_route("13.67.59.0/24", LAN))
        await asyncio.sleep(0)
        await b.flush()
        b.parts.links.on_event(KIND_ROUTE, False, device_route("13.67.59.0/24", LAN))
        await asyncio.sleep(0)
        assert k.routes == {} and b.status()["cidr_routes"] == 0
        await b.stop()

    run(body)


def test_a_held_back_prefix_comes_back_in_dry_run_too(tmp_path: Any) -> None:
    async def body() -> None:
        view = make_view()
        view.apply_route(True, device_route("13.67.59.0/24", LAN))
        b = make_breakout(tmp_path, make_cfg(mode="dry-run"), view=view)
        await b.start()
        assert b.status()["cidr_routes"] == 1
        b.parts.links.on_event(KIND_ROUTE, False, device_route("13.67.59.0/24", LAN))
        await asyncio.sleep(0)
        assert b.status()["cidr_routes"] == 2
        await b.stop()

    run(body)


def test_kernel_errors_are_counted_and_retried(tmp_path: Any) -> None:
    async def body() -> None:
        k = FakeKernel()
        k.fail[socket.inet_pton(socket.AF_INET, "203.0.113.1")] = 101  # ENETUNREACH
        b, k, _ = await started(tmp_path, kernel=k)
        await answer(b, tagged("x.office.com", "203.0.113.1"), 60)
        assert b.status()["errors"] == 1 and b.status()["routes_v4"] == 0
        k.fail.clear()
        wait = b.on_answer(tagged("x.office.com", "203.0.113.1"), 60)
        assert wait is not None
        await settled(wait)
        assert b.status()["routes_v4"] == 1
        await b.stop()

    run(body)


def test_policy_prefixes_are_routes_too_and_flush_removes_everything(tmp_path: Any) -> None:
    async def body() -> None:
        b, k, _ = await started(tmp_path)
        assert b.status()["cidr_routes"] == 2
        await answer(b, tagged("x.office.com", "203.0.113.1", "2001:db8:365::1"), 60)
        counts = await b.flush()
        assert counts == {"routes": 2, "cidr_routes": 2, "rules": 1, "set_entries": 2}
        assert k.routes == {} and k.entries == {} and k.rules == 0
        s = b.status()
        assert (s["routes_v4"], s["cidr_routes"], s["ipset_v4"]) == (0, 0, 0)
        assert b.routes() == []
        # The next answer installs again, and puts the rules back first.
        await answer(b, tagged("x.office.com", "203.0.113.1"), 60)
        assert k.has_route("203.0.113.1") and k.rules == 1
        await b.stop()

    run(body)


def test_reconfigure_with_a_changed_policy_keeps_what_still_matches(tmp_path: Any) -> None:
    async def body() -> None:
        from policy.matcher import Matcher
        from policy.model import Policy

        b, k, _ = await started(tmp_path)
        await answer(b, tagged("x.office.com", "203.0.113.1"), 60)
        await answer(b, tagged("y.sharepoint.com", "203.0.113.2"), 60)
        k.calls.clear()
        rules = (RULES[0],)  # SharePoint and row 14 are gone
        await b.reconfigure(b.cfg, Matcher(rules), Policy(rules=rules))
        assert [r["address"] for r in b.routes()] == ["203.0.113.1"]
        assert k.ops("add_routes") == []  # no gap: what stays is not touched
        removed = [item for batch in k.ops("del_routes") for item in batch]
        assert len(removed) == 3  # 203.0.113.2 and the two prefixes of row 14
        assert b.status()["cidr_routes"] == 0
        await b.stop()

    run(body)


def test_state_file_round_trip_and_reconcile(tmp_path: Any) -> None:
    async def body() -> None:
        clock = Clock()
        b, k, _ = await started(tmp_path, clock=clock)
        await answer(b, tagged("x.office.com", "203.0.113.1", "2001:db8:365::1"), 60)
        await b.stop()  # saves; routes stay in the (fake) kernel

        # A route we own but have no state for, and one that is not ours.
        k.extra_routes = [
            Route(4, "203.0.113.99", 32, 365, 245, 0, 1, WAN, "192.0.2.1"),
            Route(4, "203.0.113.50", 32, 365, 4, 0, 1, WAN, "192.0.2.1"),
        ]
        clock.now += 100
        b2 = make_breakout(tmp_path, kernel=k, clock=clock)
        k.calls.clear()
        await b2.start()
        assert sorted(r["address"] for r in b2.routes()) == ["2001:db8:365::1", "203.0.113.1"]
        # The journal runs AHEAD (30 s) ahead of each hold: after a restart a hold may live
        # that much longer than it would have, never shorter.
        assert all(r["hold_s"] == 230 + 30 for r in b2.routes())
        assert b2.counters["adopted"] == 2
        deleted = [item for batch in k.ops("del_routes") for item in batch]
        assert deleted == [(4, socket.inet_pton(socket.AF_INET, "203.0.113.99"), 32)]
        assert not any(  # the adopted routes were not re-sent
            item[1] == socket.inet_pton(socket.AF_INET, "203.0.113.1")
            for batch in k.ops("add_routes")
            for item in batch
        )
        # The foreign route's address is never taken over.
        assert b2.on_answer(tagged("x.office.com", "203.0.113.50"), 60) is None
        await b2.stop()

    run(body)


def test_lapsed_state_is_dropped_on_start(tmp_path: Any) -> None:
    async def body() -> None:
        clock = Clock()
        b, k, _ = await started(tmp_path, clock=clock, min_hold=10, grace=0)
        await answer(b, tagged("x.office.com", "203.0.113.1"), 5)
        await b.stop()
        clock.now += 60
        b2 = make_breakout(tmp_path, make_cfg(min_hold=10, grace=0), kernel=k, clock=clock)
        await b2.start()
        assert b2.routes() == [] and not k.has_route("203.0.113.1")
        await b2.stop()

    run(body)


def test_capability_check_gives_a_clear_error() -> None:
    from resolver.net import kernel as kernel_mod
    from resolver.net.errors import BreakoutError

    async def body() -> None:
        k = kernel_mod.Kernel(make_cfg(), net_admin=lambda: False)
        with pytest.raises(BreakoutError, match="needs CAP_NET_ADMIN"):
            await k.open(asyncio.get_running_loop())

    run(body)


def test_a_cancelled_answer_does_not_cancel_the_others(tmp_path: Any) -> None:
    async def body() -> None:
        b, k, _ = await started(tmp_path)
        k.defer = True
        w1 = b.on_answer(tagged("x.office.com", "203.0.113.1"), 60)
        w2 = b.on_answer(tagged("y.office.com", "203.0.113.1"), 60)
        assert w1 is not None and w2 is not None
        t1 = settled(w1)
        t2 = settled(w2)
        await asyncio.sleep(0)
        t1.cancel()
        await asyncio.sleep(0)
        k.settle_all()
        await t2
        assert t1.cancelled() and b.status()["routes_v4"] == 1
        await b.stop()

    run(body)


def test_a_new_gateway_reinstalls_in_place_and_a_new_table_moves_everything(
    tmp_path: Any,
) -> None:
    async def body() -> None:
        old, new = FakeKernel(), FakeKernel()
        clock = Clock()
        b = make_breakout(tmp_path, kernel=old, new_kernel=new, clock=clock)
        await b.start()
        await answer(b, tagged("x.office.com", "203.0.113.1", "2001:db8:365::1"), 60)
        old.calls.clear()
        await b.reconfigure(make_cfg(gateway4="192.0.2.3"), MATCHER, POLICY)
        assert old.ops("del_routes") == []  # replaced in place: no gap
        installed = [item for batch in old.ops("add_routes") for item in batch]
        assert sorted(f for f, _, _ in installed) == [4, 4, 4]  # the host, row 14's prefixes
        assert old.paths[4] is not None and old.paths[4].gateway == "192.0.2.3"
        assert b.status()["routes_v4"] == 1 and b.status()["cidr_routes"] == 2

        await b.reconfigure(make_cfg(gateway4="192.0.2.3", table=366), MATCHER, POLICY)
        assert old.routes == {} and old.rules == 0  # everything left the old table
        assert new.rules == 1 and new.has_route("203.0.113.1")
        assert b.status()["table"] == 366
        await b.stop()

    run(body)


def test_the_configs_dns_servers_are_never_routed(tmp_path: Any) -> None:
    """Head office's DNS server in a tagged answer: routing it would send resolverd's own
    queries (and the clients' internal names) out through the ISP."""

    async def body() -> None:
        b, k, _ = await started(tmp_path, dns_servers=("198.51.100.53", "2001:db8:53::53"))
        t = tagged("x.blob.office.com", "198.51.100.53", "2001:db8:53::53", "203.0.113.10")
        await answer(b, t, 60)
        assert list(b.holds) == [socket.inet_pton(socket.AF_INET, "203.0.113.10")]
        assert k.has_route("203.0.113.10") and not k.has_route("198.51.100.53")
        assert b.counters["skipped"] == 2
        reason = b.parts.links.skip_reason(socket.inet_pton(socket.AF_INET, "198.51.100.53"))
        assert reason == "DNS server of the config 198.51.100.53/32"
        await b.stop()

    run(body)
