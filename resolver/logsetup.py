"""The daemon's log lines: their format, and a cap on the ones a peer can repeat.

A query, an upstream's answer or a system call that fails under load can make the DNS side log
a warning or a traceback each time it happens (a handler failure, an answer that does not
splice, an upstream that cannot be asked). A client or an upstream that repeats it would fill
the journal and the disk with one line per packet. `FloodFilter` sits on the daemon's log
handler: the records of the loggers under PER_PACKET pass at most BURST per source line and
INTERVAL; the last one let through says that more like it will be left out, and the first one
after the pause says how many were. Every other record passes as it is. The table is keyed by
source line, so its size is bounded by the code, never by the peers. (resolver/net caps its
own repeated lines with `net.ratelog`.)
"""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Callable
from typing import TextIO

FORMAT = "%(levelname)s %(name)s: %(message)s%(flood)s"
PER_PACKET = ("resolver.dns", "resolver.hooks")  # loggers whose lines a peer can repeat
BURST = 5  # records let through per source line and interval
INTERVAL = 10.0  # seconds


class _Site:
    __slots__ = ("left_out", "passed", "until")

    def __init__(self, until: float) -> None:
        self.until = until
        self.passed = 1
        self.left_out = 0


class FloodFilter(logging.Filter):
    """Lets through at most `burst` records per source line and `interval` of the loggers
    under `prefixes`; sets `record.flood` (FORMAT's note) on every record it sees."""

    def __init__(
        self,
        burst: int = BURST,
        interval: float = INTERVAL,
        prefixes: tuple[str, ...] = PER_PACKET,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        super().__init__()
        self.burst = burst
        self.interval = interval
        self.prefixes = prefixes
        self.clock = clock
        self._sites: dict[tuple[str, int], _Site] = {}

    def filter(self, record: logging.LogRecord) -> bool:
        record.flood = ""
        name = record.name
        if not any(name == p or name.startswith(p + ".") for p in self.prefixes):
            return True
        key = (record.pathname, record.lineno)
        now = self.clock()
        site = self._sites.get(key)
        if site is None or now >= site.until:
            self._sites[key] = _Site(now + self.interval)
            if site is not None and site.left_out:
                record.flood = f" ({site.left_out} more like it were left out before this one)"
            return True
        if site.passed >= self.burst:
            site.left_out += 1
            return False
        site.passed += 1
        if site.passed == self.burst:
            record.flood = (
                f" (more like it in the next {site.until - now:.0f} s are left out and counted)"
            )
        return True


def start(
    stream: TextIO = sys.stderr, burst: int = BURST, interval: float = INTERVAL
) -> logging.Handler:
    """The root logger's handler: FORMAT on `stream`, behind a FloodFilter. Replaces the
    handlers the root logger had."""
    handler = logging.StreamHandler(stream)
    handler.setFormatter(logging.Formatter(FORMAT))
    handler.addFilter(FloodFilter(burst, interval))
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    return handler
