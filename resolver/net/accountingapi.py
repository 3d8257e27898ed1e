"""The traffic counters' interface: what `Installs`, `LinkWatch` and the breakout ask of them.

`accounting.Accounting` (resolverd's nftables table and the conntrack flush) and
`NullAccounting` (the dry-run's and the off switch's: it counts nothing and flushes nothing)
satisfy `AccountingLike`.
"""

from __future__ import annotations

import asyncio
from collections.abc import Collection, Container, Iterable, Sequence
from typing import Any, Protocol

from mypy_extensions import mypyc_attr

from resolver.config import BreakoutConfig
from resolver.net.traffic import TrafficClass

CountItem = tuple[int, bytes, int, int]  # family, packed address, timeout seconds, policy row


class AccountingLike(Protocol):
    @property
    def counting(self) -> bool: ...
    def configure(self, cfg: BreakoutConfig, classes: dict[int, TrafficClass]) -> None: ...
    async def open(self, loop: asyncio.AbstractEventLoop) -> None: ...
    def close(self) -> None: ...
    def count(self, items: Sequence[CountItem]) -> None: ...
    def release(self, items: Iterable[tuple[int, bytes]]) -> None: ...
    def release_unheld(self, held: Container[bytes]) -> int: ...
    def flush(self, addresses: Collection[bytes]) -> None: ...
    async def refresh(self) -> None: ...
    def refresh_due(self) -> bool: ...
    async def per_address(self) -> dict[bytes, tuple[int, int]]: ...
    async def remove(self) -> None: ...
    def report(self) -> dict[str, Any]: ...


# Tests subclass it to record what a breakout hands over (compiled, it must say it allows that).
@mypyc_attr(allow_interpreted_subclasses=True)
class NullAccounting:
    """Counts nothing, flushes nothing (dry-run, or both keys off)."""

    counting = False

    def configure(self, cfg: BreakoutConfig, classes: dict[int, TrafficClass]) -> None:
        pass

    async def open(self, loop: asyncio.AbstractEventLoop) -> None:
        pass

    def close(self) -> None:
        pass

    def count(self, items: Sequence[CountItem]) -> None:
        pass

    def release(self, items: Iterable[tuple[int, bytes]]) -> None:
        pass

    def release_unheld(self, held: Container[bytes]) -> int:
        return 0

    def flush(self, addresses: Collection[bytes]) -> None:
        pass

    async def refresh(self) -> None:
        pass

    def refresh_due(self) -> bool:
        return False

    async def per_address(self) -> dict[bytes, tuple[int, int]]:
        return {}

    async def remove(self) -> None:
        pass

    def report(self) -> dict[str, Any]:
        return {"traffic": [], "traffic_since": None, "conntrack_flushed": 0}
