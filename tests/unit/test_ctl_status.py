"""resolverctl status and routes: the text rendering of the daemon's objects."""

from __future__ import annotations

from typing import Any

import pytest

from resolver.ctl.blocks import format_duration, mapping_pairs, render_blocks
from resolver.ctl.routes import render_routes
from resolver.ctl.status import render_status
from resolver.statusmodel import breakout_off

pytestmark = pytest.mark.unit

STATUS: dict[str, Any] = {
    "uptime_s": 3725.4,
    "listen": ["127.0.0.1:53", ["::1", 53]],
    "config": "/etc/resolverd/resolverd.yaml",
    "version": "0.1.0",
    "build": "compiled",
    "upstreams": [
        {"address": "192.0.2.53:53", "healthy": True, "rtt_ms": 12.25, "role": "default"},
        {"address": "198.51.100.53:53", "healthy": False, "rtt_ms": None, "role": "breakout"},
        {
            "address": "[2001:db8::53]:53",
            "healthy": True,
            "rtt_ms": 3.0,
            "role": "zone:corp.example",
        },
    ],
    "cache": {"entries": 120, "hits": 300, "misses": 100},
    "queries": {"total": 400, "tagged": 50, "refused": 2, "servfail": 1, "dropped": 7},
    "forwarding": {
        "breakout_fallbacks": 4,
        "spliced": 9,
        "routes_deferred": 0,
        "canaries": 3,
        "addresses_capped": 0,
    },
    "policy": {"source": "builtin:microsoft365", "version": "seed-000", "rules": 16},
    "breakout": {
        "interface": "wan0",
        "link_up": True,
        "table": 365,
        "routes_v4": 12,
        "routes_v6": 3,
        "cidr_routes": 0,
        "ipset_v4": 12,
        "ipset_v6": 3,
        "errors": 0,
        "active": "wan1",
        "links": [
            {"interface": "wan0", "link_up": True, "healthy": False, "probe_rtt_ms": None},
            {"interface": "wan1", "link_up": True, "healthy": True, "probe_rtt_ms": 1.25},
        ],
        "active_v4": "wan1",
        "active_v6": "wan1",
        "failovers": 1,
    },
}

EXPECTED = """\
Global
   Uptime: 1h 2min 5s
   Listen: 127.0.0.1:53, [::1]:53
   Config: /etc/resolverd/resolverd.yaml
  Version: 0.1.0
    Build: compiled

Upstreams
      192.0.2.53:53: default, healthy, rtt 12.2 ms
   198.51.100.53:53: breakout, unhealthy
  [2001:db8::53]:53: zone:corp.example, healthy, rtt 3.0 ms

Cache
    Entries: 120
       Hits: 300
     Misses: 100
  Hit ratio: 75.0%

Queries
     Total: 400
    Tagged: 50
   Refused: 2
  SERVFAIL: 1
   Dropped: 7

Forwarding
  Breakout fallbacks: 4
             Spliced: 9
            Canaries: 3
     Routes deferred: 0
    Addresses capped: 0

Policy
   Source: builtin:microsoft365
  Version: seed-000
    Rules: 16

Breakout
      Interface: wan0
           Link: up
          Table: 365
         Routes: 12 IPv4, 3 IPv6
    CIDR routes: 0
  IPset entries: 12 IPv4, 3 IPv6
         Errors: 0
         Active: wan1
      Link wan0: up, unhealthy
      Link wan1: up, healthy, rtt 1.2 ms, active
      Failovers: 1
"""


def test_status_text_in_aligned_blocks() -> None:
    assert render_status(STATUS) == EXPECTED


def test_status_text_survives_missing_and_odd_fields() -> None:
    text = render_status({"uptime_s": "soon", "cache": [], "upstreams": "x", "breakout": None})
    assert "   Uptime: -\n" in text
    assert "Upstreams\n  Servers: none\n" in text
    assert "  Hit ratio: -\n" in text
    assert "Breakout\n  Mode: off\n" in text
    assert render_status(None).startswith("Global\n")


def test_status_text_from_a_daemon_without_roles_or_forwarding() -> None:
    old = {k: v for k, v in STATUS.items() if k != "forwarding"}
    old["upstreams"] = [{"address": "192.0.2.53:53", "healthy": True, "rtt_ms": 1.0}]
    text = render_status(old)
    assert "Upstreams\n  192.0.2.53:53: healthy, rtt 1.0 ms\n" in text
    assert "Forwarding" not in text
    odd = render_status({**STATUS, "forwarding": {"spliced": "many", "new_counter": 5}})
    assert "Forwarding\n  Breakout fallbacks: -\n             Spliced: many\n" in odd
    assert "         New counter: 5\n" in odd


