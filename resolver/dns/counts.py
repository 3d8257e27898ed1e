"""What the DNS side counts: queries by result, drops, cache hits and misses, tagged answers by
policy row. One `Counts` is shared by the handler and its miss path."""

from __future__ import annotations

from typing import Final

from resolver.hooks import Tagged

COUNTER_KEYS: Final = (
    "total", "noerror", "nxdomain", "servfail", "refused", "formerr", "notimp", "other",
    "dropped", "ratelimited", "pending_full", "tagged", "hits", "misses", "hook_errors",
    "canaries", "routes_deferred", "addresses_capped",
)  # fmt: skip


class Counts:
    """The counters (a live dict) and the tagged answers by policy row."""

    __slots__ = ("by_row", "values")

    def __init__(self) -> None:
        self.values: dict[str, int] = dict.fromkeys(COUNTER_KEYS, 0)
        self.by_row: dict[int, int] = {}

    def tagged(self, tagged: Tagged, n: int) -> None:
        """`n` answers were tagged `tagged`."""
        self.values["tagged"] += n
        row = tagged.match.rule.row
        self.by_row[row] = self.by_row.get(row, 0) + n
