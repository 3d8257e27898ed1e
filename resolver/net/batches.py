"""What an answer waits on: a batch of holds on their way to the kernel, or several of them.

Both are `hooks.Pending`: `then(done)` calls `done` once the kernel has acknowledged every
route and set entry of the batch, or the ack timeout has passed (`Installs` decides which).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

from resolver.net.holds import Hold

log = logging.getLogger(__name__)


class InstallBatch:
    """Holds whose routes and set entries go to the kernel in one flush; a hooks.Pending for
    the answers that wait on it."""

    __slots__ = (
        "_callbacks", "done", "holds", "parts", "stalled", "started", "timed_out", "timer",
        "waiters",
    )  # fmt: skip

    def __init__(self) -> None:
        self.holds: list[Hold] = []
        self.waiters = 0  # answers waiting on it
        self.parts = 0  # kernel batches not settled yet
        self.done = False
        self.timed_out = False
        self.stalled = False  # the ack timer fired late once and was given STALL_GRACE
        self.started = 0.0
        self.timer: asyncio.TimerHandle | None = None
        self._callbacks: list[Callable[[], None]] = []

    def then(self, done: Callable[[], None]) -> None:
        if self.done:
            done()
        else:
            self._callbacks.append(done)

    def release(self) -> None:
        if self.done:
            return
        self.done = True
        callbacks, self._callbacks = self._callbacks, []
        run_all(callbacks)


class Joined:
    """A hooks.Pending over several batches: done when all of them are."""

    __slots__ = ("_callbacks", "left")

    def __init__(self, batches: list[InstallBatch]) -> None:
        self.left = len(batches)
        self._callbacks: list[Callable[[], None]] = []
        for batch in batches:
            batch.then(self._one)

    def _one(self) -> None:
        self.left -= 1
        if self.left == 0:
            callbacks, self._callbacks = self._callbacks, []
            run_all(callbacks)

    def then(self, done: Callable[[], None]) -> None:
        if self.left <= 0:
            done()
        else:
            self._callbacks.append(done)


def run_all(callbacks: list[Callable[[], None]]) -> None:
    """Call each of `callbacks` (the replies waiting for the kernel); one that fails is a bug
    on the DNS side: logged with its traceback, the others still go."""
    for callback in callbacks:
        try:
            callback()
        except Exception:
            log.exception("a reply waiting for the kernel failed")
