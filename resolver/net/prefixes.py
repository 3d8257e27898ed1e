"""The policy's own prefixes (row 14's /32s and the like): routed like the learnt addresses.

They come from the policy, not from DNS: installed at start and on reload, counted as
`cidr_routes`, removed by flush, put back by the next reload or restart. A prefix that overlaps
a never-routed network is left out (and logged); one that overlaps a connected network is held
back while it does, and routed again when that network goes away (`PolicyPrefixes.follow`).
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


class PolicyPrefixes:
    """The policy's prefixes by cidr: those routed, and those a connected network holds back.

    Only the books: the caller installs and removes what the methods hand back.
    """

    def __init__(self) -> None:
        self.routed: dict[str, CidrRoute] = {}
        self.held_back: dict[str, CidrRoute] = {}

    def load(self, policy: Policy, never: NeverRoute) -> tuple[list[CidrRoute], int]:
        """Take the prefixes of `policy`; one routed already stays as it is. Returns the routed
        prefixes that went (installed or not) and how many of the policy's were left out."""
        routed: dict[str, CidrRoute] = {}
        held_back: dict[str, CidrRoute] = {}
        skipped = 0
        for text in policy.cidrs:
            try:
                cidr = str(ipaddress.ip_network(text, strict=False))
            except ValueError:
                log.warning("policy prefix %r is not a network; skipped", text)
                skipped += 1
                continue
            reason = never.static_reason_cidr(cidr)
            if reason is not None:
                log.warning("not routing policy prefix %s: %s", cidr, reason)
                skipped += 1
                continue
            route = CidrRoute(cidr, *split_cidr(cidr))
            reason = never.connected_reason_cidr(cidr)
            if reason is not None:
                log.warning("not routing policy prefix %s while it %s", cidr, reason)
                skipped += 1
                held_back[cidr] = route
                continue
            routed[cidr] = self.routed.get(cidr, route)
        gone = [c for k, c in self.routed.items() if k not in routed]
        self.routed, self.held_back = routed, held_back
        return gone, skipped

    def follow(self, never: NeverRoute) -> tuple[list[CidrRoute], list[CidrRoute]]:
        """The connected networks changed: hold back the routed prefixes that overlap one now
        and route again those that no longer do. Returns (held back, freed)."""
        blocked = [c for c in self.routed.values() if never.reason_cidr(c.cidr) is not None]
        freed = [c for c in self.held_back.values() if never.reason_cidr(c.cidr) is None]
        for c in blocked:
            log.warning(
                "not routing policy prefix %s while it %s", c.cidr, never.reason_cidr(c.cidr)
            )
            del self.routed[c.cidr]
            self.held_back[c.cidr] = c
        for c in freed:
            log.info("policy prefix %s overlaps no connected network now: routing it", c.cidr)
            del self.held_back[c.cidr]
            self.routed[c.cidr] = c
        return blocked, freed

    def missing(self, ready: dict[int, bool]) -> list[CidrRoute]:
        """The routed prefixes not in the kernel whose family the breakout link can carry."""
        return [c for c in self.routed.values() if not c.installed and ready[c.family]]

    def family(self, family: int) -> list[CidrRoute]:
        return [c for c in self.routed.values() if c.family == family]

    def mark(self, installed: bool) -> None:
        for c in self.routed.values():
            c.installed = installed

    def clear(self) -> set[str]:
        """Forget every prefix (flush); returns the cidrs that were routed."""
        cidrs = set(self.routed)
        self.routed.clear()
        self.held_back.clear()
        return cidrs
