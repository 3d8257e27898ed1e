"""Holds: which addresses resolverd routes, for which names, and until when.

hold = max(TTL handed to the client, min_hold) + grace, counted from the answer. Every answer,
cache hits included, extends the hold of each of its addresses and of the policy name that
earned it (the first name on the answer's chain that the policy matches: never a client's own
query name that only led there); an address lives as long as the longest hold among its
names. A hold keeps at most MAX_NAMES names, the newest: names are what clients can grow
without bound (every name under a wildcard), the hold itself is not. Times are monotonic
seconds in memory and wall-clock seconds on disk (journal).

The holds are owned by the `ledger.Ledger`, which makes every change of their kernel state.
A hold is kept small (about 300 bytes with its dict slot): its address is the packed key, its
text form is computed when shown, and a second name gets a dict only when there is one.

Each hold made for an answer belongs to the client that asked first (an IPv4 address, an IPv6
/64): one client holds at most `client_share` of `max_entries`, so that a client that floods
with answers of many addresses cannot take the holds another client's Microsoft 365 names
need. Holds restored at start belong to nobody.
"""

from __future__ import annotations

import socket
from typing import Any, Final

MAX_NAMES: Final = 16  # names kept per hold, the newest


class Owner:
    """A client that made holds, and how many of them are live."""

    __slots__ = ("holds", "key")

    def __init__(self, key: bytes) -> None:
        self.key = key
        self.holds = 0


class Hold:
    """One address resolverd routes: its names, its expiry, and what the kernel holds for it."""

    __slots__ = (
        "batch", "due", "expires", "installed", "names", "noted", "owner", "packed", "row",
        "set_expires",
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
        self.due = expires  # its place in the ledger's expiry heap (set when it goes in)

    def __lt__(self, other: Hold) -> bool:
        """The order of the ledger's expiry heap, which holds the holds themselves (no tuple
        and no float object each): by `due`, then by address."""
        return self.due < other.due or (self.due == other.due and self.packed < other.packed)

    def __hash__(self) -> int:
        """By identity, as without `__lt__` (equality is identity): compiled with mypyc, a
        class that defines a comparison is unhashable otherwise, and holds go in sets."""
        return object.__hash__(self)

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
