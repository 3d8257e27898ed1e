"""The owners a breakout is made of, handed as one to the operations that span them.

Start-up (reconcile.py), reload (reload.py), flush (cleanup.py) and status (report.py) work
across several owners; they take this bundle of references rather than the breakout itself,
so that they see only what it is made of and none of its own state. Each owner keeps its
state behind its own methods.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

from resolver.net.installs import Installs
from resolver.net.journalapi import JournalLike
from resolver.net.ledger import Ledger
from resolver.net.linkwatch import LinkWatch
from resolver.net.probes import Probes
from resolver.net.repairs import Repairs


class MatcherLike(Protocol):
    """What the breakout needs of the policy's matcher (policy.matcher.Matcher)."""

    def match(self, name: str) -> Any: ...


@dataclass(frozen=True, slots=True)
class Parts:
    ledger: Ledger  # the holds, the config's routes, the counters, the epoch
    installs: Installs  # the kernel side of the holds (and the kernel itself)
    links: LinkWatch  # the router's links, where routes may go, which link carries them
    probes: Probes  # the links' health
    repairs: Repairs  # sweeps, audits, resettles
    journal: JournalLike  # the holds on disk
    clock: Callable[[], float]  # monotonic
    wall: Callable[[], float]  # wall-clock, for the journal
