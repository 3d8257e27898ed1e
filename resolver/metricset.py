"""The metrics resolverd exports: built from the DNS server's and the breakout's counters.

Read at scrape time from the live counters; nothing here is on the query path.
"""

from __future__ import annotations

from typing import Protocol

from resolver.dns.server import DnsServer
from resolver.metrics import Metric

RESULTS = ("noerror", "nxdomain", "servfail", "refused", "formerr", "notimp", "other")
DROPS = ("dropped", "ratelimited", "pending_full")
Sample = tuple[dict[str, str], float]


class BreakoutCounters(Protocol):
    counters: dict[str, int]

    def status(self) -> dict[str, object]: ...

    def latency(self) -> tuple[int, float]: ...


def collect(dns: DnsServer, breakout: BreakoutCounters | None) -> list[Metric]:
    c = dns.counters
    status = dns.status()
    forwarding = status["forwarding"]

    def counter(name: str, value: int, help_text: str) -> Metric:
        return Metric(name, "counter", help_text, [({}, value)])

    out = [
        Metric(
            "resolverd_queries",
            "counter",
            "DNS queries answered, by response code",
            [({"result": r}, c[r]) for r in RESULTS],
        ),
        Metric(
            "resolverd_queries_dropped",
            "counter",
            "DNS queries not served: dropped (malformed, shutdown), ratelimited (TC over UDP, "
            "SERVFAIL over TCP), pending_full (SERVFAIL)",
            [({"reason": r}, c[r]) for r in DROPS],
        ),
        Metric(
            "resolverd_cache_hits", "counter", "Answers served from the cache", [({}, c["hits"])]
        ),
        Metric(
            "resolverd_cache_misses", "counter", "Queries forwarded upstream", [({}, c["misses"])]
        ),
        Metric(
            "resolverd_cache_entries",
            "gauge",
            "Answers in the cache",
            [({}, status["cache"]["entries"])],
        ),
        counter(
            "resolverd_cache_evictions",
            status["cache"]["evicted"],
            "Answers evicted from the full cache, least recently used first",
        ),
        Metric(
            "resolverd_tagged_answers",
            "counter",
            "Microsoft 365 answers, by policy row",
            [({"row": str(row)}, n) for row, n in sorted(dns.tagged_by_row.items())],
        ),
    ]
    out += [
        counter(
            "resolverd_breakout_fallbacks",
            forwarding["breakout_fallbacks"],
            "Questions for the breakout resolvers that the default upstreams answered instead",
        ),
        counter(
            "resolverd_spliced_answers",
            forwarding["spliced"],
            "CNAME chains into a policy name finished through the breakout resolvers",
        ),
        counter(
            "resolverd_canary_answers",
            forwarding["canaries"],
            "Queries for a canary name answered NXDOMAIN by resolverd itself",
        ),
        counter(
            "resolverd_udp_send_dropped",
            status["udp"]["send_dropped"],
            "UDP replies dropped unsent (send buffer full, or the socket closed at shutdown)",
        ),
    ]
    # An upstream is named by its address and its role: default, breakout or zone:NAME (the
    # same address may serve two roles).
    upstreams = dns.upstream_stats()
    out.append(
        Metric(
            "resolverd_upstream_rtt_seconds",
            "gauge",
            "Smoothed round-trip time of each upstream",
            [
                ({"upstream": u["address"], "role": u["role"]}, u["rtt_ms"] / 1000.0)
                for u in upstreams
                if u["rtt_ms"] is not None
            ],
        )
    )
    out.append(
        Metric(
            "resolverd_upstream_healthy",
            "gauge",
            "1 when the upstream answers, 0 while it is probed as dead",
            [
                ({"upstream": u["address"], "role": u["role"]}, 1.0 if u["healthy"] else 0.0)
                for u in upstreams
            ],
        )
    )
    if breakout is not None:
        out.extend(_breakout(breakout))
    return out


def _breakout(breakout: BreakoutCounters) -> list[Metric]:
    k = breakout.counters
    status = breakout.status()
    count, seconds = breakout.latency()

    def counter(name: str, key: str, help_text: str) -> Metric:
        return Metric(name, "counter", help_text, [({}, k.get(key, 0))])

    return [
        counter("resolverd_routes_installed", "installed", "Host routes installed"),
        counter("resolverd_routes_removed", "removed", "Host routes removed (lapsed or flushed)"),
        counter("resolverd_routes_skipped", "skipped", "Addresses not routed (never_route, LAN)"),
        counter("resolverd_netlink_errors", "netlink_errors", "Netlink requests that failed"),
        counter("resolverd_ack_timeouts", "ack_timeouts", "Replies sent before the kernel acked"),
        Metric(
            "resolverd_routes",
            "gauge",
            "Host routes resolverd holds now, by family",
            [
                ({"family": "4"}, _num(status["routes_v4"])),
                ({"family": "6"}, _num(status["routes_v6"])),
            ],
        ),
        Metric(
            "resolverd_breakout_link_up",
            "gauge",
            "1 when the breakout interface is up with an address",
            [({}, 1.0 if status["link_up"] else 0.0)],
        ),
        Metric("resolverd_netlink_requests", "counter", "Netlink batches acked", [({}, count)]),
        Metric(
            "resolverd_netlink_seconds",
            "counter",
            "Time spent waiting for netlink acks (divide by the requests for the mean)",
            [({}, seconds)],
        ),
        *_links(status),
        counter(
            "resolverd_breakout_failovers",
            "failovers",
            "Moves of the breakout routes to another link, to none (the tunnel) or back",
        ),
    ]


def _links(status: dict[str, object]) -> list[Metric]:
    """Per breakout link, labelled `interface`: up, healthy (probed links only), the last
    good probe round's fastest connect, and whether the routes go through it."""
    raw = status.get("links")
    links = [s for s in raw if isinstance(s, dict)] if isinstance(raw, list) else []
    active = {status.get("active_v4"), status.get("active_v6")} - {None}
    up: list[Sample] = []
    healthy: list[Sample] = []
    rtt: list[Sample] = []
    used: list[Sample] = []
    for s in links:
        labels = {"interface": str(s.get("interface"))}
        up.append((labels, 1.0 if s.get("link_up") else 0.0))
        if isinstance(s.get("healthy"), bool):
            healthy.append((labels, 1.0 if s["healthy"] else 0.0))
        ms = s.get("probe_rtt_ms")
        if isinstance(ms, int | float) and not isinstance(ms, bool):
            rtt.append((labels, ms / 1000.0))
        used.append((labels, 1.0 if s.get("interface") in active else 0.0))
    return [
        Metric(
            "resolverd_breakout_interface_up",
            "gauge",
            "1 when the breakout link is up and running with an address",
            up,
        ),
        Metric(
            "resolverd_breakout_interface_healthy",
            "gauge",
            "1 when the breakout link passes its health probes, 0 when it fails them",
            healthy,
        ),
        Metric(
            "resolverd_breakout_probe_rtt_seconds",
            "gauge",
            "Fastest health probe connect through the breakout link in its last good round",
            rtt,
        ),
        Metric(
            "resolverd_breakout_interface_active",
            "gauge",
            "1 for the breakout link the routes go through now",
            used,
        ),
    ]


def _num(value: object) -> float:
    return float(value) if isinstance(value, int | float) else 0.0
