"""The kernel side of `mode: dry-run`: the same interface as kernel.Kernel, changing nothing.

Every batch succeeds at once, and the decisions the breakout reports (`note`: install,
refresh, skip, remove, each with its reason) are kept, the last MAX_DECISIONS of them, for
`resolverctl status`. No capabilities are needed, no state is kept.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from typing import Any

from resolver.config import BreakoutConfig
from resolver.net.kernel import RouteItem, Settled
from resolver.net.routes import Path, Route, Rule, RuleSpec

MAX_DECISIONS = 500


class DryRunKernel:
    """Changes nothing; keeps the decisions (see the module docstring)."""

    def __init__(self, cfg: BreakoutConfig, wall: Callable[[], float] = time.time) -> None:
        self.cfg = cfg
        self.decisions: deque[dict[str, Any]] = deque(maxlen=MAX_DECISIONS)
        self.total = 0
        self._wall = wall

    has_sets = False

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

    def set_paths(self, paths: dict[int, Path | None]) -> None:
        return None

    def add_routes(self, items: Sequence[RouteItem], settled: Settled) -> None:
        settled([0] * len(items))

    del_routes = add_routes
    add_entries = add_routes

    def del_table_routes(self, found: Sequence[Route], settled: Settled) -> None:
        settled([0] * len(found))

    del_entries = add_routes

    def probe_table(self, table: int, family: int, path: Path | None, settled: Settled) -> None:
        settled([0])

    async def dump_routes(self, table: int | None = None) -> list[Route]:
        return []

    async def dump_rules(self) -> list[Rule]:
        return []

    async def change_rules(self, add: Iterable[RuleSpec], remove: Iterable[RuleSpec]) -> int:
        return 0

    def note(self, action: str, address: str, names: Iterable[str], reason: str) -> None:
        self.total += 1
        self.decisions.append({
            "time": round(self._wall(), 3), "action": action, "address": address,
            "names": sorted(names), "reason": reason,
        })  # fmt: skip
