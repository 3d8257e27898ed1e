"""Start-up reconciliation: what the state file and the kernel's table say, sorted out.

- A saved hold still running, whose names still match the policy and whose address may be
  routed, is restored.
- In the table: an owned route (our protocol) for a restored hold or a policy prefix is adopted
  (kept as it is when its next hop is the configured one, else re-installed in place); any
  other owned route is stale and removed; routes of other protocols are never touched, and
  their addresses are never taken over.
"""

from __future__ import annotations

import socket
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from resolver.config import BreakoutConfig
from resolver.net.holds import Hold
from resolver.net.links import Link
from resolver.net.prefixes import CidrRoute
from resolver.net.routes import AF, HOST_LEN, Route
from resolver.net.state import SavedHold


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
    review = TableReview()
    for r in routes:
        host = r.dst_len == HOST_LEN[r.family]
        if r.protocol != cfg.route_protocol:
            if host:
                review.foreign.add(r.dst)
            continue
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
