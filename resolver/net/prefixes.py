"""The routes that come from the config rather than from DNS answers.

Two kinds, routed through the breakout link like the learnt addresses:
- the policy's own prefixes (row 14's /32s and the like): counted as `cidr_routes`, removed by
  flush, put back by the next reload or restart. One that overlaps a never-routed network is
  left out (and logged);
- a host route for each of the breakout resolvers (`breakout.resolvers`), so that the queries
  resolverd sends them leave through the active breakout link even when the router's default
  route is the tunnel. They are the admin's own choice, so `never_route` does not apply to
  them (an ISP resolver may well sit in 100.64.0.0/10).
Either kind is held back while it overlaps a network connected to the router (a resolver on
the link's own network needs no route), and routed again when that network goes away.
"""

from __future__ import annotations

import ipaddress
import logging
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Final

from resolver.net.neverroute import NeverRoute
from resolver.net.routes import split_cidr

log = logging.getLogger(__name__)

POLICY: Final = "policy prefix"
RESOLVER: Final = "breakout resolver"


@dataclass(eq=False)
class CidrRoute:
    cidr: str  # normalised, as the kernel reports it: "13.67.59.89/32"
    family: int
    packed: bytes
    length: int
    kind: str = POLICY
    installed: bool = False


class ConfigRoutes:
    """The config's routes by cidr: those routed, and those a connected network holds back.

    Only the books: the caller installs and removes what the methods hand back.
    """

    def __init__(self) -> None:
        self.routed: dict[str, CidrRoute] = {}
        self.held_back: dict[str, CidrRoute] = {}

    def load(
        self, cidrs: Iterable[str], resolvers: Iterable[str], never: NeverRoute
    ) -> tuple[list[CidrRoute], int]:
        """Take the policy's `cidrs` and the `resolvers`' addresses; one routed already stays
        as it is. Returns the routed ones that went (installed or not) and how many of the
        policy's were left out."""
        routed: dict[str, CidrRoute] = {}
        held_back: dict[str, CidrRoute] = {}
        skipped = 0
        wanted = [(text, POLICY) for text in cidrs] + [(text, RESOLVER) for text in resolvers]
        for text, kind in wanted:
            try:
                cidr = str(ipaddress.ip_network(text, strict=False))
            except ValueError:
                log.warning("%s %r is not a network; skipped", kind, text)
                skipped += kind == POLICY
                continue
            reason = never.static_reason_cidr(cidr) if kind == POLICY else None
            if reason is not None:
                log.warning("not routing %s %s: %s", kind, cidr, reason)
                skipped += 1
                continue
            route = self.routed.get(cidr) or CidrRoute(cidr, *split_cidr(cidr), kind=kind)
            reason = never.connected_reason_cidr(cidr)
            if reason is not None:
                log.info("not routing %s %s while it %s", kind, cidr, reason)
                skipped += kind == POLICY
                held_back[cidr] = route
                continue
            routed.setdefault(cidr, route)
        gone = [c for k, c in self.routed.items() if k not in routed]
        self.routed, self.held_back = routed, held_back
        return gone, skipped

    def follow(self, never: NeverRoute) -> tuple[list[CidrRoute], list[CidrRoute]]:
        """The connected networks changed: hold back the routed ones that overlap one now
        and route again those that no longer do. Returns (held back, freed)."""

        def blocked_by(c: CidrRoute) -> str | None:
            if c.kind == RESOLVER:
                return never.connected_reason_cidr(c.cidr)
            return never.reason_cidr(c.cidr)

        blocked = [c for c in self.routed.values() if blocked_by(c) is not None]
        freed = [c for c in self.held_back.values() if blocked_by(c) is None]
        for c in blocked:
            log.warning("not routing %s %s while it %s", c.kind, c.cidr, blocked_by(c))
            del self.routed[c.cidr]
            self.held_back[c.cidr] = c
        for c in freed:
            log.info("%s %s overlaps no connected network now: routing it", c.kind, c.cidr)
            del self.held_back[c.cidr]
            self.routed[c.cidr] = c
        return blocked, freed

    def missing(self, ready: dict[int, bool]) -> list[CidrRoute]:
        """The routed ones not in the kernel whose family the breakout path can carry."""
        return [c for c in self.routed.values() if not c.installed and ready[c.family]]

    def family(self, family: int) -> list[CidrRoute]:
        return [c for c in self.routed.values() if c.family == family]

    def installed(self, kind: str) -> int:
        return sum(1 for c in self.routed.values() if c.installed and c.kind == kind)

    def mark(self, installed: bool) -> None:
        for c in self.routed.values():
            c.installed = installed

    def clear(self) -> set[str]:
        """Forget every route (flush); returns the cidrs that were routed."""
        cidrs = set(self.routed)
        self.routed.clear()
        self.held_back.clear()
        return cidrs
