"""Holds: how long each address handed out for a Microsoft 365 name keeps its route.

hold = max(TTL handed to the client, min_hold) + grace, counted from the answer. Every answer,
cache hits included, extends the hold of each of its addresses and of each name it was handed
out under; an address lives as long as the longest hold among its names. Times are monotonic
seconds in memory and wall-clock seconds in the state file.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any


@dataclass(slots=True, eq=False)
class Hold:
    """One address resolverd routes: its names, its expiry, and what the kernel holds for it."""

    address: str  # canonical text form
    family: int  # 4 or 6
    packed: bytes
    expires: float  # monotonic: the latest expiry among its names
    names: dict[str, float] = field(default_factory=dict)  # name -> monotonic expiry
    row: int = 0  # policy row of the latest answer
    installed: bool = False  # the kernel acknowledged the route (and nothing removed it since)
    batch: Any = None  # the install in flight (installs.InstallBatch), None when settled
    set_expires: float = 0.0  # monotonic: when the set entries last programmed lapse

    def extend(self, names: Iterable[str], row: int, expires: float) -> None:
        for name in names:
            if self.names.get(name, 0.0) < expires:
                self.names[name] = expires
        if expires > self.expires:
            self.expires = expires
        self.row = row

    def prune(self, now: float) -> None:
        """Forget names whose hold has run out (the address stays while any name holds it)."""
        if len(self.names) > 1:
            for name in [n for n, exp in self.names.items() if exp <= now]:
                del self.names[name]

    def live_names(self, now: float) -> list[str]:
        names = sorted(n for n, exp in self.names.items() if exp > now)
        return names or sorted(self.names)

    def wants_set_refresh(self, now: float) -> bool:
        """True when the set entries would lapse well before the hold: less than half of the
        remaining hold is left on them. Bounds refreshes to about two per hold per address."""
        return self.set_expires - now < (self.expires - now) * 0.5
