"""The books of the breakout: the one owner of the holds, their transitions and the epoch.

`Ledger` keeps the holds by packed address, the routes that come from the config
(`config_routes`: the policy's prefixes and the breakout resolvers' host routes), the
counters, the clients' shares of the holds, and two views of the holds that keep the periodic
work proportional to what changes rather than to what is held:

- `missing`: the holds whose route is neither in the kernel nor on its way there (new ones
  whose family has no usable link, those whose install failed, those lost or withdrawn), kept
  per family. The sweep puts back the missing ones of the families that can carry routes,
  without walking every hold, nor the holds of a family withdrawn for want of a link (all of
  them are missing then, for as long as the outage lasts);
- an expiry heap: the sweep pops the holds whose time came, and a hold extended since it was
  pushed goes back in at its new expiry (its lapsed names are pruned then). A hold is in the
  heap once (the heap holds the holds, ordered by `Hold.due`, which changes only while the
  hold is out of it); forgotten holds are skipped when they come up.

Every change of a hold's kernel state goes through a method here (`sending`, `installed`,
`failed`, `lost`, `withdrawn`, `must_reinstall`), and so does every change of the `epoch`
(hooks.BreakoutHook.epoch): it moves whenever a route the DNS side may believe installed is
gone, so that a remembered "nothing to do for this answer" is not trusted past it.
"""

from __future__ import annotations

import heapq
import logging
from collections.abc import Iterable, Iterator
from typing import Any, Final

from resolver.clients import client_text
from resolver.hooks import Epoch
from resolver.net.holds import Hold, Owner
from resolver.net.prefixes import ConfigRoutes

log = logging.getLogger(__name__)

COUNTERS: Final = (
    "installed", "removed", "refreshed", "skipped", "netlink_errors", "ack_timeouts", "capped",
    "withdrawn", "restored", "adopted", "route_lost", "repaired", "failovers", "journal_errors",
    "client_capped",
)  # fmt: skip


class Missing:
    """The holds whose route is neither in the kernel nor on its way there, per family."""

    __slots__ = ("_of",)

    def __init__(self) -> None:
        self._of: dict[int, set[Hold]] = {4: set(), 6: set()}

    def add(self, h: Hold) -> None:
        self._of[4 if len(h.packed) == 4 else 6].add(h)

    def discard(self, h: Hold) -> None:
        self._of[4 if len(h.packed) == 4 else 6].discard(h)

    def clear(self) -> None:
        for held in self._of.values():
            held.clear()

    def of(self, family: int) -> set[Hold]:
        return self._of[family]

    def ready(self, ready: dict[int, bool]) -> list[Hold]:
        """The missing holds of the families whose `ready` is true (those alone are walked)."""
        return [h for family, held in self._of.items() if ready[family] for h in held]

    def __contains__(self, h: object) -> bool:
        return any(h in held for held in self._of.values())

    def __iter__(self) -> Iterator[Hold]:
        return iter([h for held in self._of.values() for h in held])

    def __len__(self) -> int:
        return sum(len(held) for held in self._of.values())

    def __bool__(self) -> bool:
        return any(self._of.values())


