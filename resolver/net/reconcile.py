"""Start-up reconciliation: what the state file and the kernel's table say, sorted out.

- A saved hold still running, whose names still match the policy and whose address may be
  routed, is restored.
- In the table: an owned route (our protocol) for a restored hold or a policy prefix is adopted
  (kept as it is when its next hop is the configured one, else re-installed in place); any
  other owned route is stale and removed; routes of other protocols are never touched, and
  their addresses are never taken over.
- Then (`apply`) the stale routes go and what is not in the table yet goes in, in one batch.
"""

from __future__ import annotations

import logging
import socket
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from resolver.config import BreakoutConfig
from resolver.net.holds import Hold
from resolver.net.installs import Installs
from resolver.net.links import Link
from resolver.net.prefixes import CidrRoute, PolicyPrefixes
from resolver.net.routes import AF, HOST_LEN, Route, foreign_hosts, owned
from resolver.net.state import SavedHold

log = logging.getLogger(__name__)


def restore_holds(
    saved: list[SavedHold],
    match: Callable[[str], Any],
    routable: Callable[[int, bytes, str], bool],
    now: float,
    wall: float,
) -> dict[str, Hold]:
    """Holds from the state file that are still running and still wanted (monotonic times)."""
    out: dict[str, Hold] = {}
    for s in saved:
        if s.expires <= wall:
            continue
        names = {n: now + (e - wall) for n, e in s.names.items() if e > wall}
        if not names or not any(match(n) is not None for n in names):
            continue
        family = 6 if ":" in s.address else 4
        try:
            packed = socket.inet_pton(AF[family], s.address)
        except OSError:
            continue
        address = socket.inet_ntop(AF[family], packed)
        if routable(family, packed, address):
            out[address] = Hold(address, family, packed, now + (s.expires - wall), names, s.row)
    return out


@dataclass
class TableReview:
    adopted: list[Hold] = field(default_factory=list)
    stale: list[Route] = field(default_factory=list)
    foreign: set[str] = field(default_factory=set)  # host addresses routed by someone else


def review_table(
    routes: list[Route],
    cfg: BreakoutConfig,
    holds: dict[str, Hold],
    cidrs: dict[str, CidrRoute],
    link: Link | None,
    ready: dict[int, bool],
) -> TableReview:
    """Sort the table's routes; mark adopted holds and prefixes installed (when unchanged)."""
    review = TableReview(foreign=foreign_hosts(routes, cfg.route_protocol))
    for r in owned(routes, cfg.route_protocol):
        host = r.dst_len == HOST_LEN[r.family]
        same_hop = (
            link is not None
            and r.oif == link.index
            and r.gateway == (cfg.gateway4 if r.family == 4 else cfg.gateway6)
        )
        held = holds.get(r.dst) if host else None
        cidr = cidrs.get(f"{r.dst}/{r.dst_len}")
        if held is not None and ready[r.family]:
            held.installed = same_hop  # a changed next hop is re-installed in place
            review.adopted.append(held)
        elif cidr is not None and ready[r.family]:
            cidr.installed = same_hop
        else:
            review.stale.append(r)
    return review


async def apply(
    review: TableReview, io: Installs, prefixes: PolicyPrefixes, ready: dict[int, bool], table: int
) -> int:
    """Act on `review` for the restored holds (`io.holds`): give up those someone else routes,
    remove the stale routes, install the prefixes and holds the table lacks and wait for them,
    then align the adopted holds' set timeouts. Returns how many holds were installed."""
    holds = io.holds
    for address in review.foreign:
        if holds.pop(address, None) is not None:
            log.warning("not adopting %s: table %d routes it for someone else", address, table)
    if review.stale:
        io.count_errors("remove stale routes")(await io.delete_table_routes(review.stale))
    await io.install_prefixes(prefixes.missing(ready))
    todo = [h for h in holds.values() if not h.installed and ready[h.family]]
    for h in todo:
        io.enqueue(h)
    fut = io.flush_now()
    if fut is not None:
        await fut
    # The set timeouts kept running in the kernel; align them with the restored holds.
    for h in review.adopted:
        if h.installed:
            io.queue_refresh(h)
    io.flush_refresh()
    return len(todo)
