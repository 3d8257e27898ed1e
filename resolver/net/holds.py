"""Holds, and the one object that owns them: which addresses resolverd routes, and until when.

hold = max(TTL handed to the client, min_hold) + grace, counted from the answer. Every answer,
cache hits included, extends the hold of each of its addresses and of each name it was handed
out under; an address lives as long as the longest hold among its names. Times are monotonic
seconds in memory and wall-clock seconds on disk (journal).

`Ledger` is the books of the breakout: the holds by packed address, the routes that come from
the config (policy prefixes, the breakout resolvers), and the counters. Everything that reads
or changes them goes through it or holds a reference to it; nothing else keeps a copy.
A hold is kept small (about 300 bytes with its dict slot): its address is the packed key, its
text form is computed when shown, and a second name gets a dict only when there is one.
"""

from __future__ import annotations

import socket
from collections.abc import Iterable, Iterator
from typing import Any

from resolver.net.prefixes import ConfigRoutes

COUNTERS = (
    "installed", "removed", "refreshed", "skipped", "netlink_errors", "ack_timeouts", "capped",
    "withdrawn", "restored", "adopted", "route_lost", "repaired", "failovers", "journal_errors",
)  # fmt: skip


class Hold:
    """One address resolverd routes: its names, its expiry, and what the kernel holds for it."""

    __slots__ = ("batch", "expires", "installed", "names", "noted", "packed", "row", "set_expires")

    def __init__(self, packed: bytes, name: str, expires: float, row: int) -> None:
        self.packed = packed  # 4 or 16 bytes: the key
        # Its name, while it has one (its expiry is the hold's); name -> expiry with several.
        self.names: str | dict[str, float] = name
        self.expires = expires  # monotonic: the latest expiry among its names
        self.row = row  # policy row of the latest answer
        self.installed = False  # the kernel acknowledged the route (and nothing removed it since)
        self.batch: Any = None  # the install in flight (installs.InstallBatch), None when settled
        self.set_expires = 0.0  # monotonic: when the set entries last programmed lapse
        self.noted = 0.0  # monotonic: the expiry the journal has for it

    @property
    def family(self) -> int:
        return 4 if len(self.packed) == 4 else 6

    @property
    def address(self) -> str:
        af = socket.AF_INET if len(self.packed) == 4 else socket.AF_INET6
        return socket.inet_ntop(af, self.packed)

    @property
    def prefix_len(self) -> int:
        return 32 if len(self.packed) == 4 else 128

    def extend(self, names: Iterable[str], row: int, expires: float) -> None:
        for name in names:
            current = self.names
            if isinstance(current, str):
                if name == current:
                    continue
                current = self.names = {current: self.expires}
            if current.get(name, 0.0) < expires:
                current[name] = expires
        if expires > self.expires:
            self.expires = expires
        self.row = row

    def name_expiries(self) -> dict[str, float]:
        names = self.names
        return {names: self.expires} if isinstance(names, str) else dict(names)

    def prune(self, now: float) -> None:
        """Forget names whose hold has run out (the address stays while any name holds it)."""
        names = self.names
        if isinstance(names, dict):
            for name in [n for n, exp in names.items() if exp <= now]:
                del names[name]
            if len(names) == 1:
                ((name, exp),) = names.items()
                self.names = name
                self.expires = max(self.expires, exp)

    def live_names(self, now: float) -> list[str]:
        names = self.names
        if isinstance(names, str):
            return [names]
        live = sorted(n for n, exp in names.items() if exp > now)
        return live or sorted(names)


class Ledger:
    """The breakout's books: holds by packed address, the config's routes, the counters."""

    def __init__(self, max_entries: int) -> None:
        self.holds: dict[bytes, Hold] = {}
        self.routes = ConfigRoutes()
        self.counters: dict[str, int] = dict.fromkeys(COUNTERS, 0)
        self.max_entries = max_entries
        self.changed = False  # holds added or removed since the journal last compacted

    def __len__(self) -> int:
        return len(self.holds)

    def __iter__(self) -> Iterator[Hold]:
        return iter(self.holds.values())

    def get(self, packed: bytes) -> Hold | None:
        return self.holds.get(packed)

    def current(self, h: Hold) -> bool:
        """Whether `h` is still the hold for its address (not forgotten or replaced)."""
        return self.holds.get(h.packed) is h

    def add(self, packed: bytes, name: str, expires: float, row: int) -> Hold | None:
        """A new hold, or None when `max_entries` are held (counted in `capped`)."""
        if len(self.holds) >= self.max_entries:
            self.counters["capped"] += 1
            return None
        h = self.holds[packed] = Hold(packed, name, expires, row)
        self.changed = True
        return h

    def forget(self, holds: Iterable[Hold]) -> int:
        n = 0
        for h in holds:
            if self.holds.get(h.packed) is h:
                del self.holds[h.packed]
                n += 1
        self.counters["removed"] += n
        self.changed = self.changed or n > 0
        return n

    def lapsed(self, now: float) -> list[Hold]:
        out = []
        for h in self.holds.values():
            if h.expires <= now:
                out.append(h)
            elif not isinstance(h.names, str):
                h.prune(now)
        return out

    def family(self, family: int) -> list[Hold]:
        size = 4 if family == 4 else 16
        return [h for h in self.holds.values() if len(h.packed) == size]
