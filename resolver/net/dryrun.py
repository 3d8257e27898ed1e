"""The kernel side of `mode: dry-run`: the same interface as kernel.Kernel, changing nothing.

It keeps a table of its own instead: the routes and rules the breakout asked for are there
(so that a flush, a reload or a restart of the books find what a real kernel would show
them), every batch succeeds at once, and the decisions the breakout reports (`note`: install,
refresh, skip, remove, each with its reason) are kept, the last MAX_DECISIONS of them, for
`resolverctl status`. No sets (nothing to refresh), no capabilities needed, nothing kept
across runs. The breakout never asks which kernel it holds: every difference of dry-run is
here (and in journalapi.NullJournal).
"""

from __future__ import annotations

import asyncio
import socket
import time
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from typing import Any

from resolver.config import BreakoutConfig
from resolver.net.kernelapi import RouteItem, Settled
from resolver.net.routes import AF, NextHop, Route, Rule, RuleSpec

MAX_DECISIONS = 500


class DryRunKernel:
    """Changes nothing; keeps its own table and the decisions (see the module docstring)."""

    has_sets = False
    can_probe = False  # no probe tables: no health checks (a verdict would never come)

    def __init__(self, cfg: BreakoutConfig, wall: Callable[[], float] = time.time) -> None:
        self.cfg = cfg
        self.decisions: deque[dict[str, Any]] = deque(maxlen=MAX_DECISIONS)
        self.total = 0
        self._wall = wall
        self._hops: dict[int, NextHop | None] = {4: None, 6: None}
        self._routes: dict[tuple[int, bytes, int], Route] = {}
        self._rules: set[tuple[RuleSpec, int]] = set()  # (rule, family), as the kernel has them

    async def open(
        self, loop: asyncio.AbstractEventLoop, create: bool = True, strict: bool = True
    ) -> None:
        return None

    async def create_sets(self) -> None:
        return None

    async def missing_sets(self) -> list[str]:
        return []

    def close(self) -> None:
        return None

    def set_next_hops(self, hops: dict[int, NextHop | None]) -> None:
        self._hops = dict(hops)

    def add_routes(self, items: Sequence[RouteItem], settled: Settled) -> None:
        cfg = self.cfg
        for family, packed, length in items:
            hop = self._hops.get(family)
            self._routes[(family, packed, length)] = Route(
                family, socket.inet_ntop(AF[family], packed), length, cfg.table,
                cfg.route_protocol, 0, 1, hop.oif if hop else None, hop.gateway if hop else None,
            )  # fmt: skip
        settled([0] * len(items))

    def del_routes(self, items: Sequence[RouteItem], settled: Settled) -> None:
        for item in items:
            self._routes.pop(item, None)
        settled([0] * len(items))

    def del_table_routes(self, found: Sequence[Route], settled: Settled) -> None:
        self.del_routes(
            [(r.family, socket.inet_pton(AF[r.family], r.dst), r.dst_len) for r in found], settled
        )

    def add_entries(self, items: Sequence[RouteItem], settled: Settled) -> None:
        settled([0] * len(items))

    del_entries = add_entries

    def probe_table(self, table: int, family: int, hop: NextHop | None, settled: Settled) -> None:
        settled([0])

    async def dump_routes(self, table: int | None = None) -> list[Route]:
        if table is not None and table != self.cfg.table:
            return []
        return list(self._routes.values())

    async def dump_rules(self) -> list[Rule]:
        return []

    async def change_rules(self, add: Iterable[RuleSpec], remove: Iterable[RuleSpec]) -> int:
        changed = 0
        for spec in add:
            for family in spec.families:
                if (spec, family) not in self._rules:
                    self._rules.add((spec, family))
                    changed += 1
        for spec in remove:
            for family in spec.families:
                if (spec, family) in self._rules:
                    self._rules.discard((spec, family))
                    changed += 1
        return changed

    def note(
        self, action: str, packed: bytes, names: str | list[str], reason: str, *args: object
    ) -> None:
        self.total += 1
        self.decisions.append({
            "time": round(self._wall(), 3), "action": action,
            "address": socket.inet_ntop(AF[4 if len(packed) == 4 else 6], packed),
            "names": [names] if isinstance(names, str) else sorted(names),
            "reason": reason % args if args else reason,
        })  # fmt: skip

    def report(self) -> dict[str, Any]:
        return {"dry_run_decisions": list(self.decisions), "dry_run_decisions_total": self.total}
