"""Log lines that could repeat per query, at most one per key per interval."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable


class RateLimitedLog:
    """`log(key, msg, *args)` logs the first occurrence, then one line per `interval` seconds
    saying how many were left out."""

    def __init__(
        self,
        logger: logging.Logger,
        interval: float = 10.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._logger = logger
        self._interval = interval
        self._clock = clock
        self._next: dict[str, float] = {}
        self._dropped: dict[str, int] = {}

    def log(self, level: int, key: str, msg: str, *args: object) -> None:
        now = self._clock()
        if now < self._next.get(key, 0.0):
            self._dropped[key] = self._dropped.get(key, 0) + 1
            return
        self._next[key] = now + self._interval
        dropped = self._dropped.pop(key, 0)
        if dropped:
            self._logger.log(level, "%s", msg % args)
            self._logger.log(level, "(%d similar messages were suppressed before it)", dropped)
        else:
            self._logger.log(level, msg, *args)
