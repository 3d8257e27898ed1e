"""``resolverctl status [--json]``: the daemon's state, in resolvectl-style ``Key: value`` blocks.

``--json`` prints the daemon's status object exactly as it sent it. The text form reads the
object defensively: a missing or unexpected field shows as ``-``, never as a traceback, so an
older or newer daemon can still be inspected.
"""

from __future__ import annotations

import argparse
from collections.abc import Mapping, Sequence
from typing import Any

from resolver.ctl import client
from resolver.ctl.printable import printable

Block = tuple[str, list[tuple[str, str]]]


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = sub.add_parser("status", help="show the daemon's state", description=__doc__)
    parser.add_argument("--json", action="store_true", help="print the status object as JSON")
    parser.add_argument("--config", metavar="FILE", help="find the socket from this config")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    status = client.request(args, "status")
    if args.json:
        client.print_json(status)
    else:
        print(render_status(status), end="")
    return client.EXIT_OK


# --- formatting helpers, shared by the other commands ------------------------------------------


def format_duration(seconds: Any) -> str:
    """systemd's style: ``1d 2h 3min 4s``; ``-`` for anything that is not a number."""
    if isinstance(seconds, bool) or not isinstance(seconds, int | float) or seconds < 0:
        return "-"
    left = int(seconds)
    if left == 0:
        return f"{seconds:.1f}s" if 0 < seconds < 1 else "0s"
    parts = []
    for unit, size in (("d", 86_400), ("h", 3_600), ("min", 60), ("s", 1)):
        if left >= size:
            parts.append(f"{left // size}{unit}")
            left %= size
    return " ".join(parts)


def text(value: Any) -> str:
    """A scalar as text: ``-`` for None, yes/no for booleans, lists comma-separated; never a
    control character (see `printable`)."""
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, list | tuple):
        return ", ".join(text(item) for item in value) or "-"
    return printable(str(value))


def label(key: str) -> str:
    """``cidr_routes`` -> ``Cidr routes``: the label for a field this module does not know."""
    return key.replace("_", " ").capitalize()


def render_blocks(blocks: Sequence[Block]) -> str:
    """Titled blocks of ``Key: value`` lines, keys right-aligned within each block."""
    out: list[str] = []
    for title, pairs in blocks:
        if out:
            out.append("")
        out.append(printable(title))
        width = max((len(key) for key, _ in pairs), default=0)
        out.extend(f"{printable(key).rjust(width + 2)}: {printable(value)}" for key, value in pairs)
    return "\n".join(out) + "\n"


def mapping_pairs(data: Mapping[str, Any], prefix: str = "") -> list[tuple[str, str]]:
    """A result object as ``Key: value`` pairs; nested objects one level deep."""
    pairs: list[tuple[str, str]] = []
    for key, value in data.items():
        name = f"{prefix} {key.replace('_', ' ')}" if prefix else label(key)
        if isinstance(value, Mapping) and not prefix:
            pairs.extend(mapping_pairs(value, name))
        elif isinstance(value, Mapping):
            pairs.append((name, ", ".join(f"{k}={text(v)}" for k, v in value.items()) or "-"))
        else:
            pairs.append((name, text(value)))
    return pairs


# --- status ------------------------------------------------------------------------------------


def _section(status: Mapping[str, Any], key: str) -> Mapping[str, Any]:
    value = status.get(key)
    return value if isinstance(value, Mapping) else {}


