"""The traffic counters' owner: which elements it sends for held addresses, and what it shows.

The kernel side of the counters (traffic.py) is checked byte by byte in test_counters.py and
with real packets in tests/netns; here: which transactions `Accounting` sends as holds come,
stay, change row and go, and how status, routes and resolverctl show the counts.
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Sequence
from typing import Any

import pytest

from resolver.config import BreakoutConfig, LinkConfig
from resolver.ctl.blocks import format_bytes
from resolver.ctl.routes import render_routes
from resolver.ctl.status import render_status
from resolver.net import nftables, traffic
from resolver.net.accounting import COUNT_DELAY, Accounting
from resolver.net.accountingapi import NullAccounting
from resolver.net.holds import Hold
from resolver.net.netlink import Message
from resolver.net.report import routes_json
from resolver.net.traffic import Layout, TrafficClass

pytestmark = pytest.mark.unit

A = socket.inet_pton(socket.AF_INET, "203.0.113.10")
B = socket.inet_pton(socket.AF_INET, "203.0.113.11")
C = socket.inet_pton(socket.AF_INET6, "2001:db8::10")
ROWS = {1: TrafficClass(1, "Optimize"), 2: TrafficClass(2, "Allow")}


class Recorder:
    """A netlink channel that keeps what was submitted and acks it all."""

    def __init__(self) -> None:
        self.sent: list[list[Message]] = []

    def submit(self, messages: Sequence[Message], settled: Any, atomic: bool = False) -> None:
        self.sent.append(list(messages))
        settled([0] * len(messages))

    def request(
        self, kind: int, flags: int, body: bytes, keep: Any = None
    ) -> asyncio.Future[list[bytes]]:
        raise AssertionError("the counters' elements ask nothing")

    def close(self) -> None:
        pass

    def kinds(self) -> list[list[int]]:
        """Per transaction, the nf_tables message types between its begin and end."""
        return [[kind & 0xFF for kind, _, _ in t[1:-1]] for t in self.sent]


def counting() -> tuple[Accounting, Recorder]:
    cfg = BreakoutConfig(links=(LinkConfig("wan0", "192.0.2.1", None),))
    acc = Accounting(cfg, count_delay=0)  # each count goes out at once
    acc.configure(cfg, ROWS)
    channel = Recorder()
    acc.nfnl = channel
    acc.layout = Layout(("wan0",), tuple(ROWS.values()))
    acc.counting = True
    acc._unready = False  # as a setup leaves it: every row's chain made
    return acc, channel


def test_new_and_refreshed_holds_add_elements_per_family() -> None:
    acc, channel = counting()
    acc.count([(4, A, 300, 1), (4, B, 300, 2), (6, C, 300, 1)])
    assert channel.kinds() == [[nftables.NFT_MSG_NEWSETELEM], [nftables.NFT_MSG_NEWSETELEM]]
    acc.count([(4, A, 600, 1)])  # the same class: a refresh, the counter stays
    assert channel.kinds()[-1] == [nftables.NFT_MSG_NEWSETELEM]
    assert acc.counted == {A: ROWS[1], B: ROWS[2], C: ROWS[1]}


def test_an_address_that_changes_row_is_reclassified_not_added_twice() -> None:
    acc, channel = counting()
    acc.count([(4, A, 300, 1)])
    acc.count([(4, A, 300, 2)])
    # DESTROY + NEW in one transaction: an add with another class would fail with EEXIST.
    assert channel.kinds()[-1] == [nftables.NFT_MSG_DESTROYSETELEM, nftables.NFT_MSG_NEWSETELEM]
    assert acc.counted[A] == ROWS[2]


def test_rows_the_policy_does_not_have_and_a_table_not_made_send_nothing() -> None:
    acc, channel = counting()
    acc.count([(4, A, 300, 99)])
    assert channel.sent == [] and acc.counted == {}
    acc.counting = False  # the table could not be made: the breakout runs on, uncounted
    acc.count([(4, A, 300, 1)])
    acc.release([(4, A)])
    assert channel.sent == []


def test_release_removes_only_the_elements_it_made() -> None:
    acc, channel = counting()
    acc.count([(4, A, 300, 1)])
    acc.release([(4, A), (4, B)])
    assert channel.kinds()[-1] == [nftables.NFT_MSG_DESTROYSETELEM]
    assert acc.counted == {}
    acc.release([(4, A)])  # gone already: nothing more to send
    assert len(channel.sent) == 2


class Timers:
    """The loop's call_later, kept: (delay, callback)."""

    def __init__(self) -> None:
        self.later: list[tuple[float, Any]] = []

    def call_later(self, delay: float, callback: Any) -> object:
        self.later.append((delay, callback))
        return object()  # the handle, never cancelled here


def test_elements_wait_longer_as_the_held_grow() -> None:
    """Each adding transaction makes the kernel walk every element: with 30,000 held they go
    out every 45 ms, not every 20 ms; and one transaction takes what came in between."""
    acc, channel = counting()
    acc.count_delay = COUNT_DELAY
    timers = Timers()
    acc.loop = timers  # type: ignore[assignment]
    acc.count([(4, A, 300, 1)])
    acc.count([(4, B, 300, 1)])
    assert [d for d, _ in timers.later] == [COUNT_DELAY] and channel.sent == []
    timers.later.pop()[1]()
    assert channel.kinds() == [[nftables.NFT_MSG_NEWSETELEM]]
    acc.counted.update({bytes([10, 0, i >> 8, i & 255]): ROWS[1] for i in range(30_000)})
    acc.count([(6, C, 300, 1)])
    assert timers.later[0][0] == pytest.approx(30_002 * 1.5e-6)


