"""A bounded record of what the breakout decided, for `mode: dry-run` (shown by status)."""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Iterable
from typing import Any

MAX_DECISIONS = 500


class DecisionLog:
    """The last MAX_DECISIONS decisions: install, refresh, skip, remove, each with its reason."""

    def __init__(self, size: int = MAX_DECISIONS, wall: Any = time.time) -> None:
        self._items: deque[dict[str, Any]] = deque(maxlen=size)
        self._wall = wall
        self.total = 0

    def record(self, action: str, address: str, names: Iterable[str], reason: str) -> None:
        self.total += 1
        self._items.append(
            {
                "time": round(self._wall(), 3),
                "action": action,
                "address": address,
                "names": sorted(names),
                "reason": reason,
            }
        )

    def to_json(self) -> list[dict[str, Any]]:
        return list(self._items)
