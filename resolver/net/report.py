"""What `resolverctl status` and `resolverctl routes` show of the breakout, read from its books.

Pure functions of the holds, the policy's prefixes, the counters and the link's readiness; the
breakout adds what only it can read (netlink latency, connected networks, dry-run decisions).
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Mapping
from typing import Any

from resolver.config import BreakoutConfig
from resolver.net.holds import Hold
from resolver.net.prefixes import PolicyPrefixes


def status(
    cfg: BreakoutConfig,
    holds: Collection[Hold],
    prefixes: PolicyPrefixes,
    counters: Mapping[str, int],
    ready: Mapping[int, bool],
    now: float,
) -> dict[str, Any]:
    """Routes, set entries and counters per family; `link_up` is readiness for either family
    (the link is there, up and running, with an address)."""
    routes = {4: 0, 6: 0}
    entries = {4: 0, 6: 0}
    for h in holds:
        if h.installed:
            routes[h.family] += 1
        if h.set_expires > now:
            entries[h.family] += 1
    return {
        "interface": cfg.interface,
        "link_up": ready[4] or ready[6],
        "table": cfg.table,
        "routes_v4": routes[4],
        "routes_v6": routes[6],
        "cidr_routes": sum(1 for c in prefixes.routed.values() if c.installed),
        "ipset_v4": entries[4] if cfg.ipset4 else 0,
        "ipset_v6": entries[6] if cfg.ipset6 else 0,
        "errors": counters["netlink_errors"],
        "mode": cfg.mode,
        "ready_v4": ready[4],
        "ready_v6": ready[6],
        "holds": len(holds),
        "nftset_v4": entries[4] if cfg.nftset4 else 0,
        "nftset_v6": entries[6] if cfg.nftset6 else 0,
        "skipped": counters["skipped"],
        "ack_timeouts": counters["ack_timeouts"],
        "capped": counters["capped"],
        "counters": dict(counters),
    }


def routes(holds: Iterable[Hold], now: float) -> list[dict[str, Any]]:
    """One row per hold, IPv4 first, in address order."""
    return [
        {
            "address": h.address,
            "family": h.family,
            "names": h.live_names(now),
            "row": h.row,
            "hold_s": max(0, int(h.expires - now)),
            "installed": h.installed,
        }
        for h in sorted(holds, key=lambda h: (h.family, h.packed))
    ]
