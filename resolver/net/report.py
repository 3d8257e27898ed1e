"""What `resolverctl status` and `resolverctl routes` show of the breakout, read from its books.

`status` keeps the contract's fields (README, `resolverctl status`; typed in
resolver/statusmodel.py): interface (the first link), link_up, table,
routes_v4/_v6, cidr_routes, ipset_v4/_v6, errors, active (the interface IPv4 routes go through,
else IPv6's; null when no link is usable) and links[{interface, link_up, healthy}], and adds
what helps an operator: per-family readiness and active link, counters, the journal, the
netlink latency, the connected networks, and in dry-run the recorded decisions.
"""

from __future__ import annotations

import json
import socket
from collections.abc import Callable, Iterable
from typing import Any, cast

from resolver.clients import client_text
from resolver.config import BreakoutConfig
from resolver.net.holds import Hold
from resolver.net.parts import Parts
from resolver.net.prefixes import POLICY, RESOLVER
from resolver.statusmodel import BreakoutStatus, Decision, JournalStatus, LinkStatus, NetlinkLatency


def status(cfg: BreakoutConfig, parts: Parts) -> dict[str, Any]:
    """The breakout part of the status tree, a resolver.statusmodel.BreakoutStatus (handed on
    as a plain dict: Breakout.status's type). The links, journal, latency and decisions come as
    their owners' dicts: the casts name what those hold."""
    ledger, choice = parts.ledger, parts.links.choice
    r4, r6, e4, e6 = ledger.tally(parts.clock())
    routes, entries = {4: r4, 6: r6}, {4: e4, 6: e6}
    ready = choice.ready()
    active = {f: (s.cfg.interface if (s := choice.active[f]) is not None else None)
              for f in (4, 6)}  # fmt: skip
    counters = ledger.counters
    config_routes = ledger.config_routes
    out: BreakoutStatus = {
        "interface": cfg.interface,
        "link_up": any(s.carries[4] or s.carries[6] for s in choice.links[:1]),
        "table": cfg.table,
        "routes_v4": routes[4],
        "routes_v6": routes[6],
        "cidr_routes": config_routes.installed(POLICY),
        "ipset_v4": entries[4] if cfg.ipset4 else 0,
        "ipset_v6": entries[6] if cfg.ipset6 else 0,
        "errors": counters["netlink_errors"],
        "active": active[4] or active[6],
        "links": cast("list[LinkStatus]", [s.status() for s in choice.links]),
        "mode": str(cfg.mode),
        "active_v4": active[4],
        "active_v6": active[6],
        "ready_v4": ready[4],
        "ready_v6": ready[6],
        "holds": len(ledger),
        "resolver_routes": config_routes.installed(RESOLVER),
        "nftset_v4": entries[4] if cfg.nftset4 else 0,
        "nftset_v6": entries[6] if cfg.nftset6 else 0,
        "skipped": counters["skipped"],
        "ack_timeouts": counters["ack_timeouts"],
        "capped": counters["capped"],
        "failovers": counters["failovers"],
        "journal": cast("JournalStatus", parts.journal.status()),
        "counters": dict(counters),
        "netlink_latency": cast("NetlinkLatency", parts.installs.acks.percentiles()),
        "connected_networks": [c for c, _ in parts.links.view.connected()],
    }
    counted = parts.installs.accounting.report()
    out["traffic"] = sorted(counted["traffic"], key=lambda t: -t["bytes"])
    out["traffic_since"] = counted["traffic_since"]
    out["conntrack_flushed"] = counted["conntrack_flushed"]
    if "traffic_error" in counted:
        out["traffic_error"] = counted["traffic_error"]
    extras = parts.installs.kernel.report()  # the dry-run kernel's decisions
    if extras:
        out["dry_run_decisions"] = cast("list[Decision]", extras["dry_run_decisions"])
        out["dry_run_decisions_total"] = extras["dry_run_decisions_total"]
    return dict(out)


def routes_json(
    holds: Iterable[Hold],
    now: float,
    counted: dict[bytes, tuple[int, int]] | None = None,
    in_scope: Callable[[str], bool] | None = None,
) -> bytes:
    """`routes` as compact JSON, written directly (30,000 routes in a few tens of ms); with
    `counted`, each address's bytes and packets (0 for one the kernel has no counter for);
    with `in_scope` (a scoped breakout), the client the hold is charged to and whether its
    traffic breaks out (holds restored at start belong to nobody: neither field)."""
    ntop, af4, af6, dumps = socket.inet_ntop, socket.AF_INET, socket.AF_INET6, json.dumps
    parts = []
    zero = (0, 0)

    def counts(packed: bytes) -> tuple[int, int] | None:
        return None if counted is None else counted.get(packed, zero)

    def scope(key: bytes) -> str:
        assert in_scope is not None
        client = client_text(key)
        inside = in_scope(client.partition("/")[0])  # an IPv6 client is its /64
        return f',"client":"{client}","in_scope":{"true" if inside else "false"}'

    for h in sorted(holds, key=lambda h: (len(h.packed), h.packed)):
        v4 = len(h.packed) == 4
        names = h.names
        listed = [names] if isinstance(names, str) else h.live_names(now)
        text = ",".join(f'"{n}"' if _plain(n) else dumps(n) for n in listed)
        parts.append(
            f'{{"address":"{ntop(af4 if v4 else af6, h.packed)}","family":{4 if v4 else 6},'
            f'"names":[{text}],"row":{h.row},"hold_s":{max(0, int(h.expires - now))},'
            f'"installed":{"true" if h.installed else "false"}'
            + (f',"bytes":{c[0]},"packets":{c[1]}' if (c := counts(h.packed)) else "")
            + (scope(h.owner.key) if in_scope is not None and h.owner is not None else "")
            + "}"
        )
    return ("[" + ",".join(parts) + "]").encode("ascii")


async def routes_counted(
    cfg: BreakoutConfig, parts: Parts, in_scope: Callable[[str], bool]
) -> bytes:
    """`routes_json` with each address's bytes and packets, read from the kernel now, and
    with a scoped breakout each hold's `in_scope`."""
    counted = await parts.installs.accounting.per_address()
    scoped = cfg.clients or cfg.client_interfaces  # else everyone is in scope: not shown
    return routes_json(parts.ledger, parts.clock(), counted, in_scope if scoped else None)


def _plain(name: str) -> bool:
    """A name that needs no JSON escaping (letters, digits, dots, hyphens, underscores)."""
    return name.isascii() and name.isprintable() and '"' not in name and "\\" not in name


def routes(holds: Iterable[Hold], now: float) -> list[dict[str, Any]]:
    """One row per hold, IPv4 first, in address order."""
    ntop, af4, af6 = socket.inet_ntop, socket.AF_INET, socket.AF_INET6
    rows = []
    for h in sorted(holds, key=lambda h: (len(h.packed), h.packed)):
        v4 = len(h.packed) == 4
        names = h.names
        rows.append({
            "address": ntop(af4 if v4 else af6, h.packed),
            "family": 4 if v4 else 6,
            "names": [names] if isinstance(names, str) else h.live_names(now),
            "row": h.row,
            "hold_s": max(0, int(h.expires - now)),
            "installed": h.installed,
        })  # fmt: skip
    return rows
