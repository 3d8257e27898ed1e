"""The Prometheus text exposition format (0.0.4) as `resolver.metrics.render` writes it, and
the metric set `resolver.metricset.collect` reads from the status tree."""

from __future__ import annotations

import math

import pytest

from policy.matcher import Matcher
from resolver.config import parse_config
from resolver.dns.server import DnsServer
from resolver.hooks import NullHook
from resolver.metrics import Metric, format_value, render
from resolver.metricset import collect
from resolver.statusmodel import BreakoutStatus, Status, breakout_off

pytestmark = pytest.mark.unit


def status_tree(dns: DnsServer, breakout: BreakoutStatus | None = None) -> Status:
    """The status tree around a DnsServer's part, as resolver.statusreport puts it together."""
    part = dns.status()
    return {
        "version": "0.1.0", "build": "interpreted", "uptime_s": 1.0,
        "config": "/etc/resolverd/resolverd.yaml",
        "listen": part["listen"], "upstreams": part["upstreams"], "cache": part["cache"],
        "queries": part["queries"], "forwarding": part["forwarding"], "udp": part["udp"],
        "tcp": part["tcp"],
        "policy": {"source": "builtin:microsoft365", "version": "seed", "rules": 16,
                   "last_check": None, "last_error": None, "next_check": None},
        "breakout": breakout if breakout is not None else breakout_off("wan0", 365, ["wan0"]),
    }  # fmt: skip


def test_render_help_type_and_samples() -> None:
    text = render(
        [
            Metric(
                "resolverd_queries_total",
                "counter",
                "DNS queries answered, by result.",
                [({"result": "noerror"}, 10), ({"result": "servfail"}, 2)],
            ),
            Metric("resolverd_cache_entries", "gauge", "Answers in the cache.", [({}, 42)]),
            Metric(
                "resolverd_upstream_rtt_seconds",
                "gauge",
                "Smoothed round-trip time per upstream.",
                [({"upstream": "192.0.2.53:53"}, 0.0125)],
            ),
        ]
    )
    assert text == (
        "# HELP resolverd_queries_total DNS queries answered, by result.\n"
        "# TYPE resolverd_queries_total counter\n"
        'resolverd_queries_total{result="noerror"} 10\n'
        'resolverd_queries_total{result="servfail"} 2\n'
        "# HELP resolverd_cache_entries Answers in the cache.\n"
        "# TYPE resolverd_cache_entries gauge\n"
        "resolverd_cache_entries 42\n"
        "# HELP resolverd_upstream_rtt_seconds Smoothed round-trip time per upstream.\n"
        "# TYPE resolverd_upstream_rtt_seconds gauge\n"
        'resolverd_upstream_rtt_seconds{upstream="192.0.2.53:53"} 0.0125\n'
    )


def test_upstream_metrics_carry_the_role() -> None:
    text = render(
        [
            Metric(
                "resolverd_upstream_healthy",
                "gauge",
                "Up.",
                [({"upstream": "203.0.113.53:53", "role": "breakout"}, 0)],
            )
        ]
    )
    assert 'resolverd_upstream_healthy{upstream="203.0.113.53:53",role="breakout"} 0\n' in text


def test_the_metric_set_names_every_upstream_by_role_and_counts_split_dns() -> None:
    config = parse_config(
        {
            "upstreams": ["198.51.100.53"],
            "forward_zones": {"corp.example": ["192.0.2.53:5353"]},
            "breakout": {"interface": "wan0", "resolvers": ["203.0.113.53"]},
        }
    )
    dns = DnsServer(config, Matcher([]), NullHook())  # not started: no sockets
    dns.handler.forwarder.default.upstreams[0].answered(0.0125)  # one RTT sample
    lines = render(collect(status_tree(dns), dns.tagged_by_row, None)).splitlines()
    rtt = 'resolverd_upstream_rtt_seconds{upstream="198.51.100.53:53",role="default"} 0.0125'
    assert [line for line in lines if line.startswith("resolverd_upstream_rtt_seconds{")] == [rtt]
    assert [line for line in lines if line.startswith("resolverd_upstream_healthy{")] == [
        'resolverd_upstream_healthy{upstream="198.51.100.53:53",role="default"} 1',
        'resolverd_upstream_healthy{upstream="192.0.2.53:5353",role="zone:corp.example"} 1',
        'resolverd_upstream_healthy{upstream="203.0.113.53:53",role="breakout"} 1',
    ]
    for name in (
        "resolverd_breakout_fallbacks_total",
        "resolverd_spliced_answers_total",
        "resolverd_canary_answers_total",
        "resolverd_cache_evictions_total",
        "resolverd_cache_client_evictions_total",
        "resolverd_udp_send_dropped_total",
    ):
        assert f"# TYPE {name} counter" in lines
        assert f"{name} 0" in lines


BREAKOUT: BreakoutStatus = {
    "interface": "wan0", "link_up": True, "table": 365, "routes_v4": 5, "routes_v6": 2,
    "cidr_routes": 0, "ipset_v4": 0, "ipset_v6": 0, "errors": 0, "active": "wan1",
    "links": [
        {"interface": "wan0", "link_up": True, "healthy": False, "probe_rtt_ms": None},
        {"interface": "wan1", "link_up": True, "healthy": True, "probe_rtt_ms": 2.5},
        {"interface": "wan2", "link_up": False, "healthy": None, "probe_rtt_ms": None},
    ],
    "mode": "kernel", "active_v4": "wan1", "active_v6": "wan1", "failovers": 3,
    "counters": {"installed": 7, "failovers": 3},
}  # fmt: skip


