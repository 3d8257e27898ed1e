"""``resolverctl status [--json]``: the daemon's state, in resolvectl-style ``Key: value`` blocks.

``--json`` prints the daemon's status object exactly as it sent it. The text form reads it as
the tree resolver.statusmodel describes, defensively: every field through `_get`, so that mypy
checks its name against the model, and a field an older or newer daemon did not send (or sent
as something else) shows as ``-``, never as a traceback. Scalar fields this version does not
know show up under their own names.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable, Mapping
from typing import Any, TypeVar, cast

from resolver.ctl import client
from resolver.ctl.blocks import Block, format_bytes, format_duration, label, render_blocks, text
from resolver.statusmodel import BreakoutStatus, LinkStatus, Status, UpstreamStatus

T = TypeVar("T")


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


# --- status ------------------------------------------------------------------------------------


def _get(read: Callable[[], T]) -> T | None:
    """What `read` (a path into the status object, written with subscripts) finds, or None
    where the daemon sent no such field, or something else than an object or a list on the
    way to it. The value itself may be of any type: a daemon of another version sent it, and
    the renderers check it."""
    try:
        return read()
    except (KeyError, IndexError, TypeError):
        return None


def _object(read: Callable[[], T]) -> T:
    """The object `read` finds, or an empty one where there is none: read it through `_get`."""
    value = _get(read)
    return value if isinstance(value, Mapping) else cast(T, {})


def _objects(read: Callable[[], list[T]]) -> list[T]:
    """The objects in the list `read` finds; none when it finds no list."""
    value = _get(read)
    return [item for item in value if isinstance(item, Mapping)] if isinstance(value, list) else []


def _count(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _number(value: Any) -> float | None:
    return value if isinstance(value, int | float) and not isinstance(value, bool) else None


def _address(value: Any) -> str:
    """``"1.2.3.4:53"`` as is; ``["::1", 53]`` as ``[::1]:53``."""
    if isinstance(value, list | tuple) and len(value) == 2:
        host, port = value
        return f"[{host}]:{port}" if ":" in str(host) else f"{host}:{port}"
    return text(value)


def _extras(data: Mapping[str, object], known: set[str]) -> list[tuple[str, str]]:
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


def _global(status: Status) -> Block:
    listen = _get(lambda: status["listen"])
    listen_text = (
        ", ".join(_address(a) for a in listen) if isinstance(listen, list) else text(listen)
    )
    return (
        "Global",
        [
            ("Uptime", format_duration(_get(lambda: status["uptime_s"]))),
            ("Listen", listen_text or "-"),
            ("Config", text(_get(lambda: status["config"]))),
            ("Version", text(_get(lambda: status["version"]))),
            ("Build", text(_get(lambda: status["build"]))),
        ],
    )


def _upstreams(status: Status) -> Block:
    """One line per upstream: its role (``default``, ``breakout``, ``zone:NAME``), health and
    smoothed RTT, e.g. ``203.0.113.53:53: breakout, healthy, rtt 3.2 ms``."""
    pairs = [_upstream(up) for up in _objects(lambda: status["upstreams"])]
    return "Upstreams", pairs or [("Servers", "none")]


def _upstream(up: UpstreamStatus) -> tuple[str, str]:
    healthy = _get(lambda: up["healthy"])
    state = "healthy" if healthy is True else "unhealthy" if healthy is False else "unknown"
    rtt = _number(_get(lambda: up["rtt_ms"]))
    if rtt is not None:
        state += f", rtt {rtt:.1f} ms"
    role = _get(lambda: up["role"])
    if isinstance(role, str) and role:  # a daemon from before split DNS has none
        state = f"{role}, {state}"
    return _address(_get(lambda: up["address"])), state


def _forwarding(status: Status) -> list[Block]:
    """Split DNS's counters, when the daemon reports them (none, no block)."""
    f = _get(lambda: status["forwarding"])
    if not isinstance(f, Mapping):
        return []
    known = {"breakout_fallbacks", "spliced", "canaries", "routes_deferred", "addresses_capped"}
    return [
        (
            "Forwarding",
            [
                ("Breakout fallbacks", text(_get(lambda: f["breakout_fallbacks"]))),
                ("Spliced", text(_get(lambda: f["spliced"]))),
                ("Canaries", text(_get(lambda: f["canaries"]))),
                ("Routes deferred", text(_get(lambda: f["routes_deferred"]))),
                ("Addresses capped", text(_get(lambda: f["addresses_capped"]))),
                *_extras(f, known),
            ],
        )
    ]


