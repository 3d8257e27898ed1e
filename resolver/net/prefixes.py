"""The policy's own prefixes (row 14's /32s and the like): routed like the learnt addresses.

They come from the policy, not from DNS: installed at start and on reload, counted as
`cidr_routes`, removed by flush, put back by the next reload or restart. A prefix that overlaps
a never-routed network is left out (and logged); one that overlaps a connected network is held
back while it does, and routed again when that network goes away (breakout.Breakout).
"""

from __future__ import annotations

import ipaddress
import logging
from dataclasses import dataclass, field

from policy.model import Policy
from resolver.net.neverroute import NeverRoute
from resolver.net.routes import split_cidr

log = logging.getLogger(__name__)


@dataclass(eq=False)
class CidrRoute:
    cidr: str  # normalised, as the kernel reports it: "13.67.59.89/32"
    family: int
    packed: bytes
    length: int
    installed: bool = False


@dataclass
class DesiredPrefixes:
    routable: dict[str, CidrRoute] = field(default_factory=dict)  # by cidr
    held_back: dict[str, CidrRoute] = field(default_factory=dict)  # overlap a connected network
    skipped: int = 0  # left out: not a network, never_route, or held back


def desired_prefixes(policy: Policy, never: NeverRoute) -> DesiredPrefixes:
    """The policy's prefixes that may be routed, those a connected network holds back, and
    how many were left out."""
    out = DesiredPrefixes()
    for text in policy.cidrs:
        try:
            cidr = str(ipaddress.ip_network(text, strict=False))
        except ValueError:
            log.warning("policy prefix %r is not a network; skipped", text)
            out.skipped += 1
            continue
        reason = never.static_reason_cidr(cidr)
        if reason is not None:
            log.warning("not routing policy prefix %s: %s", cidr, reason)
            out.skipped += 1
            continue
        family, packed, length = split_cidr(cidr)
        route = CidrRoute(cidr, family, packed, length)
        reason = never.connected_reason_cidr(cidr)
        if reason is not None:
            log.warning("not routing policy prefix %s while it %s", cidr, reason)
            out.skipped += 1
            out.held_back[cidr] = route
            continue
        out.routable[cidr] = route
    return out
