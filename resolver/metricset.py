"""The metrics resolverd exports, read from the status tree (resolver.statusmodel) at scrape
time; nothing here is on the query path.

Two figures are not in the tree: the tagged answers by policy row, and the breakout's netlink
totals (batches acked, seconds waited), which the daemon passes alongside.
"""

from __future__ import annotations

from collections.abc import Mapping

from resolver.metrics import Metric
from resolver.statusmodel import BreakoutStatus, LinkStatus, Status

Sample = tuple[dict[str, str], float]


def collect(
    status: Status, tagged_by_row: Mapping[int, int], netlink: tuple[int, float] | None
) -> list[Metric]:
    """Every metric. `netlink` is the breakout's (batches acked, seconds waited for their
    acks), None while breakout is off: then there are no breakout metrics."""
    q, cache, forwarding = status["queries"], status["cache"], status["forwarding"]

    def counter(name: str, value: int, help_text: str) -> Metric:
        return Metric(name, "counter", help_text, [({}, value)])

    out = [
        Metric(
            "resolverd_queries",
            "counter",
            "DNS queries answered, by response code",
            [
                ({"result": "noerror"}, q["noerror"]),
                ({"result": "nxdomain"}, q["nxdomain"]),
                ({"result": "servfail"}, q["servfail"]),
                ({"result": "refused"}, q["refused"]),
                ({"result": "formerr"}, q["formerr"]),
                ({"result": "notimp"}, q["notimp"]),
                ({"result": "other"}, q["other"]),
            ],
        ),
        Metric(
            "resolverd_queries_dropped",
            "counter",
            "DNS queries not served: dropped (malformed, shutdown), ratelimited (TC over UDP, "
            "SERVFAIL over TCP), pending_full (SERVFAIL)",
            [
                ({"reason": "dropped"}, q["dropped"]),
                ({"reason": "ratelimited"}, q["ratelimited"]),
                ({"reason": "pending_full"}, q["pending_full"]),
            ],
        ),
        counter("resolverd_cache_hits", cache["hits"], "Answers served from the cache"),
        counter("resolverd_cache_misses", cache["misses"], "Queries forwarded upstream"),
        Metric(
            "resolverd_cache_entries", "gauge", "Answers in the cache", [({}, cache["entries"])]
        ),
        counter(
            "resolverd_cache_evictions",
            cache["evicted"],
            "Answers evicted from the full cache, least recently used first",
        ),
        counter(
            "resolverd_cache_client_evictions",
            cache["client_evicted"],
            "Answers evicted because their client held its client_share of the cache",
        ),
        Metric(
            "resolverd_tagged_answers",
            "counter",
            "Microsoft 365 answers, by policy row",
            [({"row": str(row)}, n) for row, n in sorted(tagged_by_row.items())],
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
    upstreams = status["upstreams"]
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
    if netlink is not None:
        out.extend(_breakout(status["breakout"], netlink))
    return out


def _breakout(status: BreakoutStatus, netlink: tuple[int, float]) -> list[Metric]:
    k = status.get("counters", {})
    count, seconds = netlink

    def counter(name: str, key: str, help_text: str) -> Metric:
        return Metric(name, "counter", help_text, [({}, k.get(key, 0))])

    return [
        counter("resolverd_routes_installed", "installed", "Host routes installed"),
        counter("resolverd_routes_removed", "removed", "Host routes removed (lapsed or flushed)"),
        counter("resolverd_routes_skipped", "skipped", "Addresses not routed (never_route, LAN)"),
        counter("resolverd_routes_capped", "capped", "Addresses not routed: max_entries reached"),
        counter(
            "resolverd_routes_client_capped",
            "client_capped",
            "Addresses not routed: the asking client's share of max_entries reached",
        ),
        counter("resolverd_netlink_errors", "netlink_errors", "Netlink requests that failed"),
        counter("resolverd_ack_timeouts", "ack_timeouts", "Replies sent before the kernel acked"),
        Metric(
            "resolverd_routes",
            "gauge",
            "Host routes resolverd holds now, by family",
            [
                ({"family": "4"}, status["routes_v4"]),
                ({"family": "6"}, status["routes_v6"]),
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
        Metric(
            "resolverd_breakout_conntrack_flushed",
            "counter",
            "Conntrack entries to moved addresses deleted after a move or withdrawal",
            [({}, status.get("conntrack_flushed", 0))],
        ),
        *_traffic(status),
    ]


def _traffic(status: BreakoutStatus) -> list[Metric]:
    """The kernel's counters of what broke out, per policy row, category and link. They
    count from `traffic_since`: a table made anew starts them at zero (a counter reset)."""
    rows = status.get("traffic", [])
    labels = [{"row": str(t["row"]), "category": t["category"], "link": t["link"]} for t in rows]
    return [
        Metric(
            "resolverd_breakout_bytes",
            "counter",
            "Bytes sent through a breakout link to held addresses, by policy row and category",
            [(lab, t["bytes"]) for lab, t in zip(labels, rows, strict=True)],
        ),
        Metric(
            "resolverd_breakout_packets",
            "counter",
            "Packets (as forwarded: a GRO/GSO aggregate counts once) sent through a breakout "
            "link to held addresses, by policy row and category",
            [(lab, t["packets"]) for lab, t in zip(labels, rows, strict=True)],
        ),
    ]


def _links(status: BreakoutStatus) -> list[Metric]:
    """Per breakout link, labelled `interface`: up, healthy (probed links only), the last
    good probe round's fastest connect, and whether the routes go through it."""
    links: list[LinkStatus] = status["links"]
    active = {status.get("active_v4"), status.get("active_v6")} - {None}
    up: list[Sample] = []
    healthy: list[Sample] = []
    rtt: list[Sample] = []
    used: list[Sample] = []
    for s in links:
        labels = {"interface": s["interface"]}
        up.append((labels, 1.0 if s["link_up"] else 0.0))
        if s["healthy"] is not None:
            healthy.append((labels, 1.0 if s["healthy"] else 0.0))
        ms = s.get("probe_rtt_ms")
        if ms is not None:
            rtt.append((labels, ms / 1000.0))
        used.append((labels, 1.0 if s["interface"] in active else 0.0))
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
