"""The kernel side's interface: what the breakout asks of a kernel, and the types it speaks.

`kernel.Kernel` (netlink), `dryrun.DryRunKernel` (a simulated table) and the tests' fakes all
satisfy `KernelLike`. Batch methods never block and never raise for kernel errors: they hand
back an errno per item through a `Settled` callback, on the loop. Callbacks are the one way to
wait on the hot path; `settled_future` is the one adapter to `await` for code off it.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Callable, Iterable, Sequence
from typing import Any, Protocol

from resolver.net.routes import NextHop, Route, Rule, RuleSpec

RouteItem = tuple[int, bytes, int]  # family, packed address, prefix length
EntryItem = tuple[int, bytes, int]  # family, packed address, timeout seconds
Settled = Callable[[list[int]], Any]


def settled_future(
    start: Callable[[Settled], None], then: Callable[[list[int]], object] | None = None
) -> asyncio.Future[list[int]]:
    """The one adapter from the kernel's callbacks to awaiting, for code off the hot path:
    `start(settled)` sends a batch; the future has its errnos, after `then` has seen them."""
    fut: asyncio.Future[list[int]] = asyncio.get_running_loop().create_future()

    def settled(codes: list[int]) -> None:
        if then is not None:
            then(codes)
        if not fut.done():
            fut.set_result(codes)

    start(settled)
    return fut


def set_timeout(expires: float, now: float) -> int:
    """Seconds for a set entry that must live until `expires` (at least 1: 0 means forever)."""
    return max(1, math.ceil(expires - now))


class KernelLike(Protocol):
    """What the breakout needs from the kernel side: `Kernel`, `DryRunKernel`, or a fake."""

    @property
    def has_sets(self) -> bool: ...
    @property
    def can_probe(self) -> bool: ...
    async def open(
        self, loop: asyncio.AbstractEventLoop, create: bool = True, strict: bool = True
    ) -> None: ...
    async def create_sets(self) -> None: ...
    def close(self) -> None: ...
    def set_next_hops(self, hops: dict[int, NextHop | None]) -> None: ...
    def add_routes(self, items: Sequence[RouteItem], settled: Settled) -> None: ...
    def del_routes(self, items: Sequence[RouteItem], settled: Settled) -> None: ...
    def del_table_routes(self, found: Sequence[Route], settled: Settled) -> None: ...
    def add_entries(self, items: Sequence[EntryItem], settled: Settled) -> None: ...
    def del_entries(self, items: Sequence[EntryItem], settled: Settled) -> None: ...
    def probe_table(
        self, table: int, family: int, hop: NextHop | None, settled: Settled
    ) -> None: ...
    async def dump_routes(self, table: int | None = None) -> list[Route]: ...
    async def dump_rules(self) -> list[Rule]: ...
    async def change_rules(self, add: Iterable[RuleSpec], remove: Iterable[RuleSpec]) -> int: ...
    async def missing_sets(self) -> list[str]: ...
    def note(
        self, action: str, packed: bytes, names: str | list[str], reason: str, *args: object
    ) -> None: ...
    def report(self) -> dict[str, Any]: ...