def test_the_breakout_metrics_per_link_and_failovers() -> None:
    config = parse_config({"upstreams": ["198.51.100.53"]})
    dns = DnsServer(config, Matcher([]), NullHook())
    lines = render(collect(status_tree(dns, BREAKOUT), {}, (4, 0.002))).splitlines()

    def samples(name: str) -> list[str]:
        return [
            line for line in lines if line.startswith(name + "{") or line.startswith(name + " ")
        ]

    assert samples("resolverd_breakout_interface_up") == [
        'resolverd_breakout_interface_up{interface="wan0"} 1',
        'resolverd_breakout_interface_up{interface="wan1"} 1',
        'resolverd_breakout_interface_up{interface="wan2"} 0',
    ]
    assert samples("resolverd_breakout_interface_healthy") == [  # wan2 is not probed
        'resolverd_breakout_interface_healthy{interface="wan0"} 0',
        'resolverd_breakout_interface_healthy{interface="wan1"} 1',
    ]
    assert samples("resolverd_breakout_probe_rtt_seconds") == [
        'resolverd_breakout_probe_rtt_seconds{interface="wan1"} 0.0025'
    ]
    assert samples("resolverd_breakout_interface_active") == [
        'resolverd_breakout_interface_active{interface="wan0"} 0',
        'resolverd_breakout_interface_active{interface="wan1"} 1',
        'resolverd_breakout_interface_active{interface="wan2"} 0',
    ]
    assert "# TYPE resolverd_breakout_failovers_total counter" in lines
    assert samples("resolverd_breakout_failovers_total") == ["resolverd_breakout_failovers_total 3"]
    # The metrics from before several links stay as they were.
    assert samples("resolverd_breakout_link_up") == ["resolverd_breakout_link_up 1"]
    assert samples("resolverd_routes_installed_total") == ["resolverd_routes_installed_total 7"]
    assert 'resolverd_routes{family="4"} 5' in lines
    assert samples("resolverd_netlink_requests_total") == ["resolverd_netlink_requests_total 4"]


def test_no_breakout_metrics_while_breakout_is_off() -> None:
    dns = DnsServer(parse_config({"upstreams": ["198.51.100.53"]}), Matcher([]), NullHook())
    text = render(collect(status_tree(dns), {3: 2}, None))
    for name in (
        "resolverd_breakout_link_up",
        "resolverd_breakout_interface_up",
        "resolverd_routes_installed_total",
        "resolverd_netlink_requests_total",
    ):
        assert f"# TYPE {name} " not in text
    assert 'resolverd_tagged_answers_total{row="3"} 2\n' in text
    assert 'resolverd_queries_total{result="noerror"} 0\n' in text


def test_counter_names_end_in_total() -> None:
    text = render([Metric("resolverd_routes_installed", "counter", "Routes.", [({}, 3)])])
    assert text.splitlines() == [
        "# HELP resolverd_routes_installed_total Routes.",
        "# TYPE resolverd_routes_installed_total counter",
        "resolverd_routes_installed_total 3",
    ]


def test_gauge_names_are_left_alone() -> None:
    assert "\nresolverd_up 1\n" in render([Metric("resolverd_up", "gauge", "Up.", [({}, 1)])])


def test_label_values_and_help_are_escaped() -> None:
    text = render(
        [
            Metric(
                "m",
                "gauge",
                "Back\\slash and\nnewline.",
                [({"name": 'say "hi"\\now\nthen', "row": "2"}, 1.5)],
            )
        ]
    )
    assert text.splitlines() == [
        "# HELP m Back\\\\slash and\\nnewline.",
        "# TYPE m gauge",
        'm{name="say \\"hi\\"\\\\now\\nthen",row="2"} 1.5',
    ]


def test_a_family_without_samples_still_has_help_and_type() -> None:
    assert render([Metric("resolverd_errors", "counter", "Errors.", [])]) == (
        "# HELP resolverd_errors_total Errors.\n# TYPE resolverd_errors_total counter\n"
    )


def test_nothing_renders_as_an_empty_body() -> None:
    assert render([]) == ""


@pytest.mark.parametrize(
    ("value", "text"),
    [
        (0, "0"),
        (7, "7"),
        (True, "1"),
        (3.0, "3"),
        (0.25, "0.25"),
        (1e20, "1e+20"),
        (-2.5, "-2.5"),
        (math.inf, "+Inf"),
        (-math.inf, "-Inf"),
        (math.nan, "NaN"),
        (2**60, str(2**60)),
    ],
)
def test_format_value(value: float, text: str) -> None:
    assert format_value(value) == text


@pytest.mark.parametrize(
    "metric",
    [
        Metric("0bad", "gauge", "x", []),
        Metric("bad-name", "gauge", "x", []),
        Metric("ok", "gauge", "x", [({"bad-label": "v"}, 1)]),
        Metric("ok", "gauge", "x", [({"__reserved": "v"}, 1)]),
        Metric("ok", "histogram", "x", []),  # type: ignore[arg-type]
    ],
)
def test_invalid_names_are_errors(metric: Metric) -> None:
    with pytest.raises(ValueError):
        render([metric])


def test_a_repeated_family_is_an_error() -> None:
    with pytest.raises(ValueError, match="given twice"):
        render([Metric("a", "counter", "x", []), Metric("a_total", "counter", "y", [])])
