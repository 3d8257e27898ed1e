"""What the breakout needs of a hold journal (resolver.net.journal), and the journal of
dry-run, which keeps nothing."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Protocol

from resolver.net.holds import Hold
from resolver.net.records import Loaded


class JournalLike(Protocol):
    """What the breakout needs of a journal: `Journal`, or `NullJournal` for dry-run."""

    problems: list[str]

    def load(self, latest: float) -> Loaded: ...
    def note(self, holds: Iterable[Hold]) -> None: ...
    def extended(self, h: Hold) -> None: ...
    def removed(self, holds: Iterable[Hold]) -> None: ...
    def flushed(self) -> None: ...
    def write_buffered(self) -> None: ...
    def due(self, records: int) -> bool: ...
    async def compact(self, holds: Iterable[Hold]) -> bool: ...
    def close(self) -> None: ...
    def status(self) -> dict[str, object]: ...


class NullJournal:
    """The journal of dry-run: keeps nothing (nothing in the kernel needs accounting for)."""

    problems: list[str] = []

    def load(self, latest: float) -> Loaded:
        return Loaded({}, True, [], False)

    def note(self, holds: Iterable[Hold]) -> None:
        return None

    def extended(self, h: Hold) -> None:
        return None

    def removed(self, holds: Iterable[Hold]) -> None:
        return None

    def flushed(self) -> None:
        return None

    def write_buffered(self) -> None:
        return None

    def due(self, records: int) -> bool:
        return False

    async def compact(self, holds: Iterable[Hold]) -> bool:
        return False

    def close(self) -> None:
        return None

    def status(self) -> dict[str, object]:
        return {"file": None, "writable": True, "errors": 0, "last_error": None, "problems": []}