def _cache(status: Status) -> Block:
    cache = _object(lambda: status["cache"])
    hits, misses = _get(lambda: cache["hits"]), _get(lambda: cache["misses"])
    known = {"entries", "hits", "misses"}
    return (
        "Cache",
        [
            ("Entries", text(_get(lambda: cache["entries"]))),
            ("Hits", text(hits)),
            ("Misses", text(misses)),
            ("Hit ratio", _ratio(hits, misses)),
            *_extras(cache, known),
        ],
    )


def _queries(status: Status) -> Block:
    q = _object(lambda: status["queries"])
    known = {"total", "tagged", "refused", "servfail"}
    return (
        "Queries",
        [
            ("Total", text(_get(lambda: q["total"]))),
            ("Tagged", text(_get(lambda: q["tagged"]))),
            ("Refused", text(_get(lambda: q["refused"]))),
            ("SERVFAIL", text(_get(lambda: q["servfail"]))),
            *_extras(q, known),
        ],
    )


def _policy(status: Status) -> Block:
    p = _object(lambda: status["policy"])
    known = {"source", "version", "rules"}
    return (
        "Policy",
        [
            ("Source", text(_get(lambda: p["source"]))),
            ("Version", text(_get(lambda: p["version"]) or None)),
            ("Rules", text(_get(lambda: p["rules"]))),
            *_extras(p, known),
        ],
    )


def _breakout(status: Status) -> Block:
    """The breakout's fields; with several links (or health checks) also the active link and
    one line per link, e.g. ``Link wan1: up, healthy, rtt 1.4 ms, active``."""
    if _get(lambda: status["breakout"]) is None:  # null from a daemon that had it off
        return "Breakout", [("Mode", "off")]
    breakout = _object(lambda: status["breakout"])
    link = _get(lambda: breakout["link_up"])
    known = {"interface", "link_up", "table", "routes_v4", "routes_v6", "cidr_routes"}
    known |= {"ipset_v4", "ipset_v6", "errors", "active", "links", "active_v4", "active_v6"}
    known |= {"failovers", "traffic", "traffic_since", "traffic_error", "conntrack_flushed"}
    return (
        "Breakout",
        [
            ("Interface", text(_get(lambda: breakout["interface"]))),
            ("Link", "up" if link is True else "down" if link is False else "-"),
            ("Table", text(_get(lambda: breakout["table"]))),
            (
                "Routes",
                _pair(_get(lambda: breakout["routes_v4"]), _get(lambda: breakout["routes_v6"])),
            ),
            ("CIDR routes", text(_get(lambda: breakout["cidr_routes"]))),
            (
                "IPset entries",
                _pair(_get(lambda: breakout["ipset_v4"]), _get(lambda: breakout["ipset_v6"])),
            ),
            ("Errors", text(_get(lambda: breakout["errors"]))),
            *_links(breakout),
            *_extras(breakout, known),
        ],
    )


def _links(breakout: BreakoutStatus) -> list[tuple[str, str]]:
    """``Active`` and one ``Link NAME`` line per link, from a daemon that reports them."""
    if "active" not in breakout and "links" not in breakout:  # from before several links
        return []
    pairs = [("Active", _active(breakout))]
    actives = _actives(breakout)
    pairs += [_link(item, actives) for item in _objects(lambda: breakout["links"])]
    pairs.append(("Failovers", text(_get(lambda: breakout["failovers"]))))
    if "conntrack_flushed" in breakout:
        pairs.append(("Flows cut", text(_get(lambda: breakout["conntrack_flushed"]))))
    return pairs


