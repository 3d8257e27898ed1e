"""The status tree: what `resolverctl status --json` prints, one TypedDict per JSON object.

The daemon builds it (resolver.statusreport), the control socket sends it as it is, and
resolverctl, the metrics and the sd_notify summary read it. A TypedDict is a dict at run time,
so the tree *is* the JSON object: its keys are the field names, verbatim, and nothing stands
between the tree and `json.dumps` that could rename or drop a field. The interface contract
(the README's `resolverctl status`) fixes the names: extend, never rename (tests/integration/
test_status_fields.py lists every key path).

`NotRequired` marks what is not always there: `monitor` (once the monitor watches the DNS
handler), `control` (once the control socket refused a connection), the breakout's fields
beyond the contract (absent while breakout is off: see `breakout_off`), and the dry-run
decisions. A reader of another daemon version's object must not trust any of it: see
resolver.ctl.status. Stdlib only and no asyncio: resolverctl imports it.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import NotRequired, TypedDict


class UpstreamStatus(TypedDict):
    address: str  # host:port
    healthy: bool
    rtt_ms: float | None  # smoothed; None before the first answer
    role: str  # default, breakout or zone:NAME


class CacheStatus(TypedDict):
    entries: int
    hits: int
    misses: int
    evicted: int
    bytes: int  # the answers' bytes held (at most max_entries x 1,232)
    client_evicted: int  # a client's own oldest answers, evicted at its client_share


class QueryCounts(TypedDict):
    total: int
    tagged: int
    refused: int
    servfail: int
    noerror: int
    nxdomain: int
    formerr: int
    notimp: int
    other: int
    dropped: int
    ratelimited: int
    pending_full: int


class ForwardingStatus(TypedDict):
    breakout_fallbacks: int
    spliced: int
    routes_deferred: int
    addresses_capped: int  # addresses of tagged answers beyond MAX_ADDRESSES, not routed
    canaries: int


class UdpStatus(TypedDict):
    send_dropped: int
    errors: int


class TcpStatus(TypedDict):
    connections: int  # open now; the rest: connections closed by each limit (dns/tcp.py)
    rejected: int
    evicted: int
    client_evicted: int
    slow_closed: int
    idle_closed: int
    stalled_closed: int
    oversized: int
    backlog_closed: int
    errors: int  # queries the handler failed on (each logged; the connection goes on)


class DnsStatus(TypedDict):
    """The DNS server's part (resolver.dns.server.DnsServer.status)."""

    listen: list[str]  # host:port actually bound
    upstreams: list[UpstreamStatus]
    cache: CacheStatus
    queries: QueryCounts
    forwarding: ForwardingStatus
    udp: UdpStatus
    tcp: TcpStatus


class PolicyStatus(TypedDict):
    source: str
    version: str
    rules: int
    last_check: str | None  # the endpoint web service's feed, ISO 8601 UTC
    last_error: str | None
    next_check: str | None


class LinkStatus(TypedDict):
    interface: str
    link_up: bool
    healthy: bool | None  # None: not probed
    ready_v4: NotRequired[bool]
    ready_v6: NotRequired[bool]
    probe_rtt_ms: NotRequired[float | None]


class JournalStatus(TypedDict):
    file: str
    writable: bool
    errors: int
    last_error: str | None
    problems: list[str]  # FILE:LINE: cannot read ...


class NetlinkLatency(TypedDict):
    samples: int
    p50_ms: float
    p99_ms: float
    max_ms: float


class Decision(TypedDict):
    """One dry-run decision: install, refresh, skip (with the reason) or remove."""

    time: float
    action: str
    address: str
    names: list[str]
    reason: str


class TrafficRow(TypedDict):
    row: int | str  # the policy row (an endpoint id with the feed)
    category: str  # Optimize, Allow, Default; "" for rows without one
    link: str  # the breakout link it left through
    bytes: int  # IP packets as forwarded, headers included
    packets: int  # as forwarded: a GRO/GSO aggregate counts once


class BreakoutStatus(TypedDict):
    # The contract (README, `resolverctl status`), and the mode.
    interface: str | None  # the first link
    link_up: bool
    table: int
    routes_v4: int
    routes_v6: int
    cidr_routes: int
    ipset_v4: int
    ipset_v6: int
    errors: int
    active: str | None  # None: every link down or unhealthy, the traffic takes the tunnel
    links: list[LinkStatus]
    mode: str  # kernel, dry-run or off
    # While breakout runs (kernel or dry-run).
    active_v4: NotRequired[str | None]
    active_v6: NotRequired[str | None]
    ready_v4: NotRequired[bool]
    ready_v6: NotRequired[bool]
    holds: NotRequired[int]
    resolver_routes: NotRequired[int]
    nftset_v4: NotRequired[int]
    nftset_v6: NotRequired[int]
    skipped: NotRequired[int]
    ack_timeouts: NotRequired[int]
    capped: NotRequired[int]
    failovers: NotRequired[int]
    journal: NotRequired[JournalStatus]
    counters: NotRequired[dict[str, int]]  # every counter of the breakout, by name
    netlink_latency: NotRequired[NetlinkLatency]
    connected_networks: NotRequired[list[str]]
    # What broke out (breakout.count_traffic) and the flows a move cut (flush_conntrack).
    traffic: NotRequired[list[TrafficRow]]  # per row, category and link, largest first
    traffic_since: NotRequired[int | None]  # epoch the counters count from (null: none)
    traffic_error: NotRequired[str]  # why there are no counters
    conntrack_flushed: NotRequired[int]  # conntrack entries deleted after moves
    # In dry-run only.
    dry_run_decisions: NotRequired[list[Decision]]
    dry_run_decisions_total: NotRequired[int]


class MonitorStatus(TypedDict):
    watchers: int  # `resolverctl monitor` sessions open now
    events: int  # handed to them since the start
    dropped: int  # lost because a monitor read too slowly


class ControlStatus(TypedDict):
    connections: int  # control connections open now
    refused: int  # connections answered Busy since the start


class Status(DnsStatus):
    """The whole tree: the object `status --json` prints."""

    version: str
    build: str  # "compiled" (mypyc) or "interpreted": resolver.buildinfo
    uptime_s: float
    config: str
    policy: PolicyStatus
    breakout: BreakoutStatus
    monitor: NotRequired[MonitorStatus]
    control: NotRequired[ControlStatus]


def breakout_off(interface: str | None, table: int, links: Iterable[str]) -> BreakoutStatus:
    """The breakout part while breakout is off: the contract's fields from the config, nothing
    installed, every link down, no link active."""
    return {
        "mode": "off", "interface": interface, "link_up": False, "table": table,
        "routes_v4": 0, "routes_v6": 0, "cidr_routes": 0, "ipset_v4": 0, "ipset_v6": 0,
        "errors": 0, "active": None,
        "links": [{"interface": name, "link_up": False, "healthy": None} for name in links],
    }  # fmt: skip