def test_what_waits_for_a_setup_is_one_item_per_address() -> None:
    """While a setup runs (its chains not made yet) nothing goes out; an address counted again
    and again meanwhile waits as one item, its newest, so what waits is bounded by the
    addresses held however long the setup takes, and goes out once in the end."""
    acc, channel = counting()
    acc._unready = True
    addresses = [bytes([203, 0, 113, i]) for i in range(100)]
    for _ in range(1000):
        acc.count([(4, a, 300, 1) for a in addresses])
    acc.count([(4, addresses[0], 600, 2)])  # the newest: another row, a longer timeout
    acc.release([(4, addresses[1])])  # released before it ever went out
    assert channel.sent == [] and len(acc._queued) == 99
    acc._unready = False
    acc.send_counted()
    assert channel.kinds() == [[nftables.NFT_MSG_NEWSETELEM]]  # one transaction for all
    [(_, _, body)] = channel.sent[0][1:-1]
    # NFTA_SET_ELEM_TIMEOUT, ms, big-endian: the newest item's for its address, 300 s for 98.
    assert body.count((600_000).to_bytes(8, "big")) == 1
    assert body.count((300_000).to_bytes(8, "big")) == 98
    assert acc.counted == {a: ROWS[2] if a == addresses[0] else ROWS[1]
                           for a in addresses if a != addresses[1]}  # fmt: skip


def test_refused_elements_are_counted_not_raised() -> None:
    acc, _ = counting()
    acc._settled([0, 17, 0])  # EEXIST inside a transaction
    assert acc.element_errors == 1


def test_the_report_and_the_null_accounting() -> None:
    acc, _ = counting()
    acc.since = 1_700_000_000
    acc.totals = [traffic.Traffic(1, "Optimize", "wan0", 1500, 1)]
    acc.flushed = 3
    assert acc.report() == {
        "traffic": [
            {"row": 1, "category": "Optimize", "link": "wan0", "bytes": 1500, "packets": 1}
        ],
        "traffic_since": 1_700_000_000,
        "conntrack_flushed": 3,
    }
    null = NullAccounting()
    assert null.report() == {"traffic": [], "traffic_since": None, "conntrack_flushed": 0}
    assert not null.counting and not null.refresh_due()


def test_routes_json_adds_bytes_only_when_counted() -> None:
    holds = [Hold(A, "portal.office.com", 400.0, 1), Hold(B, "outlook.office365.com", 400.0, 2)]
    plain = routes_json(holds, 100.0).decode()
    assert '"bytes"' not in plain
    counted = routes_json(holds, 100.0, {A: (123456, 100)}).decode()
    assert '"installed":false,"bytes":123456,"packets":100}' in counted
    assert '"installed":false,"bytes":0,"packets":0}' in counted  # no element: nothing sent


def test_resolverctl_shows_the_bytes_of_rows_and_routes() -> None:
    status: dict[str, Any] = {
        "breakout": {
            "interface": "wan0", "link_up": True, "table": 365, "routes_v4": 1, "routes_v6": 0,
            "cidr_routes": 0, "ipset_v4": 0, "ipset_v6": 0, "errors": 0, "active": "wan0",
            "links": [], "mode": "kernel", "traffic_since": 1_700_000_000,
            "conntrack_flushed": 2,
            "traffic": [
                {"row": 46, "category": "Optimize", "link": "wan0", "bytes": 1_234_567,
                 "packets": 900},
                {"row": 1, "category": "", "link": "wan1", "bytes": 0, "packets": 0},
            ],
        }
    }  # fmt: skip
    text = render_status(status)
    assert "Breakout traffic (counted since" in text
    assert "Row 46 Optimize via wan0" in text and "1.2 MB, 900 packets" in text
    assert "via wan1" not in text  # rows that sent nothing are left out
    assert "Flows cut" in text and "Traffic" not in text.split("Breakout traffic")[0]
    table = render_routes(
        [{"address": "203.0.113.10", "family": 4, "row": 46, "hold_s": 300,
          "names": ["teams.microsoft.com"], "installed": True, "bytes": 1_234_567,
          "packets": 900}]
    )  # fmt: skip
    assert table.splitlines()[0].split() == ["ADDRESS", "FAMILY", "ROW", "HOLD", "BYTES", "NAMES"]
    assert "1.2 MB" in table


@pytest.mark.parametrize(
    ("value", "shown"),
    [(0, "0 B"), (999, "999 B"), (1000, "1.0 kB"), (2_500_000, "2.5 MB"), (None, "-"), (-1, "-")],
)
def test_format_bytes(value: Any, shown: str) -> None:
    assert format_bytes(value) == shown


def test_routes_json_says_who_a_hold_is_charged_to_and_whether_it_is_in_scope() -> None:
    from resolver.net.holds import Owner

    inside, outside = Hold(A, "a.office.com", 400.0, 1), Hold(B, "b.office.com", 400.0, 1)
    inside.owner = Owner(socket.inet_pton(socket.AF_INET, "192.0.2.7"))
    outside.owner = Owner(socket.inet_pton(socket.AF_INET6, "2001:db8:1:2::")[:8])
    restored = Hold(socket.inet_pton(socket.AF_INET, "203.0.113.12"), "c.office.com", 400.0, 1)
    asked: list[str] = []

    def in_scope(client: str) -> bool:
        asked.append(client)
        return client == "192.0.2.7"

    text = routes_json([inside, outside, restored], 100.0, None, in_scope).decode()
    assert '"client":"192.0.2.7","in_scope":true}' in text
    assert '"client":"2001:db8:1:2::/64","in_scope":false}' in text
    assert text.count("in_scope") == 2  # a hold restored at start belongs to nobody
    assert asked == ["192.0.2.7", "2001:db8:1:2::"]