class Ledger:
    """The breakout's books (see the module docstring)."""

    def __init__(self, max_entries: int, client_share: float = 1.0) -> None:
        self.holds: dict[bytes, Hold] = {}
        self.config_routes = ConfigRoutes()
        self.counters: dict[str, int] = dict.fromkeys(COUNTERS, 0)
        self.max_entries = max_entries
        self.per_client = max(1, int(max_entries * client_share))
        self.owners: dict[bytes, Owner] = {}
        self.names = 0  # names over all holds: the records a journal of them holds
        self.missing = Missing()
        self.swept = 0  # holds the sweep has looked at, in all: what the periodic work costs
        self.epoch = Epoch()  # hooks.BreakoutHook.epoch
        self._heap: list[Hold] = []  # by Hold.due; a hold is in it once (module docstring)
        self._cap_logged = False  # max_entries reached: said once, until well below it again
        self._share_logged = False  # a client at its share: said once, until none is

    def __len__(self) -> int:
        return len(self.holds)

    def __iter__(self) -> Iterator[Hold]:
        return iter(self.holds.values())

    def get(self, packed: bytes) -> Hold | None:
        return self.holds.get(packed)

    def current(self, h: Hold) -> bool:
        """Whether `h` is still the hold for its address (not forgotten or replaced)."""
        return self.holds.get(h.packed) is h

    def resize(self, max_entries: int, client_share: float) -> None:
        self.max_entries = max_entries
        self.per_client = max(1, int(max_entries * client_share))

    def tally(self, now: float) -> tuple[int, int, int, int]:
        """Routes installed (IPv4, IPv6) and set entries not lapsed at `now` (IPv4, IPv6), for
        status: one pass over the holds, here in the compiled module rather than in the
        report (30,000 holds: 5 ms from interpreted code, under 1 ms here)."""
        r4 = r6 = e4 = e6 = 0
        for h in self.holds.values():
            if len(h.packed) == 4:
                r4 += h.installed
                e4 += h.set_expires > now
            else:
                r6 += h.installed
                e6 += h.set_expires > now
        return r4, r6, e4, e6

    def family(self, family: int) -> list[Hold]:
        size = 4 if family == 4 else 16
        return [h for h in self.holds.values() if len(h.packed) == size]

    # -- holds coming and going -----------------------------------------------------------

    def add(
        self, packed: bytes, name: str, expires: float, row: int, client: bytes | None = None
    ) -> Hold | None:
        """A new hold charged to `client` (None: nobody), or None when `max_entries` are held
        (counted in `capped`) or the client holds its share of them (`client_capped`)."""
        if len(self.holds) >= self.max_entries:
            self.counters["capped"] += 1
            if not self._cap_logged:
                self._cap_logged = True
                log.warning("breakout.max_entries (%d) reached: new addresses are not routed "
                            "until holds lapse (counter 'capped')", self.max_entries)  # fmt: skip
            return None
        owner = None
        if client is not None:
            owner = self.owners.get(client)
            if owner is None:
                owner = self.owners[client] = Owner(client)
            elif owner.holds >= self.per_client:
                self.counters["client_capped"] += 1
                if not self._share_logged:
                    self._share_logged = True
                    log.warning(
                        "client %s holds its share of breakout.max_entries (%d of %d): its new "
                        "addresses are not routed until its holds lapse (counter "
                        "'client_capped'; said once)", client_text(client), self.per_client,
                        self.max_entries,
                    )  # fmt: skip
                return None
            owner.holds += 1
        h = self.holds[packed] = Hold(packed, name, expires, row)
        h.owner = owner
        self._took(h)
        return h

    def adopt(self, holds: Iterable[Hold]) -> None:
        """Holds made elsewhere (restored at start, kept unaccounted): nobody's."""
        for h in holds:
            old = self.holds.get(h.packed)
            if old is not None:
                self._drop(old)
            self.holds[h.packed] = h
            self._took(h)

    def _took(self, h: Hold) -> None:
        self.names += h.name_count()
        if not h.installed and h.batch is None:
            self.missing.add(h)
        h.due = h.expires
        heapq.heappush(self._heap, h)

    def extend(self, h: Hold, name: str, row: int, expires: float) -> None:
        self.names += h.extend(name, row, expires)

    def forget(self, holds: Iterable[Hold]) -> int:
        """Forget `holds` (those still current); returns how many, counted in `removed`."""
        n = 0
        for h in holds:
            if self.holds.get(h.packed) is h:
                del self.holds[h.packed]
                self._drop(h)
                n += 1
        self.counters["removed"] += n
        return n

    def pop(self, packed: bytes) -> Hold | None:
        """Forget the hold of `packed` without counting it removed (not adopted at start)."""
        h = self.holds.pop(packed, None)
        if h is not None:
            self._drop(h)
        return h

    def clear(self) -> list[Hold]:
        """Forget every hold (flush); returns them."""
        holds = list(self.holds.values())
        self.holds.clear()
        self.owners.clear()
        self.missing.clear()
        self._heap.clear()
        self.names = 0
        self.counters["removed"] += len(holds)
        return holds

    def _drop(self, h: Hold) -> None:
        self.names -= h.name_count()
        self.missing.discard(h)
        owner = h.owner
        if owner is not None:
            owner.holds -= 1
            if not owner.holds and self.owners.get(owner.key) is owner:
                del self.owners[owner.key]
            h.owner = None

    def lapsed(self, now: float) -> list[Hold]:
        """The holds whose time has come (still held: the caller removes them). Holds
        extended meanwhile go back into the heap at their new expiry, their lapsed names
        pruned. Costs what comes due, not what is held."""
        heap, out = self._heap, []
        while heap and heap[0].due <= now:
            h = heapq.heappop(heap)
            self.swept += 1
            if self.holds.get(h.packed) is not h:
                continue  # forgotten, or replaced by a newer hold for the address
            if h.expires <= now:
                out.append(h)
                continue
            self.names -= h.prune(now)
            h.due = h.expires  # out of the heap now: its place may change
            heapq.heappush(heap, h)
        return out

    def to_put_back(self, ready: dict[int, bool], now: float) -> list[Hold]:
        """The live missing holds of the families that can carry routes: what the sweep
        sends again. Costs what is missing there, not what is held."""
        candidates = self.missing.ready(ready)
        self.swept += len(candidates)
        return [h for h in candidates if h.expires > now]

    def sweep_logs(self) -> None:
        """The caps' warnings may come again once the holds are well below them."""
        if self._cap_logged and len(self.holds) < self.max_entries * 0.9:
            self._cap_logged = False
        if self._share_logged:
            per_client = self.per_client
            self._share_logged = any(o.holds >= per_client for o in self.owners.values())

    # -- a hold's route in the kernel ---------------------------------------------------------

    def sending(self, h: Hold, batch: Any) -> None:
        """`h`'s route and set entries go to the kernel with `batch`."""
        h.batch = batch
        self.missing.discard(h)

    def installed(self, h: Hold, batch: Any) -> None:
        """The kernel acknowledged `h`'s route of `batch`."""
        if h.batch is batch:
            h.batch = None
        if self.holds.get(h.packed) is h:
            if not h.installed:
                h.installed = True
                self.counters["installed"] += 1
            self.missing.discard(h)

    def failed(self, h: Hold, batch: Any) -> None:
        """The kernel refused `h`'s route of `batch`: missing (the sweep tries again)."""
        if h.batch is batch:
            h.batch = None
            if not h.installed and self.holds.get(h.packed) is h:
                self.missing.add(h)

    def unsent(self, h: Hold, batch: Any) -> None:
        """`batch` was not sent for `h` (it was forgotten meanwhile)."""
        if h.batch is batch:
            h.batch = None

    def lost(self, h: Hold) -> None:
        """`h`'s route is gone from the kernel (someone deleted it, or the kernel dropped it):
        missing; the epoch moves."""
        if h.installed:
            h.installed = False
            self.counters["route_lost"] += 1
            self.epoch.move()
        if h.batch is None and self.holds.get(h.packed) is h:
            self.missing.add(h)

    def withdrawn(self, holds: Iterable[Hold]) -> None:
        """No usable link for these holds' family: their routes were removed; they are kept."""
        for h in holds:
            h.installed, h.batch = False, None
            if self.holds.get(h.packed) is h:
                self.missing.add(h)

    def must_reinstall(self) -> list[Hold]:
        """Every route goes in again (a new table, new sets): none counts as installed, none
        as having set entries. Returns every hold."""
        holds = list(self.holds.values())
        for h in holds:
            h.installed, h.set_expires = False, 0.0
            if h.batch is None:
                self.missing.add(h)
        return holds

    def moved(self) -> None:
        """Routes may have gone, or gone elsewhere (a move, a flush, a new kernel side)."""
        self.epoch.move()
