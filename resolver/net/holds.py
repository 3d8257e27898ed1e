"""Holds, and the one object that owns them: which addresses resolverd routes, and until when.

hold = max(TTL handed to the client, min_hold) + grace, counted from the answer. Every answer,
cache hits included, extends the hold of each of its addresses and of the policy name that
earned it (the first name on the answer's chain that the policy matches: never a client's own
query name that only led there); an address lives as long as the longest hold among its
names. A hold keeps at most MAX_NAMES names, the newest: names are what clients can grow
without bound (every name under a wildcard), the hold itself is not. Times are monotonic
seconds in memory and wall-clock seconds on disk (journal).

`Ledger` is the books of the breakout: the holds by packed address, the routes that come from
the config (policy prefixes, the breakout resolvers), and the counters. Everything that reads
or changes them goes through it or holds a reference to it; nothing else keeps a copy.
A hold is kept small (about 300 bytes with its dict slot): its address is the packed key, its
text form is computed when shown, and a second name gets a dict only when there is one.

Each hold made for an answer belongs to the client that asked first (an IPv4 address, an IPv6
/64): one client holds at most `client_share` of `max_entries`, so that a client that floods
with answers of many addresses cannot take the holds another client's Microsoft 365 names
need. Holds restored at start belong to nobody.
"""

from __future__ import annotations

import socket
from collections.abc import Iterable, Iterator
from typing import Any

from resolver.net.prefixes import ConfigRoutes

COUNTERS = (
    "installed", "removed", "refreshed", "skipped", "netlink_errors", "ack_timeouts", "capped",
    "withdrawn", "restored", "adopted", "route_lost", "repaired", "failovers", "journal_errors",
    "client_capped",
)  # fmt: skip
MAX_NAMES = 16  # names kept per hold, the newest


class Owner:
    """A client that made holds, and how many of them are live."""

    __slots__ = ("holds", "key")

    def __init__(self, key: bytes) -> None:
        self.key = key
        self.holds = 0


def client_key(host: str) -> bytes | None:
    """The client a hold is charged to: its IPv4 address, or the /64 of its IPv6 address (an
    IPv4-mapped one as IPv4); None (nobody) for anything else."""
    text = host.partition("%")[0]
    try:
        if ":" not in text:
            return socket.inet_pton(socket.AF_INET, text)
        packed = socket.inet_pton(socket.AF_INET6, text)
    except OSError:
        return None
    if packed[:12] == b"\0" * 10 + b"\xff\xff":
        return packed[12:]
    return packed[:8]


class Hold:
    """One address resolverd routes: its names, its expiry, and what the kernel holds for it."""

    __slots__ = (
        "batch", "expires", "installed", "names", "noted", "owner", "packed", "row", "set_expires",
    )  # fmt: skip

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
        self.owner: Owner | None = None  # the client charged for it (None: restored at start)

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

    def extend(self, name: str, row: int, expires: float) -> int:
        """`name` holds the address until `expires` (if that is later than it did); returns
        how many names the hold gained (1, 0, or 0 when the oldest made room)."""
        gained = 0
        current = self.names
        if isinstance(current, str):
            if name != current:
                current = self.names = {current: self.expires, name: expires}
                gained = 1
        elif name not in current:
            if len(current) >= MAX_NAMES:
                del current[min(current, key=current.__getitem__)]
            else:
                gained = 1
            current[name] = expires
        elif current[name] < expires:
            current[name] = expires
        if expires > self.expires:
            self.expires = expires
        self.row = row
        return gained

    def name_count(self) -> int:
        return 1 if isinstance(self.names, str) else len(self.names)

    def name_expiries(self) -> dict[str, float]:
        names = self.names
        return {names: self.expires} if isinstance(names, str) else dict(names)

    def prune(self, now: float) -> int:
        """Forget names whose hold has run out (the address stays while any name holds it);
        returns how many went."""
        names = self.names
        if isinstance(names, str):
            return 0
        gone = [n for n, exp in names.items() if exp <= now]
        for name in gone:
            del names[name]
        if len(names) == 1:
            ((name, exp),) = names.items()
            self.names = name
            self.expires = max(self.expires, exp)
        return len(gone)

    def live_names(self, now: float) -> list[str]:
        names = self.names
        if isinstance(names, str):
            return [names]
        live = sorted(n for n, exp in names.items() if exp > now)
        return live or sorted(names)