def _traffic(status: Status) -> list[Block]:
    """What broke out, by the kernel's counters: one line per row, category and link, the
    largest first, e.g. ``Row 46 Optimize via wan0: 1.2 GB, 901,234 packets``."""
    breakout = _get(lambda: status["breakout"])
    if not isinstance(breakout, Mapping) or "traffic" not in breakout:
        return []
    since = _get(lambda: breakout["traffic_since"])
    title = "Breakout traffic" + (f" (counted since {_since(since)})" if since else "")
    pairs = []
    for t in _objects(lambda: breakout["traffic"]):
        if not t.get("bytes") and not t.get("packets"):
            continue  # a row that sent nothing through that link
        cls = f"{text(t.get('row'))} {text(t.get('category'))}".rstrip()
        pairs.append(
            (f"Row {cls} via {text(t.get('link'))}",
             f"{format_bytes(t.get('bytes'))}, {text(t.get('packets'))} packets")
        )  # fmt: skip
    if not pairs:
        error = _get(lambda: breakout["traffic_error"])
        pairs.append(("Counted", f"not counting: {text(error)}" if error else "nothing yet"))
    return [(title, pairs)]


def _since(epoch: Any) -> str:
    if not isinstance(epoch, int) or isinstance(epoch, bool):
        return text(epoch)
    return time.strftime("%Y-%m-%d %H:%M:%S %Z", time.localtime(epoch))


def _link(item: LinkStatus, actives: tuple[object, object]) -> tuple[str, str]:
    up, healthy = _get(lambda: item["link_up"]), _get(lambda: item["healthy"])
    state = ["up" if up is True else "down" if up is False else "-"]
    state.append(
        "healthy" if healthy is True else "unhealthy" if healthy is False else "not probed"
    )
    rtt = _number(_get(lambda: item["probe_rtt_ms"]))
    if rtt is not None:
        state.append(f"rtt {rtt:.1f} ms")
    name = _get(lambda: item["interface"])
    used = [
        family for family, active in zip((4, 6), actives, strict=True) if name and active == name
    ]
    if used:
        state.append("active" if len(used) == 2 else f"active for IPv{used[0]}")
    return f"Link {text(name)}", ", ".join(state)


def _actives(breakout: BreakoutStatus) -> tuple[object, object]:
    """The links IPv4's and IPv6's routes go through; `active` for both from a daemon that
    reports no family apart."""
    active = _get(lambda: breakout["active"])
    v4 = _get(lambda: breakout["active_v4"]) if "active_v4" in breakout else active
    v6 = _get(lambda: breakout["active_v6"]) if "active_v6" in breakout else active
    return v4, v6


def _active(breakout: BreakoutStatus) -> str:
    """The link the routes go through; ``none`` (the main table: the tunnel) when none is
    usable; both when the families use different links."""
    v4, v6 = _actives(breakout)
    if v4 != v6:
        return f"{text(v4 or 'none')} (IPv4), {text(v6 or 'none')} (IPv6)"
    if _get(lambda: breakout["active"]) is None:
        return "none: the main table (the tunnel)"
    return text(_get(lambda: breakout["active"]))


def _monitor(status: Status) -> list[Block]:
    """`resolverctl monitor`'s counts, when the daemon reports them (none, no block)."""
    m = _get(lambda: status["monitor"])
    if not isinstance(m, Mapping):
        return []
    known = {"watchers", "events", "dropped"}
    return [
        (
            "Monitor",
            [
                ("Watchers", text(_get(lambda: m["watchers"]))),
                ("Events", text(_get(lambda: m["events"]))),
                ("Dropped", text(_get(lambda: m["dropped"]))),
                *_extras(m, known),
            ],
        )
    ]


def _control(status: Status) -> list[Block]:
    """The control socket's connections, once it has refused one (until then, no block)."""
    c = _get(lambda: status["control"])
    if not isinstance(c, Mapping):
        return []
    known = {"connections", "refused"}
    return [
        (
            "Control",
            [
                ("Connections", text(_get(lambda: c["connections"]))),
                ("Refused", text(_get(lambda: c["refused"]))),
                *_extras(c, known),
            ],
        )
    ]


def render_status(received: object) -> str:
    """The text form of the status object a daemon sent, whatever its version."""
    status = cast(Status, received)  # read only through _get: any JSON value may have come
    return render_blocks(
        [
            _global(status),
            _upstreams(status),
            _cache(status),
            _queries(status),
            *_forwarding(status),
            _policy(status),
            _breakout(status),
            *_traffic(status),
            *_monitor(status),
            *_control(status),
        ]
    )
