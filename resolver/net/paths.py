"""Which breakout link each family's routes go through: the most preferred usable one.

A link is usable for a family while it is up and running with an address of that family (a
global one when its IPv6 gateway is global) and, with health checks, while its verdict is
healthy. `Paths.choose` picks, per family, the first usable link in the configured order, or
none: then the family's routes are withdrawn and its traffic stays on the main table (the
tunnel). The holds are kept, and the routes come back in one batch with the next usable link.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from resolver.config import BreakoutConfig, LinkConfig, Mode
from resolver.net.health import Verdict
from resolver.net.links import Link, NetView
from resolver.net.routes import Path

FAMILIES = (4, 6)


def health_thresholds(cfg: BreakoutConfig) -> tuple[int, int] | None:
    """(failures, successes) for the links' verdicts; None, link state alone, without health
    checks and in dry-run, which sends no probes (a verdict that never comes would keep every
    link out)."""
    if cfg.health is None or cfg.mode is Mode.DRY_RUN:
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

    def path(self, family: int) -> Path | None:
        if self.link is None or not self.usable(family):
            return None
        return Path(self.link.index, self.gateway(family))

    def status(self) -> dict[str, object]:
        return {
            "interface": self.cfg.interface,
            "link_up": self.carries[4] or self.carries[6],
            "healthy": self.healthy if self.verdict is not None else None,
            "ready_v4": self.usable(4),
            "ready_v6": self.usable(6),
            "probe_rtt_ms": None if self.verdict is None else self.verdict.rtt_ms,
        }


class Paths:
    """The configured links in order of preference, and the active one per family."""

    def __init__(self, links: Sequence[LinkConfig], health: tuple[int, int] | None) -> None:
        self.links = [
            LinkState(cfg, verdict=Verdict(*health) if health is not None else None)
            for cfg in links
        ]
        self.active: dict[int, LinkState | None] = {4: None, 6: None}
        self.last: dict[int, Path | None] = {4: None, 6: None}  # where routes went last

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
            path = new.path(family) if new is not None else None
            if path != self.last[family]:
                changed[family] = (self.active[family], new)
            self.active[family], self.last[family] = new, path
        return changed

    def paths(self) -> dict[int, Path | None]:
        return {
            family: state.path(family) if (state := self.active[family]) is not None else None
            for family in FAMILIES
        }

    def ready(self) -> dict[int, bool]:
        return {family: self.active[family] is not None for family in FAMILIES}

    def describe(self, family: int) -> str:
        state = self.active[family]
        return state.cfg.interface if state is not None else "none"
