"""The daemon's log lines: their format, and a cap on the ones a peer can repeat.

A query, an upstream's answer or a system call that fails under load can make the DNS side log
a warning or a traceback each time it happens (a handler failure, an answer that does not
splice, an upstream that cannot be asked). A client or an upstream that repeats it would fill
the journal and the disk with one line per packet. Those call sites pass `extra=REPEATS`.
`FloodFilter` sits on the daemon's log handler and lets such records through at most BURST
per call site (logger and message template: the same on both builds, where a compiled module
has no source line to give) and INTERVAL; the last one let through says that more like it will
be left out, and the first one after the pause says how many were. Every other record (state
changes, `log_level: debug`'s line per query) passes as it is, and the table holds one entry
per marked call site: its size is bounded by the code, never by the peers. (resolver/net caps
its own repeated lines with `net.ratelog`.)
"""

from __future__ import annotations

import logging
import sys
import threading
import time
from collections.abc import Callable
from typing import TextIO

FORMAT = "%(levelname)s %(name)s: %(message)s%(flood)s"
REPEATS = {"repeats": True}  # `extra=` of a call site whose line a peer can repeat
BURST = 5  # records let through per call site and interval
INTERVAL = 10.0  # seconds


class _Site:
    __slots__ = ("left_out", "passed", "until")

    def __init__(self, until: float) -> None:
        self.until = until
        self.passed = 1
        self.left_out = 0


class FloodFilter(logging.Filter):
    """Lets through at most `burst` records marked REPEATS per call site and `interval`; sets
    `record.flood` (FORMAT's note) on every record it sees."""

    def __init__(
        self,
        burst: int = BURST,
        interval: float = INTERVAL,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        super().__init__()
        self.burst = burst
        self.interval = interval
        self.clock = clock
        self._sites: dict[tuple[str, str], _Site] = {}
        self._lock = threading.Lock()  # filters run before the handler takes its own lock

    def filter(self, record: logging.LogRecord) -> bool:
        record.flood = ""
        if not getattr(record, "repeats", False):
            return True
        key = (record.name, record.msg if isinstance(record.msg, str) else "")
        with self._lock:
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