def test_status_text_of_the_breakout_links() -> None:
    down = {
        **STATUS["breakout"], "active": None, "active_v4": None, "active_v6": None,
        "links": [
            {"interface": "wan0", "link_up": False, "healthy": None, "probe_rtt_ms": None},
            {"interface": "wan1", "link_up": True, "healthy": False, "probe_rtt_ms": None},
        ],
    }  # fmt: skip
    text = render_status({**STATUS, "breakout": down})
    assert "         Active: none: the main table (the tunnel)\n" in text
    assert "      Link wan0: down, not probed\n      Link wan1: up, unhealthy\n" in text
    split = {**STATUS["breakout"], "active": "wan0", "active_v4": "wan0", "active_v6": "wan1"}
    text = render_status({**STATUS, "breakout": split})
    assert "         Active: wan0 (IPv4), wan1 (IPv6)\n" in text
    assert "Link wan0: up, unhealthy, active for IPv4\n" in text
    assert "Link wan1: up, healthy, rtt 1.2 ms, active for IPv6\n" in text
    # A daemon from before several links: no Active, no link lines.
    old = {k: v for k, v in STATUS["breakout"].items()
           if k not in ("active", "links", "active_v4", "active_v6", "failovers")}  # fmt: skip
    text = render_status({**STATUS, "breakout": old})
    assert "Active" not in text and "Link wan" not in text and "Failovers" not in text
    assert text.endswith("         Errors: 0\n")


def test_status_text_shows_the_control_block_once_the_daemon_reports_it() -> None:
    assert "Control" not in render_status(STATUS)  # no connection refused yet
    text = render_status({**STATUS, "control": {"connections": 3, "refused": 40}})
    assert text.endswith("\nControl\n  Connections: 3\n      Refused: 40\n")
    odd = render_status({**STATUS, "control": {"refused": "many", "queued": 2}})
    assert odd.endswith("\nControl\n  Connections: -\n      Refused: many\n       Queued: 2\n")


def test_status_text_of_breakout_off() -> None:
    off = breakout_off("wan0", 365, ["wan0", "wan1"])
    text = render_status({**STATUS, "breakout": off})
    assert "           Link: down\n" in text and "         Routes: 0 IPv4, 0 IPv6\n" in text
    assert "         Active: none: the main table (the tunnel)\n" in text
    assert "      Link wan1: down, not probed\n      Failovers: -\n           Mode: off\n" in text


def test_status_text_without_traffic_has_no_ratio() -> None:
    text = render_status({**STATUS, "cache": {"entries": 0, "hits": 0, "misses": 0}})
    assert "  Hit ratio: -\n" in text


@pytest.mark.parametrize(
    ("seconds", "text"),
    [
        (0, "0s"),
        (0.25, "0.2s"),
        (59, "59s"),
        (60, "1min"),
        (3600, "1h"),
        (90061, "1d 1h 1min 1s"),
        (None, "-"),
        (-1, "-"),
        (True, "-"),
    ],
)
def test_format_duration(seconds: Any, text: str) -> None:
    assert format_duration(seconds) == text


def test_mapping_pairs_flatten_one_level() -> None:
    pairs = mapping_pairs(
        {"config": "/x.yaml", "policy": {"rules": 16, "changed": True}, "deep": {"a": {"b": 1}}}
    )
    assert pairs == [
        ("Config", "/x.yaml"),
        ("Policy rules", "16"),
        ("Policy changed", "yes"),
        ("Deep a", "b=1"),
    ]
    assert render_blocks([("Reloaded", pairs[:2])]) == (
        "Reloaded\n        Config: /x.yaml\n  Policy rules: 16\n"
    )


def test_routes_table() -> None:
    routes = [
        {
            "address": "52.96.1.2",
            "family": 4,
            "names": ["outlook.office365.com", "x.office365.com"],
            "row": 2,
            "hold_s": 290,
        },
        {"address": "2603:1026::2", "family": "inet6", "names": [], "row": 12, "hold_s": 5},
    ]
    assert render_routes(routes) == (
        "ADDRESS       FAMILY  ROW  HOLD      NAMES\n"
        "52.96.1.2     ipv4    2    4min 50s  outlook.office365.com,x.office365.com\n"
        "2603:1026::2  ipv6    12   5s        -\n"
        "\n"
        "2 routes (1 IPv4, 1 IPv6)\n"
    )


def test_routes_table_empty() -> None:
    assert render_routes([]) == "ADDRESS  FAMILY  ROW  HOLD  NAMES\n\n0 routes (0 IPv4, 0 IPv6)\n"