class Ledger:
    """The breakout's books: holds by packed address, the config's routes, the counters."""

    def __init__(self, max_entries: int, client_share: float = 1.0) -> None:
        self.holds: dict[bytes, Hold] = {}
        self.routes = ConfigRoutes()
        self.counters: dict[str, int] = dict.fromkeys(COUNTERS, 0)
        self.max_entries = max_entries
        self.per_client = max(1, int(max_entries * client_share))
        self.owners: dict[bytes, Owner] = {}
        self.names = 0  # names over all holds: the records a journal of them holds
        self.changed = False  # holds added or removed since the journal last compacted

    def resize(self, max_entries: int, client_share: float) -> None:
        self.max_entries = max_entries
        self.per_client = max(1, int(max_entries * client_share))

    def __len__(self) -> int:
        return len(self.holds)

    def __iter__(self) -> Iterator[Hold]:
        return iter(self.holds.values())

    def get(self, packed: bytes) -> Hold | None:
        return self.holds.get(packed)

    def current(self, h: Hold) -> bool:
        """Whether `h` is still the hold for its address (not forgotten or replaced)."""
        return self.holds.get(h.packed) is h

    def add(
        self, packed: bytes, name: str, expires: float, row: int, client: bytes | None = None
    ) -> Hold | None:
        """A new hold charged to `client` (None: nobody), or None when `max_entries` are held
        (counted in `capped`) or the client holds its share of them (`client_capped`)."""
        if len(self.holds) >= self.max_entries:
            self.counters["capped"] += 1
            return None
        owner = None
        if client is not None:
            owner = self.owners.get(client)
            if owner is None:
                owner = self.owners[client] = Owner(client)
            elif owner.holds >= self.per_client:
                self.counters["client_capped"] += 1
                return None
            owner.holds += 1
        h = self.holds[packed] = Hold(packed, name, expires, row)
        h.owner = owner
        self.names += 1
        self.changed = True
        return h

    def adopt(self, holds: Iterable[Hold]) -> None:
        """Holds made elsewhere (restored at start, kept unaccounted): nobody's."""
        for h in holds:
            old = self.holds.get(h.packed)
            if old is not None:
                self._drop(old)
            self.holds[h.packed] = h
            self.names += h.name_count()
        self.changed = True

    def extend(self, h: Hold, name: str, row: int, expires: float) -> None:
        self.names += h.extend(name, row, expires)

    def forget(self, holds: Iterable[Hold]) -> int:
        n = 0
        for h in holds:
            if self.holds.get(h.packed) is h:
                del self.holds[h.packed]
                self._drop(h)
                n += 1
        self.counters["removed"] += n
        self.changed = self.changed or n > 0
        return n

    def pop(self, packed: bytes) -> Hold | None:
        """Forget the hold of `packed` without counting it removed (not adopted at start)."""
        h = self.holds.pop(packed, None)
        if h is not None:
            self._drop(h)
        return h

    def clear(self) -> None:
        self.holds.clear()
        self.owners.clear()
        self.names = 0
        self.changed = True

    def _drop(self, h: Hold) -> None:
        self.names -= h.name_count()
        owner = h.owner
        if owner is not None:
            owner.holds -= 1
            if not owner.holds and self.owners.get(owner.key) is owner:
                del self.owners[owner.key]
            h.owner = None

    def lapsed(self, now: float) -> list[Hold]:
        out = []
        for h in self.holds.values():
            if h.expires <= now:
                out.append(h)
            elif not isinstance(h.names, str):
                self.names -= h.prune(now)
        return out

    def family(self, family: int) -> list[Hold]:
        size = 4 if family == 4 else 16
        return [h for h in self.holds.values() if len(h.packed) == size]