def _count(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _address(value: Any) -> str:
    """``"1.2.3.4:53"`` as is; ``["::1", 53]`` as ``[::1]:53``."""
    if isinstance(value, list | tuple) and len(value) == 2:
        host, port = value
        return f"[{host}]:{port}" if ":" in str(host) else f"{host}:{port}"
    return text(value)


def _extras(data: Mapping[str, Any], known: set[str]) -> list[tuple[str, str]]:
    """Scalar fields a newer daemon added, so that they show up without a new resolverctl."""
    return [
        (label(key), text(value))
        for key, value in data.items()
        if key not in known and (value is None or isinstance(value, str | int | float | bool))
    ]


def _ratio(hits: Any, misses: Any) -> str:
    h, m = _count(hits), _count(misses)
    if h is None or m is None or h + m == 0:
        return "-"
    return f"{100.0 * h / (h + m):.1f}%"


def _pair(v4: Any, v6: Any) -> str:
    return f"{text(v4)} IPv4, {text(v6)} IPv6"


def _global(status: Mapping[str, Any]) -> Block:
    listen = status.get("listen")
    listen_text = (
        ", ".join(_address(a) for a in listen) if isinstance(listen, list) else text(listen)
    )
    return (
        "Global",
        [
            ("Uptime", format_duration(status.get("uptime_s"))),
            ("Listen", listen_text or "-"),
            ("Config", text(status.get("config"))),
            ("Version", text(status.get("version"))),
        ],
    )


def _upstreams(status: Mapping[str, Any]) -> Block:
    """One line per upstream: its role (``default``, ``breakout``, ``zone:NAME``), health and
    smoothed RTT, e.g. ``203.0.113.53:53: breakout, healthy, rtt 3.2 ms``."""
    pairs: list[tuple[str, str]] = []
    upstreams = status.get("upstreams")
    for up in upstreams if isinstance(upstreams, list) else []:
        if not isinstance(up, Mapping):
            continue
        healthy = up.get("healthy")
        state = "healthy" if healthy is True else "unhealthy" if healthy is False else "unknown"
        rtt = up.get("rtt_ms")
        if isinstance(rtt, int | float) and not isinstance(rtt, bool):
            state += f", rtt {rtt:.1f} ms"
        role = up.get("role")
        if isinstance(role, str) and role:  # a daemon from before split DNS has none
            state = f"{role}, {state}"
        pairs.append((_address(up.get("address")), state))
    return "Upstreams", pairs or [("Servers", "none")]


def _forwarding(status: Mapping[str, Any]) -> list[Block]:
    """Split DNS's counters, when the daemon reports them (none, no block)."""
    f = status.get("forwarding")
    if not isinstance(f, Mapping):
        return []
    known = {"breakout_fallbacks", "spliced", "canaries", "routes_deferred"}
    return [
        (
            "Forwarding",
            [
                ("Breakout fallbacks", text(f.get("breakout_fallbacks"))),
                ("Spliced", text(f.get("spliced"))),
                ("Canaries", text(f.get("canaries"))),
                ("Routes deferred", text(f.get("routes_deferred"))),
                *_extras(f, known),
            ],
        )
    ]


def _cache(status: Mapping[str, Any]) -> Block:
    cache = _section(status, "cache")
    known = {"entries", "hits", "misses"}
    return (
        "Cache",
        [
            ("Entries", text(cache.get("entries"))),
            ("Hits", text(cache.get("hits"))),
            ("Misses", text(cache.get("misses"))),
            ("Hit ratio", _ratio(cache.get("hits"), cache.get("misses"))),
            *_extras(cache, known),
        ],
    )


def _queries(status: Mapping[str, Any]) -> Block:
    q = _section(status, "queries")
    known = {"total", "tagged", "refused", "servfail"}
    return (
        "Queries",
        [
            ("Total", text(q.get("total"))),
            ("Tagged", text(q.get("tagged"))),
            ("Refused", text(q.get("refused"))),
            ("SERVFAIL", text(q.get("servfail"))),
            *_extras(q, known),
        ],
    )


def _policy(status: Mapping[str, Any]) -> Block:
    p = _section(status, "policy")
    known = {"source", "version", "rules"}
    return (
        "Policy",
        [
            ("Source", text(p.get("source"))),
            ("Version", text(p.get("version") or None)),
            ("Rules", text(p.get("rules"))),
            *_extras(p, known),
        ],
    )


def _breakout(status: Mapping[str, Any]) -> Block:
    """The breakout's fields; with several links (or health checks) also the active link and
    one line per link, e.g. ``Link wan1: up, healthy, rtt 1.4 ms, active``."""
    if status.get("breakout") is None:
        return "Breakout", [("Mode", "off")]
    b = _section(status, "breakout")
    link = b.get("link_up")
    known = {"interface", "link_up", "table", "routes_v4", "routes_v6", "cidr_routes"}
    known |= {"ipset_v4", "ipset_v6", "errors", "active", "links", "active_v4", "active_v6"}
    known |= {"failovers"}
    return (
        "Breakout",
        [
            ("Interface", text(b.get("interface"))),
            ("Link", "up" if link is True else "down" if link is False else "-"),
            ("Table", text(b.get("table"))),
            ("Routes", _pair(b.get("routes_v4"), b.get("routes_v6"))),
            ("CIDR routes", text(b.get("cidr_routes"))),
            ("IPset entries", _pair(b.get("ipset_v4"), b.get("ipset_v6"))),
            ("Errors", text(b.get("errors"))),
            *_links(b),
            *_extras(b, known),
        ],
    )


def _links(b: Mapping[str, Any]) -> list[tuple[str, str]]:
    """``Active`` and one ``Link NAME`` line per link, from a daemon that reports them."""
    if "active" not in b and "links" not in b:  # a daemon from before several links
        return []
    pairs = [("Active", _active(b))]
    links = b.get("links")
    for item in links if isinstance(links, list) else []:
        if not isinstance(item, Mapping):
            continue
        up, healthy = item.get("link_up"), item.get("healthy")
        state = ["up" if up is True else "down" if up is False else "-"]
        state.append(
            "healthy" if healthy is True else "unhealthy" if healthy is False else "not probed"
        )
        rtt = item.get("probe_rtt_ms")
        if isinstance(rtt, int | float) and not isinstance(rtt, bool):
            state.append(f"rtt {rtt:.1f} ms")
        name = item.get("interface")
        used = [f for f in (4, 6) if name and b.get(f"active_v{f}", b.get("active")) == name]
        if used:
            state.append("active" if len(used) == 2 else f"active for IPv{used[0]}")
        pairs.append((f"Link {text(name)}", ", ".join(state)))
    pairs.append(("Failovers", text(b.get("failovers"))))
    return pairs


def _active(b: Mapping[str, Any]) -> str:
    """The link the routes go through; ``none`` (the main table: the tunnel) when none is
    usable; both when the families use different links."""
    active = b.get("active")
    v4, v6 = b.get("active_v4", active), b.get("active_v6", active)
    if v4 != v6:
        return f"{text(v4 or 'none')} (IPv4), {text(v6 or 'none')} (IPv6)"
    if active is None:
        return "none: the main table (the tunnel)"
    return text(active)


def _monitor(status: Mapping[str, Any]) -> list[Block]:
    """`resolverctl monitor`'s counts, when the daemon reports them (none, no block)."""
    m = status.get("monitor")
    if not isinstance(m, Mapping):
        return []
    known = {"watchers", "events", "dropped"}
    return [
        (
            "Monitor",
            [
                ("Watchers", text(m.get("watchers"))),
                ("Events", text(m.get("events"))),
                ("Dropped", text(m.get("dropped"))),
                *_extras(m, known),
            ],
        )
    ]


def render_status(status: Any) -> str:
    """The text form of a status object."""
    if not isinstance(status, Mapping):
        status = {}
    return render_blocks(
        [
            _global(status),
            _upstreams(status),
            _cache(status),
            _queries(status),
            *_forwarding(status),
            _policy(status),
            _breakout(status),
            *_monitor(status),
        ]
    )
