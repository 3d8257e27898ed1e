"""The policy's own prefixes (row 14's /32s and the like): routed like the learnt addresses.

They come from the policy, not from DNS: installed at start and on reload, counted as
`cidr_routes`, removed by flush, put back by the next reload or restart. A prefix that overlaps
a never-routed or connected network is left out (and logged).
"""

from __future__ import annotations

import ipaddress
import logging
from dataclasses import dataclass

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


def desired_prefixes(policy: Policy, never: NeverRoute) -> tuple[dict[str, CidrRoute], int]:
    """The policy's prefixes that may be routed, by cidr, and how many were left out."""
    out: dict[str, CidrRoute] = {}
    skipped = 0
    for text in policy.cidrs:
        try:
            cidr = str(ipaddress.ip_network(text, strict=False))
        except ValueError:
            log.warning("policy prefix %r is not a network; skipped", text)
            skipped += 1
            continue
        reason = never.reason_cidr(cidr)
        if reason is not None:
            log.warning("not routing policy prefix %s: %s", cidr, reason)
            skipped += 1
            continue
        family, packed, length = split_cidr(cidr)
        out[cidr] = CidrRoute(cidr, family, packed, length)
    return out, skipped
