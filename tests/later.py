"""A hooks.Pending for tests: kernel work that is done after a while."""

from __future__ import annotations

import asyncio
from collections.abc import Callable


class Later:
    """A hooks.Pending done `delay` seconds from now (0: at the next turn of the loop); `done`
    is called then, before the callbacks."""

    def __init__(self, delay: float, done: Callable[[], None] | None = None) -> None:
        self.callbacks: list[Callable[[], None]] = []
        self.fired = False
        self.done = done
        asyncio.get_running_loop().call_later(delay, self._fire)

    def _fire(self) -> None:
        self.fired = True
        if self.done is not None:
            self.done()
        for callback in self.callbacks:
            callback()

    def then(self, done: Callable[[], None]) -> None:
        if self.fired:
            done()
        else:
            self.callbacks.append(done)
