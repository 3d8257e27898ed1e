"""Run pyroute2's async API on a stdlib event loop in a worker thread.

pyroute2's async sockets are asyncio datagram endpoints on AF_NETLINK, which uvloop (the
daemon's loop when installed) refuses ("cannot open a UDP handle, invalid family 16"). The
operations that use pyroute2 here (ip rules, creating and inspecting ipsets) happen a few times
per start or reload, so they run on a private SelectorEventLoop in a thread; the per-answer
path uses netlink.Channel, which works on any loop.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

T = TypeVar("T")


async def in_side_loop(job: Callable[[], Coroutine[Any, Any, T]]) -> T:
    """Await `job()` run on a fresh stdlib event loop in a worker thread."""

    def runner() -> T:
        loop = asyncio.SelectorEventLoop()
        try:
            return loop.run_until_complete(job())
        finally:
            loop.close()

    return await asyncio.to_thread(runner)
