"""Which breakout link each family's routes go through: the most preferred usable one.

`LinkChoice` holds the configured links in order of preference (a `LinkState` each: the
kernel's link of that name, which families it carries, its health verdict) and the active link
of each family; `next_hops` is where the routes go (a routes.NextHop per family).

A link is usable for a family while it is up and running with an address of that family (a
global one when its IPv6 gateway is global) and, with health checks, while its verdict is
healthy. `LinkChoice.choose` picks, per family, the first usable link in the configured order, or
none: then the family's routes are withdrawn and its traffic stays on the main table (the
tunnel). The holds are kept, and the routes come back in one batch with the next usable link.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Final

from resolver.config import BreakoutConfig, LinkConfig
from resolver.net.health import Verdict
from resolver.net.links import Link, NetView
from resolver.net.routes import NextHop

FAMILIES: Final = (4, 6)


def health_thresholds(cfg: BreakoutConfig, can_probe: bool) -> tuple[int, int] | None:
    """(failures, successes) for the links' verdicts; None, link state alone, without health
    checks and for a kernel side that cannot probe (dry-run: a verdict that never comes would
    keep every link out)."""
    if cfg.health is None or not can_probe:
        return None
    return cfg.health.failures, cfg.health.successes


@dataclass(eq=False)
class LinkState:
    """One configured link as it is now."""

    cfg: LinkConfig
    link: Link | None = None  # the kernel's link of that name, None while it does not exist
    carries: dict[int, bool] = field(default_factory=lambda: {4: False, 6: False})
    verdict: Verdict | None = None  # None without health checks

    @property
    def healthy(self) -> bool | None:
        return None if self.verdict is None else self.verdict.healthy

    def usable(self, family: int) -> bool:
        if not self.carries[family]:
            return False
        return self.verdict is None or self.verdict.healthy is True

    def gateway(self, family: int) -> str | None:
        return self.cfg.gateway4 if family == 4 else self.cfg.gateway6

    def next_hop(self, family: int) -> NextHop | None:
        """Where this link sends the family's routes; None while it cannot carry them."""
        if self.link is None or not self.usable(family):
            return None
        return NextHop(self.link.index, self.gateway(family))

    def status(self) -> dict[str, object]:
        return {
            "interface": self.cfg.interface,
            "link_up": self.carries[4] or self.carries[6],
            "healthy": self.healthy if self.verdict is not None else None,
            "ready_v4": self.usable(4),
            "ready_v6": self.usable(6),
            "probe_rtt_ms": None if self.verdict is None else self.verdict.rtt_ms,
        }


class LinkChoice:
    """The configured links in order of preference, and the active one per family."""

    def __init__(self, links: Sequence[LinkConfig], health: tuple[int, int] | None) -> None:
        self.links = [
            LinkState(cfg, verdict=Verdict(*health) if health is not None else None)
            for cfg in links
        ]
        self.active: dict[int, LinkState | None] = {4: None, 6: None}
        self.last: dict[int, NextHop | None] = {4: None, 6: None}  # where routes went last

    def reconfigure(
        self, links: Sequence[LinkConfig], health: tuple[int, int] | None, view: NetView,
        same_health: bool,
    ) -> None:  # fmt: skip
        """New links or health checks (a reload): links that stay keep their verdict (the same
        one, or with new thresholds its state, until the rounds say otherwise) and the active
        links stay known, so that only real changes move routes."""
        verdicts = {s.cfg.interface: s.verdict for s in self.links}
        active = dict(self.active)
        self.links = [
            LinkState(cfg, verdict=Verdict(*health) if health is not None else None)
            for cfg in links
        ]
        self.follow(view)  # the links' state now: the first probe round needs it
        for state in self.links:
            before = verdicts.get(state.cfg.interface)
            if before is None or state.verdict is None:
                continue  # a new link, or health checks turned on or off
            if same_health:
                state.verdict = before
            else:
                state.verdict.healthy, state.verdict.rtt_ms = before.healthy, before.rtt_ms
        self.active = {
            f: next((s for s in self.links if s.cfg.interface == a.cfg.interface), None)
            if (a := active[f]) is not None
            else None
            for f in FAMILIES
        }

    def follow(self, view: NetView) -> None:
        """Read each link's state from the kernel's view."""
        for state in self.links:
            link = view.find(state.cfg.interface)
            state.link = link
            for family in FAMILIES:
                state.carries[family] = view.carries(link, family, state.gateway(family))

    def choose(self) -> dict[int, tuple[LinkState | None, LinkState | None]]:
        """Pick the active link per family again; returns {family: (old, new)} for each family
        whose routes must go elsewhere: another link, or the same one with a new interface
        index or gateway."""
        changed: dict[int, tuple[LinkState | None, LinkState | None]] = {}
        for family in FAMILIES:
            new = next((s for s in self.links if s.usable(family)), None)
            hop = new.next_hop(family) if new is not None else None
            if hop != self.last[family]:
                changed[family] = (self.active[family], new)
            self.active[family], self.last[family] = new, hop
        return changed

    def next_hops(self) -> dict[int, NextHop | None]:
        return {
            family: state.next_hop(family) if (state := self.active[family]) is not None else None
            for family in FAMILIES
        }

    def ready(self) -> dict[int, bool]:
        return {family: self.active[family] is not None for family in FAMILIES}

    def ready_for(self, family: int) -> bool:
        """`ready()[family]`, without the dict: asked for every tagged address."""
        return self.active[family] is not None

    def any_ready(self) -> bool:
        """A link of either family is ready: asked for every miss."""
        active = self.active
        return active[4] is not None or active[6] is not None

    def describe(self, family: int) -> str:
        state = self.active[family]
        return state.cfg.interface if state is not None else "none"

    def why(self, state: LinkState | None = None) -> str:
        """Why links are not used: "wan0: unhealthy; wan1: link down"."""
        states = [state] if state is not None else self.links
        out = []
        for s in states:
            if s.link is None:
                out.append(f"{s.cfg.interface}: missing")
            elif not (s.carries[4] or s.carries[6]):
                out.append(f"{s.cfg.interface}: link down or no address")
            elif s.healthy is False:
                out.append(f"{s.cfg.interface}: unhealthy")
            else:
                out.append(f"{s.cfg.interface}: not preferred for this family")
        return "; ".join(out) or "no links configured"
